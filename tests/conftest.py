"""Fixtures: tiny LLaVA-format checkpoints built from scratch, offline."""
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "tests" / "assets" / "images"


@pytest.fixture(scope="session")
def real_tokenizer_dir():
    from rgpt_llava.assets import llama_tokenizer_dir
    return str(llama_tokenizer_dir())  # shipped with the package: missing is an error, not a skip


@pytest.fixture(scope="session")
def images_dir():
    assert IMAGES.is_dir(), f"the test photos are missing at {IMAGES} (restore them with git checkout)"
    return IMAGES


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    from rgpt_llava.tiny import train_tiny_tokenizer
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    from rgpt_llava.tiny import build_tiny_clip
    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory):
    """A tiny SigLIP tower: 64 px, patch 8 -> an 8x8 grid (the tiny CLIP's is 4x4), width 48, 3 layers."""
    from rgpt_llava.tiny import build_tiny_siglip
    return build_tiny_siglip(tmp_path_factory.mktemp("siglip"))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory, tiny_tokenizer_dir, tiny_clip_dir):
    from rgpt_llava.tiny import build_tiny_llava
    return build_tiny_llava(tmp_path_factory.mktemp("llava"), tiny_tokenizer_dir, tiny_clip_dir)


@pytest.fixture(scope="session")
def real_tok_llava_dir(tmp_path_factory, real_tokenizer_dir, tiny_clip_dir):
    from rgpt_llava.tiny import build_tiny_llava
    return build_tiny_llava(tmp_path_factory.mktemp("llava_realtok"), real_tokenizer_dir, tiny_clip_dir)


@pytest.fixture(scope="session")
def tiny_rgpt_dir(tmp_path_factory, tiny_llava_dir):
    """The tiny LLaVA converted with the default (identity-preserving) refiner."""
    from rgpt_llava.convert import convert
    return convert(tiny_llava_dir, str(tmp_path_factory.mktemp("rgpt")))


@pytest.fixture(scope="session")
def real_tok_rgpt_dir(tmp_path_factory, real_tok_llava_dir):
    """A tiny RGPT checkpoint with the real LLaMA tokenizer: its random answers are word pieces, not bytes."""
    from rgpt_llava.convert import convert
    return convert(real_tok_llava_dir, str(tmp_path_factory.mktemp("rgpt_realtok")))


def make_rgpt(llava_dir, seed=0, **overrides):
    """An in-memory fp32 RGPT model from a tiny LLaVA checkpoint, with a randomly initialised refiner."""
    from rgpt_llava.convert import rgpt_config_from_llava
    from rgpt_llava.model import RGPTLlamaForCausalLM
    from rgpt_llava.model.builder import read_config
    from rgpt_llava.model.region_encoder import build_refiner

    refiner = overrides.pop("mm_refiner_type", "deconv")
    config = rgpt_config_from_llava(read_config(llava_dir), refiner=refiner)
    for k, v in overrides.items():
        setattr(config, k, v)
    model = RGPTLlamaForCausalLM.from_pretrained(llava_dir, config=config, torch_dtype=torch.float32)
    torch.manual_seed(seed)
    model.get_model().mm_refiner = build_refiner(config)
    model.get_vision_tower().load_model()
    return model.eval()


@pytest.fixture()
def rgpt_model(tiny_llava_dir):
    return make_rgpt(tiny_llava_dir)


@pytest.fixture(scope="session")
def tokenizer(tiny_llava_dir):
    from rgpt_llava.tokenization import load_tokenizer
    return load_tokenizer(tiny_llava_dir)


@pytest.fixture(scope="session")
def tiny_sam_dir(tmp_path_factory):
    from rgpt_llava.tiny import build_tiny_sam
    return build_tiny_sam(tmp_path_factory.mktemp("sam"))


@pytest.fixture(scope="session")
def sam(tiny_sam_dir):
    from rgpt_llava.sam import SamPrompter
    return SamPrompter(tiny_sam_dir, device="cpu")

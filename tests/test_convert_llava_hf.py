"""Conversion of llava-hf checkpoints (transformers' LlavaForConditionalGeneration) into RGPT checkpoints."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration)

from rgpt_llava.constants import IMAGE_TOKEN_INDEX
from rgpt_llava.convert import convert_llava_hf, main as convert_main
from rgpt_llava.mm_utils import tokenizer_region_token
from rgpt_llava.model import RGPTLlamaForCausalLM
from rgpt_llava.model.builder import CheckpointError, load_pretrained_model
from rgpt_llava.tiny import CLIP_MEAN, CLIP_STD
from rgpt_llava.tokenization import load_tokenizer

PX = 56
OLD_TO_NEW = {"language_model.model.": "model.language_model.", "language_model.lm_head.": "lm_head.",
              "vision_tower.": "model.vision_tower.", "multi_modal_projector.": "model.multi_modal_projector."}


def build_tiny_llava_hf(out_dir, tokenizer_dir, seed=0, vision=None, processor=None, **config_overrides):
    """A random LLaVA-1.5 laid out as llava-hf/llava-1.5-7b-hf: <image> and <pad> added to the tokenizer, embeddings
    padded to a multiple of 64 rows, the CLIP tower inside, its image processor beside it (or the ``vision`` config
    and ``processor`` given)."""
    tokenizer = load_tokenizer(tokenizer_dir)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    vision = vision or CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=PX, patch_size=14, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
    config = LlavaConfig(vision_config=vision, text_config=text, vision_feature_layer=-2,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         pad_token_id=tokenizer.pad_token_id, **config_overrides)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    with torch.no_grad():  # wider than transformers' init, so that logits differ from token to token
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    processor = processor or CLIPImageProcessor(size={"shortest_edge": PX}, crop_size={"height": PX, "width": PX},
                                                image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3)
    processor.save_pretrained(out_dir)
    return str(out_dir)


def rename_weights(folder, new_layout: bool):
    """Rewrite a checkpoint's keys in the newer (model.language_model.*, lm_head.*) or older layout."""
    path = os.path.join(folder, "model.safetensors")
    pairs = OLD_TO_NEW.items() if new_layout else [(new, old) for old, new in OLD_TO_NEW.items()]
    renamed = {}
    for key, value in load_file(path).items():
        src, dst = next(((s, d) for s, d in pairs if key.startswith(s)), ("", ""))
        renamed[dst + key[len(src):]] = value
    save_file(renamed, path, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tiny_tokenizer_dir):
    return build_tiny_llava_hf(tmp_path_factory.mktemp("llava_hf"), tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, hf_dir):
    return convert_llava_hf(hf_dir, str(tmp_path_factory.mktemp("rgpt_from_hf")))


def hf_input_ids(rgpt_ids, image_token_id, num_patches):
    """llava-hf's ids for the same prompt: transformers 4.37 expands one <image> token itself; newer versions take
    one <image> token per image feature, as their processor writes them."""
    n = 1 if hasattr(LlavaForConditionalGeneration, "_merge_input_ids_with_image_features") else num_patches
    ids = []
    for i in rgpt_ids.tolist():
        ids.extend([image_token_id] * n if i == IMAGE_TOKEN_INDEX else [i])
    return torch.tensor([ids])


@torch.no_grad()
def test_converted_llava_hf_gives_transformers_logits(hf_dir, converted):
    tok, model, processor, _ = load_pretrained_model(converted, None, device="cpu")
    assert isinstance(model, RGPTLlamaForCausalLM) and model.dtype == torch.float32
    hf = LlavaForConditionalGeneration.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    # The same pixels for both (their preprocessing differs: docs/MODEL.md).
    torch.manual_seed(0)
    image = torch.randn(1, 3, PX, PX)
    num_patches = (PX // 14) ** 2
    for text in ["<image>\nwhat is in the image? describe it", "<image>\na cat"]:
        ids = tokenizer_region_token(text, tok, return_tensors="pt")[None]
        hf_ids = hf_input_ids(ids[0], hf.config.image_token_index, num_patches)
        ours = model(ids, images=image).logits
        theirs = hf(input_ids=hf_ids, pixel_values=image, attention_mask=torch.ones_like(hf_ids)).logits
        # BOS, the image's features, then the text: the same sequence on both sides, compared at every position
        assert ours.shape == theirs.shape == (1, ids.shape[1] - 1 + num_patches, model.config.vocab_size)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # the image matters (the comparison above would not see a tower that is ignored on both sides)
    assert not torch.allclose(model(ids, images=image).logits, model(ids, images=image.flip(-1)).logits)

    cfg = json.load(open(os.path.join(converted, "config.json")))
    assert cfg["model_type"] == "rgpt_llama" and cfg["architectures"] == ["RGPTLlamaForCausalLM"]
    assert cfg["mm_vision_tower"] == os.path.join(converted, "vision_tower") and os.path.isabs(cfg["mm_vision_tower"])
    assert (cfg["mm_projector_type"], cfg["mm_vision_select_layer"], cfg["mm_vision_select_feature"]) == \
        ("mlp2x_gelu", -2, "patch")
    assert cfg["vocab_size"] == hf.get_input_embeddings().weight.shape[0] == 384    # 322 tokens, padded to 64
    assert isinstance(processor, CLIPImageProcessor) and processor.crop_size["height"] == PX
    assert len(tok) == 322 and tok.pad_token == "<pad>"                               # the tokenizer, unchanged


@pytest.mark.parametrize("new_layout", [False, True])
def test_both_key_layouts_convert_to_the_same_weights(tmp_path, hf_dir, converted, new_layout):
    src = tmp_path / "src"
    shutil.copytree(hf_dir, src)
    rename_weights(src, new_layout)
    assert any(k.startswith("model.language_model.") == new_layout for k in load_file(src / "model.safetensors"))
    out = convert_llava_hf(str(src), str(tmp_path / "out"), vision_tower_out=str(tmp_path / "tower"))
    assert json.load(open(os.path.join(out, "config.json")))["mm_vision_tower"] == str(tmp_path / "tower")
    for name in ("model.safetensors", "vision_tower/model.safetensors"):
        ref = load_file(os.path.join(converted, name))
        got = load_file(os.path.join(out, name) if name == "model.safetensors" else tmp_path / "tower" / name[13:])
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def edit_config(folder, **changes):
    path = os.path.join(folder, "config.json")
    cfg = json.load(open(path))
    for key, value in changes.items():
        section, _, field = key.rpartition("__")
        (cfg[section] if section else cfg)[field] = value
    json.dump(cfg, open(path, "w"))


def drop_weight(folder, key_part):
    path = os.path.join(folder, "model.safetensors")
    save_file({k: v for k, v in load_file(path).items() if key_part not in k}, path, metadata={"format": "pt"})


REFUSED = {
    "llava_next": (lambda d: edit_config(d, model_type="llava_next", architectures=["LlavaNextForConditionalGeneration"],
                                         image_grid_pinpoints=[[336, 672]]), "LLaVA-NeXT \\(anyres\\)"),
    "anyres": (lambda d: edit_config(d, image_grid_pinpoints=[[336, 672]]), "LLaVA-NeXT"),
    "mistral": (lambda d: edit_config(d, text_config__model_type="mistral"), "language model is 'mistral'"),
    "vit": (lambda d: edit_config(d, vision_config__model_type="vit"),
            "vision tower is 'vit'; only CLIP \\(clip_vision_model\\) and SigLIP"),
    # llava-hf's 'default' drops the first token whatever the tower: on SigLIP (no CLS token) a patch (test_siglip.py)
    "siglip_default": (lambda d: edit_config(d, vision_config__model_type="siglip_vision_model"),
                       "'default' on a SigLIP tower drops its first patch"),
    "layers": (lambda d: edit_config(d, vision_feature_layer=[-2, -5]), "vision_feature_layer \\[-2, -5\\]"),
    "full": (lambda d: edit_config(d, vision_feature_select_strategy="full"), "'full' \\(LLaVA's 'cls_patch'\\)"),
    "llava": (lambda d: edit_config(d, model_type="llava_llama"), "use --llava-path"),
    "no_weights": (lambda d: os.remove(os.path.join(d, "model.safetensors")), "no model weights"),
    "projector": (lambda d: drop_weight(d, "linear_2.weight"), "missing \\['model.mm_projector.2.weight'\\]"),
    "tower": (lambda d: drop_weight(d, "post_layernorm.weight"),
              "vision tower weights .* missing \\['(vision_model\\.)?post_layernorm.weight'\\]"),
    "processor": (lambda d: os.remove(os.path.join(d, "preprocessor_config.json")), "no preprocessor_config.json"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unconvertible_checkpoints_are_refused(tmp_path, hf_dir, case):
    src = tmp_path / "src"
    shutil.copytree(hf_dir, src)
    change, message = REFUSED[case]
    change(str(src))
    with pytest.raises(CheckpointError, match=message):
        convert_llava_hf(str(src), str(tmp_path / "out"))


def test_cli(tmp_path, hf_dir, capsys):
    assert convert_main(["--llava-hf-path", hf_dir, "--output", str(tmp_path / "ok"), "--refiner", "deconv"]) == 0
    assert json.load(open(tmp_path / "ok" / "config.json"))["mm_refiner_type"] == "deconv"
    capsys.readouterr()  # the successful run's output (transformers 5 shows its loading progress on stderr)
    src = tmp_path / "next"
    shutil.copytree(hf_dir, src)
    edit_config(src, model_type="llava_next")
    assert convert_main(["--llava-hf-path", str(src), "--output", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: ") and not (tmp_path / "x").exists()
    for argv in (["--llava-path", hf_dir, "--llava-hf-path", hf_dir], ["--llava-hf-path", hf_dir, "--model-base", hf_dir]):
        with pytest.raises(SystemExit) as e:
            convert_main(argv + ["--output", str(tmp_path / "y")])
        assert e.value.code == 2 and "error:" in capsys.readouterr().err


def test_llava_hf_conversion_guards_its_source_and_the_tower_folder(tmp_path, hf_dir, converted, capsys):
    # the tower folder cannot be the checkpoint's own: its config.json would be replaced by the RGPT one
    assert convert_main(["--llava-hf-path", hf_dir, "--output", str(tmp_path / "a"),
                         "--vision-tower-out", str(tmp_path / "a")]) == 2
    assert "--vision-tower-out" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert convert_main(["--llava-hf-path", hf_dir, "--output", hf_dir]) == 2
    assert "is the --llava-hf-path folder: writing the new checkpoint there would replace it" in capsys.readouterr().err
    # converting again over an earlier conversion: only with --overwrite, and then the same weights
    out = tmp_path / "again"
    shutil.copytree(converted, out)
    assert convert_main(["--llava-hf-path", hf_dir, "--output", str(out)]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert convert_main(["--llava-hf-path", hf_dir, "--output", str(out), "--overwrite"]) == 0
    for name in ("model.safetensors", "vision_tower/model.safetensors"):
        ref, got = load_file(os.path.join(converted, name)), load_file(out / name)
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_tower_folder_clash_is_the_shared_rule(tmp_path, hf_dir):
    """--vision-tower-out == --output goes through rgpt_llava.paths.output_clash, like every output check."""
    with pytest.raises(CheckpointError, match=r"--vision-tower-out \S+ is also --output: two outputs in one folder"):
        convert_llava_hf(hf_dir, str(tmp_path / "a"), str(tmp_path / "a" / "."))
    with pytest.raises(CheckpointError, match="is the --llava-hf-path folder: writing the new checkpoint there"):
        convert_llava_hf(hf_dir, str(tmp_path / "b"), hf_dir)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

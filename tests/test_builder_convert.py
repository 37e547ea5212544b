"""Checkpoint conversion (LLaVA-1.5 -> RGPT) and every loading path of the builder."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

from rgpt_llava.convert import convert, main as convert_main
from rgpt_llava.mm_utils import tokenizer_region_token
from rgpt_llava.model import RGPTLlamaForCausalLM
from rgpt_llava.model.builder import CheckpointError, describe_checkpoint, load_pretrained_model

from conftest import make_rgpt

PX = 56


def prompt_ids(tokenizer, text="<image>\nwhat is in the image? describe it"):
    return tokenizer_region_token(text, tokenizer, return_tensors="pt")[None]


def region_inputs():
    torch.manual_seed(11)
    image = torch.randn(1, 3, PX, PX)
    m = torch.zeros(2, PX, PX)
    m[0, 5:30, 5:30] = 1
    m[1, 30:50, 10:56] = 1
    return image, [m]


@torch.no_grad()
def test_conversion_preserves_llava_logits(tiny_llava_dir, tiny_rgpt_dir):
    tok, model, processor, context_len = load_pretrained_model(tiny_rgpt_dir, None, device="cpu")
    assert isinstance(model, RGPTLlamaForCausalLM) and model.dtype == torch.float32
    assert model.config.mm_refiner_type == "deconv_residual" and context_len == 2048
    llava = LlavaLlamaForCausalLM.from_pretrained(tiny_llava_dir, torch_dtype=torch.float32).eval()
    llava.get_vision_tower().load_model()
    torch.manual_seed(0)
    image = torch.randn(2, 3, PX, PX)
    for text in ["<image>\nwhat is in the image? describe it", "<image>\na cat"]:
        ids = prompt_ids(tok, text).repeat(2, 1)
        diff = (model(ids, images=image).logits - llava(ids, images=image).logits).abs().max()
        assert diff <= 1e-5
    # the converted checkpoint describes itself
    cfg = json.load(open(os.path.join(tiny_rgpt_dir, "config.json")))
    assert cfg["model_type"] == "rgpt_llama" and cfg["architectures"] == ["RGPTLlamaForCausalLM"]
    assert cfg["mm_vision_tower"] == llava.config.mm_vision_tower and cfg["image_aspect_ratio"] == "pad"
    assert os.path.exists(os.path.join(tiny_rgpt_dir, "model.safetensors"))
    # the tokenizer: SentencePiece's model (transformers 4.x) or tokenizers' file (5.x, which has no slow tokenizers)
    assert any(os.path.exists(os.path.join(tiny_rgpt_dir, f)) for f in ("tokenizer.model", "tokenizer.json"))


@torch.no_grad()
def test_conversion_of_projector_only_checkpoint(tmp_path, tiny_llava_dir, tiny_rgpt_dir, tokenizer):
    # LLaVA's pretrain output: config.json + mm_projector.bin, on a base LLM
    src = tmp_path / "llava_pretrain"
    src.mkdir()
    shutil.copy(os.path.join(tiny_llava_dir, "config.json"), src)
    state = load_file(os.path.join(tiny_llava_dir, "model.safetensors"))
    torch.save({k: v for k, v in state.items() if "mm_projector" in k}, src / "mm_projector.bin")
    with pytest.raises(CheckpointError, match="pass --model-base"):
        convert(str(src), str(tmp_path / "x"))
    out = convert(str(src), str(tmp_path / "rgpt"), model_base=tiny_llava_dir)
    a = load_pretrained_model(out, None, device="cpu")[1]
    b = load_pretrained_model(tiny_rgpt_dir, None, device="cpu")[1]
    image, masks = region_inputs()
    ids = prompt_ids(tokenizer, "<image>\n<region1> and <region2>")
    assert torch.equal(a(ids, images=image, region_masks=masks).logits, b(ids, images=image, region_masks=masks).logits)


def test_paper_refiner_conversion_and_cli_errors(tmp_path, tiny_llava_dir, tiny_rgpt_dir, capsys):
    assert convert_main(["--llava-path", tiny_llava_dir, "--output", str(tmp_path / "paper"), "--refiner", "deconv"]) == 0
    cfg = json.load(open(tmp_path / "paper" / "config.json"))
    assert cfg["mm_refiner_type"] == "deconv"
    assert convert_main(["--llava-path", tiny_rgpt_dir, "--output", str(tmp_path / "again")]) == 2
    assert "already an RGPT checkpoint" in capsys.readouterr().err
    assert convert_main(["--llava-path", str(tmp_path / "nope"), "--output", str(tmp_path / "y")]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err


def trained_like_model(tiny_llava_dir):
    """An RGPT model whose projector and refiner differ from anything on disk (as after training)."""
    model = make_rgpt(tiny_llava_dir, seed=5)
    with torch.no_grad():
        for p in model.get_model().mm_projector.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@torch.no_grad()
def test_stage1_checkpoint(tmp_path, tiny_llava_dir, tokenizer):
    model = trained_like_model(tiny_llava_dir)
    ckpt = tmp_path / "stage1"
    ckpt.mkdir()
    model.config.save_pretrained(ckpt)
    keep = {k: v for k, v in model.state_dict().items() if "mm_projector" in k or "mm_refiner" in k}
    torch.save(keep, ckpt / "mm_projector.bin")
    assert describe_checkpoint(str(ckpt)) == "stage1"
    with pytest.raises(CheckpointError, match="stage1 checkpoint: pass model_base"):
        load_pretrained_model(str(ckpt), None, device="cpu")
    tok, loaded, _, _ = load_pretrained_model(str(ckpt), tiny_llava_dir, device="cpu")
    image, masks = region_inputs()
    ids = prompt_ids(tok, "<image>\n<region2> <region1>")
    assert torch.allclose(loaded(ids, images=image, region_masks=masks).logits,
                          model(ids, images=image, region_masks=masks).logits, atol=1e-6)
    # a stage-1 file without the refiner is an error, not a silently random refiner
    torch.save({k: v for k, v in keep.items() if "mm_refiner" not in k}, ckpt / "mm_projector.bin")
    with pytest.raises(CheckpointError, match="mm_refiner"):
        load_pretrained_model(str(ckpt), tiny_llava_dir, device="cpu")
    torch.save({**keep, "model.not_a_weight": torch.zeros(1)}, ckpt / "mm_projector.bin")
    with pytest.raises(CheckpointError, match="weights the model does not have"):
        load_pretrained_model(str(ckpt), tiny_llava_dir, device="cpu")


@torch.no_grad()
def test_lora_checkpoint_is_merged(tmp_path, tiny_llava_dir, tokenizer):
    from peft import LoraConfig, get_peft_model

    model = trained_like_model(tiny_llava_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8,
                                                  # the LLM's attention only, as LLaVA's find_all_linear_names
                                                  target_modules=r"model\.layers\.\d+\.self_attn\.(q_proj|v_proj)",
                                                  lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.copy_(torch.randn_like(p) * 0.5)
    ckpt = tmp_path / "lora"
    peft_model.save_pretrained(ckpt)
    model.config.save_pretrained(ckpt)
    non_lora = {k: v for k, v in peft_model.named_parameters() if "mm_projector" in k or "mm_refiner" in k}
    assert all(k.startswith("base_model.model.") for k in non_lora)
    torch.save(non_lora, ckpt / "non_lora_trainables.bin")
    assert describe_checkpoint(str(ckpt)) == "lora"

    image, masks = region_inputs()
    ids = prompt_ids(tokenizer, "<image>\n<region1> <region2>")
    expected = peft_model(input_ids=ids, images=image, region_masks=masks).logits
    tok, loaded, _, _ = load_pretrained_model(str(ckpt), tiny_llava_dir, device="cpu")
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    assert torch.allclose(loaded(ids, images=image, region_masks=masks).logits, expected, atol=1e-4)
    with pytest.raises(CheckpointError, match="lora checkpoint: pass model_base"):
        load_pretrained_model(str(ckpt), None, device="cpu")


@pytest.mark.parametrize("bits", [4, 8])
@torch.no_grad()
def test_quantized_loading_keeps_projector_and_refiner(tiny_rgpt_dir, bits):
    import bitsandbytes as bnb

    tok, model, _, _ = load_pretrained_model(tiny_rgpt_dir, None, load_4bit=bits == 4, load_8bit=bits == 8,
                                             device="cpu")
    layer = model.get_model().layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt)
    assert type(model.get_model().mm_projector[0]) is nn.Linear
    assert all(type(m) is not bnb.nn.Linear4bit for m in model.get_model().mm_refiner.modules())
    assert type(model.lm_head) is nn.Linear
    image, masks = region_inputs()
    ids = prompt_ids(tok, "<image>\n<region1> <region2>")
    q_logits = model(ids, images=image, region_masks=masks).logits
    full = load_pretrained_model(tiny_rgpt_dir, None, device="cpu")[1]
    f_logits = full(ids, images=image, region_masks=masks).logits
    # quantisation perturbs but keeps the model: logits stay strongly correlated with the fp32 ones
    corr = torch.corrcoef(torch.stack([q_logits.flatten(), f_logits.flatten()]))[0, 1]
    assert corr > 0.9
    out = model.generate(ids, images=image, region_masks=masks, do_sample=False, max_new_tokens=3)
    assert out.shape[1] >= 3


def test_plain_llava_falls_through_to_llava_builder(tiny_llava_dir):
    tok, model, processor, _ = load_pretrained_model(tiny_llava_dir, None, "any-name-at-all", device="cpu")
    assert type(model) is LlavaLlamaForCausalLM and processor is not None


def test_full_checkpoint_weight_mismatch_is_an_error(tmp_path, tiny_rgpt_dir, capfd):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_rgpt_dir, broken)
    state = load_file(broken / "model.safetensors")
    missing = dict(state)
    missing.pop("model.mm_refiner.up1.weight")
    save_file(missing, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing \['model.mm_refiner.up1.weight'\]"):
        load_pretrained_model(str(broken), None, device="cpu")
    save_file({**state, "model.extra.weight": torch.zeros(2)}, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"unexpected \['model.extra.weight'\]"):
        load_pretrained_model(str(broken), None, device="cpu")
    # the vision tower's own weights inside a checkpoint are tolerated (LLaVA saves them; the tower loads by path),
    # silently: no "weights not used" warning
    save_file({**state, "model.vision_tower.vision_tower.x": torch.zeros(2)}, broken / "model.safetensors",
              metadata={"format": "pt"})
    capfd.readouterr()
    load_pretrained_model(str(broken), None, device="cpu")
    assert "not used" not in capfd.readouterr().err


def test_checkpoints_leave_the_frozen_tower_out(tmp_path, tiny_rgpt_dir):
    # RGPT checkpoints never store the tower (it loads from mm_vision_tower): smaller, and nothing to warn about
    assert not [k for k in load_file(Path(tiny_rgpt_dir) / "model.safetensors") if k.startswith("model.vision_tower.")]
    _, model, _, _ = load_pretrained_model(tiny_rgpt_dir, None, device="cpu")
    assert any(k.startswith("model.vision_tower.") for k in model.state_dict())      # loaded, by path
    model.save_pretrained(tmp_path / "again")
    saved = load_file(tmp_path / "again" / "model.safetensors")
    assert set(saved) == {k for k in model.state_dict() if not k.startswith("model.vision_tower.")}
    model.config.unfreeze_mm_vision_tower = True                   # LLaVA's flag for a trained tower: kept then
    model.save_pretrained(tmp_path / "kept")
    assert any(k.startswith("model.vision_tower.") for k in load_file(tmp_path / "kept" / "model.safetensors"))


def test_unknown_or_missing_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_pretrained_model(str(tmp_path / "nope"), None, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained_model(str(tmp_path / "empty"), None, device="cpu")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="unknown kind: model_type 'bert'"):
        load_pretrained_model(str(tmp_path / "bert"), None, device="cpu")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"model_type": "rgpt_llama"}))
    with pytest.raises(CheckpointError, match="no weights"):
        load_pretrained_model(str(tmp_path / "noweights"), None, device="cpu")


def test_decision_ignores_folder_name(tmp_path, tiny_rgpt_dir):
    # a folder called "llava-lora" holding a full RGPT checkpoint is a full RGPT checkpoint
    odd = tmp_path / "llava-v1.5-7b-lora"
    shutil.copytree(tiny_rgpt_dir, odd)
    assert describe_checkpoint(str(odd)) == "full"
    assert isinstance(load_pretrained_model(str(odd), None, device="cpu")[1], RGPTLlamaForCausalLM)


def folder_digest(folder):
    return {f.name: f.read_bytes() for f in sorted(Path(folder).iterdir()) if f.is_file()}


def test_conversion_never_replaces_its_source_nor_an_existing_checkpoint(tmp_path, tiny_llava_dir, capsys):
    src = tmp_path / "llava"
    shutil.copytree(tiny_llava_dir, src)
    before = folder_digest(src)
    # in place: refused before anything is read or written, the source untouched
    assert convert_main(["--llava-path", str(src), "--output", str(src) + "/."]) == 2
    assert f"--output {src}/. is the --llava-path folder: writing the new checkpoint there would replace it" \
        in capsys.readouterr().err
    assert folder_digest(src) == before

    out = tmp_path / "rgpt"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    # leftovers of an earlier LoRA run: left in place they would make the new checkpoint read as a LoRA one
    (out / "adapter_config.json").write_text("{}")
    (out / "non_lora_trainables.bin").write_bytes(b"old")
    (out / "model-00001-of-00002.safetensors").write_bytes(b"old")
    assert convert_main(["--llava-path", str(src), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--output {out} already holds a checkpoint (adapter_config.json, model-00001-of-00002.safetensors, " \
           "non_lora_trainables.bin); pass --overwrite to replace it" in err
    assert (out / "adapter_config.json").exists()                      # refused: nothing removed

    assert convert_main(["--llava-path", str(src), "--output", str(out), "--overwrite"]) == 0
    assert sorted(f.name for f in out.iterdir() if f.name.startswith(("adapter", "non_lora", "model"))) == \
        ["model.safetensors"]
    assert (out / "notes.txt").read_text() == "mine"                   # not a checkpoint file: kept
    assert describe_checkpoint(str(out)) == "full"
    assert folder_digest(src) == before

    (tmp_path / "file").write_text("")
    assert convert_main(["--llava-path", str(src), "--output", str(tmp_path / "file")]) == 2
    assert f"--output {tmp_path / 'file'}: a file, not a folder" in capsys.readouterr().err

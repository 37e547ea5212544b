"""Peak GPU memory of one single-GPU QLoRA training step of a 7B-shaped RGPT (random weights).

    python scripts/bench/qlora_memory.py [--batch 1 4] [--seq-len 2048] [--json out.json]

Mirrors LLaVA's QLoRA recipe (``llava/train/train.py`` with ``--bits 4 --lora_enable True``): NF4 + double quant,
``prepare_model_for_kbit_training``, LoRA r=128 / alpha=256 on every linear layer of the LLM, LoRA layers in bf16,
norms in fp32, gradient checkpointing; plus RGPT's trainables of stage 2 (refiner + projector, unquantised) and a
frozen CLIP ViT-L/14-336 tower in bf16. One step = forward + backward + AdamW step on a full-length sequence
(576 image tokens from the <image> placeholder, one region placeholder, text up to ``--seq-len``).
Needs CUDA and bitsandbytes. Weights are random: memory does not depend on their values.
"""
import argparse
import json
import sys
import tempfile
import time

import torch
import torch.nn as nn

from bench_common import device_name   # scripts/bench/ (the script's folder) is on sys.path


def build_model(device, args):
    import bitsandbytes as bnb
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    from rgpt_llava.model import RGPTConfig, RGPTLlamaForCausalLM
    from rgpt_llava.model.quantize import KEEP_UNQUANTIZED, bnb_config

    tmp = tempfile.mkdtemp()
    tiny = args.shape == "tiny"  # a CPU dry run of the same code path
    vcfg = CLIPVisionConfig(hidden_size=64 if tiny else 1024, intermediate_size=128 if tiny else 4096,
                            num_hidden_layers=2 if tiny else 24, num_attention_heads=4 if tiny else 16,
                            image_size=336, patch_size=14, projection_dim=64 if tiny else 768)
    vcfg.save_pretrained(tmp)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(tmp)
    # Vicuna-7B v1.5 shapes
    config = RGPTConfig(vocab_size=32000, hidden_size=128 if tiny else 4096, intermediate_size=256 if tiny else 11008,
                        num_hidden_layers=2 if tiny else 32, num_attention_heads=4 if tiny else 32,
                        num_key_value_heads=4 if tiny else 32, max_position_embeddings=4096,
                        mm_vision_tower=tmp, mm_hidden_size=vcfg.hidden_size, mm_projector_type="mlp2x_gelu",
                        mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_refiner_type="deconv",
                        image_aspect_ratio="pad", tokenizer_model_max_length=args.seq_len, use_cache=False)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("meta"):
        model = RGPTLlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.to_empty(device=device)
    # to_empty leaves buffers uninitialised too: rebuild the rotary tables (transformers 4.37's LlamaRotaryEmbedding)
    for module in model.modules():
        if hasattr(module, "inv_freq"):
            type(module).__init__(module, module.dim, module.max_position_embeddings, module.base, device=device)
    # Quantise the LLM's linear layers one at a time from freshly drawn bf16 weights, so no full bf16 copy of the
    # 7B model is ever resident: the measured peak is QLoRA's own.
    qcfg = bnb_config(load_4bit=True, compute_dtype=torch.bfloat16)
    skip = set(KEEP_UNQUANTIZED)
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or any(s in name.split(".") for s in skip):
            continue
        parent_name, _, child = name.rpartition(".")
        w = torch.randn(module.out_features, module.in_features, device=device, dtype=torch.bfloat16) * 0.02
        new = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=False, compute_dtype=torch.bfloat16,
                                compress_statistics=True, quant_type="nf4")
        new.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", compress_statistics=True)
        setattr(model.get_submodule(parent_name), child, new.to(device))
        del w
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dtype.is_floating_point and not isinstance(p, bnb.nn.Params4bit):
                p.normal_(0, 0.02) if p.ndim > 1 else p.fill_(1.0 if "norm" in name else 0.0)
    for name, p in model.named_parameters():  # fp16/bf16 mix as loaded by from_pretrained(torch_dtype=bf16)
        if p.dtype == torch.float32:
            p.data = p.data.to(torch.bfloat16)
    model.is_loaded_in_4bit = True
    model.config.quantization_config = qcfg
    return model, tmp, vcfg


def attach_tower(model, tmp, vcfg, device):
    """LLaVA loads the tower after wrapping the LLM with LoRA (so LoRA never targets it): do the same."""
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
    from transformers import CLIPImageProcessor, CLIPVisionModel

    tower = model.get_base_model().get_model().vision_tower
    assert isinstance(tower, CLIPVisionTower) and not tower.is_loaded
    tower.vision_tower = CLIPVisionModel(vcfg).to(device=device, dtype=torch.bfloat16).requires_grad_(False)
    tower.image_processor = CLIPImageProcessor.from_pretrained(tmp)
    tower.is_loaded = True


def apply_llava_qlora(model, args):
    """The steps of LLaVA's train.py for --bits 4 --lora_enable True --bf16 True, in its order."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from peft.tuners.lora import LoraLayer

    model.config.torch_dtype = torch.bfloat16
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model.enable_input_require_grads()
    # LLaVA's find_all_linear_names: every Linear outside the multimodal parts (and not lm_head)
    import bitsandbytes as bnb
    names = set()
    for name, module in model.named_modules():
        if any(k in name for k in ("mm_projector", "vision_tower", "mm_refiner")):
            continue
        if isinstance(module, (nn.Linear, bnb.nn.Linear4bit)):
            names.add(name.split(".")[-1])
    names.discard("lm_head")
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=sorted(names), lora_dropout=0.05,
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            module.to(torch.bfloat16)
        if "norm" in name:
            module.to(torch.float32)
        if ("lm_head" in name or "embed_tokens" in name) and hasattr(module, "weight") \
                and module.weight.dtype == torch.float32:
            module.to(torch.bfloat16)
    # stage 2 trains refiner + projector too (saved as non-LoRA trainables)
    base = model.get_base_model().get_model()
    for mod in (base.mm_projector, base.mm_refiner):
        mod.to(torch.bfloat16)
        for p in mod.parameters():
            p.requires_grad = True
    return model


def step_memory(model, batch, seq_len, device):
    from rgpt_llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX, REGION_TOKEN_INDEX

    n_text = seq_len - 576 + 1  # the <image> sentinel becomes 576 tokens
    ids = torch.randint(3, 32000, (batch, n_text), device=device)
    ids[:, 0] = 1
    ids[:, 1] = IMAGE_TOKEN_INDEX
    ids[:, 5] = REGION_TOKEN_INDEX
    labels = ids.clone()
    labels[:, :8] = IGNORE_INDEX
    images = torch.randn(batch, 3, 336, 336, device=device, dtype=torch.bfloat16)
    masks = [torch.zeros(1, 336, 336, device=device) for _ in range(batch)]
    for m in masks:
        m[0, 50:200, 80:300] = 1
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-5)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    for _ in range(2):  # the second step holds the optimizer states from the first
        # HF Trainer's --bf16 runs forward under autocast; so does this step
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(input_ids=ids, images=images, region_masks=masks, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
    reserved = torch.cuda.max_memory_reserved() / 2 ** 30 if cuda else float("nan")
    del opt
    return dict(batch=batch, seq_len=seq_len, peak_allocated_gib=round(peak, 2),
                peak_reserved_gib=round(reserved, 2), seconds_per_step=round((time.time() - t0) / 2, 2),
                loss=float(out.loss))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--lora-r", type=int, default=128)
    p.add_argument("--lora-alpha", type=int, default=256)
    p.add_argument("--json", default=None)
    p.add_argument("--shape", choices=["7b", "tiny"], default="7b", help="tiny: a CPU dry run of the same path")
    args = p.parse_args()
    if args.shape == "7b" and not torch.cuda.is_available():
        sys.exit("qlora_memory.py needs a CUDA GPU for the 7B shape (use --shape tiny for a CPU dry run)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tmp, vcfg = build_model(device, args)
    model = apply_llava_qlora(model, args)
    attach_tower(model, tmp, vcfg, device)
    model.train()
    static = torch.cuda.memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    results = dict(device=device_name(device), shape=args.shape, torch=torch.__version__,
                   static_gib=round(static, 2), trainable_params=trainable, lora_r=args.lora_r, runs=[])
    print(f"device {results['device']}, weights resident {static:.2f} GiB, trainable params {trainable / 1e6:.1f} M")
    for b in args.batch:
        r = step_memory(model, b, args.seq_len, device)
        results["runs"].append(r)
        print(f"batch {b} seq {args.seq_len}: peak allocated {r['peak_allocated_gib']} GiB, "
              f"reserved {r['peak_reserved_gib']} GiB, {r['seconds_per_step']} s/step, loss {r['loss']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

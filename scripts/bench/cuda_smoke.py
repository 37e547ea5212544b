"""CUDA paths of the builder and model on a tiny checkpoint: fp16 and 4-bit (quantised inside from_pretrained).

    python scripts/bench/cuda_smoke.py OUTDIR
Prints, for each path, the layer types, the dtype of projector/refiner, and a greedy answer with two regions.
"""
import sys

import torch

from rgpt_llava.convert import convert
from rgpt_llava.mm_utils import tokenizer_region_token
from rgpt_llava.model.builder import load_pretrained_model
from rgpt_llava.tiny import build_tiny_clip, build_tiny_llava, train_tiny_tokenizer

out = sys.argv[1]
tok = train_tiny_tokenizer(f"{out}/tok")
clip = build_tiny_clip(f"{out}/clip")
llava = build_tiny_llava(f"{out}/llava", tok, clip)
rgpt = convert(llava, f"{out}/rgpt", overwrite=True)  # a rerun into the same OUTDIR rebuilds everything
image = torch.randn(1, 3, 56, 56)
masks = torch.zeros(2, 56, 56)
masks[0, 5:30, 5:30] = 1
masks[1, 30:50, 10:56] = 1
ref = None
for kind in ("fp32-cpu", "fp16-cuda", "4bit-cuda", "8bit-cuda"):
    device = "cpu" if kind.endswith("cpu") else "cuda"
    tokenizer, model, _, _ = load_pretrained_model(rgpt, None, device=device, load_4bit=kind.startswith("4bit"),
                                                   load_8bit=kind.startswith("8bit"))
    ids = tokenizer_region_token("<image>\nwhat is <region1> and <region2>?", tokenizer, return_tensors="pt")[None]
    dt = next(model.get_model().mm_projector.parameters()).dtype
    logits = model(ids.to(device), images=image.to(device, dt), region_masks=[masks.to(device)]).logits.float().cpu()
    if ref is None:
        ref = logits
    corr = torch.corrcoef(torch.stack([logits.flatten(), ref.flatten()]))[0, 1].item()
    gen = model.generate(ids.to(device), images=image.to(device, dt), region_masks=[masks.to(device)],
                         do_sample=False, max_new_tokens=5)
    print(f"{kind}: q_proj {type(model.get_model().layers[0].self_attn.q_proj).__name__}, projector {dt}, "
          f"refiner {next(model.get_model().mm_refiner.parameters()).dtype}, logit corr vs fp32-cpu {corr:.4f}, "
          f"generated {gen[0].tolist()}")

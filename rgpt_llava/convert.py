"""Convert a LLaVA-1.5 checkpoint into an RGPT checkpoint.

    python -m rgpt_llava.convert --llava-path SRC [--model-base BASE] --output DST [--refiner deconv_residual]

SRC is a full LLaVA checkpoint, or a projector-only one (``mm_projector.bin`` + config) on ``--model-base``.
The default refiner, ``deconv_residual``, starts as exact 4x nearest-neighbour upsampling plus a zero-initialised
deconvolution branch: the adaptive pool maps it back exactly, so on image-only prompts the converted model gives the
source's logits. ``--refiner deconv`` is the paper's plain two-deconvolution design (random init: image features
change until it is trained); ``bilinear``, ``deconv+bilinear`` and ``none`` are the paper's Table 6 ablations.
"""
import argparse
import os
import sys

import torch
from transformers import AutoTokenizer

from rgpt_llava.constants import STAGE1_FILE
from rgpt_llava.model.builder import CheckpointError, WEIGHT_FILES, _strip_prefixes, read_config
from rgpt_llava.model.language_model.rgpt_llama import RGPTConfig, RGPTLlamaForCausalLM
from rgpt_llava.model.region_encoder import REFINER_TYPES, build_refiner


def rgpt_config_from_llava(llava_config: dict, refiner: str = "deconv_residual", merge_size=None,
                           refiner_act: str = "gelu", refiner_scale=None) -> RGPTConfig:
    cfg = {k: v for k, v in llava_config.items() if k not in ("model_type", "architectures", "transformers_version")}
    cfg.update(mm_refiner_type=refiner, mm_refiner_act=refiner_act, mm_refiner_scale=refiner_scale,
               mm_merge_size=list(merge_size) if merge_size else None)
    config = RGPTConfig(**cfg)
    config.architectures = ["RGPTLlamaForCausalLM"]
    return config


def convert(llava_path, output, model_base=None, refiner="deconv_residual", merge_size=None, refiner_act="gelu",
            refiner_scale=None, seed=0):
    src_cfg = read_config(llava_path)
    model_type = src_cfg.get("model_type")
    if model_type == "rgpt_llama":
        raise CheckpointError(f"{llava_path} is already an RGPT checkpoint")
    if model_type != "llava_llama":
        raise CheckpointError(f"{llava_path}: expected a LLaVA-1.5 (llava_llama) checkpoint, got model_type "
                              f"{model_type!r}")
    if "mm_vision_tower" not in src_cfg:
        raise CheckpointError(f"{llava_path}: config.json has no mm_vision_tower; not a multimodal LLaVA checkpoint")
    full = any(os.path.exists(os.path.join(llava_path, f)) for f in WEIGHT_FILES)
    if not full:
        if not os.path.isfile(os.path.join(llava_path, STAGE1_FILE)):
            raise CheckpointError(f"{llava_path}: neither model weights nor {STAGE1_FILE} found")
        if model_base is None:
            raise CheckpointError(f"{llava_path} holds only {STAGE1_FILE}: pass --model-base (the base LLM)")

    config = rgpt_config_from_llava(src_cfg, refiner, merge_size, refiner_act, refiner_scale)
    dtype = getattr(torch, str(src_cfg.get("torch_dtype") or "float32"))
    weights_from = llava_path if full else model_base
    model, info = RGPTLlamaForCausalLM.from_pretrained(weights_from, config=config, torch_dtype=dtype,
                                                       output_loading_info=True)
    provided = set()
    if not full:
        state = _strip_prefixes(torch.load(os.path.join(llava_path, STAGE1_FILE), map_location="cpu",
                                           weights_only=True))
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
        provided = set(state)
    missing = [k for k in info["missing_keys"] if k not in provided and not k.startswith("model.mm_refiner.")]
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith("model.vision_tower.")]
    if missing or unexpected:
        raise CheckpointError(f"{weights_from}: weights do not match a LLaVA-1.5 model: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")
    # The refiner is new: build it afresh (weights the loader left for missing keys are not initialised).
    torch.manual_seed(seed)
    model.get_model().mm_refiner = build_refiner(config).to(dtype)

    os.makedirs(output, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    AutoTokenizer.from_pretrained(llava_path if os.path.exists(os.path.join(llava_path, "tokenizer_config.json"))
                                  else model_base, use_fast=False).save_pretrained(output)
    return output


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llava-path", required=True, help="LLaVA-1.5 checkpoint folder (full, or mm_projector.bin)")
    p.add_argument("--model-base", default=None, help="base LLM folder, for a projector-only LLaVA checkpoint")
    p.add_argument("--output", required=True, help="folder for the RGPT checkpoint")
    p.add_argument("--refiner", default="deconv_residual", choices=REFINER_TYPES)
    p.add_argument("--refiner-act", default="gelu", choices=["gelu", "none"])
    p.add_argument("--refiner-scale", type=int, default=None, help="total upsampling of the bilinear refiners")
    p.add_argument("--merge-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="image-token grid (default: the vision tower's patch grid)")
    p.add_argument("--seed", type=int, default=0, help="seed for the refiner's initialisation")
    args = p.parse_args(argv)
    try:
        out = convert(args.llava_path, args.output, args.model_base, args.refiner, args.merge_size,
                      args.refiner_act, args.refiner_scale, args.seed)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"RGPT checkpoint written to {out} (refiner: {args.refiner})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

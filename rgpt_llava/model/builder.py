"""``load_pretrained_model`` with LLaVA's signature and return value, deciding by ``config.json``.

Kinds of checkpoint (``describe_checkpoint`` tells which one a folder is):
- ``full``      ``rgpt_llama`` config + all weights;
- ``lora``      ``rgpt_llama`` config + ``adapter_config.json`` + ``non_lora_trainables.bin`` (projector, refiner),
                on ``model_base`` (the LLM); merged on load;
- ``stage1``    ``rgpt_llama`` config + ``mm_projector.bin`` (projector + refiner) on ``model_base``;
- ``llava``     any ``llava_*`` model type: handed to LLaVA's own builder unchanged.
Weights that a checkpoint should hold but does not, or holds but the model does not know, are an error.
"""
import argparse
import json
import os
import warnings
from typing import Dict, Optional

import torch

from rgpt_llava.constants import LORA_ADAPTER_FILE, NON_LORA_FILE, STAGE1_FILE
from rgpt_llava.model.language_model.rgpt_llama import RGPTConfig, RGPTLlamaForCausalLM
from rgpt_llava.model.quantize import bnb_config, quantize_linear_layers_
from rgpt_llava.tokenization import load_tokenizer

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json")


class CheckpointError(ValueError):
    """A folder that is not a loadable checkpoint, or whose weights do not match the model."""


def read_config(model_path: str) -> Dict:
    path = os.path.join(model_path, "config.json")
    if not os.path.isdir(model_path):
        raise CheckpointError(f"{model_path}: no such checkpoint folder")
    if not os.path.isfile(path):
        raise CheckpointError(f"{model_path}: not a checkpoint (no config.json)")
    with open(path) as f:
        return json.load(f)


def describe_checkpoint(model_path: str) -> str:
    """'full' | 'lora' | 'stage1' | 'llava', from config.json and the files present (never from the folder name)."""
    model_type = read_config(model_path).get("model_type")
    if model_type and model_type.startswith("llava"):
        return "llava"
    if model_type != "rgpt_llama":
        raise CheckpointError(f"{model_path}: checkpoint of an unknown kind: model_type {model_type!r} "
                              f"(expected 'rgpt_llama' or a LLaVA type such as 'llava_llama')")
    has = lambda name: os.path.exists(os.path.join(model_path, name))  # noqa: E731
    if has(LORA_ADAPTER_FILE):
        return "lora"
    if any(has(f) for f in WEIGHT_FILES):
        return "full"
    if has(STAGE1_FILE):
        return "stage1"
    raise CheckpointError(f"{model_path}: an rgpt_llama config but no weights (none of {WEIGHT_FILES}, "
                          f"{STAGE1_FILE} or {LORA_ADAPTER_FILE})")


def strip_prefixes(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Normalise keys saved from a PEFT-wrapped model (``base_model.model.``) to the plain model's keys."""
    out = {}
    for k, v in state.items():
        if k.startswith("base_model.model."):
            k = k[len("base_model.model."):]
        elif k.startswith("base_model."):
            k = k[len("base_model."):]
        out[k] = v
    return out


def _check_loading_info(model_path, info, provided=()):
    missing = sorted(k for k in info.get("missing_keys", []) if k not in set(provided))  # sets on transformers 5
    unexpected = sorted(info.get("unexpected_keys", []))  # the tower's weights are ignored by the model class itself
    if missing or unexpected:
        raise CheckpointError(
            f"{model_path}: weights do not match the model: missing {missing[:8]}{' ...' if len(missing) > 8 else ''}"
            f", unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")


def _load_extra_weights(model, model_path, filename, base_info, base_path):
    """Load projector/refiner weights saved beside a LoRA or stage-1 checkpoint; both sides checked strictly."""
    path = os.path.join(model_path, filename)
    if not os.path.isfile(path):
        raise CheckpointError(f"{model_path}: {filename} is missing")
    state = strip_prefixes(torch.load(path, map_location="cpu", weights_only=True))
    known = set(model.state_dict())
    unknown = sorted(k for k in state if k not in known)
    if unknown:
        raise CheckpointError(f"{path}: weights the model does not have: {unknown[:8]}")
    still_missing = [k for k in base_info.get("missing_keys", []) if k not in state]
    if still_missing:
        raise CheckpointError(f"neither the base {base_path} nor {path} holds {still_missing[:8]}")
    _check_loading_info(base_path, {"unexpected_keys": base_info.get("unexpected_keys", [])})
    dtype = next(model.parameters()).dtype
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)


def _tokenizer_source(model_path, model_base):
    if any(os.path.exists(os.path.join(model_path, f)) for f in TOKENIZER_FILES):
        return model_path
    if model_base is not None:
        return model_base
    raise CheckpointError(f"{model_path}: no tokenizer files and no model_base to take them from")


def _llava_model_name(model_path, config):
    """The name LLaVA's builder dispatches on, made from config.json and the files (not the folder name)."""
    model_type = config.get("model_type", "llava_llama")
    name = "llava"
    if "mpt" in model_type:
        name += "-mpt"
    if "mistral" in model_type:
        name += "-mistral"
    if os.path.exists(os.path.join(model_path, LORA_ADAPTER_FILE)):
        name += "-lora"
    return name


def device_problem(device) -> Optional[str]:
    """Why torch cannot put a model on ``device`` on this machine, or None: checked where the device is named (a
    flag, the builder's argument) rather than met as torch's assertion deep inside loading."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        return "not a torch device; use cpu, cuda or cuda:N"
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            return "torch finds no CUDA device on this machine; use cpu"
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None


def device_arg(value: str) -> str:
    """``--device`` for argparse: a device this machine has, or the parser's error naming the flag."""
    why = device_problem(value)
    if why:
        raise argparse.ArgumentTypeError(f"{value!r}: {why}")
    return value


def load_pretrained_model(model_path, model_base, model_name=None, load_8bit=False, load_4bit=False,
                          device_map="auto", device="cuda", use_flash_attn=False, **kwargs):
    """Same signature and return value as ``llava.model.builder.load_pretrained_model``:
    ``(tokenizer, model, image_processor, context_len)``. ``model_name`` is accepted for compatibility and ignored.
    """
    why = device_problem(device)
    if why:
        raise ValueError(f"device {device!r}: {why}")
    kind = describe_checkpoint(model_path)
    if kind == "llava":
        from llava.model.builder import load_pretrained_model as llava_load
        return llava_load(model_path, model_base, _llava_model_name(model_path, read_config(model_path)),
                          load_8bit=load_8bit, load_4bit=load_4bit, device_map=device_map, device=device,
                          use_flash_attn=use_flash_attn, **kwargs)
    if kind in ("lora", "stage1") and model_base is None:
        raise CheckpointError(f"{model_path} is a {kind} checkpoint: pass model_base (the base LLM it was trained on)")
    if kind == "full" and model_base is not None:
        warnings.warn(f"{model_path} is a full checkpoint; model_base={model_base} is not used")

    on_cuda = device == "cuda" or str(device).startswith("cuda")
    dtype = kwargs.pop("torch_dtype", torch.float16 if on_cuda else torch.float32)
    quant = bnb_config(load_4bit, load_8bit, compute_dtype=dtype if dtype != torch.float32 else torch.float32)
    load_kwargs = dict(low_cpu_mem_usage=True, torch_dtype=dtype, **kwargs)
    if on_cuda:
        load_kwargs["device_map"] = device_map
    else:
        load_kwargs["device_map"] = {"": device}
    if use_flash_attn:
        load_kwargs["attn_implementation"] = "flash_attention_2"
    # Quantise while loading only where transformers can (CUDA, full checkpoint); otherwise after assembling.
    quantize_in_load = quant is not None and on_cuda and kind == "full"
    if quantize_in_load:
        load_kwargs["quantization_config"] = quant

    config = RGPTConfig.from_pretrained(model_path)
    # A QLoRA run saves its training-time quantization_config; how to load is decided here (load_4bit/load_8bit).
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if kind == "full":
        model, info = RGPTLlamaForCausalLM.from_pretrained(model_path, config=config, output_loading_info=True,
                                                           **load_kwargs)
        _check_loading_info(model_path, info)
    else:
        model, info = RGPTLlamaForCausalLM.from_pretrained(model_base, config=config, output_loading_info=True,
                                                           **load_kwargs)
        if kind == "stage1":
            _load_extra_weights(model, model_path, STAGE1_FILE, info, model_base)
        else:
            _load_extra_weights(model, model_path, NON_LORA_FILE, info, model_base)
            from peft import PeftModel
            model = PeftModel.from_pretrained(model, model_path)
            model = model.merge_and_unload()
    if quant is not None and not quantize_in_load:
        model = quantize_linear_layers_(model, quant, device=device)

    tokenizer = load_tokenizer(_tokenizer_source(model_path, model_base))
    # LLaVA's handling of its optional extra tokens, kept for checkpoints trained with them.
    if getattr(model.config, "mm_use_im_patch_token", True) or getattr(model.config, "mm_use_im_start_end", False):
        from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
        if getattr(model.config, "mm_use_im_patch_token", True):
            tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
        if getattr(model.config, "mm_use_im_start_end", False):
            tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
        if len(tokenizer) != model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))

    vision_tower = model.get_vision_tower()
    if not vision_tower.is_loaded:
        vision_tower.load_model(device_map=None)
    vision_tower.to(device=device, dtype=dtype)
    model.eval()
    context_len = getattr(model.config, "max_sequence_length", 2048)
    return tokenizer, model, vision_tower.image_processor, context_len

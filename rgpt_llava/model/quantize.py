"""bitsandbytes quantisation for RGPT: one ``BitsAndBytesConfig`` for every loading path.

The projector and the refiner stay unquantised (as LLaVA keeps ``mm_projector`` for QLoRA): they are small, trained,
and carry the region signal. ``lm_head`` stays too, as transformers does by default.
"""
import torch
import torch.nn as nn
from transformers import BitsAndBytesConfig

KEEP_UNQUANTIZED = ["mm_projector", "mm_refiner", "vision_tower", "lm_head"]


def bnb_config(load_4bit: bool = False, load_8bit: bool = False, compute_dtype=torch.float16):
    if load_4bit and load_8bit:
        raise ValueError("choose one of load_4bit / load_8bit (--load-4bit / --load-8bit): not both")
    if load_4bit:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute_dtype,
                                  bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4",
                                  llm_int8_skip_modules=KEEP_UNQUANTIZED)
    if load_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=KEEP_UNQUANTIZED)
    return None


def quantize_linear_layers_(model: nn.Module, config: BitsAndBytesConfig, device="cpu") -> nn.Module:
    """Replace the model's ``nn.Linear`` layers by bitsandbytes layers in place, after loading.

    transformers 4.37's ``from_pretrained`` refuses bitsandbytes without CUDA, while bitsandbytes itself quantises
    and runs on the CPU; this applies the same ``BitsAndBytesConfig`` to an already loaded model.
    """
    import bitsandbytes as bnb

    skip = list(config.llm_int8_skip_modules or [])
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or any(s in name.split(".") for s in skip):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        weight = module.weight.data
        if config.load_in_4bit:
            new = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                    compute_dtype=config.bnb_4bit_compute_dtype,
                                    compress_statistics=config.bnb_4bit_use_double_quant,
                                    quant_type=config.bnb_4bit_quant_type)
            new.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=config.bnb_4bit_quant_type,
                                           compress_statistics=config.bnb_4bit_use_double_quant)
        else:
            new = bnb.nn.Linear8bitLt(module.in_features, module.out_features, bias=module.bias is not None,
                                      has_fp16_weights=False, threshold=config.llm_int8_threshold)
            new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        if module.bias is not None:
            new.bias = nn.Parameter(module.bias.data, requires_grad=False)
        setattr(parent, child, new.to(device))  # moving the layer is what quantises it
    model.is_loaded_in_4bit = bool(config.load_in_4bit)
    model.is_loaded_in_8bit = bool(config.load_in_8bit)
    model.config.quantization_config = config
    return model

"""What differs between the supported transformers lines (4.37 pinned, 4.57 current, 5.x), in one place.

transformers 5 renamed the KV cache argument and output field ``past_key_values`` -> ``cache`` (the old name is a
deprecated alias), dropped ``DynamicCache.from_legacy_cache`` / ``to_legacy_cache`` and ``cache_position``, and takes
``dtype`` where 4.x took ``torch_dtype``.
"""
import inspect

import transformers
from transformers import LlamaForCausalLM

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])

LLAMA_FORWARD_PARAMS = frozenset(inspect.signature(LlamaForCausalLM.forward).parameters)
# The keyword Llama's forward takes its KV cache by: "cache" on 5.x, "past_key_values" before.
CACHE_KW = "cache" if "cache" in LLAMA_FORWARD_PARAMS else "past_key_values"
# The keyword from_pretrained takes the weights' dtype by ("torch_dtype" is deprecated on 5.x).
DTYPE_KW = "dtype" if TRANSFORMERS_MAJOR >= 5 else "torch_dtype"


def output_cache(out):
    """The KV cache of a model output (``out.cache`` on 5.x, ``out.past_key_values`` before)."""
    return out.cache if CACHE_KW == "cache" else out.past_key_values


def cache_from_legacy(past):
    """A ``DynamicCache`` holding legacy ``((key, value), ...)`` per layer (4.36+ and 5.x)."""
    from transformers import DynamicCache
    if hasattr(DynamicCache, "from_legacy_cache"):
        return DynamicCache.from_legacy_cache(past)
    return DynamicCache(tuple((k, v) for k, v in past))


def cache_to_legacy(cache):
    """Legacy ``((key, value), ...)`` per layer of a ``DynamicCache`` (or a legacy tuple, returned as is)."""
    if cache is None or isinstance(cache, tuple):
        return cache
    if hasattr(cache, "to_legacy_cache"):
        return cache.to_legacy_cache()
    return tuple((layer.keys, layer.values) for layer in cache.layers)


def clip_vision_body(model):
    """The module holding a ``CLIPVisionModel``'s embeddings, pre-layernorm and encoder: ``model.vision_model`` on
    4.x, the model itself on 5.x (which flattened it; checkpoints keep their ``vision_model.`` keys)."""
    return getattr(model, "vision_model", model)

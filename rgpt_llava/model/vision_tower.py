"""The frozen tower's features, computed only as far as LLaVA reads them.

LLaVA's ``CLIPVisionTower.forward`` runs every layer and the post-layernorm with ``output_hidden_states=True``, then
keeps ``hidden_states[mm_vision_select_layer]`` (layer -2 for LLaVA-1.5): the last layer (~16 of 382 GFLOP on
CLIP ViT-L/14-336) and every other layer's stored states are thrown away. :func:`tower_features` runs the same
modules in the same order up to the selected layer and stops, so the features are bit-identical
(``tests/test_region_encoder.py``) at a fraction of the cost for small towers (one layer of three for the demo's).
"""
import inspect
from types import SimpleNamespace

import torch
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

from rgpt_llava.compat import clip_vision_body


# transformers 4.x: layer(hidden, attention_mask, causal_attention_mask) -> (hidden, ...); 5.x dropped the causal
# mask argument (CLIP's vision encoder never used one) and returns the hidden states alone.
_CAUSAL_MASK_ARG = "causal_attention_mask" in inspect.signature(CLIPEncoderLayer.forward).parameters


def _run_layer(layer, hidden):
    out = layer(hidden, None, None) if _CAUSAL_MASK_ARG else layer(hidden, None)
    return out[0] if isinstance(out, tuple) else out


def _layers_to_run(tower) -> int:
    """How many encoder layers feed ``hidden_states[select_layer]`` (hidden_states[0] is the embedding output)."""
    n = len(clip_vision_body(tower.vision_tower).encoder.layers)
    k = tower.select_layer if tower.select_layer >= 0 else n + 1 + tower.select_layer
    if not 0 <= k <= n:
        raise ValueError(f"mm_vision_select_layer {tower.select_layer} does not exist in a tower of {n} layers")
    return k


@torch.no_grad()
def tower_features(tower, images: torch.Tensor) -> torch.Tensor:
    """``tower(images)`` for LLaVA's ``CLIPVisionTower``, without the layers after the selected one."""
    if type(tower) is not CLIPVisionTower or not tower.is_loaded or isinstance(images, list):
        return tower(images)  # another tower class, or LLaVA's per-image list path: LLaVA's own forward
    vision = clip_vision_body(tower.vision_tower)
    hidden = vision.embeddings(images.to(device=tower.device, dtype=tower.dtype))
    hidden = vision.pre_layrnorm(hidden)
    for layer in vision.encoder.layers[:_layers_to_run(tower)]:
        hidden = _run_layer(layer, hidden)  # no attention masks in vision
    # LLaVA's own selection ('patch' drops the CLS token) reads hidden_states[select_layer]: hand it that one entry.
    return tower.feature_select(SimpleNamespace(hidden_states={tower.select_layer: hidden})).to(images.dtype)

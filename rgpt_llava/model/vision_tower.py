"""RGPT's view of the frozen vision tower: which class loads a folder, and its features computed only as far as read.

Which class: :func:`build_vision_tower` stands in for LLaVA's factory of the same name, which builds a
``CLIPVisionTower`` for any folder. It decides by the folder's ``config.json`` (never by its name): a SigLIP model
(``model_type`` 'siglip_vision_model', or 'siglip' whose ``vision_config`` is used) gets
:class:`~rgpt_llava.model.siglip_encoder.SiglipVisionTower`, a CLIP one LLaVA's own factory; anything else is an
error naming the folder and the type found. :func:`rgpt_tower_factory` binds it where LLaVA's model mixin looks the
factory up, while RGPT's model builds or initialises its tower.

Features: LLaVA's ``CLIPVisionTower.forward`` runs every layer and the post-layernorm with
``output_hidden_states=True``, then keeps ``hidden_states[mm_vision_select_layer]`` (layer -2 for LLaVA-1.5): the
last layer (~16 of 382 GFLOP on CLIP ViT-L/14-336) and every other layer's stored states are thrown away.
:func:`tower_features` runs the same modules in the same order up to the selected layer and stops, so the features
are bit-identical (``tests/test_vision_tower.py``, ``tests/test_siglip.py``) at a fraction of the cost for small
towers (one layer of three for the demo's). SigLIP has no pre-layernorm; the rest is the same.
"""
import contextlib
import inspect
import json
import os
from types import SimpleNamespace

import torch
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

import llava.model.llava_arch as llava_arch
from llava.model.multimodal_encoder.builder import build_vision_tower as llava_build_vision_tower
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

from rgpt_llava.compat import clip_vision_body
from rgpt_llava.model.siglip_encoder import SiglipVisionTower

# transformers 4.x: a CLIP layer takes (hidden, attention_mask, causal_attention_mask) and returns (hidden, ...); 5.x
# dropped the causal mask argument (CLIP's vision encoder never used one) and returns the hidden states alone.
_CLIP_CAUSAL_MASK_ARG = "causal_attention_mask" in inspect.signature(CLIPEncoderLayer.forward).parameters

CLIP_MODEL_TYPES = ("clip_vision_model", "clip")        # 'clip': a CLIPModel folder (openai/clip-vit-large-patch14-336)
SIGLIP_MODEL_TYPES = ("siglip_vision_model", "siglip")  # 'siglip': a SiglipModel folder (google/siglip-so400m-...)


def tower_model_type(name: str):
    """``model_type`` of the tower ``name`` names: from a local folder's config.json, else as transformers resolves
    the name (cache or hub); None where it cannot (LLaVA's factory then decides, as it always did)."""
    if os.path.isdir(name):
        path = os.path.join(name, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"vision tower {name}: no config.json in the folder (expected a CLIP or SigLIP vision "
                             f"model saved by transformers)")
        with open(path) as f:
            return json.load(f).get("model_type")
    from transformers import PretrainedConfig
    try:
        return PretrainedConfig.get_config_dict(name)[0].get("model_type")
    except (OSError, ValueError):
        return None


def build_vision_tower(vision_tower_cfg, **kwargs):
    """LLaVA's ``build_vision_tower`` that also knows SigLIP: the class is chosen by the tower's config.json.

    Loading a pretrained tower leaves the CPU random state as it found it: transformers versions draw from it
    differently while loading (4.x initialises every weight before overwriting it, 5.x does not), and LLaVA builds
    the projector (RGPT the refiner) from it right after, so the same --seed started other weights per stack."""
    with torch.random.fork_rng(devices=[]):
        return _build_vision_tower(vision_tower_cfg, **kwargs)


def _build_vision_tower(vision_tower_cfg, **kwargs):
    name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    model_type = tower_model_type(str(name)) if name is not None else None
    if model_type in SIGLIP_MODEL_TYPES:
        return SiglipVisionTower(str(name), args=vision_tower_cfg, **kwargs)
    if model_type is not None and model_type not in CLIP_MODEL_TYPES:
        raise ValueError(f"vision tower {name}: model_type {model_type!r} is neither CLIP {CLIP_MODEL_TYPES} nor "
                         f"SigLIP {SIGLIP_MODEL_TYPES}")
    return llava_build_vision_tower(vision_tower_cfg, **kwargs)


@contextlib.contextmanager
def rgpt_tower_factory():
    """LLaVA's ``LlavaMetaModel`` builds its tower with the module global ``build_vision_tower``; within this block
    it is RGPT's. Restored on exit, so LLaVA's own models elsewhere in the process are untouched."""
    saved = llava_arch.build_vision_tower
    llava_arch.build_vision_tower = build_vision_tower
    try:
        yield
    finally:
        llava_arch.build_vision_tower = saved


def _layers_to_run(tower) -> int:
    """How many encoder layers feed ``hidden_states[select_layer]`` (hidden_states[0] is the embedding output)."""
    n = len(clip_vision_body(tower.vision_tower).encoder.layers)
    k = tower.select_layer if tower.select_layer >= 0 else n + 1 + tower.select_layer
    if not 0 <= k <= n:
        raise ValueError(f"mm_vision_select_layer {tower.select_layer} does not exist in a tower of {n} layers")
    return k


@torch.no_grad()
def tower_features(tower, images: torch.Tensor) -> torch.Tensor:
    """``tower(images)`` for LLaVA's ``CLIPVisionTower`` or RGPT's ``SiglipVisionTower``, without the layers after
    the selected one."""
    if type(tower) not in (CLIPVisionTower, SiglipVisionTower) or not tower.is_loaded or isinstance(images, list):
        return tower(images)  # another tower class, or LLaVA's per-image list path: LLaVA's own forward
    vision = clip_vision_body(tower.vision_tower)
    hidden = vision.embeddings(images.to(device=tower.device, dtype=tower.dtype))
    if hasattr(vision, "pre_layrnorm"):  # CLIP's (sic); SigLIP has none
        hidden = vision.pre_layrnorm(hidden)
    for layer in vision.encoder.layers[:_layers_to_run(tower)]:
        # A vision tower has no attention mask. SigLIP's layer takes (hidden_states, attention_mask); recent
        # transformers return a layer's output alone, older ones a tuple.
        clip_v4 = type(tower) is CLIPVisionTower and _CLIP_CAUSAL_MASK_ARG
        out = layer(hidden, None, None) if clip_v4 else layer(hidden, None)
        hidden = out[0] if isinstance(out, tuple) else out
    # LLaVA's own selection ('patch' drops CLIP's CLS token) reads hidden_states[select_layer]: hand it that one entry.
    return tower.feature_select(SimpleNamespace(hidden_states={tower.select_layer: hidden})).to(images.dtype)

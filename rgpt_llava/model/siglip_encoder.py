"""A SigLIP vision tower with the interface of LLaVA's ``CLIPVisionTower`` (RegionGPT's best tower, paper Table 7).

LLaVA's ``CLIPVisionTower`` hard-wires ``CLIPVisionModel`` / ``CLIPImageProcessor`` / ``CLIPVisionConfig``; this
subclass swaps in transformers' ``SiglipVisionModel`` / ``SiglipImageProcessor`` / ``SiglipVisionConfig`` and keeps
everything else of LLaVA's: ``forward`` (``hidden_states[mm_vision_select_layer]``), ``dtype``, ``device``,
``config``, ``hidden_size`` and ``num_patches_per_side`` (``image_size // patch_size``: 27 for so400m-patch14-384).
SigLIP has no CLS token, so ``mm_vision_select_feature='patch'`` keeps every token: the whole patch grid.
"""
import torch.nn as nn

from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower


class SiglipVisionTower(CLIPVisionTower):

    def __init__(self, vision_tower, args, delay_load=False):
        # LLaVA's __init__ reads the config with CLIPVisionConfig; set the same attributes with SigLIP's classes.
        nn.Module.__init__(self)
        self.is_loaded = False
        self.vision_tower_name = vision_tower
        self.select_layer = args.mm_vision_select_layer
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        if self.select_feature != "patch":
            raise ValueError(f"mm_vision_select_feature {self.select_feature!r} with the SigLIP tower {vision_tower}: "
                             f"SigLIP has no CLS token, use 'patch' (every token, the patch grid)")
        if not delay_load or getattr(args, "unfreeze_mm_vision_tower", False):
            self.load_model()
        else:
            from transformers import SiglipVisionConfig
            # A SigLIP model folder (model_type 'siglip', text + vision) gives its vision_config here.
            self.cfg_only = SiglipVisionConfig.from_pretrained(self.vision_tower_name)

    def load_model(self, device_map=None):
        if self.is_loaded:
            return
        from transformers import SiglipImageProcessor, SiglipVisionModel
        self.image_processor = SiglipImageProcessor.from_pretrained(self.vision_tower_name)
        self.vision_tower = SiglipVisionModel.from_pretrained(self.vision_tower_name, device_map=device_map)
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def feature_select(self, image_forward_outs):
        # No CLS token to drop: hidden_states[select_layer] is the patch grid as it is.
        return image_forward_outs.hidden_states[self.select_layer]

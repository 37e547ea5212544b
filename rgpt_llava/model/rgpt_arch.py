"""LLaVA's multimodal mixins extended with RegionGPT's region branch.

``RGPTMetaModel`` adds the refiner next to LLaVA's vision tower and projector; ``RGPTMetaForCausalLM`` encodes the
image once, derives image tokens (adaptive merge) and region tokens (mask pooling) from the same refined map, projects
both with the one ``mm_projector`` and splices them into the text embeddings at their sentinels.
"""
import warnings
from typing import Optional, Sequence

import torch
import torch.nn as nn

from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel

from rgpt_llava.constants import IGNORE_INDEX
from rgpt_llava.model.region_encoder import build_refiner, refine_merge_and_pool, refiner_scale
from rgpt_llava.model.splice import count_images, embed_text, splice
from rgpt_llava.model.vision_tower import rgpt_tower_factory, tower_features

# Settings RGPT adds to a LLaVA config, with their defaults. Every one is saved in config.json.
RGPT_CONFIG_DEFAULTS = {
    "mm_refiner_type": "deconv",   # deconv | deconv_residual | bilinear | deconv+bilinear | none
    "mm_refiner_act": "gelu",      # activation between the two deconvolutions (the paper names none)
    "mm_refiner_scale": None,      # total upsampling of the bilinear variants (default 16, as Table 6)
    "mm_merge_size": None,         # [H, W] of the image-token grid; None = the vision tower's patch grid
    "sparse_lm_head": False,       # training: LM head only at supervised positions (same loss, fewer FLOPs)
}


class RGPTMetaModel(LlavaMetaModel):

    def __init__(self, config):
        with rgpt_tower_factory():  # LLaVA's __init__ builds the tower: a SigLIP folder gets the SigLIP class
            super().__init__(config)
        if hasattr(config, "mm_vision_tower"):
            self.mm_refiner = build_refiner(config)

    def get_refiner(self) -> Optional[nn.Module]:
        return getattr(self, "mm_refiner", None)

    def initialize_vision_modules(self, model_args, fsdp=None):
        """LLaVA's initialisation (tower class chosen by its config.json) plus the refiner (built once the tower's
        width is known)."""
        with rgpt_tower_factory():
            super().initialize_vision_modules(model_args, fsdp=fsdp)
        for key in RGPT_CONFIG_DEFAULTS:
            if getattr(model_args, key, None) is not None:
                setattr(self.config, key, getattr(model_args, key))
        if self.get_refiner() is None:
            self.mm_refiner = build_refiner(self.config).to(dtype=self.dtype)
        else:
            for p in self.mm_refiner.parameters():  # in case it is frozen by LoRA, as LLaVA does for the projector
                p.requires_grad = True
        adapter = getattr(model_args, "pretrain_mm_mlp_adapter", None)
        if adapter is not None:
            # RGPT's stage-1 mm_projector.bin holds the refiner beside the projector (LLaVA loaded the projector).
            weights = torch.load(adapter, map_location="cpu", weights_only=True)
            refiner = {k.split("mm_refiner.", 1)[1]: v for k, v in weights.items() if "mm_refiner." in k}
            if refiner:
                self.mm_refiner.load_state_dict(refiner, strict=True)
            elif list(self.mm_refiner.parameters()):
                warnings.warn(f"{adapter} holds no refiner weights (a LLaVA projector?): the refiner starts from "
                              f"its initialisation")


class RGPTMetaForCausalLM(LlavaMetaForCausalLM):

    # ---- vision side -------------------------------------------------------------------------------------------
    def merge_size(self):
        size = getattr(self.config, "mm_merge_size", None)
        if size is None:
            side = self.get_vision_tower().num_patches_per_side
            return side, side
        if isinstance(size, int):
            return size, size
        return tuple(int(s) for s in size)

    def region_map_size(self):
        """(h, w) of the refined map regions are pooled from (96x96 for CLIP-L/336 and the paper's deconv): masks
        made at this size (``process_regions(..., map_size=model.region_map_size())``) are pooled without a resize."""
        side = self.get_vision_tower().num_patches_per_side * refiner_scale(self.config)
        return side, side

    def encode_feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen tower (layer ``mm_vision_select_layer``) -> refined map [B, C, h, w]."""
        return self.get_model().get_refiner()(self.encode_patch_grid(images))

    def encode_patch_grid(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen tower (layer ``mm_vision_select_layer``) -> patch grid [B, C, g, g], the refiner's input."""
        feats = tower_features(self.get_vision_tower(), images)  # [B, N, C], LLaVA's features without unread layers
        b, n, c = feats.shape
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f"RGPT needs a square patch grid (mm_vision_select_feature='patch'), got {n} tokens")
        grid = feats.transpose(1, 2).reshape(b, c, side, side)
        # The tower may run in another dtype (LLaVA casts it separately); the trainable parts decide.
        projector_dtype = next(self.get_model().mm_projector.parameters()).dtype
        return grid.to(projector_dtype)

    def encode_images(self, images):
        """Image tokens only (LLaVA's hook, used by LLaVA code paths that know nothing of regions)."""
        return self.encode_images_and_regions(images, None)[0]

    def encode_images_and_regions(self, images: torch.Tensor, region_masks: Optional[Sequence] = None):
        """Returns (image tokens [B, H*W, D], list of region tokens [R_b, D]) after the shared projector."""
        grid = self.encode_patch_grid(images)
        if region_masks is None:
            region_masks = [None] * grid.shape[0]
        # the refined map's merge and mask pooling; for the paper's deconv, without making the map (region_encoder)
        image_feats, region_feats = refine_merge_and_pool(self.get_model().get_refiner(), grid, self.merge_size(),
                                                          region_masks)
        b, hw, c = image_feats.shape
        counts = [r.shape[0] for r in region_feats]
        # One projector call for image and region features: they share the connector (paper Sec. 3.1).
        flat = torch.cat([image_feats.reshape(b * hw, c)] + region_feats, dim=0)
        projected = self.get_model().mm_projector(flat)
        image_tokens = projected[: b * hw].reshape(b, hw, -1)
        region_tokens = list(torch.split(projected[b * hw:], counts, dim=0))
        return image_tokens, region_tokens

    # ---- splicing ----------------------------------------------------------------------------------------------
    def prepare_inputs_labels_for_multimodal(
        self, input_ids, position_ids, attention_mask, past_key_values, labels,
        images, image_sizes=None, region_masks=None,
    ):
        vision_tower = self.get_vision_tower()
        if vision_tower is None or images is None or input_ids.shape[1] == 1:
            if region_masks is not None and any(m is not None and len(m) for m in region_masks) and images is None:
                raise ValueError("region_masks were given without images: regions are pooled from the image")
            return input_ids, position_ids, attention_mask, past_key_values, None, labels
        if isinstance(images, list):
            if any(x.ndim != 3 for x in images):
                raise NotImplementedError("RGPT takes one image per sample ([3, H, W]); 'anyres' tiling is not supported")
            images = torch.stack(images)
        if images.ndim != 4:
            raise NotImplementedError(f"RGPT takes images as [B, 3, H, W], got shape {tuple(images.shape)}")

        batch = input_ids.shape[0]
        if region_masks is None:
            region_masks = [None] * batch
        if len(region_masks) != batch:
            raise ValueError(f"region_masks has {len(region_masks)} entries for a batch of {batch} samples")
        image_tokens, region_tokens = self.encode_images_and_regions(images, region_masks)

        _labels, _position_ids, _attention_mask = labels, position_ids, attention_mask
        attention_mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                          else attention_mask.bool())
        if labels is None:
            labels = torch.full_like(input_ids, IGNORE_INDEX)

        # Embed every real token of the batch in one call; sentinels are replaced by splice().
        text_embeds = embed_text(self.get_model().embed_tokens, input_ids)

        new_embeds, new_labels = [], []
        image_idx = 0  # images are consumed in order, one per <image> sentinel (LLaVA's convention)
        for b in range(batch):
            keep = attention_mask[b]
            ids, embeds, labs = input_ids[b][keep], text_embeds[b][keep], labels[b][keep]
            n_images = count_images(ids)
            if n_images == 0:
                # Text-only sample (LLaVA collates a blank image for it): keep the vision graph connected with an
                # empty slice so every rank runs the same backward (ZeRO / DDP hooks).
                embeds, labs = splice(ids, embeds, [], region_tokens[b], labs, where=f"sample {b}: ")
                embeds = torch.cat([embeds, image_tokens[min(image_idx, len(image_tokens) - 1)][:0].to(embeds.dtype)])
                image_idx += 1
            else:
                embeds, labs = splice(ids, embeds, image_tokens[image_idx:image_idx + n_images], region_tokens[b],
                                      labs, where=f"sample {b}: ")
                image_idx += n_images
            new_embeds.append(embeds)
            new_labels.append(labs)

        # Truncate after splicing (image tokens lengthen the sequence); region embeddings sit at their own
        # placeholders, so truncation drops an embedding together with its placeholder, never shifts one.
        max_len_cfg = getattr(self.config, "tokenizer_model_max_length", None)
        if max_len_cfg is not None:
            new_embeds = [x[:max_len_cfg] for x in new_embeds]
            new_labels = [x[:max_len_cfg] for x in new_labels]

        return self._pad_spliced(new_embeds, new_labels, _labels, _position_ids, _attention_mask, past_key_values)

    def _pad_spliced(self, new_embeds, new_labels, _labels, _position_ids, _attention_mask, past_key_values):
        """Pad the spliced sequences into a batch, honouring ``tokenizer_padding_side`` (as LLaVA does)."""
        max_len = max(x.shape[0] for x in new_embeds)
        batch, dim = len(new_embeds), new_embeds[0].shape[1]
        device = new_embeds[0].device
        embeds = new_embeds[0].new_zeros((batch, max_len, dim))
        labels = torch.full((batch, max_len), IGNORE_INDEX, dtype=new_labels[0].dtype, device=device)
        attention = torch.zeros((batch, max_len), dtype=torch.bool, device=device)
        positions = torch.zeros((batch, max_len), dtype=torch.long, device=device)
        left = getattr(self.config, "tokenizer_padding_side", "right") == "left"
        for i, (e, l) in enumerate(zip(new_embeds, new_labels)):
            n = e.shape[0]
            if n == 0:
                continue
            sl = slice(max_len - n, max_len) if left else slice(0, n)
            embeds[i, sl] = e
            labels[i, sl] = l
            attention[i, sl] = True
            positions[i, sl] = torch.arange(n, device=device)
        return (
            None,
            None if _position_ids is None else positions.to(_position_ids.dtype),
            None if _attention_mask is None else attention.to(_attention_mask.dtype),
            past_key_values,
            embeds,
            None if _labels is None else labels,
        )

"""RGPT as a multimodal model inside vLLM: the vision side runs in vLLM's engine, scheduled and cached by it.

One request's multimodal input is ONE "image" item: the image with its regions. Regions sit anywhere in the text
while vLLM places an item's embeddings in one placeholder range, so the item's range spans from the first image token
to the last region placeholder and marks with ``is_embed`` only the positions that get an embedding (the image tokens
and each region placeholder); the text in between keeps its token embeddings. The item's embeddings are rows of
[image tokens; region tokens] picked by ``embed_rows`` in position order: exactly what the splice does
(``rgpt_llava.model.splice``), with vLLM's own scatter.

The item arrives processed (the tokenizer, image processor and region geometry are the package's, run by
:class:`rgpt_llava.vllm.engine.VLLMRegionEngine`): fields ``pixel_values`` [1, 3, H, W], ``region_masks``
[1, R, h, w] (at the refined map's size), ``embed_positions`` [1, N] (prompt positions that get an embedding) and
``embed_rows`` [1, N] (which row of [image tokens; region tokens] goes there). The vision side is the package's
``RGPTMetaForCausalLM.encode_images_and_regions`` (tower at the selected layer, refiner, merge, mask pooling, the one
projector), not a copy.
"""
from typing import Iterable, List, Mapping, Sequence, Set, Tuple

import torch
from torch import nn
from transformers import BatchFeature
from vllm.inputs.engine import mm_input
from vllm.model_executor.models.interfaces import SupportsMultiModal
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.utils import maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems, PlaceholderRange
from vllm.multimodal.parse import DictEmbeddingItems, MultiModalDataParser
from vllm.multimodal.processing import BaseDummyInputsBuilder, BaseMultiModalProcessor, BaseProcessingInfo

from rgpt_llava.model.rgpt_arch import RGPTMetaForCausalLM, RGPTMetaModel
from rgpt_llava.vllm.model import VISION_PREFIXES

FIELDS = ("pixel_values", "region_masks", "embed_positions", "embed_rows")
PLACEHOLDER_ID = 0     # the token id under every embedding position (its text embedding is replaced)
MAX_REGION_REFERENCES = 256   # region placeholders per request the encoder cache is sized for (profiling)


# ---- the vision side: the package's own modules and methods -----------------------------------------------------
class _ConfigHolder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config


class VisionModules(RGPTMetaModel, _ConfigHolder):
    """LLaVA's tower (delay-loaded from ``mm_vision_tower``) and projector plus RGPT's refiner, built by RGPT's own
    ``__init__`` from the checkpoint's config, without the language model."""


class VisionSide(RGPTMetaForCausalLM, nn.Module):
    """``RGPTMetaForCausalLM``'s vision methods (``encode_images_and_regions``, ``merge_size``...) on
    :class:`VisionModules`; its parameters are named as in the checkpoint (``model.mm_projector...``)."""

    def __init__(self, config):
        nn.Module.__init__(self)
        self.config = config
        self.model = VisionModules(config)

    def get_model(self):
        return self.model


def vision_geometry(config) -> Tuple[int, int, Tuple[int, int]]:
    """(input image side, image tokens, refined map (h, w)) of a checkpoint, from its config and its tower's."""
    from transformers import AutoConfig

    from rgpt_llava.model.region_encoder import refiner_scale
    tower = AutoConfig.from_pretrained(config.mm_vision_tower)
    tower = getattr(tower, "vision_config", tower)
    side = tower.image_size // tower.patch_size
    merge = getattr(config, "mm_merge_size", None) or (side, side)
    merge = (merge, merge) if isinstance(merge, int) else tuple(merge)
    map_side = side * refiner_scale(config)
    return tower.image_size, merge[0] * merge[1], (map_side, map_side)


# ---- vLLM's processing: the item arrives processed; the placeholder range is made here -------------------------
def _fields(data: Mapping[str, torch.Tensor]) -> Mapping[str, MultiModalFieldConfig]:
    return {name: MultiModalFieldConfig.batched("image") for name in FIELDS}


class RGPTDataParser(MultiModalDataParser):
    def _parse_image_data(self, data):
        if isinstance(data, dict):
            return DictEmbeddingItems(data, modality="image", required_fields=set(FIELDS), fields_factory=_fields)
        raise ValueError("RGPT's image input is a dict of the processed image and regions "
                         f"({', '.join(FIELDS)}): make it with rgpt_llava.vllm.engine.VLLMRegionEngine")


class RGPTProcessingInfo(BaseProcessingInfo):
    def get_data_parser(self):
        return RGPTDataParser(expected_hidden_size=self._get_expected_hidden_size())

    def get_supported_mm_limits(self) -> Mapping[str, int]:
        return {"image": 1}     # RGPT takes one image per prompt


class RGPTDummyInputs(BaseDummyInputsBuilder[RGPTProcessingInfo]):
    """The largest item for vLLM's profiling: an image with the most region references the cache is sized for."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return ""

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options=None):
        size, image_tokens, (h, w) = vision_geometry(self.info.get_hf_config())
        refs = min(MAX_REGION_REFERENCES, max(0, seq_len - image_tokens))
        n = image_tokens + refs
        return {"image": {
            "pixel_values": torch.zeros(1, 3, size, size),
            "region_masks": torch.ones(1, 1, h, w),
            "embed_positions": torch.arange(n)[None],
            "embed_rows": torch.cat([torch.arange(image_tokens), torch.full((refs,), image_tokens)])[None],
        }}


class RGPTMultiModalProcessor(BaseMultiModalProcessor[RGPTProcessingInfo]):
    requires_tokenizer = False      # prompts arrive as ids (the package's tokenizer, sentinels replaced)

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs) -> Mapping:
        return _fields(hf_inputs)

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence:
        return []     # the prompt arrives expanded: nothing to replace

    def apply(self, inputs, timing_ctx):
        items = inputs.mm_data_items.get_items("image", DictEmbeddingItems)
        if items.get_count() != 1:
            raise ValueError(f"RGPT takes one image per prompt, got {items.get_count()}")
        data = {k: torch.as_tensor(v) for k, v in items.data.items()}
        positions = data["embed_positions"][0].long()
        prompt = list(inputs.prompt) or [PLACEHOLDER_ID] * (int(positions.max()) + 1)   # profiling: no prompt
        start, end = int(positions.min()), int(positions.max()) + 1
        if end > len(prompt):
            raise ValueError(f"embed_positions reach {end - 1} in a prompt of {len(prompt)} tokens")
        is_embed = torch.zeros(end - start, dtype=torch.bool)
        is_embed[positions - start] = True
        mm_kwargs = MultiModalKwargsItems.from_hf_inputs(BatchFeature(data), _fields(data))
        mm_hashes = inputs.get_mm_hashes(self.info.model_id, self.info.ctx.get_mm_config().mm_hasher_algorithm)
        ranges = {"image": [PlaceholderRange(offset=start, length=end - start, is_embed=is_embed)]}
        return mm_input(prompt_token_ids=prompt, mm_kwargs=mm_kwargs, mm_hashes=mm_hashes, mm_placeholders=ranges)


# ---- the model --------------------------------------------------------------------------------------------------
@MULTIMODAL_REGISTRY.register_processor(RGPTMultiModalProcessor, info=RGPTProcessingInfo,
                                        dummy_inputs=RGPTDummyInputs)
class RGPTLlamaMultiModal(nn.Module, SupportsMultiModal):
    """An RGPT checkpoint in vLLM: the package's vision side, vLLM's Llama."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int):
        return None     # prompts arrive as ids

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.vision = VisionSide(config)
        self.language_model = LlamaForCausalLM(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "language_model"))
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def get_language_model(self) -> nn.Module:
        return self.language_model

    def embed_multimodal(self, **kwargs) -> List[torch.Tensor]:
        # one entry per scheduled item (vLLM stacks a field whose items have equal shapes, lists it otherwise)
        pixels, masks, rows = (list(kwargs[name]) for name in ("pixel_values", "region_masks", "embed_rows"))
        dtype = next(self.vision.get_model().mm_projector.parameters()).dtype
        images = torch.stack([p.reshape(p.shape[-3:]) for p in pixels]).to(dtype)
        masks = [m.reshape((-1,) + tuple(m.shape[-2:])).to(dtype) for m in masks]
        image_tokens, region_tokens = self.vision.encode_images_and_regions(images, masks)
        return [torch.cat([img, reg])[r.reshape(-1).long()] for img, reg, r in zip(image_tokens, region_tokens, rows)]

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states):
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[Tuple[str, torch.Tensor]]) -> Set[str]:
        vision_state, llm = {}, []
        for name, w in weights:
            if name.startswith(VISION_PREFIXES):
                vision_state[name] = w
            else:
                llm.append((name, w))
        loaded = {f"language_model.{n}" for n in self.language_model.load_weights(llm)}
        # the tower's weights are in its own folder (mm_vision_tower), loaded as the HF builder does
        tower = self.vision.get_vision_tower()
        if not tower.is_loaded:
            tower.load_model(device_map=None)
        reference = next(self.language_model.parameters())
        tower.to(device=reference.device, dtype=reference.dtype)
        missing, unexpected = self.vision.load_state_dict(vision_state, strict=False)
        missing = [k for k in missing if not k.startswith("model.vision_tower.")]   # loaded from its folder above
        if missing or unexpected:
            raise ValueError(f"RGPT checkpoint: vision weights missing {missing[:8]}, unexpected {unexpected[:8]}")
        loaded |= {f"vision.{n}" for n, _ in self.vision.named_parameters()}
        return loaded

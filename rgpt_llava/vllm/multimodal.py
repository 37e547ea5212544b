"""RGPT as a multimodal model inside vLLM: the vision side runs in vLLM's engine, scheduled and cached by it.

vLLM places each multimodal item's embeddings in ONE placeholder range of the prompt, while RGPT's regions sit
anywhere in the text. So a request carries (at most) two "image" items, both the image seen through RGPT's vision
side:

- the image item: its range is the image's tokens, its embeddings the image tokens. It holds the image only, so its
  hash is the image's: vLLM's prefix cache reuses the KV of everything up to the image's last token, and its encoder
  cache the image tokens, for every request on the same image (a chat re-sending its image each turn, many questions
  about the regions of one photo);
- the regions item: its range spans from the first region placeholder to the last, with ``is_embed`` marking only
  the placeholders (the text in between keeps its token embeddings); its embeddings are region tokens picked by
  ``embed_rows`` in position order (region k's token wherever ``<regionk>`` stands, as often as it stands).

Together: exactly what the splice does (``rgpt_llava.model.splice``), with vLLM's own scatter. (A prompt whose region
placeholders do not all follow the image -- not a form the prompt builder makes -- is sent as one item spanning
both.)

Items arrive processed (the tokenizer, image processor and region geometry are the package's, run by
:class:`rgpt_llava.vllm.engine.VLLMRegionEngine`), as one dict of tensors for all of a request's items:
``pixel_values`` [n, 3, H, W] (the same image in each), ``region_masks`` [R, h, w] (at the refined map's size; item i
has ``region_counts[i]`` of them: 0 for the image item), ``embed_positions`` / ``embed_rows`` [N] (prompt positions
that get an embedding, and which row of [image tokens; the item's region tokens] goes there; item i has
``embed_counts[i]``). The vision side is the package's ``RGPTMetaForCausalLM.encode_images_and_regions`` (tower at
the selected layer, refiner, merge, mask pooling, the one projector), not a copy; items of one image scheduled
together are encoded once.
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

FIELDS = ("pixel_values", "region_masks", "embed_positions", "embed_rows", "region_counts", "embed_counts")
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
    """One entry per item for the image and the counts; masks, positions and rows concatenated over the items."""
    regions, embeds = torch.as_tensor(data["region_counts"]), torch.as_tensor(data["embed_counts"])
    return {"pixel_values": MultiModalFieldConfig.batched("image"),
            "region_counts": MultiModalFieldConfig.batched("image"),
            "embed_counts": MultiModalFieldConfig.batched("image"),
            "region_masks": MultiModalFieldConfig.flat_from_sizes("image", regions),
            "embed_positions": MultiModalFieldConfig.flat_from_sizes("image", embeds),
            "embed_rows": MultiModalFieldConfig.flat_from_sizes("image", embeds)}


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
        return {"image": 2}     # RGPT takes one image per prompt: its image item and its regions item


class RGPTDummyInputs(BaseDummyInputsBuilder[RGPTProcessingInfo]):
    """The largest request for vLLM's profiling: an image item and a regions item with the most region references
    the cache is sized for."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return ""

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options=None):
        size, image_tokens, (h, w) = vision_geometry(self.info.get_hf_config())
        refs = min(MAX_REGION_REFERENCES, max(0, seq_len - image_tokens)) if mm_counts.get("image", 1) > 1 else 0
        items = [image_item(torch.zeros(3, size, size), image_tokens, 0)]
        if refs:
            items.append(regions_item(torch.zeros(3, size, size), torch.ones(1, h, w),
                                      list(range(image_tokens, image_tokens + refs)), [image_tokens] * refs))
        return {"image": batch_items(items)}


def image_item(pixels: torch.Tensor, image_tokens: int, start: int) -> dict:
    """The image item: ``image_tokens`` embeddings from prompt position ``start``."""
    return regions_item(pixels, pixels.new_zeros((0, 1, 1)), list(range(start, start + image_tokens)),
                        list(range(image_tokens)))


def regions_item(pixels: torch.Tensor, masks: torch.Tensor, positions: Sequence[int], rows: Sequence[int]) -> dict:
    """An item of the image ``pixels`` [3, H, W] with ``masks`` [R, h, w]: at prompt ``positions``, rows of [image
    tokens; region tokens]."""
    return {"pixel_values": pixels[None], "region_masks": masks, "region_counts": torch.tensor([len(masks)]),
            "embed_positions": torch.tensor(list(positions), dtype=torch.long),
            "embed_rows": torch.tensor(list(rows), dtype=torch.long),
            "embed_counts": torch.tensor([len(positions)])}


def batch_items(items: Sequence[dict]) -> dict:
    """A request's items as the one dict of tensors vLLM takes (:func:`_fields`)."""
    masks = [i["region_masks"] for i in items if len(i["region_masks"])]
    shape = masks[0].shape[1:] if masks else (1, 1)
    return {"pixel_values": torch.cat([i["pixel_values"] for i in items]),
            "region_masks": torch.cat(masks) if masks else torch.zeros((0,) + tuple(shape)),
            **{k: torch.cat([i[k] for i in items]) for k in ("region_counts", "embed_positions", "embed_rows",
                                                              "embed_counts")}}


class RGPTMultiModalProcessor(BaseMultiModalProcessor[RGPTProcessingInfo]):
    requires_tokenizer = False      # prompts arrive as ids (the package's tokenizer, sentinels replaced)

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs) -> Mapping:
        return _fields(hf_inputs)

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence:
        return []     # the prompt arrives expanded: nothing to replace

    def apply(self, inputs, timing_ctx):
        items = inputs.mm_data_items.get_items("image", DictEmbeddingItems)
        if not 1 <= items.get_count() <= 2:
            raise ValueError(f"RGPT takes one image per prompt (its image and regions items), got "
                             f"{items.get_count()} items")
        data = {k: torch.as_tensor(v) for k, v in items.data.items()}
        every = data["embed_positions"].long()
        prompt = list(inputs.prompt) or [PLACEHOLDER_ID] * (int(every.max()) + 1)   # profiling: no prompt
        ranges, last_end = [], 0
        for i in range(items.get_count()):
            positions = torch.as_tensor(items.get(i)["embed_positions"]).long().reshape(-1)
            start, end = int(positions.min()), int(positions.max()) + 1
            if end > len(prompt):
                raise ValueError(f"embed_positions reach {end - 1} in a prompt of {len(prompt)} tokens")
            if start < last_end:
                raise ValueError("the items' placeholder ranges overlap or are out of order")
            is_embed = torch.zeros(end - start, dtype=torch.bool)
            is_embed[positions - start] = True
            ranges.append(PlaceholderRange(offset=start, length=end - start, is_embed=is_embed))
            last_end = end
        mm_kwargs = MultiModalKwargsItems.from_hf_inputs(BatchFeature(data), _fields(data))
        mm_hashes = inputs.get_mm_hashes(self.info.model_id, self.info.ctx.get_mm_config().mm_hasher_algorithm)
        return mm_input(prompt_token_ids=prompt, mm_kwargs=mm_kwargs, mm_hashes=mm_hashes,
                        mm_placeholders={"image": ranges})


def _per_item(value, counts: List[int]) -> List[torch.Tensor]:
    """A flat field as vLLM hands it to the model (concatenated over the scheduled items, or already a list of them)
    split per item."""
    if isinstance(value, (list, tuple)):
        return [torch.as_tensor(v) for v in value]
    return list(torch.split(value, counts))


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
        # one entry per scheduled item; the items of one image (a request's image and regions items) are encoded
        # together, once
        pixels = [p.reshape(p.shape[-3:]) for p in kwargs["pixel_values"]]
        region_counts = [int(c) for c in torch.as_tensor(kwargs["region_counts"]).reshape(-1)]
        embed_counts = [int(c) for c in torch.as_tensor(kwargs["embed_counts"]).reshape(-1)]
        masks = _per_item(kwargs["region_masks"], region_counts)
        rows = _per_item(kwargs["embed_rows"], embed_counts)
        dtype = next(self.vision.get_model().mm_projector.parameters()).dtype
        unique, owner = [], []        # distinct images; each item's image among them
        for p in pixels:
            same = next((u for u, q in enumerate(unique) if q.shape == p.shape and torch.equal(q, p)), None)
            if same is None:
                unique.append(p)
                same = len(unique) - 1
            owner.append(same)
        shape = next((tuple(m.shape[-2:]) for m in masks if m.numel()), (1, 1))
        per_image = [[m.reshape((-1,) + tuple(m.shape[-2:])) if m.numel() else m.new_zeros((0,) + shape)
                      for m, o in zip(masks, owner) if o == u] for u in range(len(unique))]
        image_tokens, region_tokens = self.vision.encode_images_and_regions(
            torch.stack(unique).to(dtype), [torch.cat(ms).to(dtype) for ms in per_image])
        out, used = [], [0] * len(unique)
        for o, count, r in zip(owner, region_counts, rows):
            own = region_tokens[o][used[o]:used[o] + count]      # this item's regions among its image's
            used[o] += count
            out.append(torch.cat([image_tokens[o], own])[r.reshape(-1).long()])
        return out

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

"""Clicks, scribbles and loose boxes become the masks RGPT pools, through SAM (transformers' ``SamModel``).

Region prompts are accepted wherever regions are (CLI ``--region``, REGION JSON, the web page, ``process_regions``).
How each is written and checked -- points, scribbles, snapped boxes, and any prompt kind registered later -- is a
row of the one kinds table, :data:`rgpt_llava.regions.kinds.KINDS` (``needs_sam=True``); ``--region``'s help and the
REGION schema list them from there. This module runs SAM on the :class:`SamPrompt` a row makes. A scribble gives
SAM ``scribble_points`` stroke pixels (default 8), drawn with a fixed seed, as positive clicks (Describe-Anything's
recipe), so the same strokes always give the same mask.

SAM answers every prompt with three candidate masks (``multimask_output``); the one with the highest predicted IoU is
kept. That is SAM's own rule for an ambiguous single click, applied to every kind so one rule explains every mask.
The mask then goes through the same geometry as any user mask: what RGPT pools is exactly the mask the user is shown.

The model is a local folder (a ``facebook/sam-vit-base`` / ``-huge`` download) given as ``--sam-model PATH``; without
one, a prompt that needs SAM is a :class:`SamRequired` error naming the flag, and boxes and masks keep working.
"""
import hashlib
import os
from collections import OrderedDict
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

# The prompt kinds themselves (how clicks, scribbles and snapped boxes are written and checked) are rows of the one
# kinds table, rgpt_llava.regions.kinds; this module runs SAM on them. Their names stay importable from here.
from rgpt_llava.regions.kinds import KINDS, needs_sam, parse_region, sam_prompt
from rgpt_llava.regions.prompts import (MAX_POINTS, SAM_FLAG, SCRIBBLE_POINTS, SamPrompt, SamRequired, require_sam,
                                        scribble_points)
from rgpt_llava.regions.region import describe_spec

__all__ = ["MAX_POINTS", "PROMPT_KINDS", "SAM_FLAG", "SCRIBBLE_POINTS", "SamModelError", "SamPrompt", "SamPrompter",
           "SamRequired", "batched_nms", "needs_sam", "require_sam", "sam_prompt", "scribble_points"]


class SamModelError(ValueError):
    """The ``--sam-model`` folder cannot be used."""


def __getattr__(name):
    if name == "PROMPT_KINDS":   # CLI spec prefixes that need SAM, read from the table (kinds may be registered)
        return tuple(k.name for k in KINDS if k.needs_sam and k.cli is not None)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _image_key(image) -> bytes:
    return hashlib.sha1(image.tobytes()).digest() + repr((image.size, image.mode)).encode()


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """``torchvision.ops.batched_nms`` in plain torch (transformers' mask-generation pipeline calls it; torchvision is
    not a dependency): indices of the boxes kept, by decreasing score; boxes of different ``idxs`` never suppress
    each other."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    boxes = boxes.float()
    shifted = boxes + (idxs.to(boxes) * (boxes.max() + 1))[:, None]
    order = torch.argsort(scores, descending=True)
    b = shifted[order]
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(b[:, None, :2], b[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-12)
    suppressed = torch.zeros(len(b), dtype=torch.bool)
    keep = []
    for i in range(len(b)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.int64)]


def _provide_batched_nms(image_processor):
    """transformers' mask-generation post-processing calls torchvision's ``batched_nms``; without torchvision, give
    it :func:`batched_nms` (4.x: a module global imported only with torchvision; 5.x: the PIL backend's
    ``post_process_for_mask_generation`` requires torchvision: this processor gets the same steps with this NMS)."""
    try:
        import transformers.models.sam.image_processing_sam as sam_processing
    except ImportError:   # transformers 5 without torchvision: its torchvision backend cannot even be imported
        sam_processing = None
    if sam_processing is not None:
        if not hasattr(sam_processing, "batched_nms"):   # transformers imports it only when torchvision is installed
            sam_processing.batched_nms = batched_nms
        return
    import transformers.models.sam.image_processing_pil_sam as pil_sam

    def post_process_for_mask_generation(rle_masks, iou_scores, mask_boxes, crops_nms_thresh=0.7):
        keep = batched_nms(mask_boxes.float(), iou_scores, torch.zeros(mask_boxes.shape[0]), crops_nms_thresh)
        rle_masks = [rle_masks[i] for i in keep]
        return [pil_sam._rle_to_mask(rle) for rle in rle_masks], iou_scores[keep], rle_masks, mask_boxes[keep]

    image_processor.post_process_for_mask_generation = post_process_for_mask_generation


class SamPrompter:
    """A loaded SAM (``SamModel`` + ``SamProcessor`` from a local folder) that resolves region prompts on images.

    The image embedding, SAM's expensive half, is computed once per image and kept for the last few images, so
    several prompts on one photo (or a user clicking again) cost only the light mask decoder."""

    def __init__(self, model_path: str, device: Optional[str] = None, scribble_count: int = SCRIBBLE_POINTS,
                 seed: int = 0, cache_images: int = 4):
        from transformers import SamModel, SamProcessor
        if not os.path.isdir(model_path):
            raise SamModelError(f"{SAM_FLAG} {model_path}: no such folder")
        try:
            # transformers 5 loads a checkpoint of another kind into SamModel (its weights "missing"): ask first
            from transformers import AutoConfig
            model_type = AutoConfig.from_pretrained(model_path).model_type
            if model_type != "sam":
                raise ValueError(f"its config.json is a {model_type!r} model")
            self.model = SamModel.from_pretrained(model_path).eval()
            self.processor = SamProcessor.from_pretrained(model_path)
        except Exception as e:   # transformers raises several types for a folder that is not a SAM checkpoint
            raise SamModelError(f"{SAM_FLAG} {model_path}: not a SAM checkpoint (SamModel + SamProcessor): "
                                f"{type(e).__name__}: {e}") from None
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.path, self.scribble_count, self.seed = model_path, scribble_count, seed
        self._cache: "OrderedDict[bytes, Tuple[torch.Tensor, dict]]" = OrderedDict()
        self._cache_size = cache_images

    def _embedding(self, image) -> Tuple[torch.Tensor, dict]:
        key = _image_key(image)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
        with torch.inference_mode():
            embedding = self.model.get_image_embeddings(inputs["pixel_values"].to(self.device))
        sizes = {"original_sizes": inputs["original_sizes"], "reshaped_input_sizes": inputs["reshaped_input_sizes"]}
        self._cache[key] = embedding, sizes
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return embedding, sizes

    def prompt_tensors(self, image, prompt: SamPrompt) -> dict:
        """The prompt as SAM's inputs: the processor rescales original-pixel coordinates to SAM's input frame."""
        kwargs = {}
        if prompt.points is not None:
            kwargs["input_points"] = [[prompt.points.tolist()]]
            kwargs["input_labels"] = [[prompt.labels.tolist()]]
        if prompt.box is not None:
            kwargs["input_boxes"] = [[list(prompt.box)]]
        out = self.processor(images=image.convert("RGB"), return_tensors="pt", **kwargs)
        return {k: out[k].to(self.device, dtype=torch.float32 if k != "input_labels" else torch.int64)
                for k in ("input_points", "input_labels", "input_boxes") if k in out}

    def mask(self, image, prompt: SamPrompt) -> Tuple[np.ndarray, float]:
        """The mask SAM gives ``prompt`` on ``image`` (bool, the image's size) and its predicted IoU."""
        embedding, sizes = self._embedding(image)
        with torch.inference_mode():
            out = self.model(image_embeddings=embedding, multimask_output=True, **self.prompt_tensors(image, prompt))
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.cpu(), sizes["original_sizes"], sizes["reshaped_input_sizes"])[0][0]   # [3, H, W]
        scores = out.iou_scores[0, 0].float().cpu()
        best = int(torch.argmax(scores))
        return masks[best].numpy().astype(bool), float(scores[best])

    def region(self, spec: Any, index: int, image):
        """The :class:`~rgpt_llava.geometry.Region` of a prompt spec: SAM's mask, parsed like any user mask."""
        prompt = sam_prompt(spec, index, image.size, self.scribble_count, self.seed)
        mask, score = self.mask(image, prompt)
        source = f"SAM, {describe_spec(spec)}"
        if not mask.any():
            raise ValueError(f"region {index + 1} ({describe_spec(spec)}): SAM found no object for this prompt (its "
                             f"mask is empty); click elsewhere, or give a box or a mask")
        region = parse_region(mask, index, image.size)
        region.source, region.score = source, score
        return region

    def resolve(self, specs: Sequence[Any], image) -> list:
        """``specs`` with every SAM prompt replaced by its :class:`~rgpt_llava.geometry.Region` (others unchanged)."""
        return [self.region(s, i, image) if needs_sam(s) else s for i, s in enumerate(specs)]

    def propose(self, image, points_per_side: int = 32, points_per_batch: int = 64, pred_iou_thresh: float = 0.88,
                stability_score_thresh: float = 0.95) -> List[Tuple[np.ndarray, float]]:
        """SAM's automatic mask generation (transformers' ``mask-generation`` pipeline, a points grid): every
        (bool mask, predicted IoU) it keeps, best first."""
        from transformers import pipeline
        _provide_batched_nms(self.processor.image_processor)
        generator = pipeline("mask-generation", model=self.model, image_processor=self.processor.image_processor,
                             device=torch.device(self.device))
        # the pipeline yields nothing when a batch is larger than the grid
        points_per_batch = min(points_per_batch, points_per_side ** 2)
        out = generator(image.convert("RGB"), points_per_batch=points_per_batch, points_per_crop=points_per_side,
                        pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh)
        found = [(np.asarray(m, dtype=bool), float(s)) for m, s in zip(out["masks"], out["scores"])]
        found = [(m, s) for m, s in found if m.any()]
        return sorted(found, key=lambda ms: -ms[1])

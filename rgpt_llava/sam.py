"""Clicks, scribbles and loose boxes become the masks RGPT pools, through SAM (transformers' ``SamModel``).

Region prompts, accepted wherever regions are (CLI ``--region``, REGION JSON, the web page, ``process_regions``):

* points -- ``point:x,y[,label][;x,y[,label]]...`` / ``{"points": [[x, y], ...], "labels": [1, 0, ...]}``: clicks in
  the image's original pixels; label 1 (the default) is on the object, 0 is not (SAM's convention).
* scribble -- ``scribble:FILE.png`` / ``{"scribble": PNG}``: a mask of the image's size whose nonzero pixels are brush
  strokes. ``scribble_points`` stroke pixels (default 8) are drawn with a fixed seed and given to SAM as positive
  clicks (Describe-Anything's recipe), so the same strokes always give the same mask.
* snapped box -- ``{"box": [x1, y1, x2, y2], "snap": true}`` (CLI ``snap:x1,y1,x2,y2``): the box as SAM's box prompt,
  refined to the object's outline.

SAM answers every prompt with three candidate masks (``multimask_output``); the one with the highest predicted IoU is
kept. That is SAM's own rule for an ambiguous single click, applied to every kind so one rule explains every mask.
The mask then goes through the same geometry as any user mask: what RGPT pools is exactly the mask the user is shown.

The model is a local folder (a ``facebook/sam-vit-base`` / ``-huge`` download) given as ``--sam-model PATH``; without
one, a prompt that needs SAM is a :class:`SamRequired` error naming the flag, and boxes and masks keep working.
"""
import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

SAM_FLAG = "--sam-model"
SCRIBBLE_POINTS = 8          # stroke pixels given to SAM per scribble
MAX_POINTS = 64              # clicks in one prompt
PROMPT_KINDS = ("point", "scribble", "snap")    # CLI spec prefixes that need SAM


class SamRequired(ValueError):
    """A region prompt that needs SAM, where no SAM model was given."""


class SamModelError(ValueError):
    """The ``--sam-model`` folder cannot be used."""


@dataclass
class SamPrompt:
    """One prompt in the image's original pixels: clicks (``points`` [n, 2], ``labels`` [n]) and / or a ``box``."""
    points: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    box: Optional[Tuple[float, float, float, float]] = None


def needs_sam(spec: Any) -> bool:
    """Whether a region spec is a prompt for SAM rather than a region."""
    if isinstance(spec, str):
        return spec.strip().partition(":")[0].strip().lower() in PROMPT_KINDS
    if isinstance(spec, dict):
        return "points" in spec or "scribble" in spec or spec.get("snap") is True
    return False


def require_sam(name: str, what: str = "this region") -> SamRequired:
    return SamRequired(f"{name}: {what} is a prompt for SAM (points, scribble or a snapped box), and no SAM model "
                       f"was given: pass {SAM_FLAG} PATH (a local facebook/sam-vit-base folder), or give a box, "
                       f"polygon or mask instead")


def _numbers(values: Any, name: str, what: str) -> List[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {what} must be numbers, got {values!r}") from None
    if not all(np.isfinite(out)):
        raise ValueError(f"{name}: {what} has a non-finite value: {out}")
    return out


def _check_points(points: Sequence[Sequence[float]], labels: Sequence[int], image_size, name: str) -> SamPrompt:
    width, height = image_size
    if not points:
        raise ValueError(f"{name}: a point prompt needs at least one point")
    if len(points) > MAX_POINTS:
        raise ValueError(f"{name}: {len(points)} points; at most {MAX_POINTS} per region")
    if len(labels) != len(points):
        raise ValueError(f"{name}: {len(points)} points but {len(labels)} labels; give one label per point "
                         f"(1 on the object, 0 not on it) or none")
    xy = []
    for k, p in enumerate(points):
        if isinstance(p, (str, bytes)) or not hasattr(p, "__len__") or len(p) != 2:
            raise ValueError(f"{name}: point {k + 1} must be [x, y], got {p!r}")
        x, y = _numbers(p, name, f"point {k + 1}")
        if not (0 <= x <= width and 0 <= y <= height):
            raise ValueError(f"{name}: point {k + 1} ({x:g}, {y:g}) lies outside the {width}x{height} image")
        xy.append((x, y))
    if any(lab not in (0, 1) or isinstance(lab, bool) for lab in labels):
        raise ValueError(f"{name}: labels must be 1 (on the object) or 0 (not on it), got {list(labels)}")
    if 1 not in labels:
        raise ValueError(f"{name}: every point is negative (label 0); SAM needs at least one point on the object")
    return SamPrompt(points=np.asarray(xy, dtype=np.float64), labels=np.asarray(labels, dtype=np.int64))


def _parse_point_text(body: str, image_size, name: str) -> SamPrompt:
    points, labels = [], []
    for k, part in enumerate(p for p in body.split(";") if p.strip()):
        values = _numbers(part.replace(",", " ").split(), name, f"point {k + 1}")
        if len(values) not in (2, 3):
            raise ValueError(f"{name}: point {k + 1} must be x,y or x,y,label, got {part.strip()!r}")
        points.append(values[:2])
        labels.append(values[2] if len(values) == 3 else 1)
    return _check_points(points, labels, image_size, name)


def scribble_points(strokes: np.ndarray, count: int = SCRIBBLE_POINTS, seed: int = 0) -> np.ndarray:
    """``count`` stroke pixels (their centres, [n, 2] as x, y) drawn without replacement by a seeded generator."""
    ys, xs = np.nonzero(strokes)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(xs), size=min(count, len(xs)), replace=False))
    return np.stack([xs[pick] + 0.5, ys[pick] + 0.5], axis=1).astype(np.float64)


def _scribble_prompt(scribble: Any, image_size, name: str, count: int, seed: int) -> SamPrompt:
    from rgpt_llava.geometry import _load_mask_file, _mask_array
    if isinstance(scribble, (str, os.PathLike)):
        scribble = _load_mask_file(os.fspath(scribble), name)
    strokes = _mask_array(scribble, name) > 0
    width, height = image_size
    if strokes.shape != (height, width):
        raise ValueError(f"{name}: scribble size {strokes.shape[1]}x{strokes.shape[0]} (WxH) does not match the "
                         f"image size {width}x{height}")
    if not strokes.any():
        raise ValueError(f"{name}: the scribble is empty (no stroke pixel)")
    points = scribble_points(strokes, count, seed)
    return SamPrompt(points=points, labels=np.ones(len(points), dtype=np.int64))


def sam_prompt(spec: Any, index: int, image_size, scribble_count: int = SCRIBBLE_POINTS,
               seed: int = 0) -> SamPrompt:
    """A checked :class:`SamPrompt` from a region spec for which :func:`needs_sam` holds."""
    from rgpt_llava.geometry import _box_region, _describe
    name = f"region {index + 1} ({_describe(spec)})"
    if isinstance(spec, str):
        kind, _, body = spec.strip().partition(":")
        kind, body = kind.strip().lower(), body.strip()
        if kind == "point":
            return _parse_point_text(body, image_size, name)
        if not body:
            raise ValueError(f"{name}: '{kind}:' needs " + ("a file path" if kind == "scribble" else "x1,y1,x2,y2"))
        if kind == "scribble":
            return _scribble_prompt(body, image_size, name, scribble_count, seed)
        spec = {"box": body, "snap": True}
    if "points" in spec:
        points = spec["points"]
        if not isinstance(points, (list, tuple, np.ndarray)):
            raise ValueError(f"{name}: points must be a list of [x, y] pairs")
        labels = spec.get("labels")
        labels = [1] * len(points) if labels is None else list(labels)
        return _check_points(list(points), labels, image_size, name)
    if "scribble" in spec:
        return _scribble_prompt(spec["scribble"], image_size, name, scribble_count, seed)
    box = _box_region(_numbers(spec["box"].replace(",", " ").split(), name, "box") if isinstance(spec["box"], str)
                      else _numbers(spec["box"], name, "box"), index, tuple(image_size), _describe(spec)).box
    return SamPrompt(box=tuple(float(v) for v in box))


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
        from rgpt_llava.geometry import _describe, parse_region
        prompt = sam_prompt(spec, index, image.size, self.scribble_count, self.seed)
        mask, score = self.mask(image, prompt)
        source = f"SAM, {_describe(spec)}"
        if not mask.any():
            raise ValueError(f"region {index + 1} ({_describe(spec)}): SAM found no object for this prompt (its "
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

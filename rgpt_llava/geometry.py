"""User regions -> float masks in exactly the pixel geometry LLaVA-1.5 gives the image.

LLaVA's ``process_images`` (``llava/mm_utils.py``) either pads the W0 x H0 photo onto a square canvas
(``image_aspect_ratio == 'pad'``, ``expand2square``) or leaves it alone, then runs the CLIP image processor: resize
(shortest edge -> ``size['shortest_edge']``) and centre crop to ``crop_size``. A region mask must follow the very same
chain, otherwise the region features pooled from the vision tower sit next to (not on) the object.

Every region (box, binary/soft mask, COCO polygon, COCO RLE) is first rasterised on the ORIGINAL pixel grid, then
mapped by one separable linear operator per axis (pad = shifted columns, resize = exact area weights, crop = a row
slice)::

    out = Ay[:, y0:y1] @ M[y0:y1, x0:x1] @ Ax[:, x0:x1].T

where ``M`` is the region's values inside its tight integer bounding box. Two consequences we rely on:

* cost grows with the region's area, not the image's (hundreds of regions per image stay cheap), because only the
  bounding box of ``M`` and the (banded) rows of ``Ay`` / ``Ax`` that it touches take part; a box (any ``M`` that
  is exactly a column times a row, a rectangle given as a mask too) is ``(Ay a) (Ax b).T``: a product of
  two vectors instead of a matrix product over its area;
* a box and the same rectangle given as a mask / polygon / RLE produce the same ``M`` and go through the same code
  path, so their outputs are bit-identical (``torch.equal``), not merely close.

Area weighting means each output pixel holds the fraction of it that the region covers (values in [0, 1]), and the
mask's sum is the region's area measured in output pixels (for the parts the crop keeps).
"""
from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

from rgpt_llava.area import area_resize_rows, area_weights

__all__ = [
    "Region",
    "ImageGeometry",
    "image_geometry",
    "model_input_size",
    "parse_region",
    "process_regions",
    "transform_box",
]

# Detector boxes are often a hair outside the image (float rounding, boxes predicted on a resized copy); clipping
# them silently is friendlier than an error. Anything further out is almost certainly a wrong coordinate system
# (another image, normalised coordinates scaled wrongly, [x, y, w, h] read as corners) and must be reported.
BOX_TOLERANCE_PX = 1.0

_SPEC_KINDS = ("box", "mask", "polygon", "rle")
_SPEC_HELP = ("expected 'box:x1,y1,x2,y2', 'mask:PATH.png', 'polygon:x1,y1,x2,y2,...', 'rle:PATH.json', "
              "a dict with 'box' / 'bbox' / 'segmentation' / 'mask', a list of 4 box numbers, "
              "a 2-D mask (numpy array, torch tensor, PIL image), or, with SAM, 'point:x,y[,label]', "
              "'scribble:PATH.png', 'snap:x1,y1,x2,y2'")


# ----------------------------------------------------------------------------------------------------------------------
# Regions
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class Region:
    """One parsed user region, in ORIGINAL image pixel coordinates.

    ``box`` is the tight bounding box ``(x1, y1, x2, y2)`` (pixel edges; floats for soft boxes). For mask-like kinds
    (``'mask'``, ``'polygon'``, ``'rle'``) the rasterised values inside the integer bounding box are kept in
    ``_values`` (only the bbox crop, so hundreds of regions do not each hold a full-image array)."""

    index: int
    kind: str
    box: tuple
    source: str = ""                                   # short description of the user's spec, for error messages
    image_size: Optional[tuple] = None                 # (width, height) the region was parsed against
    score: Optional[float] = field(default=None, compare=False)   # SAM's predicted IoU, for a mask SAM made
    _values: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    _origin: Optional[Tuple[int, int]] = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        """``"region 2 (box:1,2,3,4)"``: how error messages refer to this region."""
        return f"region {self.index + 1}" + (f" ({self.source})" if self.source else "")

    def box_profiles(self, width: int, height: int) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int]]:
        """A box's coverage per pixel row and per pixel column (its rasterised values are their outer product), and
        the top-left ``(x0, y0)`` of its integer bounding box."""
        x1, y1, x2, y2 = (float(v) for v in self.box)
        # Clip here too: Region objects may be built by hand, not only by parse_region.
        x1, x2 = max(x1, 0.0), min(x2, float(width))
        y1, y2 = max(y1, 0.0), min(y2, float(height))
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"{self.name}: box {tuple(self.box)} does not overlap the {width}x{height} image")
        cov_x, x0 = _coverage_1d(x1, x2)
        cov_y, y0 = _coverage_1d(y1, y2)
        return cov_y, cov_x, (x0, y0)

    def rasterize(self, width: int, height: int) -> Tuple[np.ndarray, Tuple[int, int]]:
        """The region's float64 values inside its integer bounding box, and that box's top-left ``(x0, y0)``.

        A box becomes its exact pixel coverage: pixel ``(x, y)`` gets the fraction of the square ``[x, x+1) x [y, y+1)``
        inside the box, so integer boxes give binary rectangles over pixels ``x1..x2-1``, ``y1..y2-1`` (the same
        pixels pycocotools fills for the polygon of that rectangle)."""
        if self.kind == "box":
            cov_y, cov_x, origin = self.box_profiles(width, height)
            return np.outer(cov_y, cov_x), origin
        if self._values is None or self._origin is None:
            raise ValueError(f"{self.name}: a '{self.kind}' region carries no rasterised values; build it with "
                             f"parse_region")
        if self.image_size is not None and tuple(self.image_size) != (width, height):
            raise ValueError(f"{self.name}: the region was made for a {self.image_size[0]}x{self.image_size[1]} "
                             f"image, not {width}x{height}")
        return self._values, self._origin


def _coverage_1d(lo: float, hi: float) -> Tuple[np.ndarray, int]:
    """Fraction of each unit pixel ``[j, j+1)`` covered by ``[lo, hi)``, over pixels ``floor(lo) .. ceil(hi)-1``.

    Both end pixels are covered by a positive amount, so the returned extent is the tight nonzero extent (the same one a
    mask's nonzero rows/columns give)."""
    j0, j1 = int(math.floor(lo)), int(math.ceil(hi))
    edges = np.arange(j0, j1 + 1, dtype=np.float64)
    cov = np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo)
    return np.clip(cov, 0.0, 1.0), j0


def _describe(spec: Any) -> str:
    """A short, single-line rendering of a user spec for error messages."""
    if isinstance(spec, str):
        text = spec
    elif isinstance(spec, np.ndarray):
        text = f"array {'x'.join(map(str, spec.shape))} {spec.dtype}"
    elif isinstance(spec, torch.Tensor):
        text = f"tensor {'x'.join(map(str, spec.shape))} {spec.dtype}"
    elif _is_pil(spec):
        text = f"PIL image {spec.size[0]}x{spec.size[1]} mode {spec.mode}"
    elif isinstance(spec, dict):
        text = "{" + ", ".join(f"{k!r}: {_describe(v) if not isinstance(v, str) else repr(v)}"
                               for k, v in spec.items()) + "}"
    else:
        text = repr(spec)
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL is a LLaVA dependency
        return False
    return isinstance(obj, Image.Image)


def _parse_numbers(text: str, name: str, what: str) -> List[float]:
    parts = [p for p in text.replace(",", " ").split()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{name}: cannot parse the {what} numbers {text!r}") from None
    return values


def _as_numbers(seq: Any, name: str, what: str) -> List[float]:
    try:
        values = [float(v) for v in seq]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {what} must be numbers, got {_describe(seq)}") from None
    return values


def _check_finite(values: Sequence[float], name: str, what: str) -> None:
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name}: {what} has a non-finite coordinate: {list(values)}")


def _check_inside(values: Sequence[float], width: int, height: int, name: str, what: str) -> None:
    """x values at even positions, y at odd ones; only more than BOX_TOLERANCE_PX outside the image is an error."""
    for i, v in enumerate(values):
        limit, axis = (width, "x") if i % 2 == 0 else (height, "y")
        if v < -BOX_TOLERANCE_PX or v > limit + BOX_TOLERANCE_PX:
            raise ValueError(f"{name}: {what} coordinate {axis}={v:g} lies outside the {width}x{height} image "
                             f"(allowed range [0, {limit}] plus {BOX_TOLERANCE_PX:g} px tolerance)")


def _box_region(coords: Sequence[float], index: int, image_size: tuple, source: str) -> Region:
    width, height = image_size
    name = f"region {index + 1} ({source})"
    if len(coords) != 4:
        raise ValueError(f"{name}: a box needs 4 coordinates x1,y1,x2,y2, got {len(coords)}")
    x1, y1, x2, y2 = (float(v) for v in coords)
    _check_finite((x1, y1, x2, y2), name, "box")
    if x2 <= x1:
        raise ValueError(f"{name}: box has x2 <= x1 ({x2:g} <= {x1:g}); expected x1,y1,x2,y2 corners")
    if y2 <= y1:
        raise ValueError(f"{name}: box has y2 <= y1 ({y2:g} <= {y1:g}); expected x1,y1,x2,y2 corners")
    _check_inside((x1, y1, x2, y2), width, height, name, "box")
    cx1, cx2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    cy1, cy2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    if cx2 <= cx1 or cy2 <= cy1:
        raise ValueError(f"{name}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has no area inside the "
                         f"{width}x{height} image")
    return Region(index=index, kind="box", box=(cx1, cy1, cx2, cy2), source=source, image_size=(width, height))


def _values_region(values: np.ndarray, kind: str, index: int, image_size: tuple, source: str,
                   empty_what: str) -> Region:
    """Wrap a full-image float64 array: keep only its tight nonzero bbox crop."""
    name = f"region {index + 1} ({source})"
    rows = np.flatnonzero(values.any(axis=1))
    cols = np.flatnonzero(values.any(axis=0))
    if rows.size == 0:
        raise ValueError(f"{name}: {empty_what} is empty (no pixel inside the {image_size[0]}x{image_size[1]} image)")
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    crop = np.ascontiguousarray(values[y0:y1, x0:x1], dtype=np.float64)
    return Region(index=index, kind=kind, box=(float(x0), float(y0), float(x1), float(y1)), source=source,
                  image_size=tuple(image_size), _values=crop, _origin=(x0, y0))


def _mask_array(mask: Any, name: str) -> np.ndarray:
    """Any supported mask object -> float64 2-D array in [0, 1] (nonzero integers / True -> 1.0)."""
    if _is_pil(mask):
        mode = mask.mode
        if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
            # Any colour channel nonzero is inside (alpha is not a colour: a transparent black pixel is outside).
            arr = np.asarray(mask.convert("RGB")).any(axis=2)
        elif mode == "LA":
            arr = np.asarray(mask)[..., 0] != 0
        else:  # '1', 'L', 'P' (palette index), 'I', 'I;16', 'F': numeric values as stored
            arr = np.asarray(mask)
            if mode == "F":
                arr = arr.astype(np.float64)
            else:
                arr = arr != 0
    elif isinstance(mask, torch.Tensor):
        arr = mask.detach().cpu().numpy()
    else:
        arr = np.asarray(mask)
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
    if arr.ndim != 2:
        raise ValueError(f"{name}: a mask must be 2-D (height x width), got shape {tuple(arr.shape)}")
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
        return (arr != 0).astype(np.float64)
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: float mask has NaN/inf values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name}: float mask values must lie in [0, 1], got range [{lo:g}, {hi:g}] "
                             f"(pass a bool/integer mask for nonzero = inside)")
        return arr
    raise ValueError(f"{name}: unsupported mask dtype {arr.dtype}")


def _load_mask_file(path: str, name: str) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: mask file not found: {path}")
    if path.lower().endswith(".npy"):
        return np.load(path)
    from PIL import Image
    with Image.open(path) as im:
        im.load()
        return im.copy()


def _mask_region(mask: Any, index: int, image_size: tuple, source: str) -> Region:
    width, height = image_size
    name = f"region {index + 1} ({source})"
    if isinstance(mask, (str, os.PathLike)):
        mask = _load_mask_file(os.fspath(mask), name)
    arr = _mask_array(mask, name)
    if arr.shape != (height, width):
        raise ValueError(f"{name}: mask size {arr.shape[1]}x{arr.shape[0]} (WxH) does not match the image size "
                         f"{width}x{height}")
    return _values_region(arr, "mask", index, image_size, source, "mask")


def _polygon_region(polys: Any, index: int, image_size: tuple, source: str) -> Region:
    """COCO polygon(s): a flat list of numbers (one polygon) or a list of such lists."""
    from pycocotools import mask as mask_utils
    width, height = image_size
    name = f"region {index + 1} ({source})"
    if isinstance(polys, np.ndarray):
        polys = polys.tolist()
    if not isinstance(polys, (list, tuple)) or len(polys) == 0:
        raise ValueError(f"{name}: a polygon must be a non-empty list of x,y numbers (or a list of such lists)")
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in polys):
        polys = [polys]
    clean = []
    for k, poly in enumerate(polys):
        if isinstance(poly, np.ndarray):
            poly = poly.ravel().tolist()
        if not isinstance(poly, (list, tuple)):
            raise ValueError(f"{name}: polygon {k} must be a list of x,y numbers, got {_describe(poly)}")
        coords = _as_numbers(poly, name, f"polygon {k}")
        if len(coords) % 2:
            raise ValueError(f"{name}: polygon {k} has an odd number of coordinates ({len(coords)}); "
                             f"expected x,y pairs")
        if len(coords) < 6:
            raise ValueError(f"{name}: polygon {k} is too short: {len(coords) // 2} points, need at least 3")
        _check_finite(coords, name, f"polygon {k}")
        _check_inside(coords, width, height, name, f"polygon {k}")
        clean.append(coords)
    # frPyObjects treats a list whose first element has exactly 4 numbers as a bbox; the >= 6 check above rules
    # that out, so this is always pycocotools' polygon rasterisation (the one COCO's own masks use).
    rles = mask_utils.frPyObjects(clean, height, width)
    arr = mask_utils.decode(mask_utils.merge(rles)).astype(np.float64)
    return _values_region(arr, "polygon", index, image_size, source, "polygon")


def compressed_rle_counts(s: bytes) -> List[int]:
    """The run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString``, in Python): checked here
    because pycocotools decodes without bounds checks, and a string whose runs overflow the mask corrupts memory."""
    counts, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise ValueError("truncated compressed RLE string")
            c = s[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"byte {s[p]!r} at position {p} is not a compressed RLE character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise ValueError(f"compressed RLE run {len(counts)} is negative ({x})")
        counts.append(x)
    return counts


def _rle_region(rle: Any, index: int, image_size: tuple, source: str) -> Region:
    """COCO RLE dict ``{'size': [h, w], 'counts': bytes | str | list}``, or a path to a JSON file holding one."""
    from pycocotools import mask as mask_utils
    width, height = image_size
    name = f"region {index + 1} ({source})"
    if isinstance(rle, (str, os.PathLike)):
        path = os.fspath(rle)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{name}: RLE file not found: {path}")
        try:
            with open(path) as f:
                rle = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}: RLE file {path} is not valid JSON: {e}") from None
        if isinstance(rle, dict) and "counts" not in rle and isinstance(rle.get("segmentation"), dict):
            rle = rle["segmentation"]  # a whole COCO annotation saved to disk
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise ValueError(f"{name}: an RLE must be a dict with 'size' [h, w] and 'counts', got {_describe(rle)}")
    try:
        rh, rw = (int(v) for v in rle["size"])
    except (TypeError, ValueError):
        raise ValueError(f"{name}: RLE 'size' must be [height, width], got {rle['size']!r}") from None
    if (rh, rw) != (height, width):
        raise ValueError(f"{name}: RLE size [h, w] = [{rh}, {rw}] does not match the image (height {height}, "
                         f"width {width})")
    counts = rle["counts"]
    if isinstance(counts, (list, tuple, np.ndarray)):
        counts = [int(c) for c in counts]
        if any(c < 0 for c in counts) or sum(counts) != height * width:
            raise ValueError(f"{name}: uncompressed RLE counts must be non-negative and sum to h*w = "
                             f"{height * width}, got sum {sum(counts)}")
        coded = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    elif isinstance(counts, (bytes, str)):
        try:
            raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
            runs = compressed_rle_counts(raw)
        except (UnicodeEncodeError, ValueError) as e:
            raise ValueError(f"{name}: cannot decode RLE: {e}") from None
        if sum(runs) != height * width:
            raise ValueError(f"{name}: compressed RLE counts sum to {sum(runs)}, not h*w = {height * width}")
        coded = {"size": [height, width], "counts": raw}
    else:
        raise ValueError(f"{name}: RLE 'counts' must be a string/bytes (compressed) or a list of ints, "
                         f"got {type(counts).__name__}")
    try:
        arr = mask_utils.decode(coded).astype(np.float64)
    except Exception as e:  # pycocotools raises assorted errors for corrupt strings
        raise ValueError(f"{name}: cannot decode RLE: {e}") from None
    return _values_region(arr, "rle", index, image_size, source, "RLE")


def parse_region(spec: Any, index: int, image_size: tuple) -> Region:
    """Parse one user region against an image of ``image_size = (width, height)`` (PIL's ``.size``).

    Accepted ``spec`` forms:

    * ``'box:x1,y1,x2,y2'``, ``'mask:PATH.png'``, ``'polygon:x1,y1,x2,y2,...'`` (several polygons separated by
      ``;``), ``'rle:PATH.json'`` (a COCO RLE dict, or an annotation with one under ``'segmentation'``);
    * ``{'box': [x1,y1,x2,y2]}``, ``{'bbox': [x,y,w,h]}`` (COCO order), ``{'segmentation': polygons | RLE}``,
      ``{'mask': array | path}``, ``{'polygon': ...}``, ``{'rle': dict | path}``; when several are present the most
      precise wins (segmentation > mask > rle > polygon > box > bbox), so a COCO annotation means its segmentation;
    * a list / tuple / 1-D array of 4 numbers: a box ``[x1,y1,x2,y2]``;
    * a 2-D numpy array, torch tensor or PIL image: a mask;
    * a :class:`Region` is returned unchanged.

    Raises ``ValueError`` (``FileNotFoundError`` for missing files) naming the region and the problem."""
    if isinstance(spec, Region):
        return spec
    width, height = int(image_size[0]), int(image_size[1])
    image_size = (width, height)
    source = _describe(spec)
    name = f"region {index + 1} ({source})"
    from rgpt_llava.sam import needs_sam, require_sam
    if needs_sam(spec):   # points, scribbles, snapped boxes: process_regions(..., image=, sam=) resolves them
        raise require_sam(name)

    if isinstance(spec, str):
        kind, sep, body = spec.strip().partition(":")
        kind = kind.strip().lower()
        if not sep or kind not in _SPEC_KINDS:
            raise ValueError(f"{name}: unknown region kind {kind!r}; {_SPEC_HELP}")
        body = body.strip()
        if kind == "box":
            return _box_region(_parse_numbers(body, name, "box"), index, image_size, source)
        if kind == "polygon":
            polys = [_parse_numbers(part, name, "polygon") for part in body.split(";") if part.strip()]
            return _polygon_region(polys, index, image_size, source)
        if not body:
            raise ValueError(f"{name}: '{kind}:' needs a file path")
        if kind == "mask":
            return _mask_region(body, index, image_size, source)
        return _rle_region(body, index, image_size, source)

    if isinstance(spec, dict):
        if "segmentation" in spec:
            seg = spec["segmentation"]
            if isinstance(seg, dict):
                return _rle_region(seg, index, image_size, source)
            return _polygon_region(seg, index, image_size, source)
        if "mask" in spec:
            return _mask_region(spec["mask"], index, image_size, source)
        if "rle" in spec:
            return _rle_region(spec["rle"], index, image_size, source)
        if "polygon" in spec:
            return _polygon_region(spec["polygon"], index, image_size, source)
        if "box" in spec:
            box = spec["box"]
            if isinstance(box, str):
                return _box_region(_parse_numbers(box, name, "box"), index, image_size, source)
            return _box_region(_as_numbers(_flat(box), name, "box"), index, image_size, source)
        if "bbox" in spec:
            xywh = _as_numbers(_flat(spec["bbox"]), name, "bbox")
            if len(xywh) != 4:
                raise ValueError(f"{name}: a COCO bbox needs 4 numbers x,y,w,h, got {len(xywh)}")
            x, y, w, h = xywh
            if w <= 0 or h <= 0:
                raise ValueError(f"{name}: COCO bbox [x, y, w, h] needs w > 0 and h > 0, got w={w:g}, h={h:g}")
            return _box_region((x, y, x + w, y + h), index, image_size, source)
        raise ValueError(f"{name}: unknown region dict keys {sorted(map(str, spec))}; {_SPEC_HELP}")

    if _is_pil(spec):
        return _mask_region(spec, index, image_size, source)
    if isinstance(spec, (np.ndarray, torch.Tensor)):
        if spec.ndim == 1:
            return _box_region(_as_numbers(spec.tolist(), name, "box"), index, image_size, source)
        return _mask_region(spec, index, image_size, source)
    if isinstance(spec, (list, tuple)):
        if spec and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                        for v in spec):
            if len(spec) != 4:
                raise ValueError(f"{name}: a box needs 4 coordinates x1,y1,x2,y2, got {len(spec)} (use "
                                 f"'polygon:...' or {{'segmentation': [[...]]}} for polygons)")
            return _box_region(spec, index, image_size, source)
    raise ValueError(f"{name}: unsupported region spec of type {type(spec).__name__}; {_SPEC_HELP}")


def _flat(seq: Any) -> Any:
    if isinstance(seq, (np.ndarray, torch.Tensor)):
        return seq.reshape(-1).tolist()
    return seq


# ----------------------------------------------------------------------------------------------------------------------
# Image geometry
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Axis:
    """One axis of the pipeline: original ``length`` -> pasted at ``pad`` on ``padded`` -> resized to ``resized`` ->
    output index ``i`` reads resized index ``i + offset`` (out of range = zero padding of the centre crop)."""
    length: int
    pad: int
    padded: int
    resized: int
    offset: int
    out: int

    def scale(self) -> float:
        return self.resized / self.padded

    def weights(self) -> torch.Tensor:
        """``[out, length]`` float64 operator taking an original-pixel profile to output pixels (area-weighted)."""
        w = area_weights(self.padded, self.resized)[:, self.pad:self.pad + self.length]   # pad: shift columns
        full = torch.zeros(self.out, self.length, dtype=torch.float64)
        lo, hi = max(0, -self.offset), min(self.out, self.resized - self.offset)        # crop: slice rows
        if hi > lo:
            full[lo:hi] = w[lo + self.offset:hi + self.offset]
        return full


@functools.lru_cache(maxsize=4096)
def _crop_axis(size: int, crop: int) -> Tuple[int, int]:
    """(offset, out_len) of ``transformers.image_transforms.center_crop`` along one axis.

    Asked of the installed transformers itself, on a one-pixel-wide probe whose values are the source indices: its
    zero-pad path for crops larger than the image changed between versions (4.37 returns one row fewer for odd
    size differences, 4.57 the full crop), and the masks must match whichever one preprocesses the image."""
    from transformers.image_transforms import center_crop

    probe = np.arange(1, size + 1, dtype=np.int64).reshape(size, 1, 1)  # H x W x C, 0 marks padding
    out = center_crop(probe, (crop, 1), data_format="channels_last", input_data_format="channels_last")
    values = np.asarray(out)[:, 0, 0]
    inside = np.nonzero(values)[0]
    if inside.size == 0:
        raise ValueError(f"the centre crop {crop} keeps nothing of an image side of {size} pixels")
    # output position i shows source pixel values[i] - 1: offset = source index of output 0
    offset = int(values[inside[0]] - 1 - inside[0])
    return offset, int(values.shape[0])


@dataclass(frozen=True)
class ImageGeometry:
    """Where the original image's pixels end up in LLaVA's processed image (see :func:`image_geometry`)."""
    image_size: Tuple[int, int]   # (width, height) of the original image
    x: _Axis
    y: _Axis

    @property
    def out_size(self) -> Tuple[int, int]:
        """(height, width) of the processed image / masks."""
        return self.y.out, self.x.out

    def weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(Ay [out_h, H0], Ax [out_w, W0])``: ``mask_out = Ay @ mask @ Ax.T``."""
        return self.y.weights(), self.x.weights()


def _size_dict(value: Any, default_to_square: bool, param_name: str) -> dict:
    from transformers.image_processing_utils import get_size_dict
    return get_size_dict(value, default_to_square=default_to_square, param_name=param_name)


def _aspect_mode(image_aspect_ratio: Any) -> Optional[str]:
    # Accept a model config too (LLaVA passes its config to process_images), read the same way LLaVA reads it.
    if image_aspect_ratio is not None and not isinstance(image_aspect_ratio, str):
        image_aspect_ratio = getattr(image_aspect_ratio, "image_aspect_ratio", None)
    if image_aspect_ratio == "anyres":
        raise NotImplementedError(
            "image_aspect_ratio='anyres' (LLaVA-NeXT tiling) is not supported for regions: the image is split "
            "into several crops plus a thumbnail, so a region has no single mask. Use 'pad' (LLaVA-1.5) or 'square'.")
    return image_aspect_ratio


def model_input_size(image_processor: Any) -> Tuple[int, int]:
    """(height, width) of every image the processor hands the tower: CLIP's centre crop (``crop_size``), or a
    processor that resizes to a fixed size without cropping (SigLIP's ``size={'height', 'width'}``)."""
    crop_size = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop_size is not None:
        crop = _size_dict(crop_size, True, "crop_size")
        return int(crop["height"]), int(crop["width"])
    size = _size_dict(getattr(image_processor, "size", None), False, "size")
    if getattr(image_processor, "do_resize", True) and "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    raise ValueError(f"{type(image_processor).__name__} (size {size}) gives no fixed image size: it neither crops "
                     f"nor resizes to a height and width")


def image_geometry(image_size: tuple, image_processor: Any, image_aspect_ratio: Any = "pad") -> ImageGeometry:
    """The per-axis geometry of ``llava.mm_utils.process_images`` for a ``(width, height)`` image.

    ``'pad'``: ``expand2square`` pastes the image at ``((S - W0) // 2, 0)`` or ``(0, (S - H0) // 2)`` on an
    ``S = max(W0, H0)`` square; any other value (LLaVA's ``else`` branch) pads nothing. Then the processor's resize
    (output size from ``get_resize_output_image_size``, exactly as ``CLIPImageProcessor.resize`` computes it) and
    centre crop, each honouring ``do_resize`` / ``do_center_crop``."""
    from transformers.image_transforms import get_resize_output_image_size
    from transformers.image_utils import ChannelDimension

    mode = _aspect_mode(image_aspect_ratio)
    w0, h0 = int(image_size[0]), int(image_size[1])
    if w0 <= 0 or h0 <= 0:
        raise ValueError(f"image size must be positive (width, height), got {tuple(image_size)}")
    if mode == "pad":
        side = max(w0, h0)
        pad_x, pad_y, pw, ph = (side - w0) // 2, (side - h0) // 2, side, side
    else:
        pad_x, pad_y, pw, ph = 0, 0, w0, h0

    if getattr(image_processor, "do_resize", True):
        size = _size_dict(getattr(image_processor, "size"), False, "size")
        if "shortest_edge" in size:
            target, default_to_square = size["shortest_edge"], False
        elif "height" in size and "width" in size:
            target, default_to_square = (size["height"], size["width"]), True
        else:
            raise ValueError(f"image processor size {size} has neither 'shortest_edge' nor 'height'/'width'")
        # A zero-stride stand-in image: get_resize_output_image_size only reads its shape.
        dummy = np.broadcast_to(np.zeros((), dtype=np.uint8), (ph, pw, 3))
        rh, rw = get_resize_output_image_size(dummy, size=target, default_to_square=default_to_square,
                                              input_data_format=ChannelDimension.LAST)
        rh, rw = int(rh), int(rw)
    else:
        rh, rw = ph, pw

    crop_size = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop_size is not None:
        crop = _size_dict(crop_size, True, "crop_size")
        off_y, out_h = _crop_axis(rh, int(crop["height"]))
        off_x, out_w = _crop_axis(rw, int(crop["width"]))
    else:
        off_y, out_h, off_x, out_w = 0, rh, 0, rw

    return ImageGeometry(image_size=(w0, h0),
                         x=_Axis(w0, pad_x, pw, rw, off_x, out_w),
                         y=_Axis(h0, pad_y, ph, rh, off_y, out_h))


def _rank_one(values: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """``(a, b)`` with ``np.outer(a, b) == values`` exactly (a box's coverage, or a mask that is a rectangle), else
    None. The factors are read off ``values`` alone (the column and row through its largest value), so equal values
    get equal factors whatever kind of region they came from: a box and its rectangle as a mask stay bit-identical.
    Checking costs one pass over the region, the separable product then ``O(h + w)`` instead of ``O(h * w)``."""
    i0, j0 = np.unravel_index(int(np.argmax(values)), values.shape)
    pivot = values[i0, j0]
    if pivot <= 0:
        return None
    a, b = values[:, j0], values[i0, :] / pivot
    return (a, b) if np.array_equal(np.outer(a, b), values) else None


def _row_ranges(a: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """For each source column of ``a`` ([out, src]), the first and one-past-last output rows it touches (``lo = out``,
    ``hi = 0`` where it touches none: cut away by the crop)."""
    nz = (a != 0).numpy()
    any_nz = nz.any(axis=0)
    out = a.shape[0]
    lo = np.where(any_nz, nz.argmax(axis=0), out)
    hi = np.where(any_nz, out - nz[::-1].argmax(axis=0), 0)
    return lo, hi


@functools.lru_cache(maxsize=64)
def _operators(geo: ImageGeometry, map_size: Optional[Tuple[int, int]]):
    """``(Ay, Ax, rows reached by each source row, columns reached by each source column)`` of one geometry, made once
    per image size (photos of a data set or a server share a few sizes; building them is most of a call's fixed
    cost). Read-only: callers slice them."""
    ay, ax = geo.weights()
    if map_size is not None:
        # The model pools a [crop_h, crop_w] mask M on its h x w map as area_weights(crop_h, h) @ M @
        # area_weights(crop_w, w).T (rgpt_llava.area.area_resize). The operators compose: applying that one to the
        # image's operators gives the same cells straight from the original pixels, still banded, and no
        # [crop_h, crop_w] mask exists anywhere (its resize no longer runs on the accelerator either).
        ay, ax = area_resize_rows(ay, map_size[0]), area_resize_rows(ax, map_size[1])
    # The operators are banded: a source pixel only reaches a few output pixels. Restricting each product to the
    # output rows/cols that the region's bbox touches makes the cost proportional to the region, not the image.
    return ay, ax, _row_ranges(ay), _row_ranges(ax)


def process_regions(regions: Sequence[Any], image_size: tuple, image_processor: Any,
                    image_aspect_ratio: Any = "pad", image: Any = None, sam: Any = None,
                    map_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Masks ``[R, crop_h, crop_w]`` (float32, values in [0, 1]) aligned pixel-for-pixel with
    ``llava.mm_utils.process_images`` output for an image of ``image_size = (width, height)``.

    With ``map_size = (h, w)``, the refined feature map's size (``model.region_map_size()``, 96x96 for CLIP-L/336),
    the masks are ``[R, h, w]`` instead: each cell holds the share of it the region covers, the weights the model's
    mask pooling would compute from the full-resolution mask (equal to float32 rounding), at 1/12 of the memory.
    The model pools either kind (``rgpt_llava.model.region_encoder.mask_pool`` decides by shape).

    ``regions``: specs accepted by :func:`parse_region` (index = position in the list) or ready :class:`Region`
    objects; with ``sam`` (a :class:`rgpt_llava.sam.SamPrompter`) and the PIL ``image``, also prompts for SAM
    (points, scribbles, snapped boxes: :mod:`rgpt_llava.sam`). Each output pixel is the fraction of it covered by the
    region (area weighting). A region that the centre crop cuts away entirely is a ``ValueError``; one cut partly
    keeps its visible part."""
    geo = image_geometry(image_size, image_processor, image_aspect_ratio)
    width, height = geo.image_size
    crop_h, crop_w = out_h, out_w = geo.out_size
    if map_size is not None:
        out_h, out_w = (int(v) for v in map_size)
    if sam is not None:
        if image is None or tuple(image.size) != (width, height):
            raise ValueError("process_regions: SAM prompts need the image itself: pass image= (a PIL image of "
                             f"size {width}x{height}) with sam=")
        regions = sam.resolve(regions, image)
    parsed = [parse_region(spec, i, (width, height)) for i, spec in enumerate(regions)]
    result = torch.zeros(len(parsed), out_h, out_w, dtype=torch.float32)
    if not parsed:
        return result

    ay, ax, (ylo, yhi), (xlo, xhi) = _operators(geo, None if map_size is None else (out_h, out_w))

    for k, region in enumerate(parsed):
        factors = None
        if region.kind == "box":
            cov_y, cov_x, (x0, y0) = region.box_profiles(width, height)
            if cov_y.max() == 1.0 and cov_x.max() == 1.0:
                # Exactly the factors _rank_one reads off the rasterised box (same bits), without building it.
                factors, (rh, rw) = (cov_y, cov_x), (len(cov_y), len(cov_x))
        if factors is None:
            values, (x0, y0) = region.rasterize(width, height)
            factors, (rh, rw) = _rank_one(values), values.shape
        y1, x1 = y0 + rh, x0 + rw
        r0, r1 = int(ylo[y0:y1].min()), int(yhi[y0:y1].max())
        c0, c1 = int(xlo[x0:x1].min()), int(xhi[x0:x1].max())
        block = None
        if r1 > r0 and c1 > c0:
            if factors is not None:
                a, b = (torch.from_numpy(np.ascontiguousarray(f)) for f in factors)
                block = torch.outer(ay[r0:r1, y0:y1] @ a, ax[c0:c1, x0:x1] @ b).clamp_(0.0, 1.0)
            else:
                m = torch.from_numpy(values)
                block = (ay[r0:r1, y0:y1] @ m @ ax[c0:c1, x0:x1].T).clamp_(0.0, 1.0)
        if block is None or not bool((block > 0).any()):
            mode = _aspect_mode(image_aspect_ratio)
            hint = "" if mode == "pad" else "; image_aspect_ratio='pad' keeps the whole image"
            raise ValueError(f"{region.name}: the region lies entirely outside the processed image (cut away by "
                             f"the centre crop to {crop_w}x{crop_h}, image_aspect_ratio={mode!r}){hint}")
        result[k, r0:r1, c0:c1] = block.float()
    return result


def transform_box(box: Any, image_size: tuple, image_processor: Any, image_aspect_ratio: Any = "pad",
                  index: int = 0) -> tuple:
    """The box ``(x1, y1, x2, y2)`` (original pixels; any box spec or a :class:`Region`, whose bbox is used) in
    processed-image coordinates, clipped to the processed image: for printing and drawing on the model's view.

    Raises ``ValueError`` if the box is invalid or lies entirely outside the processed image (cut by the crop)."""
    geo = image_geometry(image_size, image_processor, image_aspect_ratio)
    region = parse_region(box, index, image_size)
    x1, y1, x2, y2 = (float(v) for v in region.box)

    def map_axis(axis: _Axis, a: float, b: float) -> Tuple[float, float]:
        s = axis.scale()
        lo = (a + axis.pad) * s - axis.offset
        hi = (b + axis.pad) * s - axis.offset
        return min(max(lo, 0.0), float(axis.out)), min(max(hi, 0.0), float(axis.out))

    nx1, nx2 = map_axis(geo.x, x1, x2)
    ny1, ny2 = map_axis(geo.y, y1, y2)
    if nx2 <= nx1 or ny2 <= ny1:
        raise ValueError(f"{region.name}: the box lies entirely outside the processed image (cut away by the "
                         f"centre crop to {geo.x.out}x{geo.y.out})")
    return (nx1, ny1, nx2, ny2)

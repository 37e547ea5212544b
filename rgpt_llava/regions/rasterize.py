"""Region builders: checked coordinates, boxes, masks, COCO polygons and RLE -> :class:`Region`, and back
(:func:`full_mask`: a region as a mask of the whole image, for drawing it and for sending it as a mask).

The kinds of :mod:`rgpt_llava.regions.kinds` parse their spec with these; a new kind that rasterises itself hands its
full-image values to :func:`values_region`. Every error names the region (``region N (spec)``) and the problem.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, List, Sequence

import numpy as np
import torch

from rgpt_llava.regions.region import Region, describe_spec, is_pil_image

# Detector boxes are often a hair outside the image (float rounding, boxes predicted on a resized copy); clipping
# them silently is friendlier than an error. Anything further out is almost certainly a wrong coordinate system
# (another image, normalised coordinates scaled wrongly, [x, y, w, h] read as corners) and must be reported.
BOX_TOLERANCE_PX = 1.0


def full_mask(region: Region, width: int, height: int) -> np.ndarray:
    """The region as a bool mask of the whole ``width`` x ``height`` image: the pixels it covers at all."""
    values, (x0, y0) = region.rasterize(width, height)
    mask = np.zeros((height, width), bool)
    mask[y0:y0 + values.shape[0], x0:x0 + values.shape[1]] = values > 0
    return mask


def region_name(index: int, source: str) -> str:
    """``"region 2 (box:1,2,3,4)"``: how error messages name the region being parsed (as :attr:`Region.name`)."""
    return f"region {index + 1} ({source})"


def parse_numbers(text: str, name: str, what: str) -> List[float]:
    parts = [p for p in text.replace(",", " ").split()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{name}: cannot parse the {what} numbers {text!r}") from None
    return values


def as_numbers(seq: Any, name: str, what: str) -> List[float]:
    try:
        values = [float(v) for v in seq]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {what} must be numbers, got {describe_spec(seq)}") from None
    return values


def check_finite(values: Sequence[float], name: str, what: str) -> None:
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name}: {what} has a non-finite coordinate: {list(values)}")


def check_inside(values: Sequence[float], width: int, height: int, name: str, what: str) -> None:
    """x values at even positions, y at odd ones; only more than BOX_TOLERANCE_PX outside the image is an error."""
    for i, v in enumerate(values):
        limit, axis = (width, "x") if i % 2 == 0 else (height, "y")
        if v < -BOX_TOLERANCE_PX or v > limit + BOX_TOLERANCE_PX:
            raise ValueError(f"{name}: {what} coordinate {axis}={v:g} lies outside the {width}x{height} image "
                             f"(allowed range [0, {limit}] plus {BOX_TOLERANCE_PX:g} px tolerance)")


def box_region(coords: Sequence[float], index: int, image_size: tuple, source: str) -> Region:
    width, height = image_size
    name = region_name(index, source)
    if len(coords) != 4:
        raise ValueError(f"{name}: a box needs 4 coordinates x1,y1,x2,y2, got {len(coords)}")
    x1, y1, x2, y2 = (float(v) for v in coords)
    check_finite((x1, y1, x2, y2), name, "box")
    if x2 <= x1:
        raise ValueError(f"{name}: box has x2 <= x1 ({x2:g} <= {x1:g}); expected x1,y1,x2,y2 corners")
    if y2 <= y1:
        raise ValueError(f"{name}: box has y2 <= y1 ({y2:g} <= {y1:g}); expected x1,y1,x2,y2 corners")
    check_inside((x1, y1, x2, y2), width, height, name, "box")
    cx1, cx2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    cy1, cy2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    if cx2 <= cx1 or cy2 <= cy1:
        raise ValueError(f"{name}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has no area inside the "
                         f"{width}x{height} image")
    return Region(index=index, kind="box", box=(cx1, cy1, cx2, cy2), source=source, image_size=(width, height))


def values_region(values: np.ndarray, kind: str, index: int, image_size: tuple, source: str,
                   empty_what: str) -> Region:
    """Wrap a full-image float64 array: keep only its tight nonzero bbox crop."""
    name = region_name(index, source)
    rows = np.flatnonzero(values.any(axis=1))
    cols = np.flatnonzero(values.any(axis=0))
    if rows.size == 0:
        raise ValueError(f"{name}: {empty_what} is empty (no pixel inside the {image_size[0]}x{image_size[1]} image)")
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    crop = np.ascontiguousarray(values[y0:y1, x0:x1], dtype=np.float64)
    return Region.from_values(crop, (x0, y0), kind=kind, index=index, image_size=tuple(image_size), source=source)


def mask_array(mask: Any, name: str) -> np.ndarray:
    """Any supported mask object -> float64 2-D array in [0, 1] (nonzero integers / True -> 1.0)."""
    if is_pil_image(mask):
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


def load_mask_file(path: str, name: str) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: mask file not found: {path}")
    if path.lower().endswith(".npy"):
        return np.load(path)
    from PIL import Image
    with Image.open(path) as im:
        im.load()
        return im.copy()


def mask_region(mask: Any, index: int, image_size: tuple, source: str) -> Region:
    width, height = image_size
    name = region_name(index, source)
    if isinstance(mask, (str, os.PathLike)):
        mask = load_mask_file(os.fspath(mask), name)
    arr = mask_array(mask, name)
    if arr.shape != (height, width):
        raise ValueError(f"{name}: mask size {arr.shape[1]}x{arr.shape[0]} (WxH) does not match the image size "
                         f"{width}x{height}")
    return values_region(arr, "mask", index, image_size, source, "mask")


def polygon_region(polys: Any, index: int, image_size: tuple, source: str) -> Region:
    """COCO polygon(s): a flat list of numbers (one polygon) or a list of such lists."""
    from pycocotools import mask as mask_utils
    width, height = image_size
    name = region_name(index, source)
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
            raise ValueError(f"{name}: polygon {k} must be a list of x,y numbers, got {describe_spec(poly)}")
        coords = as_numbers(poly, name, f"polygon {k}")
        if len(coords) % 2:
            raise ValueError(f"{name}: polygon {k} has an odd number of coordinates ({len(coords)}); "
                             f"expected x,y pairs")
        if len(coords) < 6:
            raise ValueError(f"{name}: polygon {k} is too short: {len(coords) // 2} points, need at least 3")
        check_finite(coords, name, f"polygon {k}")
        check_inside(coords, width, height, name, f"polygon {k}")
        clean.append(coords)
    # frPyObjects treats a list whose first element has exactly 4 numbers as a bbox; the >= 6 check above rules
    # that out, so this is always pycocotools' polygon rasterisation (the one COCO's own masks use).
    rles = mask_utils.frPyObjects(clean, height, width)
    arr = mask_utils.decode(mask_utils.merge(rles)).astype(np.float64)
    return values_region(arr, "polygon", index, image_size, source, "polygon")


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


def rle_region(rle: Any, index: int, image_size: tuple, source: str) -> Region:
    """COCO RLE dict ``{'size': [h, w], 'counts': bytes | str | list}``, or a path to a JSON file holding one."""
    from pycocotools import mask as mask_utils
    width, height = image_size
    name = region_name(index, source)
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
        raise ValueError(f"{name}: an RLE must be a dict with 'size' [h, w] and 'counts', got {describe_spec(rle)}")
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
    return values_region(arr, "rle", index, image_size, source, "RLE")



def flat_numbers(seq: Any) -> Any:
    if isinstance(seq, (np.ndarray, torch.Tensor)):
        return seq.reshape(-1).tolist()
    return seq

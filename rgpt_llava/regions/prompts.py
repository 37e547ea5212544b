"""Prompts for SAM: clicks, scribbles and snapped boxes, checked and turned into a :class:`SamPrompt`.

These kinds (``needs_sam=True`` in :mod:`rgpt_llava.regions.kinds`) are not regions yet: a
:class:`rgpt_llava.sam.SamPrompter` turns a prompt into SAM's mask, which is then parsed like any user mask. Checking
them here, without SAM, lets every entry point refuse a bad prompt before a model is loaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from rgpt_llava.regions.rasterize import box_region, load_mask_file, mask_array
from rgpt_llava.regions.region import describe_spec

SAM_FLAG = "--sam-model"
SCRIBBLE_POINTS = 8          # stroke pixels given to SAM per scribble
MAX_POINTS = 64              # clicks in one prompt


class SamRequired(ValueError):
    """A region prompt that needs SAM, where no SAM model was given."""


@dataclass
class SamPrompt:
    """One prompt in the image's original pixels: clicks (``points`` [n, 2], ``labels`` [n]) and / or a ``box``."""
    points: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    box: Optional[Tuple[float, float, float, float]] = None


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


def points_from_text(body: str, at) -> SamPrompt:
    """``x,y[,label][;x,y[,label]]...``: ``;`` between clicks, label 1 (default) on the object, 0 not on it."""
    points, labels = [], []
    for k, part in enumerate(p for p in body.split(";") if p.strip()):
        values = _numbers(part.replace(",", " ").split(), at.name, f"point {k + 1}")
        if len(values) not in (2, 3):
            raise ValueError(f"{at.name}: point {k + 1} must be x,y or x,y,label, got {part.strip()!r}")
        points.append(values[:2])
        labels.append(values[2] if len(values) == 3 else 1)
    return _check_points(points, labels, at.image_size, at.name)


def points_from_dict(spec: dict, at) -> SamPrompt:
    """``{"points": [[x, y], ...], "labels": [1, 0, ...]}`` (labels default to all 1)."""
    points = spec["points"]
    if not isinstance(points, (list, tuple, np.ndarray)):
        raise ValueError(f"{at.name}: points must be a list of [x, y] pairs")
    labels = spec.get("labels")
    labels = [1] * len(points) if labels is None else list(labels)
    return _check_points(list(points), labels, at.image_size, at.name)


def scribble_points(strokes: np.ndarray, count: int = SCRIBBLE_POINTS, seed: int = 0) -> np.ndarray:
    """``count`` stroke pixels (their centres, [n, 2] as x, y) drawn without replacement by a seeded generator."""
    ys, xs = np.nonzero(strokes)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(xs), size=min(count, len(xs)), replace=False))
    return np.stack([xs[pick] + 0.5, ys[pick] + 0.5], axis=1).astype(np.float64)


def scribble_prompt(scribble: Any, at) -> SamPrompt:
    """Brush strokes (a mask of the image's size, or its file): ``at.scribble_count`` stroke pixels, drawn with
    ``at.seed``, as positive clicks (Describe-Anything's recipe), so the same strokes always give the same mask."""
    name = at.name
    if isinstance(scribble, (str, os.PathLike)):
        scribble = load_mask_file(os.fspath(scribble), name)
    strokes = mask_array(scribble, name) > 0
    width, height = at.image_size
    if strokes.shape != (height, width):
        raise ValueError(f"{name}: scribble size {strokes.shape[1]}x{strokes.shape[0]} (WxH) does not match the "
                         f"image size {width}x{height}")
    if not strokes.any():
        raise ValueError(f"{name}: the scribble is empty (no stroke pixel)")
    points = scribble_points(strokes, at.scribble_count, at.seed)
    return SamPrompt(points=points, labels=np.ones(len(points), dtype=np.int64))


def snapped_box_prompt(spec: dict, at) -> SamPrompt:
    """``{"box": [x1, y1, x2, y2] | "x1,y1,x2,y2", "snap": true}``: the box, checked as any box, as SAM's box prompt."""
    name, box = at.name, spec["box"]
    coords = _numbers(box.replace(",", " ").split() if isinstance(box, str) else box, name, "box")
    # The box's own checks quote the dict form (the CLI's snap:... is read as one), as they always have.
    box = box_region(coords, at.index, tuple(at.image_size), describe_spec(spec)).box
    return SamPrompt(box=tuple(float(v) for v in box))

"""A parsed user region (:class:`Region`) in the image's ORIGINAL pixels, and how error messages name one.

Every kind of region (:mod:`rgpt_llava.regions.kinds`) parses to a :class:`Region`: a box keeps only its corners, every
other kind its rasterised values inside its integer bounding box. :mod:`rgpt_llava.geometry` then maps either to the
processed image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

import numpy as np
import torch

__all__ = ["Region", "describe_spec", "is_pil_image"]


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

    @classmethod
    def from_values(cls, values: np.ndarray, origin: Tuple[int, int], kind: str, index: int, image_size: tuple,
                    source: str = "") -> "Region":
        """A mask-like region from its float64 ``values`` inside its integer bounding box, whose top-left is
        ``origin = (x0, y0)``."""
        x0, y0 = origin
        box = (float(x0), float(y0), float(x0 + values.shape[1]), float(y0 + values.shape[0]))
        return cls(index=index, kind=kind, box=box, source=source, image_size=image_size, _values=values,
                   _origin=(x0, y0))

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
        cov_x, x0 = coverage_1d(x1, x2)
        cov_y, y0 = coverage_1d(y1, y2)
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


def coverage_1d(lo: float, hi: float) -> Tuple[np.ndarray, int]:
    """Fraction of each unit pixel ``[j, j+1)`` covered by ``[lo, hi)``, over pixels ``floor(lo) .. ceil(hi)-1``.

    Both end pixels are covered by a positive amount, so the returned extent is the tight nonzero extent (the same one a
    mask's nonzero rows/columns give)."""
    j0, j1 = int(math.floor(lo)), int(math.ceil(hi))
    edges = np.arange(j0, j1 + 1, dtype=np.float64)
    cov = np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo)
    return np.clip(cov, 0.0, 1.0), j0


def describe_spec(spec: Any) -> str:
    """A short, single-line rendering of a user spec for error messages."""
    if isinstance(spec, str):
        text = spec
    elif isinstance(spec, np.ndarray):
        text = f"array {'x'.join(map(str, spec.shape))} {spec.dtype}"
    elif isinstance(spec, torch.Tensor):
        text = f"tensor {'x'.join(map(str, spec.shape))} {spec.dtype}"
    elif is_pil_image(spec):
        text = f"PIL image {spec.size[0]}x{spec.size[1]} mode {spec.mode}"
    elif isinstance(spec, dict):
        text = "{" + ", ".join(f"{k!r}: {describe_spec(v) if not isinstance(v, str) else repr(v)}"
                               for k, v in spec.items()) + "}"
    else:
        text = repr(spec)
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."


def is_pil_image(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL is a LLaVA dependency
        return False
    return isinstance(obj, Image.Image)


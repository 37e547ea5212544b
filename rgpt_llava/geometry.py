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
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch

from rgpt_llava.area import area_resize_rows, area_weights
# Parsing a region (every kind: rgpt_llava.regions.kinds) happens before the geometry; these names stay importable
# from here, where they have always been.
from rgpt_llava.regions.kinds import parse_region
from rgpt_llava.regions.rasterize import BOX_TOLERANCE_PX, compressed_rle_counts
from rgpt_llava.regions.region import Region

__all__ = [
    "Region",
    "ImageGeometry",
    "image_geometry",
    "model_input_size",
    "parse_region",
    "process_regions",
    "transform_box",
    "BOX_TOLERANCE_PX",
    "compressed_rle_counts",
]


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

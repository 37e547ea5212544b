"""RegionGPT's additions to the vision side: feature refinement, adaptive merge and mask pooling.

Data flow (paper Sec. 3.1): CLIP patch grid [B, C, g, g] --refiner--> [B, C, h, w] (h = 4g for deconv)
  --adaptive average pool--> [B, C, H, W] image tokens;   --mask pooling(masks)--> [R, C] region tokens.
Both then go through the same LLaVA ``mm_projector``.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from rgpt_llava.area import area_resize

REFINER_TYPES = ("deconv", "deconv_residual", "bilinear", "deconv+bilinear", "none")
# Output scale of each refiner relative to the patch grid. Table 6 of the paper: deconv = 4x, the two bilinear
# variants = 16x (with ViT-B/16 at 512 px, 16x is the input resolution). ``mm_refiner_scale`` overrides the bilinear one.
DEFAULT_REFINER_SCALE = {"deconv": 4, "deconv_residual": 4, "bilinear": 16, "deconv+bilinear": 16, "none": 1}


def _activation(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    if name in ("none", "identity", None):
        return nn.Identity()
    raise ValueError(f"unknown mm_refiner_act {name!r}; expected 'gelu' or 'none'")


class DeconvRefiner(nn.Module):
    """The paper's refinement: two stride-2 transposed convolutions (kernel 2), 4x upsampling.

    The paper names no activation between them; we use GELU (LLaVA's projector uses GELU), selectable with
    ``mm_refiner_act='none'``.

    ``residual=True`` (``deconv_residual``) adds the input upsampled 4x by nearest neighbour and zero-initialises the
    last deconvolution. At initialisation its output is exactly the nearest-neighbour upsampled CLIP grid, which the
    adaptive average pool maps back to the original grid, so a converted LLaVA-1.5 checkpoint answers image-level
    prompts exactly as before; training then learns the same deconv branch the paper describes, plus a skip connection.
    """

    def __init__(self, channels: int, act: str = "gelu", residual: bool = False):
        super().__init__()
        self.residual = residual
        self.up1 = nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
        self.act = _activation(act)
        self.up2 = nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
        if residual:
            self.zero_init_branch()

    def zero_init_branch(self):
        nn.init.zeros_(self.up2.weight)
        nn.init.zeros_(self.up2.bias)

    def forward(self, x):
        out = self.up2(self.act(self.up1(x)))
        if self.residual:
            out = out + F.interpolate(x, scale_factor=4, mode="nearest")
        return out


class BilinearRefiner(nn.Module):
    """Parameter-free bilinear upsampling (Table 6 'BiLinear'); optionally after the deconvolutions."""

    def __init__(self, scale: int, deconv: Optional[nn.Module] = None):
        super().__init__()
        self.deconv = deconv
        self.scale = scale

    def forward(self, x):
        if self.deconv is not None:
            x = self.deconv(x)
        size = (x.shape[-2] * self.scale, x.shape[-1] * self.scale)
        # interpolate has no bf16/fp16 bilinear kernel on every device: compute in fp32, return the input dtype.
        return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False).to(x.dtype)


def refiner_scale(config) -> int:
    """Upsampling factor of the refiner ``config`` names: the refined map is the patch grid times this."""
    kind = getattr(config, "mm_refiner_type", "deconv")
    if kind not in REFINER_TYPES:
        raise ValueError(f"unknown mm_refiner_type {kind!r}; expected one of {REFINER_TYPES}")
    if kind in ("deconv", "deconv_residual", "none"):
        return DEFAULT_REFINER_SCALE[kind]
    return int(getattr(config, "mm_refiner_scale", None) or DEFAULT_REFINER_SCALE[kind])


def build_refiner(config) -> nn.Module:
    """Build the refiner named by ``config.mm_refiner_type`` (default 'deconv')."""
    kind = getattr(config, "mm_refiner_type", "deconv")
    channels = config.mm_hidden_size
    act = getattr(config, "mm_refiner_act", "gelu")
    scale = refiner_scale(config)
    if kind == "none":
        return nn.Identity()
    if kind in ("deconv", "deconv_residual"):
        return DeconvRefiner(channels, act=act, residual=(kind == "deconv_residual"))
    if kind == "bilinear":
        return BilinearRefiner(scale)
    if scale % 4:
        raise ValueError(f"deconv+bilinear needs mm_refiner_scale divisible by 4 (deconv gives 4x), got {scale}")
    return BilinearRefiner(scale // 4, deconv=DeconvRefiner(channels, act=act))


def adaptive_merge(feature_map: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """[B, C, h, w] -> [B, H*W, C] image tokens by adaptive average pooling (paper: AdaPool(Z_HRes, (H, W)))."""
    b, c, h, w = feature_map.shape
    H, W = size
    if h % H == 0 and w % W == 0:
        # Same windows as adaptive_avg_pool2d, but torch's reductions average k identical values exactly, so a
        # nearest-upsampled map comes back bit-exact (the conversion's identity guarantee). Two reductions, the
        # first over the contiguous last axis, are faster than one over the two strided window axes.
        kh, kw = h // H, w // W
        merged = feature_map.reshape(b, c, h, W, kw).mean(-1).reshape(b, c, H, kh, W).mean(3)
    else:
        merged = F.adaptive_avg_pool2d(feature_map, size)
    return merged.flatten(2).transpose(1, 2)


def mask_pool(feature_map: torch.Tensor, region_masks: Sequence[Optional[torch.Tensor]]) -> List[torch.Tensor]:
    """Mean of the feature map inside each region mask, all regions of the batch in one batched matmul.

    feature_map: [B, C, h, w]; region_masks[b]: [R_b, Hm, Wm] float in [0, 1] (or None / R_b = 0), either
    - at the refined map's resolution, ``(Hm, Wm) == (h, w)`` (``process_regions(map_size=...)``: what the dataset,
      the servers and evaluation pass): each cell's value is the share of it the region covers, pooled as it is; or
    - in the processed image's geometry (``process_regions`` without ``map_size``, e.g. [R, 336, 336]): resized to
      (h, w) here with exact area weights -- the same numbers, at 12x the memory and an extra resize.
    Deciding by shape is unambiguous: resizing a mask to its own size is the identity. Either way a region smaller
    than one cell still weighs on the cell(s) it touches. Returns a list of [R_b, C] tensors.
    """
    B, C, h, w = feature_map.shape
    weights, counts = region_weights(region_masks, B, (h, w), feature_map.device)
    if weights is None:
        return [feature_map.new_zeros((0, C)) for _ in range(B)]
    feats = feature_map.flatten(2).transpose(1, 2)  # [B, h*w, C]
    pooled = torch.bmm(weights.to(feats.dtype), feats)  # [B, R_max, C]
    return [pooled[b, : counts[b]] for b in range(B)]


def region_weights(region_masks: Sequence[Optional[torch.Tensor]], batch: int, size: Tuple[int, int], device
                   ) -> Tuple[Optional[torch.Tensor], List[int]]:
    """The pooling weights of :func:`mask_pool`: [B, R_max, h*w] float32, each valid row summing to 1 (padded rows
    zero), and the region count of each sample; ``None`` weights when no sample has a region."""
    h, w = size
    if len(region_masks) != batch:
        raise ValueError(f"region_masks has {len(region_masks)} entries for a batch of {batch} images")
    for b, m in enumerate(region_masks):
        if m is not None and m.ndim != 3:
            raise ValueError(f"sample {b}: region masks must be [R, H, W], got shape {tuple(m.shape)}")
    counts = [0 if m is None else int(m.shape[0]) for m in region_masks]
    r_max = max(counts, default=0)
    if r_max == 0:
        return None, counts

    def cells(m):  # [R, h, w]: share of each cell covered by the region (resized here if not at the map's size)
        return area_resize(m.to(device=device, dtype=torch.float32), (h, w))

    if batch == 1:
        cell = cells(region_masks[0])[None]  # no padding copy for one image
    else:
        # Pad to [B, R_max, h, w] (each sample resized first: a batch may mix both kinds of masks); padded rows get
        # zero weight and are dropped by the callers.
        cell = torch.zeros((batch, r_max, h, w), dtype=torch.float32, device=device)
        for b, m in enumerate(region_masks):
            if counts[b]:
                cell[b, : counts[b]] = cells(m)
    # Area weights are positive, so a region has mass after resizing exactly when it had mass before.
    mass = cell.flatten(2).sum(-1)  # [B, R_max]
    valid = torch.arange(r_max, device=device)[None, :] < torch.tensor(counts, device=device)[:, None]
    empty = valid & (mass <= 0)
    if bool(empty.any()):
        b, r = [int(v) for v in empty.nonzero()[0]]
        raise ValueError(f"sample {b}: region {r + 1} has an empty mask (no pixel inside the processed image)")
    return cell.flatten(2) / mass.clamp(min=torch.finfo(mass.dtype).tiny)[..., None], counts


def refine_merge_and_pool(refiner: nn.Module, grid: torch.Tensor, size: Tuple[int, int],
                          region_masks: Sequence[Optional[torch.Tensor]]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """``adaptive_merge(refiner(grid), size)`` and ``mask_pool(refiner(grid), region_masks)`` -- without running the
    paper's last deconvolution on the whole map when it need not be.

    The ``deconv`` refiner ends in a stride-2, kernel-2 transposed convolution with nothing after it: each output cell
    (2i+a, 2j+b) is ``W[:, :, a, b]ᵀ z[i, j] + bias`` of one input cell z. Both readers of the map are weighted means,
    so they commute with it: a 2k×2k window's mean is ``mean_ab(W_ab)ᵀ`` (the k×k mean of z) + bias, and a region's
    mean is ``Σ_ab W_abᵀ`` (z pooled with the region's cells at offset (a, b)) + bias. The 4× larger map (19 of the
    refiner's 24 GFLOP on CLIP-L) is never made. ``deconv_residual``'s nearest-upsampled skip is pooled from the grid
    the same way, exactly (a converted checkpoint stays bit-identical on images). Equal to the full map's path to
    float rounding (``tests/test_region_encoder.py``). Other refiners, and windows that do not tile the map, take the
    full path.
    """
    B = grid.shape[0]
    H, W = size
    factorable = isinstance(refiner, DeconvRefiner) and grid.shape[-2] % H == 0 and grid.shape[-1] % W == 0
    if not factorable:
        fmap = refiner(grid)
        return adaptive_merge(fmap, size), mask_pool(fmap, region_masks)
    z = refiner.act(refiner.up1(grid))  # [B, C, h1, w1], the last deconvolution's input
    _, C, h1, w1 = z.shape
    weight, bias = refiner.up2.weight, refiner.up2.bias  # [C_in, C_out, 2, 2], [C_out]
    image = adaptive_merge(z, size) @ weight.mean((2, 3)) + bias  # [B, H*W, C]
    if refiner.residual:
        image = image + adaptive_merge(grid, size)
    weights, counts = region_weights(region_masks, B, (2 * h1, 2 * w1), grid.device)
    if weights is None:
        return image, [grid.new_zeros((0, C)) for _ in range(B)]
    R = weights.shape[1]
    cells = weights.view(B, R, h1, 2, w1, 2)
    by_offset = cells.permute(0, 1, 3, 5, 2, 4).reshape(B, R * 4, h1 * w1)  # rows (r, a, b) over z's cells
    pooled_z = torch.bmm(by_offset.to(z.dtype), z.flatten(2).transpose(1, 2)).view(B, R, 4, C)
    regions = torch.einsum("brkc,kco->bro", pooled_z, weight.permute(2, 3, 0, 1).reshape(4, C, -1)) + bias
    if refiner.residual:
        g_h, g_w = grid.shape[-2:]
        blocks = cells.view(B, R, g_h, h1 * 2 // g_h, g_w, w1 * 2 // g_w).sum((3, 5)).flatten(2)  # [B, R, g*g]
        regions = regions + torch.bmm(blocks.to(grid.dtype), grid.flatten(2).transpose(1, 2))
    return image, [regions[b, : counts[b]] for b in range(B)]

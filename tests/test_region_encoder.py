"""Refiner variants, adaptive merge and mask pooling against hand-computed values."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from rgpt_llava.area import area_weights
from rgpt_llava.model.region_encoder import (BilinearRefiner, DeconvRefiner, adaptive_merge, build_refiner,
                                             mask_pool, refine_merge_and_pool, refiner_scale)


def fmap_1c(values):
    """A [1, 1, h, w] feature map from a nested list."""
    return torch.tensor(values, dtype=torch.float32)[None, None]


def test_area_weights_by_hand():
    # 3 source pixels onto 2 cells: cell 0 = pixel 0 + half of pixel 1 (1.5 px), cell 1 = other half + pixel 2.
    w = area_weights(3, 2)
    assert torch.allclose(w, torch.tensor([[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]], dtype=torch.float64))
    # 336 px onto 96 cells: 3.5 px per cell, rows sum to 1.
    w = area_weights(336, 96)
    assert torch.allclose(w.sum(1), torch.ones(96, dtype=torch.float64))
    assert w[0, :4].tolist() == [2 / 7, 2 / 7, 2 / 7, 1 / 7]


def test_mask_pool_hand_computed_mean():
    # 4x4 map with two channels, masks at 8x8 (2x2 pixels per cell).
    f = torch.arange(32, dtype=torch.float32).reshape(1, 2, 4, 4)
    m = torch.zeros(3, 8, 8)
    m[0, 0:2, 0:4] = 1            # cells (0,0) and (0,1) fully
    m[1, 0, 0:2] = 1              # half of cell (0,0) ...
    m[1, 2:4, 2:4] = 1            # ... and all of cell (1,1): weights 0.5 and 1
    m[2, 7, 7] = 1                # one pixel: a quarter of cell (3,3), smaller than a cell
    pooled = mask_pool(f, [m])[0]
    cell = lambda y, x: f[0, :, y, x]  # noqa: E731
    assert torch.allclose(pooled[0], (cell(0, 0) + cell(0, 1)) / 2)
    assert torch.allclose(pooled[1], (0.5 * cell(0, 0) + 1.0 * cell(1, 1)) / 1.5)
    assert torch.allclose(pooled[2], cell(3, 3))


def test_mask_pool_non_integer_ratio_by_hand():
    # 2x2 map, 3x3 mask: the centre pixel is shared equally by all four cells -> the mean of the four cells.
    f = fmap_1c([[1.0, 2.0], [3.0, 10.0]])
    m = torch.zeros(1, 3, 3)
    m[0, 1, 1] = 1
    assert torch.allclose(mask_pool(f, [m])[0], torch.tensor([[4.0]]))
    # top-left pixel lies wholly in cell (0,0)
    m = torch.zeros(1, 3, 3)
    m[0, 0, 0] = 1
    assert torch.allclose(mask_pool(f, [m])[0], torch.tensor([[1.0]]))
    # soft mask: value 0.5 on pixel (0,0), 1 on pixel (2,2) -> weights 0.5*(2/3)^2 on cell(0,0), (2/3)^2 on cell(1,1)
    m = torch.zeros(1, 3, 3)
    m[0, 0, 0], m[0, 2, 2] = 0.5, 1.0
    assert torch.allclose(mask_pool(f, [m])[0], torch.tensor([[(0.5 * 1 + 1 * 10) / 1.5]]))


def test_mask_pool_batched_equals_loop_with_mixed_counts():
    torch.manual_seed(0)
    f = torch.randn(4, 16, 12, 12)
    masks = [(torch.rand(r, 42, 42) > 0.7).float() for r in (3, 0, 5, 1)]
    masks[1] = None if False else masks[1]
    pooled = mask_pool(f, masks)
    assert [p.shape for p in pooled] == [(3, 16), (0, 16), (5, 16), (1, 16)]
    for b, m in enumerate(masks):
        for r in range(m.shape[0]):
            one = mask_pool(f[b:b + 1], [m[r:r + 1]])[0][0]
            assert torch.allclose(pooled[b][r], one, atol=1e-5)
    # None means "no regions" for that sample
    assert mask_pool(f[:2], [None, masks[0]])[0].shape == (0, 16)


def test_mask_pool_empty_mask_names_region():
    f = torch.randn(2, 4, 4, 4)
    good = torch.ones(1, 8, 8)
    bad = torch.zeros(2, 8, 8)
    bad[0, 0, 0] = 1
    with pytest.raises(ValueError, match=r"sample 1: region 2 has an empty mask"):
        mask_pool(f, [good, bad])


def test_adaptive_merge_block_means_and_fallback():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    merged = adaptive_merge(x, (2, 2))  # [B, 4, C]
    assert merged.shape == (2, 4, 3)
    assert torch.allclose(merged[1, 3], x[1, :, 4:, 4:].mean(dim=(1, 2)))
    y = torch.randn(1, 5, 96, 96)
    assert torch.allclose(adaptive_merge(y, (5, 7)), F.adaptive_avg_pool2d(y, (5, 7)).flatten(2).transpose(1, 2))


def cfg(kind, **kw):
    return SimpleNamespace(mm_hidden_size=8, mm_refiner_type=kind, **kw)


@pytest.mark.parametrize("kind,scale", [("deconv", 4), ("deconv_residual", 4), ("bilinear", 16),
                                        ("deconv+bilinear", 16), ("none", 1)])
def test_refiner_output_scale(kind, scale):
    refiner = build_refiner(cfg(kind))
    out = refiner(torch.randn(2, 8, 6, 6))
    assert out.shape == (2, 8, 6 * scale, 6 * scale)
    assert refiner_scale(cfg(kind)) == scale   # what model.region_map_size() multiplies the patch grid by


def test_refiner_configurable_scale_and_errors():
    assert build_refiner(cfg("bilinear", mm_refiner_scale=4))(torch.randn(1, 8, 3, 3)).shape[-1] == 12
    assert build_refiner(cfg("deconv+bilinear", mm_refiner_scale=8))(torch.randn(1, 8, 3, 3)).shape[-1] == 24
    assert refiner_scale(cfg("bilinear", mm_refiner_scale=4)) == 4 and refiner_scale(cfg("deconv+bilinear",
                                                                                          mm_refiner_scale=8)) == 8
    with pytest.raises(ValueError, match="unknown mm_refiner_type 'conv'"):
        build_refiner(cfg("conv"))
    with pytest.raises(ValueError, match="divisible by 4"):
        build_refiner(cfg("deconv+bilinear", mm_refiner_scale=6))
    with pytest.raises(ValueError, match="mm_refiner_act"):
        build_refiner(cfg("deconv", mm_refiner_act="relu6"))


def test_deconv_variants():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 5, 5)
    paper = build_refiner(cfg("deconv"))
    assert isinstance(paper, DeconvRefiner) and not paper.residual
    assert paper.up1.kernel_size == (2, 2) and paper.up1.stride == (2, 2)
    residual = build_refiner(cfg("deconv_residual"))
    # residual variant at init: exact nearest-neighbour upsampling, which the merge maps back exactly
    up = residual(x)
    assert torch.equal(up, F.interpolate(x, scale_factor=4, mode="nearest"))
    assert torch.equal(adaptive_merge(up, (5, 5)), x.flatten(2).transpose(1, 2))
    # ...and it still learns: the last deconvolution receives gradient
    residual(x).pow(2).sum().backward()
    assert residual.up2.weight.grad.abs().sum() > 0
    # no activation when asked
    assert isinstance(build_refiner(cfg("deconv", mm_refiner_act="none")).act, torch.nn.Identity)
    assert isinstance(build_refiner(cfg("bilinear")), BilinearRefiner)


@pytest.mark.parametrize("src,dst", [((336, 336), (96, 96)), ((56, 56), (16, 16)), ((50, 37), (7, 11)),
                                     ((8, 8), (16, 16)), ((12, 9), (12, 9))])
def test_blockwise_area_resize_equals_dense(src, dst):
    from rgpt_llava.area import area_resize
    torch.manual_seed(0)
    m = torch.rand(2, 3, *src, dtype=torch.float64)
    dense = area_weights(src[0], dst[0]) @ m @ area_weights(src[1], dst[1]).T
    out = area_resize(m, dst)
    assert out.shape == (2, 3, *dst)
    assert torch.allclose(out, dense, atol=1e-12)


def full_map_path(refiner, grid, size, masks):
    fmap = refiner(grid)
    return adaptive_merge(fmap, size), mask_pool(fmap, masks)


@pytest.mark.parametrize("kind", ["deconv", "deconv_residual", "bilinear"])
@pytest.mark.parametrize("size", [(6, 6), (3, 3), (4, 4)])
def test_merge_and_pool_without_the_full_map_equal_the_full_maps(kind, size):
    torch.manual_seed(0)
    refiner = build_refiner(cfg(kind))
    if kind == "deconv_residual":   # a trained one: its last deconvolution is no longer zero
        torch.nn.init.normal_(refiner.up2.weight, std=0.2)
        torch.nn.init.normal_(refiner.up2.bias)
    grid = torch.randn(2, 8, 6, 6, requires_grad=True)
    masks = [(torch.rand(3, 24, 24) > 0.6).float(),                       # at the refined map's resolution
             torch.stack([torch.zeros(84, 84).index_fill_(0, torch.arange(10, 40), 1),
                          torch.ones(84, 84)]) * torch.rand(84, 84)]       # at an image's, resized in the pooling
    ours = refine_merge_and_pool(refiner, grid, size, masks)
    theirs = full_map_path(refiner, grid, size, masks)
    assert ours[0].shape == theirs[0].shape == (2, size[0] * size[1], 8)
    assert [r.shape for r in ours[1]] == [r.shape for r in theirs[1]] == [(3, 8), (2, 8)]
    for a, b in zip([ours[0], *ours[1]], [theirs[0], *theirs[1]]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    # the same gradients reach the refiner and its input
    loss = lambda out: out[0].square().sum() + sum((r * torch.arange(8.0)).sum() for r in out[1])
    g_ours = torch.autograd.grad(loss(ours), [grid, *refiner.parameters()], allow_unused=True)
    g_theirs = torch.autograd.grad(loss(full_map_path(refiner, grid, size, masks)), [grid, *refiner.parameters()],
                                   allow_unused=True)
    for a, b in zip(g_ours, g_theirs):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-4, rtol=1e-4))


def test_merge_and_pool_keep_the_residual_refiners_identity_exact():
    # a converted LLaVA checkpoint: the zero-initialised branch adds exactly nothing, image tokens are the grid
    torch.manual_seed(0)
    grid = torch.randn(1, 8, 5, 5)
    image, regions = refine_merge_and_pool(build_refiner(cfg("deconv_residual")), grid, (5, 5), [None])
    assert torch.equal(image, grid.flatten(2).transpose(1, 2)) and regions[0].shape == (0, 8)
    # a region of one grid cell (4x4 refined cells) is that cell's feature, to rounding
    mask = torch.zeros(1, 20, 20)
    mask[0, 8:12, 4:8] = 1
    _, regions = refine_merge_and_pool(build_refiner(cfg("deconv_residual")), grid, (5, 5), [mask])
    assert torch.allclose(regions[0][0], grid[0, :, 2, 1])
    with pytest.raises(ValueError, match="region 1 has an empty mask"):
        refine_merge_and_pool(build_refiner(cfg("deconv")), grid, (5, 5), [torch.zeros(1, 20, 20)])

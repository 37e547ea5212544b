"""Region geometry must match LLaVA-1.5's own image preprocessing pixel for pixel.

The ground truth is LLaVA's real pipeline (``llava.mm_utils.process_images`` with a CLIP-L/336 processor) run on real,
non-square photos; everything else (identity between region formats, area bookkeeping, error messages) is checked
against numbers derived by hand."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from transformers import CLIPImageProcessor

from llava.mm_utils import process_images
from rgpt_llava.geometry import Region, image_geometry, parse_region, process_regions, transform_box

IMAGE_DIR = Path(__file__).resolve().parent / "assets" / "images"
PHOTOS = {"astronaut": (512, 512), "chelsea": (451, 300), "coffee": (600, 400), "rocket": (640, 427),
          "motorcycle_left": (741, 500)}
CROP_MODES = ["square", None]          # LLaVA's non-'pad' branch: resize + centre crop, no padding
MODES = ["pad", "square"]
MAGENTA = (255, 0, 255)

# pycocotools' decode trips a numpy-2 DeprecationWarning inside the library itself; it is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def make_processor(shortest_edge=336, crop=(336, 336), do_center_crop=True):
    # LLaVA-1.5 / CLIP-L-336 settings, built offline.
    return CLIPImageProcessor(size={"shortest_edge": shortest_edge},
                              crop_size={"height": crop[0], "width": crop[1]}, do_center_crop=do_center_crop,
                              image_mean=[0.48145466, 0.4578275, 0.40821073],
                              image_std=[0.26862954, 0.26130258, 0.27577711], resample=3)


PROC = make_processor()


def load_photo(name):
    path = IMAGE_DIR / f"{name}.jpg"
    assert path.is_file(), f"test photo {path} is missing (restore it with git checkout)"
    img = Image.open(path).convert("RGB")
    assert img.size == PHOTOS[name]
    return img


def rect_mask(size, box, dtype=bool):
    w, h = size
    m = np.zeros((h, w), dtype=dtype)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = 1
    return m


def uncompressed_rle(mask):
    """COCO 'iscrowd' style RLE: run lengths over the column-major flattening, starting with a run of zeros."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    edges = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"size": [mask.shape[0], mask.shape[1]], "counts": counts}


def boxes_for(size):
    """A box fully inside, one touching the right/top borders (partly cut in crop mode) and a thin one."""
    w, h = size
    return [(w // 20 + 1, h * 3 // 10 + 1, w * 2 // 5, h * 3 // 4),
            (w - 150, 0, w, 77),
            (w // 2 - 3, h // 3, w // 2 + 2, h // 3 + 40)]


# ----------------------------------------------------------------------------------------------------------------------
# Identity between formats
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(PHOTOS))
def test_box_equals_mask_polygon_rle(name, mode, tmp_path):
    img = load_photo(name)
    w, h = img.size
    for b, box in enumerate(boxes_for(img.size)):
        x1, y1, x2, y2 = box
        m = rect_mask(img.size, box)
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        png = tmp_path / f"mask{b}.png"
        Image.fromarray(m.astype(np.uint8) * 255).save(png)
        rle_json = tmp_path / f"rle{b}.json"
        rle_json.write_text(json.dumps({"size": rle["size"], "counts": rle["counts"].decode("ascii")}))
        poly = [x1, y1, x2, y1, x2, y2, x1, y2]
        specs = [
            list(box),
            f"box:{x1},{y1},{x2},{y2}",
            {"box": [float(v) for v in box]},
            {"bbox": [x1, y1, x2 - x1, y2 - y1]},
            m,                                                   # bool
            m.astype(np.uint8) * 255,                            # 0/255
            torch.from_numpy(m.astype(np.int64)),                # 0/1 tensor
            m.astype(np.float32),                                # float in [0, 1]
            Image.fromarray(m.astype(np.uint8) * 255),           # PIL 'L'
            {"mask": str(png)},
            f"mask:{png}",
            "polygon:" + ",".join(map(str, poly)),
            {"segmentation": [poly], "bbox": [0, 0, 5, 5]},      # segmentation wins over bbox
            {"segmentation": rle},                               # compressed bytes
            {"segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}},  # compressed str
            {"segmentation": uncompressed_rle(m)},               # uncompressed list counts
            f"rle:{rle_json}",
        ]
        out = process_regions(specs, img.size, PROC, mode)
        assert out.shape == (len(specs), 336, 336) and out.dtype == torch.float32
        for k in range(1, len(specs)):
            assert torch.equal(out[0], out[k]), f"{name} {mode} box {box}: spec {k} differs from the box"
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_boxes_within_one_pixel_are_clipped_silently():
    w, h = PHOTOS["chelsea"]
    out = process_regions([(-0.9, -1.0, w + 1.0, h + 0.3), (0, 0, w, h), "polygon:-1,-1,452,-1,452,301,-1,301"],
                          (w, h), PROC, "pad")
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    assert parse_region((-0.9, -1.0, w + 1.0, h + 0.3), 0, (w, h)).box == (0.0, 0.0, float(w), float(h))


# ----------------------------------------------------------------------------------------------------------------------
# Agreement with LLaVA's real pixel pipeline
# ----------------------------------------------------------------------------------------------------------------------
def paint_fraction(img, box, proc, mode):
    """Per processed pixel, the share of the magenta paint LLaVA's pipeline put there (0 = untouched photo, 1 = paint).

    Computed on the channel where paint and photo differ most, so it is well conditioned everywhere."""
    cfg = SimpleNamespace(image_aspect_ratio=mode)
    arr = np.array(img)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = MAGENTA
    before = process_images([img], proc, cfg)[0]
    after = process_images([Image.fromarray(arr)], proc, cfg)[0]
    solid = process_images([Image.new("RGB", img.size, MAGENTA)], proc, SimpleNamespace(image_aspect_ratio="square"))
    solid = solid[0][:, solid.shape[2] // 2, solid.shape[3] // 2][:, None, None]
    den = solid - before
    ch = den.abs().argmax(0, keepdim=True)
    assert float(den.gather(0, ch).abs().min()) > 0.5  # magenta is far from every photo pixel on some channel
    return ((after - before).gather(0, ch) / den.gather(0, ch))[0], (after - before).abs().amax(0)


def dilate(mask, r):
    return torch.nn.functional.max_pool2d(mask.float()[None, None], 2 * r + 1, 1, r)[0, 0] > 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(PHOTOS))
def test_masks_match_llava_pixels(name, mode):
    """Paint a rectangle, run LLaVA's process_images, and compare where the paint landed with our mask.

    Bicubic resampling is not area averaging, so values differ a little at the edges (measured < 0.2 of the paint),
    but any pad or crop offset error of even one output pixel makes them differ by > 0.6 along a whole edge."""
    img = load_photo(name)
    for box in boxes_for(img.size):
        frac, diff = paint_fraction(img, box, PROC, mode)
        mask = process_regions([box], img.size, PROC, mode)[0]
        assert frac.shape == mask.shape
        assert float((frac - mask).abs().max()) < 0.3, (name, mode, box)
        # Fully covered pixels carry the paint; nothing changes beyond the bicubic kernel's reach (2 output pixels)
        # around the pixels the mask touches.
        full = mask >= 1 - 1e-6
        assert bool(full.any()) and float(frac[full].min()) > 0.8
        assert not bool(((diff > 0) & ~dilate(mask > 0, 2)).any())
        # A one-pixel shift of our mask would be caught by the same comparison.
        assert float((frac - torch.roll(mask, 1, dims=1)).abs().max()) > 0.6


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("proc_args", [dict(shortest_edge=224, crop=(200, 180)),      # pad mode crops too
                                       dict(shortest_edge=100, crop=(121, 121)),      # crop larger than image
                                       dict(shortest_edge=160, do_center_crop=False)])
def test_other_processor_settings_match_llava(mode, proc_args):
    img = load_photo("chelsea")
    proc = make_processor(**proc_args)
    box = (200, 40, 330, 210)
    frac, diff = paint_fraction(img, box, proc, mode)
    mask = process_regions([box], img.size, proc, mode)[0]
    assert frac.shape == mask.shape == image_geometry(img.size, proc, mode).out_size
    assert float((frac - mask).abs().max()) < 0.3
    assert not bool(((diff > 0) & ~dilate(mask > 0, 2)).any())


# ----------------------------------------------------------------------------------------------------------------------
# Hand-computed geometry
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PHOTOS))
def test_pad_mode_preserves_area(name):
    w, h = PHOTOS[name]
    s = max(w, h)
    boxes = [(10, 20, 110, 70), (0, 0, w, h), (w - 7, h - 3, w, h)]
    out = process_regions(boxes, (w, h), PROC, "pad")
    for (x1, y1, x2, y2), m in zip(boxes, out):
        expected = (x2 - x1) * (y2 - y1) * (336 / s) ** 2
        assert float(m.double().sum()) == pytest.approx(expected, rel=1e-5)


def test_pad_offsets_by_hand():
    # chelsea 451x300 is pasted at y = (451 - 300) // 2 = 75 on a 451 square, then scaled by 336/451.
    geo = image_geometry((451, 300), PROC, "pad")
    assert (geo.y.pad, geo.x.pad, geo.out_size) == (75, 0, (336, 336))
    x1, y1, x2, y2 = transform_box((0, 0, 451, 300), (451, 300), PROC, "pad")
    assert (x1, x2) == (0.0, 336.0)
    assert y1 == pytest.approx(75 * 336 / 451) and y2 == pytest.approx(375 * 336 / 451)
    full = process_regions(["box:0,0,451,300"], (451, 300), PROC, "pad")[0]
    # Rows fully above the pasted photo are empty, rows fully inside it are 1.
    assert float(full[: math.floor(y1)].sum()) == 0.0 and float(full[math.ceil(y2):].sum()) == 0.0
    assert bool((full[math.ceil(y1): math.floor(y2)] == 1).all())
    # A tall image is pasted horizontally instead: 300x451 -> x offset 75.
    assert image_geometry((300, 451), PROC, "pad").x.pad == 75


def test_crop_mode_keeps_visible_part_by_hand():
    # chelsea 451x300, no padding: shortest edge 300 -> 336 (x1.12), width int(336 * 451 / 300) = 505,
    # centre crop keeps resized columns [(505 - 336) // 2, + 336) = [84, 420).
    geo = image_geometry((451, 300), PROC, "square")
    assert (geo.x.resized, geo.y.resized, geo.x.offset, geo.y.offset) == (505, 336, 84, 0)
    box = (0, 100, 200, 150)                              # left part cut by the crop
    visible_w = 200 * 505 / 451 - 84
    expected = visible_w * (50 * 1.12)
    m = process_regions([box], (451, 300), PROC, "square")[0]
    assert float(m.double().sum()) == pytest.approx(expected, rel=1e-5)
    assert transform_box(box, (451, 300), PROC, "square") == pytest.approx((0.0, 112.0, visible_w, 168.0))
    # Missing / None aspect ratio and a LLaVA config object behave like 'square'.
    assert torch.equal(m, process_regions([box], (451, 300), PROC, None)[0])
    assert torch.equal(m, process_regions([box], (451, 300), PROC, SimpleNamespace(image_aspect_ratio="square"))[0])
    assert torch.equal(m, process_regions([box], (451, 300), PROC, SimpleNamespace())[0])


def test_float_box_soft_coverage():
    region = parse_region("box:10.25,20.5,12.75,21.5", 0, (451, 300))
    values, origin = region.rasterize(451, 300)
    assert origin == (10, 20)
    np.testing.assert_array_equal(values, np.outer([0.5, 0.5], [0.75, 1.0, 0.75]))
    # The same soft values given as a float mask take the same path: identical output.
    soft = np.zeros((300, 451))
    soft[20:22, 10:13] = values
    out = process_regions([region, soft], (451, 300), PROC, "pad")
    assert torch.equal(out[0], out[1])
    assert float(out[0].double().sum()) == pytest.approx(2.5 * 1.0 * (336 / 451) ** 2, rel=1e-5)
    # Integer boxes rasterise to exact binary rectangles over pixels x1..x2-1, y1..y2-1.
    values, origin = parse_region([3, 4, 6, 9], 0, (451, 300)).rasterize(451, 300)
    assert origin == (3, 4) and values.shape == (5, 3) and bool((values == 1).all())


def test_sub_pixel_region_keeps_positive_mass():
    out = process_regions(["box:100.2,100.2,100.4,100.5", rect_mask((741, 500), (600, 400, 601, 401))],
                          (741, 500), PROC, "pad")
    assert float(out[0].double().sum()) == pytest.approx(0.2 * 0.3 * (336 / 741) ** 2, rel=1e-4)
    assert float(out[1].double().sum()) == pytest.approx((336 / 741) ** 2, rel=1e-4)
    assert float(out.amax()) < 1.0 and bool((out.flatten(1).amax(1) > 0).all())


def test_many_regions_and_empty_list():
    w, h = PHOTOS["rocket"]
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(300):
        x1, y1 = rng.uniform(0, w - 10), rng.uniform(0, h - 10)
        boxes.append([x1, y1, min(w, x1 + rng.uniform(1, 300)), min(h, y1 + rng.uniform(1, 300))])
    out = process_regions(boxes, (w, h), PROC, "pad")
    assert out.shape == (300, 336, 336)
    areas = torch.tensor([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes], dtype=torch.float64) * (336 / w) ** 2
    torch.testing.assert_close(out.double().sum((1, 2)), areas, rtol=1e-5, atol=1e-4)
    empty = process_regions([], (w, h), PROC, "square")
    assert empty.shape == (0, 336, 336) and empty.dtype == torch.float32


def test_region_objects_and_mask_modes():
    w, h = 40, 30
    r = Region(index=0, kind="box", box=(5, 6, 15, 16))           # hand-built Region
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[6:16, 5:15, 2] = 7                                       # only blue nonzero -> inside
    pal = Image.fromarray(rect_mask((w, h), (5, 6, 15, 16)).astype(np.uint8)).convert("P")
    one = Image.fromarray(rect_mask((w, h), (5, 6, 15, 16))).convert("1")
    out = process_regions([r, Image.fromarray(rgb), pal, one, rect_mask((w, h), (5, 6, 15, 16))[None]],
                          (w, h), PROC, "pad")
    for k in range(1, len(out)):
        assert torch.equal(out[0], out[k])
    region = parse_region({"segmentation": [[5, 6, 15, 6, 15, 16, 5, 16]]}, 3, (w, h))
    assert (region.index, region.kind, region.box) == (3, "polygon", (5.0, 6.0, 15.0, 16.0))


# ----------------------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------------------
GOOD = "box:200,100,220,120"   # visible in both pad and crop modes
SIZE = PHOTOS["chelsea"]


def bad(spec, mode="pad", size=SIZE):
    """Process [good, good, spec] so the error must name region 3 (1-based, like <region3>)."""
    return process_regions([GOOD, GOOD, spec], size, PROC, mode)


@pytest.mark.parametrize("spec, pattern", [
    ("circle:1,2,3", r"region 3 \(circle:1,2,3\).*unknown region kind"),
    ("1,2,3,4", r"region 3 .*unknown region kind"),
    ("box:1,2,x,4", r"region 3 .*cannot parse the box numbers"),
    ("box:1,2,3", r"region 3 .*box needs 4 coordinates.*got 3"),
    ([1, 2, 3, 4, 5], r"region 3 .*box needs 4 coordinates.*got 5"),
    ({"box": [1, 2, 3, 4, 5]}, r"region 3 .*box needs 4 coordinates"),
    ({"bbox": [1, 2, 0, 4]}, r"region 3 .*w > 0 and h > 0"),
    ("polygon:1,2,30,2,30,40,1", r"region 3 .*odd number of coordinates"),
    ("polygon:1,2,30,2", r"region 3 .*too short"),
    ({"segmentation": [[1, 2, 30, 2, 30]]}, r"region 3 .*odd number"),
    ("box:50,10,40,20", r"region 3 .*x2 <= x1"),
    ("box:10,50,40,50", r"region 3 .*y2 <= y1"),
    ("box:10,10,453,20", r"region 3 .*x=453 lies outside the 451x300 image"),
    ("box:10,-1.5,40,20", r"region 3 .*y=-1.5 lies outside the 451x300 image"),
    ([0.1, 0.2, 0.5, 0.6, ], None),   # normalised box: valid (tiny) region, not an error
    ("polygon:10,10,500,10,500,40", r"region 3 .*outside the 451x300 image"),
    (np.ones((20, 10), bool), r"region 3 .*mask size 10x20 \(WxH\) does not match the image size 451x300"),
    (np.zeros((300, 451), bool), r"region 3 .*mask is empty"),
    (np.full((300, 451), 2.0), r"region 3 .*\[0, 1\]"),
    (np.ones((300, 451, 3), np.uint8), r"region 3 .*must be 2-D"),
    ("polygon:10,10,20,20,30,30", r"region 3 .*polygon is empty"),
    ({"segmentation": {"size": [300, 451], "counts": [300 * 451]}}, r"region 3 .*RLE is empty"),
    ({"segmentation": {"size": [451, 300], "counts": [300 * 451]}}, r"region 3 .*RLE size \[h, w\] = \[451, 300\]"),
    ({"segmentation": {"size": [300, 451], "counts": [5, 6]}}, r"region 3 .*sum to h\*w"),
    ({"shape": "circle"}, r"region 3 .*unknown region dict keys"),
    (object(), r"region 3 .*unsupported region spec"),
])
def test_bad_regions_raise_value_error(spec, pattern):
    if pattern is None:
        assert bad(spec).shape == (3, 336, 336)
        return
    with pytest.raises(ValueError, match=pattern):
        bad(spec)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"region 3 .*mask file not found"):
        bad(f"mask:{tmp_path / 'nope.png'}")
    with pytest.raises(FileNotFoundError, match=r"region 3 .*RLE file not found"):
        bad(f"rle:{tmp_path / 'nope.json'}")
    with pytest.raises(FileNotFoundError, match=r"region 3 .*mask file not found"):
        bad({"mask": str(tmp_path / "nope.png")})


def test_rle_file_with_wrong_size(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"size": [10, 10], "counts": [100]}))
    with pytest.raises(ValueError, match=r"region 3 .*RLE size \[h, w\] = \[10, 10\].*height 300, width 451"):
        bad(f"rle:{path}")


def test_region_cut_away_by_crop():
    # Crop mode keeps original x in [84 * 451 / 505, 420 * 451 / 505) = [75.02, 375.08).
    with pytest.raises(ValueError, match=r"region 3 .*cut away by the centre crop"):
        bad("box:0,0,75,50", mode="square")
    with pytest.raises(ValueError, match=r"region 3 .*cut away by the centre crop"):
        bad(rect_mask(SIZE, (380, 10, 451, 290)), mode="square")
    with pytest.raises(ValueError, match=r"region 1 .*cut away"):
        transform_box((0, 0, 75, 50), SIZE, PROC, "square")
    # Barely visible: kept, with its visible sliver only.
    sliver = bad("box:0,0,76,50", mode="square")[2]
    assert float(sliver.double().sum()) == pytest.approx((76 * 505 / 451 - 84) * 50 * 1.12, rel=1e-4)
    # The same boxes are fine when padding keeps the whole photo.
    assert bad("box:0,0,75,50", mode="pad").shape == (3, 336, 336)


def test_anyres_not_implemented():
    with pytest.raises(NotImplementedError, match="anyres"):
        process_regions([GOOD], SIZE, PROC, "anyres")


# ----------------------------------------------------------------------------------------------------------------------
# Masks at the refined map's resolution
# ----------------------------------------------------------------------------------------------------------------------
MAP = (96, 96)   # CLIP-L/336's 24x24 patch grid after the paper's deconv refiner


def map_specs(size):
    w, h = size
    ellipse = np.zeros((h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    ellipse[((xx - w * 0.6) / (w * 0.2)) ** 2 + ((yy - h * 0.5) / (h * 0.3)) ** 2 <= 1] = True
    return ["box:30,40,300,220",                          # integer box
            (12.3, 7.8, 150.6, 99.1),                     # fractional box
            f"polygon:200,20,{w - 10},60,{w // 2},{h - 5}",  # polygon
            ellipse,                                      # mask
            "box:300.2,100.2,300.4,100.5",                # far smaller than a cell (3.5 px of 336 per cell)
            rect_mask(size, (w // 2, h - 2, w // 2 + 1, h - 1)),  # one pixel near the bottom edge
            (0, 0, 160, 90)]                              # cut partly by the centre crop when not padding


@pytest.mark.parametrize("mode", ["pad", "square"])
def test_map_resolution_masks_pool_like_full_resolution(mode):
    """process_regions(map_size=...) gives the cells the model's pooling computes from the full-resolution masks,
    and the pooled features are the same to float32 rounding, for every kind of region, sub-cell ones included."""
    from rgpt_llava.area import area_resize
    from rgpt_llava.model.region_encoder import mask_pool

    size = (741, 500)
    specs = map_specs(size)
    full = process_regions(specs, size, PROC, mode)
    cells = process_regions(specs, size, PROC, mode, map_size=MAP)
    assert full.shape == (len(specs), 336, 336) and cells.shape == (len(specs), *MAP)
    assert cells.dtype == torch.float32
    assert torch.allclose(cells, area_resize(full, MAP), rtol=1e-5, atol=1e-7)
    # a region keeps its weight, a sub-cell one too: its area, in cells of the map (3.5 x 3.5 processed pixels)
    assert torch.allclose(cells.double().sum((1, 2)), full.double().sum((1, 2)) / 3.5 ** 2, rtol=1e-5)
    assert 0 < float(cells[4].sum()) < 0.01
    assert bool((cells.flatten(1).amax(1) > 0).all())
    torch.manual_seed(0)
    fmap = torch.randn(2, 64, *MAP)
    # full-resolution and map-resolution masks in one batch: the model decides by shape
    from_full, from_cells = mask_pool(fmap, [full, cells])
    assert torch.allclose(mask_pool(fmap[1:], [cells])[0], from_cells)
    reference = mask_pool(fmap[:1], [full])[0]
    ours = mask_pool(fmap[:1], [cells])[0]
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-5)
    assert torch.allclose(from_full, reference, atol=1e-6)


def test_map_resolution_edge_cases():
    size = (451, 300)
    assert process_regions([], size, PROC, "pad", map_size=MAP).shape == (0, *MAP)
    # the crop's own size names the cut, not the map's
    with pytest.raises(ValueError, match=r"region 1 .*cut away by the centre crop to 336x336"):
        process_regions(["box:0,0,75,50"], size, PROC, "square", map_size=MAP)
    # a box and the same rectangle as a mask: bit-identical at the map's resolution too
    same = process_regions(["box:30,40,300,220", rect_mask(size, (30, 40, 300, 220))], size, PROC, "pad", map_size=MAP)
    assert torch.equal(same[0], same[1])
    # a map as large as the processed image is the full-resolution mask itself
    assert torch.equal(process_regions([GOOD], size, PROC, "pad", map_size=(336, 336)),
                       process_regions([GOOD], size, PROC, "pad"))

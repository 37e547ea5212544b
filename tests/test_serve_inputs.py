"""Request inputs: REGION JSON (checked against region.schema.json, then the same geometry as the CLI and training),
images (base64, data URLs, EXIF orientation, an alpha channel as a mask), and malformed input of every kind."""
import base64
import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image
from pycocotools import mask as mask_utils
from transformers import CLIPImageProcessor

from rgpt_llava.geometry import process_regions
from rgpt_llava.serve import inputs as I

OVERFLOW = mask_utils.encode(np.asfortranarray(np.ones((100, 100), np.uint8)))["counts"].decode()
PROC = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
SIZE = (80, 60)  # width, height


def png_data_url(image: Image.Image, fmt="PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def rect(w, h, box):
    m = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = 255
    return m


def masks(items):
    return process_regions(I.parse_regions(items, SIZE), SIZE, PROC, "pad")


def test_every_region_form_gives_the_cli_and_training_masks():
    box = [10, 5, 50, 45]
    rle = mask_utils.encode(np.asfortranarray(rect(80, 60, box) > 0).astype(np.uint8))
    rle = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}
    forms = [{"box": box}, {"polygon": [10, 5, 50, 5, 50, 45, 10, 45]}, {"rle": rle},
             {"mask": png_data_url(Image.fromarray(rect(80, 60, box)))}]
    got = masks([(f, f"r{k}") for k, f in enumerate(forms)])
    cli = process_regions(["box:10,5,50,45"], SIZE, PROC, "pad")[0]
    for k in range(4):
        assert torch.equal(got[k], cli), forms[k]
    # an uncompressed RLE and several polygons are REGION too
    flat = rect(80, 60, box).T.reshape(-1) > 0
    counts, last, run = [], False, 0
    for v in flat:
        if v != last:
            counts.append(run)
            run, last = 0, v
        run += 1
    counts.append(run)
    two = masks([({"rle": {"size": [60, 80], "counts": counts}}, "a"),
                 ({"polygon": [[10, 5, 30, 5, 30, 45, 10, 45], [30, 5, 50, 5, 50, 45, 30, 45]]}, "b")])
    assert torch.equal(two[0], cli) and torch.equal(two[1], cli)


@pytest.mark.parametrize("region,message", [
    ({"box": [1, 2, 3]}, r"box: .*too short"),
    ({"box": [1, 2, 3, "4"]}, r"box\[3\]: '4' is not of type 'number'"),
    ({"box": [10, 10, 5, 20]}, r"x2 <= x1"),
    ({"box": [0, 0, 500, 20]}, r"outside the 80x60 image"),
    ({"box": [float("nan"), 0, 5, 5]}, r"non-finite"),
    ({"box": [0, 0, 5, 5], "label": "dog"}, r"unknown REGION field\(s\) \['label'\]"),
    ({"box": [0, 0, 5, 5], "polygon": [0, 0, 5, 0, 5, 5]}, r"exactly one of box, polygon, rle, mask"),
    ({}, r"exactly one of"),
    ([0, 0, 5, 5], r"must be an object"),
    ({"polygon": [0, 0, 5, 0]}, r"polygon: .*(too short|not valid)"),
    ({"rle": {"size": [60, 80]}}, r"rle: 'counts' is a required property"),
    ({"rle": {"size": [10, 10], "counts": [100]}}, r"does not match the image"),
    ({"rle": {"size": [60, 80], "counts": [5]}}, r"sum to h\*w"),
    # a string whose runs overflow the mask (pycocotools would write past its buffer): refused before decoding
    ({"rle": {"size": [60, 80], "counts": OVERFLOW}}, r"compressed RLE counts sum to 10000, not h\*w = 4800"),
    ({"rle": {"size": [60, 80], "counts": "not an RLE"}}, r"not a compressed RLE character"),
    ({"mask": "data:image/png;base64,@@@"}, r"not valid base64"),
    ({"mask": "data:image/png;base64," + base64.b64encode(b"not a png").decode()}, r"cannot decode the mask"),
    ({"mask": png_data_url(Image.new("L", (10, 10)))}, r"does not match the image size 80x60"),
    ({"mask": png_data_url(Image.new("L", (80, 60)))}, r"mask is empty"),
    ({"mask": "/etc/passwd"}, r"mask: .*does not match"),
])
def test_bad_regions_are_named(region, message):
    with pytest.raises(I.InputError, match=message) as e:
        masks([({"box": [0, 0, 10, 10]}, "ok"), (region, "messages[0].content[2].region")])
    assert e.value.param == "messages[0].content[2].region"


def test_region_limit_names_the_first_region_over_it():
    items = [({"box": [0, 0, 10, 10]}, f"r{k}") for k in range(5)]
    with pytest.raises(I.InputError, match="5 regions in one request; the limit is 4") as e:
        I.parse_regions(items, SIZE, max_regions=4)
    assert e.value.param == "r4"


def test_the_schema_file_is_the_one_checked():
    schema = I.region_schema()
    assert [d["$ref"].rsplit("/", 1)[1] for d in schema["oneOf"]] == list(I.REGION_KINDS)
    from jsonschema import Draft202012Validator
    Draft202012Validator.check_schema(schema)
    v = Draft202012Validator(schema)
    assert v.is_valid({"box": [1, 2, 3, 4]}) and not v.is_valid({"box": [1, 2, 3, 4], "x": 1})


def test_exif_orientation_is_applied(tmp_path):
    # a phone photo: pixels stored 40 wide x 20 high, EXIF orientation 6 (shown rotated 90 degrees clockwise)
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)                 # left half red in storage = top half red as shown
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    assert Image.open(path).size == (40, 20)     # PIL alone does not rotate
    shown = I.load_image_file(str(path))
    assert shown.size == (20, 40)
    arr = np.asarray(shown.convert("RGB")).astype(int)
    assert arr[:18, :, 0].mean() > 200 and arr[22:, :, 0].mean() < 60   # red on top, as a viewer shows it
    via_base64 = I.decode_image(base64.b64encode(path.read_bytes()).decode(), "images[0]")
    assert via_base64.size == (20, 40)


def test_alpha_channel_is_one_mask():
    rgba = Image.new("RGBA", (80, 60), (10, 20, 30, 0))
    rgba.paste((10, 20, 30, 255), (10, 5, 50, 45))
    rgb, alpha = I.split_alpha(I.decode_image(png_data_url(rgba), "img"), "img")
    assert rgb.mode == "RGB" and np.asarray(rgb)[0, 0].tolist() == [10, 20, 30]
    got = masks([(alpha, "alpha")])[0]
    assert torch.equal(got, process_regions(["box:10,5,50,45"], SIZE, PROC, "pad")[0])
    opaque = Image.new("RGBA", (8, 8), (1, 2, 3, 255))
    assert I.split_alpha(opaque, "img")[1] is None
    with pytest.raises(I.InputError, match="alpha channel .* is empty"):
        I.split_alpha(Image.new("RGBA", (8, 8), (1, 2, 3, 0)), "img")


@pytest.mark.parametrize("data,message", [
    (123, "expected a base64 image"),
    ("", "expected a base64 image"),
    ("data:text/plain;base64,aGk=", "must look like data:image/png"),
    ("!!!", "not valid base64"),
    (base64.b64encode(b"GIF89a truncated").decode(), "cannot decode the image"),
])
def test_bad_images_are_named(data, message):
    with pytest.raises(I.InputError, match=message) as e:
        I.decode_image(data, "images[0]")
    assert e.value.param == "images[0]"


def test_decompression_bombs_are_refused(monkeypatch):
    monkeypatch.setattr(I, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(I.InputError, match="more than 100 pixels"):
        I.decode_image(png_data_url(Image.new("RGB", (40, 40))), "img")
    assert Image.MAX_IMAGE_PIXELS != 50            # the process-wide setting is restored


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10 ** 12, max_value=10 ** 12)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
kinds = st.sampled_from(["box", "polygon", "rle", "mask", "bbox", "points"])
region_like = st.one_of(json_values, st.dictionaries(kinds, json_values, min_size=1, max_size=2),
                        st.builds(lambda n: {"box": n}, st.lists(st.floats() | st.integers(), max_size=6)),
                        st.builds(lambda n: {"polygon": n}, st.lists(st.floats(-100, 200) | st.integers(-5, 300),
                                                                     max_size=12)),
                        st.builds(lambda s, c: {"rle": {"size": s, "counts": c}},
                                  st.lists(st.integers(-3, 100), max_size=3),
                                  st.lists(st.integers(-2, 5000), max_size=5) | st.text(max_size=10)),
                        st.builds(lambda b: {"mask": "data:image/png;base64," + b}, st.text(max_size=30)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(region_like)
def test_any_malformed_region_is_an_input_error(region):
    try:
        masks([(region, "r")])
    except I.InputError as e:
        assert e.param == "r" and str(e).startswith("r: ")


MODES = ["1", "L", "P", "I;16", "I", "F", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "PA", "La"]
FORMATS = ["PNG", "JPEG", "GIF", "TIFF", "BMP", "WEBP"]


@st.composite
def odd_images(draw):
    """Real image files of odd modes and sizes in assorted formats, sometimes truncated, as base64."""
    from hypothesis import assume
    mode, fmt = draw(st.sampled_from(MODES)), draw(st.sampled_from(FORMATS))
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2 ** 16))
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    try:
        img = Image.fromarray(arr, "RGBA").convert(mode)
        buf = io.BytesIO()
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        assume(False)
    raw = buf.getvalue()
    if draw(st.booleans()):
        raw = raw[:draw(st.integers(0, max(0, len(raw) - 1)))]
    return base64.b64encode(raw).decode()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(odd_images(), st.integers(0, 60), st.integers(0, 60))
def test_odd_images_decode_or_are_refused_by_name(data, x, y):
    try:
        image, alpha = I.split_alpha(I.decode_image(data, "images[0]"), "images[0]")
    except I.InputError as e:
        assert e.param == "images[0]"
        return
    assert image.mode == "RGB" and alpha is None or alpha.size == image.size
    items = [({"box": [x, y, x + 5, y + 5]}, "r")] + ([(alpha, "alpha")] if alpha is not None else [])
    try:
        m = process_regions(I.parse_regions(items, image.size), image.size, PROC, "pad")
    except I.InputError as e:
        assert e.param in ("r", "alpha")
        return
    except ValueError as e:   # the region cut away by LLaVA's processing: the engine names it (test_serve_engine)
        assert "region" in str(e)
        return
    assert m.shape[0] == len(items) and float(m.min()) >= 0 and float(m.max()) <= 1

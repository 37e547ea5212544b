"""Regions as text boxes (the plain-LLaVA baseline): box strings, conversion of conversations, eval prompts."""
import json
import types

import pytest

from rgpt_llava.constants import IMAGE_TOKEN_INDEX
from rgpt_llava.data import text_regions
from rgpt_llava.eval.common import EvalInputError
from rgpt_llava.data.text_regions import box_text, replace_regions, to_text_sample


def test_box_text_in_pad_and_square_geometry():
    # 200 x 100 image padded to 200 x 200: llava's expand2square pastes it 50 px down.
    assert box_text([20, 10, 40, 30], 200, 100) == "[0.10, 0.30, 0.30, 0.45]"
    assert box_text([20, 10, 40, 30], 200, 100, "square") == "[0.10, 0.10, 0.30, 0.40]"
    # 100 x 200 (portrait): 50 px to the right
    assert box_text([10, 20, 30, 40], 100, 200) == "[0.30, 0.10, 0.45, 0.30]"
    # clamped to the image
    assert box_text([-5, 0, 300, 100], 200, 100) == "[0.00, 0.25, 1.00, 0.75]"


def test_box_text_pad_offset_matches_llava_expand2square():
    from PIL import Image
    from llava.mm_utils import expand2square
    img = Image.new("RGB", (7, 4), (255, 0, 0))
    sq = expand2square(img, (0, 0, 0))
    # the red block starts at row (7 - 4) // 2 = 1 of the 7 x 7 square
    assert [sq.getpixel((0, y))[0] for y in range(7)] == [0, 255, 255, 255, 255, 0, 0]
    assert box_text([0, 0, 7, 4], 7, 4, decimals=4) == f"[0.0000, {1 / 7:.4f}, 1.0000, {5 / 7:.4f}]"


def test_bad_boxes_are_named():
    with pytest.raises(ValueError, match="no area"):
        box_text([0, 0, 0, 5], 10, 10)
    with pytest.raises(ValueError, match="not positive"):
        box_text([0, 0, 1, 1], 0, 10)
    with pytest.raises(ValueError, match="image_aspect_ratio"):
        box_text([0, 0, 1, 1], 10, 10, "anyres")
    with pytest.raises(ValueError, match="<region3>"):
        replace_regions("<region1> and <region3>", ["[a]", "[b]"])


def test_conversation_becomes_plain_llava_sample():
    sample = {"id": "s1", "image": "a.png", "width": 200, "height": 100,
              "conversations": [{"from": "human", "value": "<image>\nWhat is <region2>? Compare <region1>."},
                                {"from": "gpt", "value": "a cat"},
                                {"from": "human", "value": "Which of <region1>, <region2> is a dog?"},
                                {"from": "gpt", "value": "Region [1]"}],
              "regions": [{"bbox": [20, 10, 40, 30], "segmentation": "rle"}, {"bbox": [0, 0, 200, 100]}]}
    out = to_text_sample(sample)
    assert "regions" not in out and out["id"] == "s1" and out["image"] == "a.png"
    assert out["conversations"][0]["value"] == \
        "<image>\nWhat is [0.00, 0.25, 1.00, 0.75]? Compare [0.10, 0.30, 0.30, 0.45]."
    assert out["conversations"][2]["value"] == "Which of [0.10, 0.30, 0.30, 0.45], [0.00, 0.25, 1.00, 0.75] is a dog?"
    assert out["conversations"][3]["value"] == "Region [1]"
    assert sample["regions"] and "<region2>" in sample["conversations"][0]["value"]  # input untouched


def test_converter_cli(tmp_path, capsys):
    good = {"id": "g", "image": "a.png", "width": 10, "height": 10,
            "conversations": [{"from": "human", "value": "<image>\n<region1>?"}, {"from": "gpt", "value": "x"}],
            "regions": [{"bbox": [0, 0, 5, 5]}]}
    src, dst = tmp_path / "in.json", tmp_path / "out.json"
    src.write_text(json.dumps([good, {k: v for k, v in good.items() if k != "regions"}]))
    assert text_regions.main(["--in", str(src), "--out", str(dst)]) == 0
    out = json.loads(dst.read_text())
    assert [s["conversations"][0]["value"] for s in out] == ["<image>\n[0.00, 0.00, 0.50, 0.50]?", "<image>\n<region1>?"]
    bad = dict(good, id="b", regions=[{"segmentation": "rle"}])
    src.write_text(json.dumps([good, bad]))
    assert text_regions.main(["--in", str(src), "--out", str(tmp_path / "o2.json")]) == 2
    err = capsys.readouterr().err
    assert "sample 1 (id 'b')" in err and "region 1 has no 'bbox'" in err and not (tmp_path / "o2.json").exists()
    nosize = {k: v for k, v in good.items() if k not in ("width", "height")}
    src.write_text(json.dumps([nosize]))
    assert text_regions.main(["--in", str(src), "--out", str(dst)]) == 2
    assert "width/height" in capsys.readouterr().err
    src.write_text("{")
    assert text_regions.main(["--in", str(src), "--out", str(dst)]) == 2
    src.write_text(json.dumps([good]))
    with pytest.raises(SystemExit) as e:             # converting in place would lose the region conversations
        text_regions.main(["--in", str(src), "--out", str(src)])
    assert e.value.code == 2 and f"--out {src} is also --in" in capsys.readouterr().err
    assert json.loads(src.read_text()) == [good]


def test_eval_prompt_with_regions_as_text(tokenizer):
    from PIL import Image
    from rgpt_llava.eval import generate_common
    from rgpt_llava.mm_utils import tokenizer_region_token
    img = Image.new("RGB", (200, 100))
    args = types.SimpleNamespace(regions_as_text=True)
    prompt = generate_common.conv_prompt([("Is <region1> left of <region2>?", None)])
    q = generate_common.question(args, img, prompt,
                                 [{"bbox": [20, 10, 40, 30]}, {"bbox": [0, 0, 200, 100], "segmentation": "x"}],
                                 "q1", aspect="pad")
    ids, masks = tokenizer_region_token(q.prompt, tokenizer), q.regions or None
    expected = prompt.replace("<region1>", "[0.10, 0.30, 0.30, 0.45]").replace("<region2>", "[0.00, 0.25, 1.00, 0.75]")
    assert masks is None and ids == tokenizer_region_token(expected, tokenizer)
    assert min(ids) == IMAGE_TOKEN_INDEX and sum(t < 0 for t in ids) == 1   # the image, no region sentinels
    with pytest.raises(EvalInputError, match="q2: region 1 has no 'bbox'"):
        generate_common.question(args, img, prompt, [{"segmentation": "x"}, {"bbox": [0, 0, 1, 1]}], "q2", aspect="pad")

"""Region prompts resolved by SAM (a tiny random SamModel): what SAM receives, which of its masks is kept, where that
mask lands after LLaVA's preprocessing, determinism, and a hand-made case whose mask is known exactly."""
import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from rgpt_llava.geometry import parse_region, process_regions
from rgpt_llava.sam import SamPrompter, SamRequired, batched_nms, needs_sam, sam_prompt, scribble_points
from rgpt_llava.serve import inputs as I

PROC = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})


def photo(w=80, h=48, seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8))


def data_url(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class Spy:
    """Records what SamModel.forward receives and optionally replaces its answer."""

    def __init__(self, sam, monkeypatch, answer=None):
        self.calls, self.answer, original = [], answer, sam.model.forward

        def forward(*args, **kwargs):
            self.calls.append(kwargs)
            out = original(*args, **kwargs)
            if self.answer is not None:
                out.pred_masks, out.iou_scores = self.answer
            return out
        monkeypatch.setattr(sam.model, "forward", forward)


def test_points_reach_sam_rescaled_from_original_pixels(sam, monkeypatch):
    spy = Spy(sam, monkeypatch)
    image = photo(80, 48)                          # SAM's input frame: longest edge 64 -> 64 x 38 (38.4 rounded)
    sam.region("point:10,20;30,40,0", 0, image)
    call = spy.calls[-1]
    expected = torch.tensor([[[[10 * 64 / 80, 20 * 38 / 48], [30 * 64 / 80, 40 * 38 / 48]]]])
    torch.testing.assert_close(call["input_points"], expected, rtol=0, atol=1e-5)
    assert call["input_labels"].tolist() == [[[1, 0]]]
    assert call["multimask_output"] is True and "input_boxes" not in call

    sam.region({"box": [8, 4, 40, 44], "snap": True}, 0, image)
    torch.testing.assert_close(spy.calls[-1]["input_boxes"],
                               torch.tensor([[[8 * 0.8, 4 * 38 / 48, 40 * 0.8, 44 * 38 / 48]]]), rtol=0, atol=1e-5)
    # the JSON form is the same prompt as the CLI form
    sam.region({"points": [[10, 20], [30, 40]], "labels": [1, 0]}, 0, image)
    torch.testing.assert_close(spy.calls[-1]["input_points"], spy.calls[0]["input_points"])


def hand_made_answer(best: int):
    """Three candidates on SAM's 32 x 32 low-resolution grid (the 64-pixel frame / 2): the top 8 rows, the left 16
    columns, everything; ``best`` gets the highest predicted IoU."""
    logits = torch.full((1, 1, 3, 32, 32), -10.0)
    logits[0, 0, 0, :8, :] = 10.0
    logits[0, 0, 1, :, :16] = 10.0
    logits[0, 0, 2] = 10.0
    iou = torch.full((1, 1, 3), 0.1)
    iou[0, 0, best] = 0.9
    return logits, iou


@pytest.mark.parametrize("best", [0, 1])
def test_the_candidate_with_the_highest_predicted_iou_is_kept(sam, monkeypatch, best):
    # A 64 x 32 photo fills the top half of SAM's 64 x 64 frame at scale 1. Bilinear x2 upsampling (align_corners
    # False) of a +-10 step between low-res cells 7 and 8 crosses zero exactly between pixels 15 and 16, so the
    # known masks are: rows 0..15 (candidate 0) or columns 0..31 (candidate 1) of the photo.
    Spy(sam, monkeypatch, answer=hand_made_answer(best))
    image = photo(64, 32)
    region = sam.region("point:5,5", 0, image)
    expected = np.zeros((32, 64), bool)
    if best == 0:
        expected[:16, :] = True
    else:
        expected[:, :32] = True
    values, (x0, y0) = region.rasterize(64, 32)
    full = np.zeros((32, 64))
    full[y0:y0 + values.shape[0], x0:x0 + values.shape[1]] = values
    assert np.array_equal(full > 0, expected)
    assert region.score == pytest.approx(0.9) and region.source.startswith("SAM, point:5,5")
    # after LLaVA's preprocessing the mask is the same rectangle given as a box, bit for bit
    box = [0, 0, 64, 16] if best == 0 else [0, 0, 32, 32]
    assert torch.equal(process_regions([region], (64, 32), PROC, "pad"),
                       process_regions([{"box": box}], (64, 32), PROC, "pad"))


def test_process_regions_resolves_prompts_with_sam_and_refuses_them_without(sam):
    image = photo()
    specs = ["point:20,20", {"box": [0, 0, 40, 40]}]
    masks = process_regions(specs, image.size, PROC, "pad", image=image, sam=sam)
    again = process_regions(specs, image.size, PROC, "pad", image=image, sam=sam)
    assert masks.shape == (2, 56, 56) and torch.equal(masks, again)     # deterministic
    assert torch.equal(masks[1], process_regions([specs[1]], image.size, PROC, "pad")[0])
    direct = process_regions([sam.region(specs[0], 0, image)], image.size, PROC, "pad")
    assert torch.equal(masks[0], direct[0])
    with pytest.raises(SamRequired, match=r"region 1 \(point:20,20\).*--sam-model PATH"):
        process_regions(specs, image.size, PROC, "pad")
    with pytest.raises(ValueError, match="need the image itself"):
        process_regions(specs, image.size, PROC, "pad", sam=sam)


def test_scribble_points_are_seeded_stroke_pixels():
    strokes = np.zeros((40, 60), bool)
    strokes[10, 5:55] = True
    strokes[30, 20] = True
    a, b = scribble_points(strokes, 8, seed=0), scribble_points(strokes, 8, seed=0)
    assert np.array_equal(a, b) and a.shape == (8, 2)
    assert all(strokes[int(y), int(x)] for x, y in a) and np.all(a % 1 == 0.5)      # pixel centres on strokes
    assert not np.array_equal(a, scribble_points(strokes, 8, seed=1))
    assert len(scribble_points(strokes[:, :7], 8)) == 2                             # fewer stroke pixels than asked


def test_a_scribble_is_the_same_prompt_from_a_file_a_data_url_and_an_array(sam, monkeypatch, tmp_path):
    image = photo()
    strokes = np.zeros((48, 80), np.uint8)
    strokes[20:23, 10:60] = 255
    Image.fromarray(strokes).save(tmp_path / "s.png")
    spy = Spy(sam, monkeypatch)
    from_file = sam.region(f"scribble:{tmp_path / 's.png'}", 0, image)
    from_json = I.parse_regions([({"scribble": data_url(Image.fromarray(strokes))}, "r")], image.size,
                                image=image, sam=sam)[0]
    from_array = sam.region({"scribble": strokes > 0}, 0, image)
    points = [c["input_points"] for c in spy.calls]
    assert torch.equal(points[0], points[1]) and torch.equal(points[0], points[2])
    assert spy.calls[0]["input_labels"].tolist() == [[[1] * 8]]
    for r in (from_json, from_array):
        assert np.array_equal(r.rasterize(80, 48)[0], from_file.rasterize(80, 48)[0])


def test_bad_prompts_are_refused_naming_the_region(sam):
    image = photo(80, 48)
    cases = [
        ("point:90,10", "point 1 \\(90, 10\\) lies outside the 80x48 image"),
        ("point:10,10,0", "every point is negative"),
        ("point:10,10,2", "labels must be 1"),
        ("point:10", "must be x,y or x,y,label"),
        ("point:", "at least one point"),
        ({"points": [[1, 2]], "labels": [1, 0]}, "1 points but 2 labels"),
        ({"points": [[1, 2, 3]]}, "must be \\[x, y\\]"),
        ({"scribble": np.zeros((48, 80), bool)}, "the scribble is empty"),
        ({"scribble": np.ones((10, 10), bool)}, "scribble size 10x10 \\(WxH\\) does not match the image size 80x48"),
        ("scribble:/nonexistent.png", "not found"),
        ({"box": [50, 10, 40, 20], "snap": True}, "x2 <= x1"),
        ("snap:", "needs x1,y1,x2,y2"),
    ]
    for spec, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            sam.region(spec, 2, image)
        with pytest.raises((ValueError, FileNotFoundError), match="region 3"):
            sam_prompt(spec, 2, image.size)


def test_request_json_with_prompts(sam):
    image = photo()
    items = [({"points": [[20, 20]], "labels": [1]}, "messages[0].content[1].region"),
             ({"box": [5, 5, 30, 30], "snap": True}, "messages[0].content[2].region"),
             ({"box": [5, 5, 30, 30]}, "messages[0].content[3].region")]
    regions = I.parse_regions(items, image.size, image=image, sam=sam)
    assert [r.kind for r in regions] == ["mask", "mask", "box"]
    with pytest.raises(I.InputError, match=r"messages\[0\]\.content\[1\]\.region: region 1: this REGION is a prompt "
                                           r"for SAM .* pass --sam-model PATH"):
        I.parse_regions(items, image.size)
    assert I.parse_regions(items[2:], image.size)[0].kind == "box"      # boxes keep working without SAM
    for bad, message in [({"points": [[1, 2]], "snap": True}, "'snap' belongs with 'box', not with 'points'"),
                         ({"box": [1, 2, 3, 4], "labels": [1]}, "'labels' belongs with 'points'"),
                         ({"points": []}, "should be non-empty|too short"),
                         ({"points": [[1, 2]], "labels": [2]}, "is not one of"),
                         ({"box": [1, 2, 3, 4], "snap": "yes"}, "is not of type 'boolean'"),
                         ({"scribble": "abc"}, "does not match")]:
        with pytest.raises(I.InputError, match=message):
            I.parse_regions([(bad, "r")], image.size, image=image, sam=sam)


def test_needs_sam():
    assert needs_sam("point:1,2") and needs_sam("Scribble:x.png") and needs_sam("snap:1,2,3,4")
    assert needs_sam({"points": []}) and needs_sam({"box": [1, 2, 3, 4], "snap": True})
    assert not needs_sam({"box": [1, 2, 3, 4], "snap": False}) and not needs_sam("box:1,2,3,4")
    with pytest.raises(SamRequired, match="--sam-model"):
        parse_region({"points": [[1, 2]]}, 0, (10, 10))


def test_batched_nms_by_hand():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float)
    scores = torch.tensor([0.5, 0.9, 0.8, 0.1])
    # box 1 (IoU with box 0 = 81/100) suppresses box 0 in class 0; box 2 is alone in class 1; box 3 overlaps nothing
    keep = batched_nms(boxes, scores, torch.tensor([0, 0, 1, 0]), 0.7)
    assert keep.tolist() == [1, 2, 3]
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 1, 0]), 0.85).tolist() == [1, 2, 0, 3]
    assert batched_nms(boxes[:0], scores[:0], torch.tensor([], dtype=torch.long), 0.5).tolist() == []


def test_automatic_proposals(sam):
    image = photo()
    found = sam.propose(image, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert found and all(m.shape == (48, 80) and m.dtype == bool and m.any() for m, _ in found)
    assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
    assert [s for _, s in sam.propose(image, points_per_side=4, pred_iou_thresh=0.0,
                                      stability_score_thresh=0.0)] == [s for _, s in found]


def test_a_folder_that_is_not_sam_is_refused(tmp_path, tiny_clip_dir):
    from rgpt_llava.sam import SamModelError
    with pytest.raises(SamModelError, match="--sam-model .*no such folder"):
        SamPrompter(str(tmp_path / "missing"))
    with pytest.raises(SamModelError, match="not a SAM checkpoint"):
        SamPrompter(tiny_clip_dir)

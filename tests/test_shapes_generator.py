"""RegionShapes generator (rgpt_llava.shapes.generator): determinism, exact visible masks, sample validity, relations,
REC answers, the evaluation files, bad input. Small outputs only (a few hundred shapes, < 30 s on 2 cores)."""
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from rgpt_llava.shapes import generator as S
from rgpt_llava.data.common import check_sample
from rgpt_llava.geometry import parse_region

ATTR_WORDS = {"small": "size", "medium": "size", "large": "size", "solid": "texture", "striped": "texture",
              **{c: "colour" for c in S.COLOURS}}
EXPR = re.compile(r"\bthe ((?:(?:small|medium|large|solid|striped|red|green|blue|yellow) )*)(circle|square|triangle|"
                  r"star|ring)\b")
PH = re.compile(r"<region(\d+)>")


def _files(root):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shapes") / "ds")
    assert S.main(["--out", out, "--n-train", "100", "--n-val", "30", "--seed", "3"]) == 0
    train = json.load(open(os.path.join(out, "train.json")))
    inst = json.load(open(os.path.join(out, "annotations", "instances_train.json")))
    return {"out": out, "train": train, "val": json.load(open(os.path.join(out, "val.json"))), "inst": inst,
            "anns": {a["id"]: a for a in inst["annotations"]}}


def _decode(seg):
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode("ascii")}).astype(bool)


def test_deterministic(tmp_path):
    args = ["--n-train", "6", "--n-val", "3", "--seed", "7", "--image-size", "96x80"]
    S.main(["--out", str(tmp_path / "a")] + args)
    S.main(["--out", str(tmp_path / "b")] + args)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert sorted(a) == sorted(b) and a == b
    assert any(k.endswith(".png") for k in a) and Image.open(tmp_path / "a/images/train/000000.png").size == (96, 80)
    S.main(["--out", str(tmp_path / "c")] + args[:-3] + ["8", "--image-size", "96x80"])
    assert _files(tmp_path / "c")["train.json"] != a["train.json"]


def test_samples_valid_and_regions_parse(ds):
    for split in ("train", "val"):
        for s in ds[split]:
            assert check_sample(s) == "", s["id"]
            assert s["conversations"][0]["value"].startswith("<image>\n")
            size = (s["width"], s["height"])
            assert os.path.isfile(os.path.join(ds["out"], s["image"]))
            for k, r in enumerate(s["regions"]):
                reg = parse_region(r, k, size)
                assert reg is not None
                m = _decode(r["segmentation"])
                assert [float(v) for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(
                    m.astype(np.uint8))))] == r["bbox"]
    kinds = Counter()
    for s in ds["train"]:
        for q, a in zip(s["conversations"][0::2], s["conversations"][1::2]):
            kinds["rec_none" if a["value"] == "No corresponding options found." else
                  "rec" if a["value"].startswith("Region [") else
                  "rel" if " is " in a["value"] else "cap" if a["value"].startswith("a ") else "cls"] += 1
    assert all(kinds[k] > 0 for k in ("cls", "cap", "rel", "rec", "rec_none")), kinds
    assert sum("Answer the question using RegionShapes category names." in t["value"]
               for t in ds["train"][0]["conversations"]) == 1


def test_masks_are_visible_pixels():
    size = (100, 90)
    below = S.ShapeSpec("square", "red", "large", "solid", 40.0, 45.0, 20.0, 10.0)
    above = S.ShapeSpec("circle", "blue", "medium", "solid", 58.0, 50.0, 14.0)
    img, vis = S.render([below, above], size)
    # independent: the red pixels of the rendered image are exactly the square's visible part
    red = np.all(img == np.array(S.COLOURS["red"], np.uint8), axis=-1)
    full = S.shape_mask(below, size)
    assert 0 < red.sum() < full.sum()     # really occluded
    seg, bbox, area = S.encode_mask(vis[0])
    assert area == int(red.sum())
    assert np.array_equal(_decode(seg), red)
    ys, xs = np.nonzero(red)
    assert bbox == [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    blue = np.all(img == np.array(S.COLOURS["blue"], np.uint8), axis=-1)
    assert np.array_equal(vis[1], blue) and np.array_equal(vis[1], S.shape_mask(above, size))


def test_generated_masks_partition_the_image(ds):
    inst = ds["inst"]
    by_image = defaultdict(list)
    for a in inst["annotations"]:
        by_image[a["image_id"]].append(a)
    for img in inst["images"][:25]:
        pix = np.asarray(Image.open(os.path.join(ds["out"], img["file_name"])).convert("RGB"))
        cover = np.zeros(pix.shape[:2], np.int32)
        for a in by_image[img["id"]]:
            m = _decode(a["segmentation"])
            assert int(m.sum()) == a["area"]
            cover += m
            colour = np.array(S.COLOURS[a["colour"]], np.uint8)
            if a["texture"] == "solid":
                assert np.all(pix[m] == colour)
        assert cover.max() == 1                              # visible masks are disjoint
        assert np.all(pix[cover == 0] == np.array(S.BACKGROUND, np.uint8))


def test_class_balance_and_dropped(ds):
    counts = Counter(ds["anns"][r["ann_id"]]["category_id"] for s in ds["train"] for r in s["regions"])
    n = sum(counts.values())
    assert n >= 300 and len(S.CATEGORIES) >= 8
    expected = n / len(S.CATEGORIES)
    assert set(counts) == {c["id"] for c in S.CATEGORIES}
    assert min(counts.values()) > 0.4 * expected and max(counts.values()) < 1.8 * expected, counts
    meta = json.load(open(os.path.join(ds["out"], "meta.json")))
    assert meta["seed"] == 3 and len(meta["vocabulary"]["categories"]) == len(S.CATEGORIES)
    assert meta["counts"]["train: dropped occluded shapes"] > 0
    for s in ds["train"]:
        assert 2 <= len(s["regions"]) <= 6


def test_mean_colour_cannot_tell_the_class(ds):
    inst = ds["inst"]
    images = {i["id"]: i for i in inst["images"]}
    means = defaultdict(set)
    for a in inst["annotations"]:
        if a["texture"] != "solid":
            continue
        pix = np.asarray(Image.open(os.path.join(ds["out"], images[a["image_id"]]["file_name"])).convert("RGB"))
        means[a["category_id"]].add(tuple(pix[_decode(a["segmentation"])].mean(0).round(6)))
        if len(means) == len(S.CATEGORIES) and all(means.values()):
            break
    names = {c["id"]: c["name"] for c in S.CATEGORIES}
    by_mean = defaultdict(set)
    for cid, ms in means.items():
        assert len(ms) == 1        # a solid class always has the same mean colour...
        by_mean[next(iter(ms))].add(names[cid])
    # ...and the same one as the other shapes of its colour, e.g. red circle == red square
    assert any({"red circle", "red square"} <= v for v in by_mean.values())
    assert sum(len(v) >= 2 for v in by_mean.values()) >= 2


def _matches(ann, words, shape):
    if ann["shape"] != shape:
        return False
    return all(ann[ATTR_WORDS[w]] == w for w in words)


def test_relationships_correct(ds):
    checked = Counter()
    for s in ds["train"]:
        conv = s["conversations"]
        for q, a in zip(conv[0::2], conv[1::2]):
            m = re.fullmatch(r"the (.+) is (left of|right of|above|below|larger than|smaller than) the (.+)", a["value"])
            if not m:
                continue
            i, j = (int(x) - 1 for x in PH.findall(q["value"]))
            ra, rb = s["regions"][i], s["regions"][j]
            aa, ab = ds["anns"][ra["ann_id"]], ds["anns"][rb["ann_id"]]
            assert m.group(1) == S.ShapeSpec(aa["shape"], aa["colour"], aa["size"], aa["texture"], 0, 0, 1).phrase()
            assert m.group(3) == S.ShapeSpec(ab["shape"], ab["colour"], ab["size"], ab["texture"], 0, 0, 1).phrase()
            (xa, ya, wa, ha), (xb, yb, wb, hb) = ra["bbox"], rb["bbox"]
            area_a, area_b = int(_decode(ra["segmentation"]).sum()), int(_decode(rb["segmentation"]).sum())
            rel = m.group(2)
            ok = {"left of": xa + wa <= xb, "right of": xb + wb <= xa, "above": ya + ha <= yb,
                  "below": yb + hb <= ya, "larger than": area_a >= 2 * area_b,
                  "smaller than": area_b >= 2 * area_a}[rel]
            assert ok, (s["id"], a["value"], ra["bbox"], rb["bbox"])
            checked[rel] += 1
    assert len(checked) == 6 and sum(checked.values()) > 50, checked


def test_rec_answers_point_to_the_target(ds):
    n = Counter()
    for s in ds["train"]:
        conv = s["conversations"]
        anns = [ds["anns"][r["ann_id"]] for r in s["regions"]]
        for q, a in zip(conv[0::2], conv[1::2]):
            if not (a["value"].startswith("Region [") or a["value"] == "No corresponding options found."):
                continue
            listed = [int(x) - 1 for x in PH.findall(q["value"])]
            assert listed == sorted(listed)
            m = EXPR.search(q["value"].split("<region")[-1])
            words, shape = m.group(1).split(), m.group(2)
            hits = [k for k, ann in enumerate(anns) if _matches(ann, words, shape)]
            assert len(hits) == 1, (s["id"], m.group(0))    # unambiguous within the image
            if a["value"].startswith("Region ["):
                x = int(re.fullmatch(r"Region \[(\d+)\]", a["value"]).group(1))
                assert listed[x - 1] == hits[0]
                if len(listed) == len(anns):
                    assert x - 1 == hits[0]                   # Region [x] is <regionx>
                n["match"] += 1
            else:
                assert hits[0] not in listed and len(listed) == len(anns) - 1
                n["none"] += 1
    assert n["match"] > 50 and n["none"] > 0, n


def test_val_eval_files_load_with_the_scorers(ds):
    from pycocotools.coco import COCO
    from rgpt_llava.eval import caption, coco_cls, rec
    from rgpt_llava.eval.generate_common import read_question_file
    out = ds["out"]
    inst_path = os.path.join(out, "annotations", "instances_val.json")
    gt, vocab, malformed = coco_cls.load_ground_truth(inst_path)
    assert malformed == []
    assert len(vocab) == len(S.CATEGORIES) and vocab.lookup("Red Circle.") == S.CATEGORY_ID[("red", "circle")]
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(inst_path)
    assert len(coco.getAnnIds()) == len(gt["annotations"])
    answers = [{"question_id": a["id"], "text": vocab.names[a["category_id"]]} for a in gt["annotations"]]
    res = coco_cls.evaluate(inst_path, answers)
    assert res["accuracy"] == pytest.approx(100.0)

    refs, _ = caption.load_references(os.path.join(out, "eval", "val_caption_refs.json"))
    qs = read_question_file(os.path.join(out, "eval", "val_caption_questions.jsonl"))
    assert len(refs) == len(qs) == len(gt["annotations"])
    anns = {a["id"]: a for a in gt["annotations"]}
    for q in qs:
        assert refs[str(q["question_id"])] == [anns[q["question_id"]]["caption"]]
        assert os.path.isfile(os.path.join(out, q["image"]))
        parse_region({"segmentation": q["segmentation"]}, 0, (224, 224))

    rec_path = os.path.join(out, "eval", "val_rec.jsonl")
    rq = read_question_file(rec_path)
    assert len(rq) > 0.8 * len(gt["annotations"])
    perfect = []
    for q in rq:
        target = anns[q["ann_id"]]
        assert q["gt_bbox"] == target["bbox"] and q["gt_bbox"] in q["candidates"]
        img_anns = [a for a in gt["annotations"] if a["image_id"] == q["image_id"]]
        assert sorted(tuple(a["bbox"]) for a in img_anns) == sorted(map(tuple, q["candidates"]))
        m = EXPR.fullmatch(q["expression"])
        hits = [a for a in img_anns if _matches(a, m.group(1).split(), m.group(2))]
        assert [a["id"] for a in hits] == [q["ann_id"]]
        perfect.append({"question_id": q["question_id"], "text": f"Region [{q['candidates'].index(q['gt_bbox']) + 1}]"})
    assert rec.evaluate(rec_path, perfect)["accuracy"] == pytest.approx(100.0)
    wrong = [{"question_id": p["question_id"], "text": "No corresponding options found."} for p in perfect]
    assert rec.evaluate(rec_path, wrong)["accuracy"] == 0.0


@pytest.mark.parametrize("extra, message", [
    (["--n-train", "0"], "--n-train must be >= 1"),
    (["--n-train", "2", "--min-shapes", "5", "--max-shapes", "3"], "larger than --max-shapes"),
    (["--n-train", "2", "--image-size", "32"], "too small"),
    (["--n-train", "2", "--image-size", "abc"], "expected N or WxH"),
])
def test_bad_input(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        S.main(["--out", str(tmp_path / "o")] + extra)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_non_empty_out_needs_overwrite(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    cmd = [sys.executable, "-m", "rgpt_llava.shapes.generator", "--out", str(out), "--n-train", "2", "--seed", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    r = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (out / "keep.txt").read_text() == "x" and (out / "train.json").is_file()
    assert "dropped occluded shapes" in r.stdout

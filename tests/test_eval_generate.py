"""Generation steps of the benchmarks (rgpt_llava/eval/model_*.py) and scripts/eval/*.sh on the tiny checkpoint."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rgpt_llava import generation
from rgpt_llava.eval import generate_common

ROOT = Path(__file__).resolve().parents[1]
IMGS = ["chelsea.jpg", "coffee.jpg", "rocket.jpg"]
CATS = [{"id": 1, "name": "cat"}, {"id": 3, "name": "cup"}, {"id": 7, "name": "rocket ship"}]


def rows(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


@pytest.fixture(scope="module")
def data(tmp_path_factory, images_dir):
    """Tiny files in each benchmark's real format, images = real photos (symlinked into one folder)."""
    from PIL import Image
    d = tmp_path_factory.mktemp("evaldata")
    img = d / "images"
    img.mkdir()
    images = []
    for i, name in enumerate(IMGS):
        (img / name).symlink_to(Path(images_dir) / name)
        w, h = Image.open(img / name).size
        images.append({"id": 100 + i, "file_name": name, "width": w, "height": h})
    anns, aid = [], 1
    for im in images:
        w, h = im["width"], im["height"]
        for k in range(2):
            box = [w * (0.1 + 0.3 * k), h * 0.2, w * 0.35, h * 0.5]
            anns.append({"id": aid, "image_id": im["id"], "category_id": CATS[(aid) % 3]["id"], "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
            aid += 1
    anns.append({"id": 99, "image_id": 100, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1})
    inst = {"images": images, "annotations": anns, "categories": CATS}
    (d / "instances.json").write_text(json.dumps(inst))
    # RefCOCOg-style refs (+ proposals) and the caption questions / references
    refs = [{"ref_id": 500 + a["id"], "ann_id": a["id"], "image_id": a["image_id"], "split": "val",
             "category_id": a["category_id"], "sentences": [{"sent_id": 900 + 2 * a["id"], "sent": "the left thing"},
                                                           {"sent_id": 901 + 2 * a["id"], "sent": "an object"}]}
            for a in anns[:4]]
    (d / "refs.json").write_text(json.dumps(refs))
    props = [{"image_id": a["image_id"], "bbox": [a["bbox"][0] + 3, a["bbox"][1], a["bbox"][2], a["bbox"][3]],
              "score": 0.9 - 0.1 * a["id"]} for a in anns[:6]]
    (d / "proposals.json").write_text(json.dumps(props))
    # POPE: LLaVA's question file and annotation files
    pope_q = []
    (d / "coco").mkdir()
    for cat in ("random", "adversarial"):
        lines = []
        for i, name in enumerate(IMGS[:2]):
            for j, obj in enumerate(("cat", "car")):
                qid = len(pope_q) + 1
                q = {"question_id": qid, "image": name, "text": f"Is there a {obj} in the image?", "category": cat}
                pope_q.append(q)
                lines.append(json.dumps(dict(q, label="yes" if j == 0 else "no")))
        (d / "coco" / f"coco_pope_{cat}.json").write_text("\n".join(lines) + "\n")
    (d / "llava_pope_test.jsonl").write_text("".join(json.dumps(q) + "\n" for q in pope_q))
    # VG-style caption questions / references
    vg = [{"question_id": f"vg{a['id']}", "image": next(i["file_name"] for i in images if i["id"] == a["image_id"]),
           "bbox": a["bbox"]} for a in anns[:5]]
    (d / "vg_questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in vg))
    (d / "vg_refs.json").write_text(json.dumps({q["question_id"]: ["a small object", "a thing"] for q in vg}))
    return d


def common_args(ckpt, data, out, *extra):
    return ["--model-path", ckpt, "--image-folder", str(data / "images"), "--answers-file", str(out),
            "--device", "cpu", "--max-new-tokens", "6", "--batch-size", "4", *extra]


# ---------------------------------------------------------------------------------------------------------------------
def test_coco_cls_end_to_end_with_rank_scores(tiny_rgpt_dir, data, tmp_path):
    from rgpt_llava.eval import coco_cls, model_coco_cls
    out = tmp_path / "cls.jsonl"
    assert model_coco_cls.main(common_args(tiny_rgpt_dir, data, out, "--annotation-file",
                                           str(data / "instances.json"), "--rank-scores")) == 0
    ans = rows(out)
    assert sorted(a["question_id"] for a in ans) == [1, 2, 3, 4, 5, 6]   # crowd skipped
    for a in ans:
        assert set(a) == {"question_id", "text", "image_id", "category_id", "scores"}
        assert set(a["scores"]) == {"1", "3", "7"}
        assert abs(sum(a["scores"].values()) - 1) < 1e-6
    res = coco_cls.evaluate(str(data / "instances.json"), str(out), embedder=None)
    assert "accuracy" in res and "map_ranking" in res and "map_generated" in res


@pytest.mark.parametrize("mode", ["multi_turn", "one_turn_all"])
def test_coco_cls_dialogue_modes(tiny_rgpt_dir, data, tmp_path, mode):
    from rgpt_llava.eval import coco_cls, model_coco_cls
    out = tmp_path / "cls.jsonl"
    model_coco_cls.main(common_args(tiny_rgpt_dir, data, out, "--annotation-file", str(data / "instances.json"),
                                    "--mode", mode))
    ans = rows(out)
    assert sorted(a["question_id"] for a in ans) == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(a["text"], str) for a in ans)
    assert "accuracy" in coco_cls.evaluate(str(data / "instances.json"), str(out), embedder=None)


def test_caption_end_to_end_refcocog(tiny_rgpt_dir, data, tmp_path):
    from rgpt_llava.eval import caption, model_caption
    refs, qs = tmp_path / "refs.json", tmp_path / "qs.jsonl"
    assert caption.main(["build-refs", "--refs", str(data / "refs.json"), "--split", "val", "--out", str(refs),
                         "--instances", str(data / "instances.json"), "--questions-out", str(qs)]) == 0
    out = tmp_path / "cap.jsonl"
    assert model_caption.main(common_args(tiny_rgpt_dir, data, out, "--question-file", str(qs))) == 0
    ans = rows(out)
    assert sorted(a["question_id"] for a in ans) == [501, 502, 503, 504]
    res = caption.evaluate(str(refs), str(out), metrics=["BLEU-1", "CIDEr"])
    assert "BLEU-1" in res and "CIDEr" in res


def test_rec_end_to_end(tiny_rgpt_dir, data, tmp_path):
    from rgpt_llava.eval import model_rec, rec
    qs = tmp_path / "rec_q.jsonl"
    assert rec.main(["build", "--refs", str(data / "refs.json"), "--instances", str(data / "instances.json"),
                     "--split", "val", "--proposals", str(data / "proposals.json"), "--out", str(qs)]) == 0
    out = tmp_path / "rec.jsonl"
    assert model_rec.main(common_args(tiny_rgpt_dir, data, out, "--question-file", str(qs))) == 0
    ans, questions = rows(out), rows(qs)
    assert sorted(a["question_id"] for a in ans) == sorted(q["question_id"] for q in questions)
    assert all(a["candidates"] == q["candidates"] for a, q in zip(ans, questions))
    res = rec.evaluate(str(qs), str(out))
    assert "accuracy" in res


def test_rec_prompt():
    from rgpt_llava.eval.model_rec import rec_question
    assert rec_question(3, "the cat") == ('From the provided masks denoted by <region1>, <region2> and <region3>, '
                                          'which one fits "the cat"? Answer the question using the template '
                                          'Region [x].')


def test_pope_end_to_end_resume_and_chunks(tiny_rgpt_dir, data, tmp_path):
    from rgpt_llava.eval import model_pope, pope
    q = str(data / "llava_pope_test.jsonl")
    out = tmp_path / "pope.jsonl"
    args = common_args(tiny_rgpt_dir, data, out, "--question-file", q)
    assert model_pope.main(args) == 0
    ans = rows(out)
    assert sorted(a["question_id"] for a in ans) == list(range(1, 9))
    res = pope.evaluate(str(data / "coco" / "coco_pope_random.json"), [a for a in ans if a["category"] == "random"])
    # the random split's questions 1..4 ask about (cat: yes, car: no) on two images; count the answers by hand
    said = {a["question_id"]: pope.parse_yes_no(a["text"]) for a in ans if a["category"] == "random"}
    tp, fp = sum(said[q] == "yes" for q in (1, 3)), sum(said[q] == "yes" for q in (2, 4))
    m = res["categories"]["random"]
    assert list(res["categories"]) == ["random"] and m["num_samples"] == 4 and m["num_missing"] == 0
    assert (m["TP"], m["FP"], m["FN"], m["TN"]) == (tp, fp, 2 - tp, 2 - fp)
    assert m["accuracy"] == pytest.approx(100 * (tp + 2 - fp) / 4) and m["yes_ratio"] == pytest.approx(25 * (tp + fp))
    full = pope.evaluate([str(p) for p in sorted((data / "coco").glob("*.json"))], str(out), question_file=q)
    assert "accuracy" in json.dumps(full)
    # resume: nothing new; then delete half and rerun
    before = out.read_text()
    model_pope.main(args)
    assert out.read_text() == before
    lines = before.splitlines()
    out.write_text("\n".join(lines[::2]) + "\n" + lines[1][:7])   # half deleted + a line cut by a crash
    model_pope.main(args)
    again = rows(out)
    assert sorted(a["question_id"] for a in again) == list(range(1, 9))
    assert {a["question_id"]: a["text"] for a in again} == {a["question_id"]: a["text"] for a in ans}
    # chunks partition the questions
    ids = []
    for k in range(3):
        o = tmp_path / f"c{k}.jsonl"
        model_pope.main(common_args(tiny_rgpt_dir, data, o, "--question-file", q, "--num-chunks", "3",
                                    "--chunk-idx", str(k)))
        ids.append({a["question_id"] for a in rows(o)})
    assert set().union(*ids) == set(range(1, 9)) and sum(map(len, ids)) == 8


def test_get_chunk_partition():
    items = list(range(10))
    for n in (1, 3, 4, 7, 12):
        chunks = [generate_common.get_chunk(items, n, k) for k in range(n)]
        assert sum(chunks, []) == items


# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(tiny_rgpt_dir):
    a = argparse.Namespace(model_path=tiny_rgpt_dir, model_base=None, load_8bit=False, load_4bit=False, device="cpu")
    return generate_common.load_engine(a)


def test_fast_path_equals_naive(loaded, images_dir):
    from PIL import Image
    engine = loaded
    tok, model = engine.tokenizer, engine.model
    img = Image.open(Path(images_dir) / "rocket.jpg").convert("RGB")
    w, h = img.size
    questions = ["Describe <region1>.", "What category name best describes the region represented by <region1>?",
                 "Is <region1> left of <region2>?", "What is it?"]
    items = []
    for i in range(8):
        q = questions[i % 4]
        n = q.count("<region")
        boxes = [{"bbox": [w * 0.1 * (i % 5) + j * 20, h * 0.1, w * 0.3, h * 0.4]} for j in range(n)]
        prompt = generate_common.conv_prompt([(q, None)])
        items.append(generate_common.question(argparse.Namespace(), img, prompt, boxes, "t"))
    job = generate_common.prepare(engine, img, items, 12)
    x, prompts, masks = job.image, job.prompts, job.masks
    fast = generation.generate_same_image(model, x, prompts, masks, 12, tok.eos_token_id, batch_size=8)
    naive = [generation.generate_naive(model, tok, [x], [p], [m], 12)[0] for p, m in zip(prompts, masks)]
    assert fast == naive
    assert len({tuple(f) for f in fast}) > 1


def test_rank_scores_match_naive(loaded, images_dir):
    from PIL import Image
    from rgpt_llava.eval.model_coco_cls import answer_ids, class_question as question
    engine = loaded
    tok, model = engine.tokenizer, engine.model
    img = Image.open(Path(images_dir) / "coffee.jpg").convert("RGB")
    prompt = generate_common.conv_prompt([(question("<region1>", "COCO-80"), None)])
    names = ["cat", "cup", "rocket ship", "dining table"]
    cands = [answer_ids(tok, prompt, n) for n in names]
    items = [generate_common.question(argparse.Namespace(), img, prompt, [{"bbox": [20 + 40 * r, 30, 120, 90]}], "t")
             for r in range(2)]
    job = generate_common.prepare(engine, img, items, 12)
    x, pid, masks = job.image, job.prompts[0], job.masks
    fast = generation.score_candidates(model, x, [pid, pid], masks, cands, chunk=3)
    probs = torch.softmax(fast, 1)
    assert torch.allclose(probs.sum(1), torch.ones(2, dtype=probs.dtype))
    naive = torch.zeros_like(fast)
    with torch.no_grad():
        for r in range(2):
            for c, ids in enumerate(cands):
                full = torch.tensor([pid + ids])
                logits = model(input_ids=full, images=x[None], region_masks=[masks[r]]).logits[0].float()
                lp = torch.log_softmax(logits, -1)
                n = len(ids)
                naive[r, c] = sum(float(lp[-n - 1 + j, ids[j]]) for j in range(n))
    assert torch.allclose(probs, torch.softmax(naive, 1), atol=1e-4)
    assert torch.allclose(fast, naive, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------------
def test_bad_inputs(tiny_rgpt_dir, data, tmp_path, capsys):
    from rgpt_llava.eval import model_caption, model_pope
    out = tmp_path / "x.jsonl"
    assert generate_common.run_main(model_pope.main, common_args(tiny_rgpt_dir, data, out, "--question-file",
                                                   str(tmp_path / "nope.jsonl"))) == 2
    assert "question file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "image": "chelsea.jpg", "text": "q"}\n{"question_id": 2,\n')
    assert generate_common.run_main(model_pope.main,
                                    common_args(tiny_rgpt_dir, data, out, "--question-file", str(bad))) == 2
    assert "line 2: malformed JSON" in capsys.readouterr().err
    unk = tmp_path / "unk.jsonl"
    unk.write_text('{"question_id": 7, "image": "missing.jpg", "bbox": [1, 1, 5, 5]}\n')
    assert generate_common.run_main(model_caption.main,
                                    common_args(tiny_rgpt_dir, data, out, "--question-file", str(unk))) == 2
    err = capsys.readouterr().err
    assert "line 1" in err and "'missing.jpg' not found" in err
    # the answers file may not be the question file: read as answers, every question would look done
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "image": "chelsea.jpg", "text": "q"}\n')
    assert generate_common.run_main(model_pope.main, common_args(tiny_rgpt_dir, data, questions, "--question-file",
                                                   str(questions))) == 2
    assert f"--answers-file {questions} is also --question-file" in capsys.readouterr().err
    assert questions.read_text() == '{"question_id": 1, "image": "chelsea.jpg", "text": "q"}\n'


# ---------------------------------------------------------------------------------------------------------------------
def _layout(root, data):
    e = root / "eval"
    for b in ("coco_cls", "refcocog_cap", "vg_cap", "refcocog_rec", "pope"):
        (e / b).mkdir(parents=True)
    (e / "coco_cls" / "instances_val2017.json").symlink_to(data / "instances.json")
    (e / "coco_cls" / "val2017").symlink_to(data / "images")
    for b in ("refcocog_cap", "refcocog_rec"):
        (e / b / "refs(umd).p").write_bytes(__import__("pickle").dumps(json.loads((data / "refs.json").read_text())))
        (e / b / "instances.json").symlink_to(data / "instances.json")
        (e / b / "images").symlink_to(data / "images")
    (e / "refcocog_rec" / "proposals.json").symlink_to(data / "proposals.json")
    (e / "vg_cap" / "vg_test_questions.jsonl").symlink_to(data / "vg_questions.jsonl")
    (e / "vg_cap" / "vg_test_refs.json").symlink_to(data / "vg_refs.json")
    (e / "vg_cap" / "images").symlink_to(data / "images")
    (e / "pope" / "llava_pope_test.jsonl").symlink_to(data / "llava_pope_test.jsonl")
    (e / "pope" / "coco").symlink_to(data / "coco")
    (e / "pope" / "val2014").symlink_to(data / "images")
    return e


@pytest.mark.slow
def test_scripts_end_to_end(tiny_rgpt_dir, data, tmp_path):
    e = _layout(tmp_path, data)
    env = dict(os.environ, MODEL_PATH=tiny_rgpt_dir, CKPT="tiny", GPUS="1", DEVICE="cpu", EVAL_ROOT=str(e),
               PYTHON=sys.executable, GEN_ARGS="--max-new-tokens 4", EMBEDDER="none", HF_HUB_OFFLINE="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    expect = {"coco_cls": ("coco_cls/answers/tiny", "accuracy"),
              "refcocog_cap": ("refcocog_cap/answers/val/tiny", "CIDEr"),
              "vg_cap": ("vg_cap/answers/test/tiny", "CIDEr"),
              "refcocog_rec": ("refcocog_rec/answers/val/tiny", "accuracy"),
              "pope": ("pope/answers/tiny", "accuracy")}
    for script, (folder, key) in expect.items():
        r = subprocess.run(["bash", str(ROOT / "scripts" / "eval" / f"{script}.sh")], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{script}: {r.stderr[-2000:]}"
        metrics = (e / folder / "metrics.json").read_text()
        assert key in metrics, script
        assert rows(e / folder / "merge.jsonl")


def test_coco_cls_naive_flag_same_answers(tiny_rgpt_dir, data, tmp_path):
    from rgpt_llava.eval import model_coco_cls
    texts = []
    for flag in ([], ["--naive"]):
        out = tmp_path / f"cls{len(flag)}.jsonl"
        model_coco_cls.main(common_args(tiny_rgpt_dir, data, out, "--annotation-file", str(data / "instances.json"),
                                        *flag))
        texts.append({a["question_id"]: a["text"] for a in rows(out)})
    assert texts[0] == texts[1]


@pytest.mark.parametrize("step", ["caption", "rec"])
def test_every_step_naive_flag_same_answers(tiny_rgpt_dir, data, tmp_path, step):
    """--naive (model.generate per batch) on each generation step, with region tokens and with --regions-as-text:
    the same answers as the shared-prefix path."""
    from rgpt_llava.eval import model_caption, model_rec, rec
    if step == "caption":
        main, questions = model_caption.main, data / "vg_questions.jsonl"
    else:
        main, questions = model_rec.main, tmp_path / "rec_q.jsonl"
        assert rec.main(["build", "--refs", str(data / "refs.json"), "--instances", str(data / "instances.json"),
                         "--proposals", str(data / "proposals.json"), "--split", "val", "--out", str(questions)]) == 0
    for mode in ([], ["--regions-as-text"]):
        texts = []
        for flag in ([], ["--naive"]):
            out = tmp_path / f"{step}{len(mode)}{len(flag)}.jsonl"
            assert main(common_args(tiny_rgpt_dir, data, out, "--question-file", str(questions), *mode, *flag)) == 0
            texts.append({a["question_id"]: a["text"] for a in rows(out)})
        assert texts[0] == texts[1] and texts[0]

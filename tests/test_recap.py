"""RecapD generation pipeline (``rgpt_llava.data.recap``): prompts, resume, crash safety, CLIP filter, sharding, bad
input, and the real path (tiny LLaVA + tiny CLIP) feeding ``python -m rgpt_llava.data.build recapd``."""
import json

import pytest
from PIL import Image

from rgpt_llava.data import recap
from rgpt_llava.data.common import DataError, Stats

IMAGES = ["chelsea.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg"]


def make_annotations(path, images_dir, n_images=3, per_image=2, extra=None):
    data = {"images": [], "annotations": [],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "coffee_cup"}]}
    for i, name in enumerate(IMAGES[:n_images], 1):
        w, h = Image.open(images_dir / name).size
        data["images"].append({"id": i, "file_name": name, "width": w, "height": h})
        for k in range(per_image):
            data["annotations"].append({"id": i * 10 + k, "image_id": i, "category_id": 1 + k % 2,
                                        "bbox": [5 + 10 * k, 5, w / 3, h / 4],
                                        "segmentation": [[5, 5, 40, 5, 40, 30, 5, 30]]})
    if extra:
        extra(data)
    path.write_text(json.dumps(data))
    return str(path)


class FakeGenerator:
    """Records every call; global prompts get a two-sentence caption, region prompts a numbered one."""

    def __init__(self):
        self.calls, self.prompts = 0, []
        self.globals = set(recap.load_prompts()["global"])

    def __call__(self, images, prompts):
        self.calls += 1
        self.prompts.extend(prompts)
        return [f"A scene with {im.size[0]} px. It is sunny." if p in self.globals else f"caption {len(p)} words here"
                for im, p in zip(images, prompts)]


def read_rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def run(ann, images_dir, out, gen, **kw):
    return recap.run(ann, str(images_dir), str(out), gen, stats=Stats("recap"), **kw)


# ----------------------------------------------------------------------------------------------------------------------
def test_prompt_file_and_assembly(tmp_path, images_dir):
    prompts = recap.load_prompts()
    assert len(prompts["global"]) == 10 and len(set(prompts["global"])) == 10
    assert len(prompts["region"]) == 10 and len(set(prompts["region"])) == 10
    assert prompts["global"][0] == "Describe the image in detail."
    assert prompts["region"][0] == ("In the context of the entire image, <GlobalCaption>, describe the <ClassName> "
                                    "in the close-up region in detail.")
    assert "Sec. 3.3" in json.load(open(recap.PROMPTS_FILE))["source"]
    assert recap.region_prompt(prompts["region"][0], "A cat on a  sofa.", "coffee cup") == (
        "In the context of the entire image, A cat on a sofa, describe the coffee cup in the close-up region in detail.")

    ann = make_annotations(tmp_path / "a.json", images_dir)
    gen = FakeGenerator()
    res = run(ann, images_dir, tmp_path / "out.jsonl", gen, seed=3, batch_size=2)
    rows = read_rows(tmp_path / "out.jsonl")
    assert res["counts"]["kept"] == len(rows) == 6 and res["counts"]["global captions generated"] == 3
    for r in rows:
        gv, rv = r["global_prompt_variant"], r["prompt_variant"]
        assert gv == recap.global_variant(3, r["image_id"], 10) and rv == recap.region_variant(3, r["image_id"],
                                                                                               r["ann_id"], 10)
        assert prompts["global"][gv] in gen.prompts
        expected = prompts["region"][rv].replace("<GlobalCaption>", r["global_caption"].rstrip("."))
        assert r["prompt"] == expected.replace("<ClassName>", r["category"])
        assert r["prompt"] in gen.prompts
        assert r["category"] in ("cat", "coffee cup") and r["clip_score"] is None
        x1, y1, x2, y2 = r["crop"]
        assert 0 <= x1 < x2 <= r["width"] and 0 <= y1 < y2 <= r["height"]
    # variants spread over the pool and are reproducible for the seed
    assert len({r["prompt_variant"] for r in rows}) > 1
    assert recap.crop_box([10, 10, 20, 10], (100, 100), 0.1) == (8, 9, 32, 21)
    assert recap.crop_box([0, 0, 100, 100], (100, 100), 0.5) == (0, 0, 100, 100)


def test_resume_and_crash(tmp_path, images_dir):
    ann = make_annotations(tmp_path / "a.json", images_dir, n_images=3, per_image=3)
    out = tmp_path / "out.jsonl"
    seen = []

    def crash(row):
        seen.append(row)
        if len(seen) == 4:
            raise RuntimeError("simulated crash")

    gen = FakeGenerator()
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(ann, images_dir, out, gen, batch_size=2, on_row=crash)
    first = read_rows(out)
    assert len(first) == 4
    # a line cut by the crash at the end of the file is dropped and regenerated
    with open(out, "a") as f:
        f.write('{"image": "chelsea.jpg", "image_id": 3, "ann_')
    gen2 = FakeGenerator()
    res = run(ann, images_dir, out, gen2, batch_size=2)
    assert res["counts"]["already done"] == 4 and res["counts"]["kept"] == 5
    # images 1 and 2 were captioned (stage 1) before the crash: only image 3 needs a global caption now
    assert sum(p in gen2.globals for p in gen2.prompts) == 1 and res["counts"]["global captions generated"] == 1
    lines = [line for line in open(out).read().split("\n") if line]
    rows = [json.loads(line) for line in lines]
    keys = [(r["image_id"], r["ann_id"]) for r in rows]
    assert len(keys) == len(set(keys)) == 9
    assert rows[:4] == first
    # the resumed rows match a run without a crash
    gen3 = FakeGenerator()
    run(ann, images_dir, tmp_path / "clean.jsonl", gen3, batch_size=2)
    assert sorted(map(json.dumps, read_rows(tmp_path / "clean.jsonl"))) == sorted(map(json.dumps, rows))
    # a second run generates nothing
    gen4 = FakeGenerator()
    res = run(ann, images_dir, out, gen4, batch_size=2)
    assert gen4.calls == 0 and res["counts"]["already done"] == 9 and res["counts"]["kept"] == 0


def test_clip_filter_with_known_scores(tmp_path, images_dir):
    ann = make_annotations(tmp_path / "a.json", images_dir, n_images=2, per_image=2)
    known = {10: 0.9, 11: 0.1, 20: 0.5, 21: 0.49}
    order = [10, 11, 20, 21]
    calls = []

    def scorer(crops, captions):
        calls.append(len(crops))
        got = [known[order[sum(calls[:-1]) + i]] for i in range(len(crops))]
        return got

    out, rej = tmp_path / "out.jsonl", tmp_path / "rejected.jsonl"
    res = run(ann, images_dir, out, FakeGenerator(), scorer=scorer, min_clip_score=0.5, rejected_out=str(rej),
              batch_size=4)
    kept = {r["ann_id"]: r["clip_score"] for r in read_rows(out)}
    assert kept == {10: 0.9, 20: 0.5}
    assert {r["ann_id"] for r in read_rows(rej)} == {11, 21}
    assert res["counts"]["kept"] == 2 and res["counts"]["rejected"] == 2
    text = recap.summary(res)
    assert "rejected by CLIP 2" in text and "histogram" in text
    # rejected regions are not regenerated on resume
    gen = FakeGenerator()
    res = run(ann, images_dir, out, gen, scorer=scorer, min_clip_score=0.5)
    assert gen.calls == 0 and res["counts"]["already done"] == 4
    with pytest.raises(ValueError, match="--clip-model"):
        run(ann, images_dir, tmp_path / "x.jsonl", FakeGenerator(), min_clip_score=0.5)


def test_real_clip_long_caption(tmp_path, images_dir):
    from rgpt_llava.data.clip_score import ClipScorer, build_tiny_clip_model, chunk_caption
    scorer = ClipScorer(build_tiny_clip_model(tmp_path / "clip"))
    image = Image.open(images_dir / "chelsea.jpg").convert("RGB")
    long = "A gray tabby cat with dark stripes sits on a wooden floor near a wall. " * 5
    assert scorer.count_tokens(long) > 77
    chunks = chunk_caption(long, scorer.count_tokens, 75)
    assert len(chunks) > 1 and all(scorer.count_tokens(c) <= 75 for c in chunks)
    assert " ".join(chunks) == " ".join(long.split())
    # one sentence longer than the window is split at words
    words = chunk_caption("word " * 60, scorer.count_tokens, 75)
    assert len(words) > 1 and all(scorer.count_tokens(c) <= 75 for c in words)
    scores, n_chunks = scorer.score([image, image], [long, "a cat"])
    assert n_chunks[0] == len(chunks) and n_chunks[1] == 1
    assert all(-1.0 <= s <= 1.0 for s in scores)


def test_chunks_partition_images(tmp_path, images_dir):
    ann = make_annotations(tmp_path / "a.json", images_dir, n_images=4, per_image=1)
    all_rows = []
    for k in range(3):
        out = tmp_path / f"c{k}.jsonl"
        run(ann, images_dir, out, FakeGenerator(), num_chunks=3, chunk_idx=k)
        all_rows.append(read_rows(out))
    ids = [{r["image_id"] for r in rows} for rows in all_rows]
    assert set().union(*ids) == {1, 2, 3, 4} and sum(len(i) for i in ids) == 4
    assert all(ids)
    # the same region gets the same prompt whichever chunk holds it
    whole = tmp_path / "whole.jsonl"
    run(ann, images_dir, whole, FakeGenerator())
    by_key = {(r["image_id"], r["ann_id"]): r["prompt"] for r in read_rows(whole)}
    assert by_key == {(r["image_id"], r["ann_id"]): r["prompt"] for rows in all_rows for r in rows}
    with pytest.raises(ValueError, match="chunk-idx"):
        run(ann, images_dir, tmp_path / "x.jsonl", FakeGenerator(), num_chunks=2, chunk_idx=2)


def test_cli_never_appends_to_its_annotations(tmp_path, images_dir, capsys):
    from rgpt_llava.data.recap import main
    ann = make_annotations(tmp_path / "a.json", images_dir)
    before = open(ann, "rb").read()
    for extra, message in ((["--out", ann], f"--out {ann} is also --annotations"),
                           (["--out", str(tmp_path / "o.jsonl"), "--rejected-out", str(tmp_path / "o.jsonl")],
                            "--rejected-out " + str(tmp_path / "o.jsonl") + " is also --out: two outputs in one file")):
        with pytest.raises(SystemExit) as e:
            main(["--model-path", str(tmp_path / "none"), "--annotations", ann, "--image-folder", str(images_dir),
                  *extra])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert open(ann, "rb").read() == before


def test_bad_annotations(tmp_path, images_dir, capsys):
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match="missing.json: file not found"):
        run(str(tmp_path / "missing.json"), images_dir, out, FakeGenerator())
    p = tmp_path / "noann.json"
    p.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(DataError, match="'annotations' must be a list"):
        run(str(p), images_dir, out, FakeGenerator())

    def unknown_image(d):
        d["annotations"][0]["image_id"] = 99
    with pytest.raises(DataError, match="annotation 10 refers to image id 99"):
        run(make_annotations(tmp_path / "b.json", images_dir, extra=unknown_image), images_dir, out, FakeGenerator())

    def unknown_cat(d):
        d["annotations"][1]["category_id"] = 7
    with pytest.raises(DataError, match="annotation 11 refers to category id 7"):
        run(make_annotations(tmp_path / "c.json", images_dir, extra=unknown_cat), images_dir, out, FakeGenerator())

    def degenerate_and_missing(d):
        d["annotations"][0]["bbox"] = [5, 5, 0, 10]
        d["images"][2]["file_name"] = "nope.jpg"
    ann = make_annotations(tmp_path / "d.json", images_dir, extra=degenerate_and_missing)
    capsys.readouterr()
    res = run(ann, images_dir, out, FakeGenerator())
    err = capsys.readouterr().err
    assert "annotation 10 (image 1): degenerate box" in err
    assert "image 3 (nope.jpg): not found in --image-folder" in err
    skipped = res["stats"].skipped
    assert skipped["degenerate box (w or h <= 0)"] == 1 and skipped["image file not found"] == 1
    assert skipped["regions of a missing or unreadable image"] == 2
    assert res["counts"]["kept"] == 3
    assert {(r["image_id"], r["ann_id"]) for r in read_rows(out)} == {(1, 11), (2, 20), (2, 21)}


def test_real_model_cli_feeds_converter(tmp_path, tiny_llava_dir, images_dir, monkeypatch, capsys):
    from rgpt_llava.data.build import main as build_main
    from rgpt_llava.data.clip_score import build_tiny_clip_model
    ann = make_annotations(tmp_path / "a.json", images_dir, n_images=2, per_image=2)
    clip = build_tiny_clip_model(tmp_path / "clip")
    calls = []
    real_call = recap.LlavaGenerator.__call__

    def counting(self, images, prompts):
        calls.append(len(prompts))
        return real_call(self, images, prompts)
    monkeypatch.setattr(recap.LlavaGenerator, "__call__", counting)
    out = tmp_path / "recap.jsonl"
    args = ["--model-path", tiny_llava_dir, "--annotations", ann, "--image-folder", str(images_dir),
            "--out", str(out), "--device", "cpu", "--max-new-tokens", "6", "--batch-size", "2",
            "--clip-model", clip, "--min-clip-score", "-1.0"]
    assert recap.main(args) == 0, capsys.readouterr().err
    assert "kept 4" in capsys.readouterr().out
    rows = read_rows(out)
    assert len(rows) == 4 and all(isinstance(r["clip_score"], float) and r["caption"] for r in rows)
    assert sum(calls) == 2 + 4
    calls.clear()
    assert recap.main(args) == 0
    assert calls == [] and "already done 4" in capsys.readouterr().out

    built = tmp_path / "recapd.json"
    assert build_main(["recapd", "--input", str(out), "--out", str(built), "--image-prefix", "imgs"]) == 0
    samples = json.loads(built.read_text())
    assert sum(len(s["regions"]) for s in samples) == 4
    assert {s["image"] for s in samples} == {"imgs/chelsea.jpg", "imgs/coffee.jpg"}
    answers = {t["value"] for s in samples for t in s["conversations"] if t["from"] == "gpt"}
    assert answers == {r["caption"] for r in rows}
    assert recap.main(args[:-2] + ["--min-clip-score", "0.5", "--clip-model", "/no/such"]) == 1


def test_rgpt_checkpoint_generates(tiny_rgpt_dir, images_dir):
    gen = recap.LlavaGenerator(tiny_rgpt_dir, device="cpu", max_new_tokens=4)
    image = Image.open(images_dir / "coffee.jpg").convert("RGB")
    caps = gen([image, image.crop((0, 0, 50, 40))], ["Describe the image in detail.", "Describe the cup."])
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)
    # left-padded batching gives what one-at-a-time generation gives
    assert caps == [gen([image], ["Describe the image in detail."])[0],
                    gen([image.crop((0, 0, 50, 40))], ["Describe the cup."])[0]]
    assert "USER: <image>\nDescribe the cup. ASSISTANT:" in gen.prompt("Describe the cup.")


def test_llava_checkpoint_captions_as_llava_generates(tiny_llava_dir, images_dir):
    """A plain LLaVA checkpoint goes the engine's way too (ImageOnlyModel): the captions are LLaVA's own
    model.generate captions."""
    import torch
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import process_images, tokenizer_image_token
    from rgpt_llava.data.common import clean_text
    gen = recap.LlavaGenerator(tiny_llava_dir, device="cpu", max_new_tokens=5)
    image = Image.open(images_dir / "coffee.jpg").convert("RGB")
    images, prompts = [image, image.crop((0, 0, 50, 40))], ["Describe the image in detail.", "Describe the cup."]
    llava, tok = gen.engine.model.llava, gen.engine.tokenizer
    expected = []
    for im, p in zip(images, prompts):
        ids = tokenizer_image_token(gen.prompt(p), tok, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
        pixels = process_images([im], gen.engine.image_processor, llava.config).to(llava.dtype)
        with torch.inference_mode():
            out = llava.generate(ids, images=pixels, image_sizes=[im.size], do_sample=False, num_beams=1,
                                 max_new_tokens=5, eos_token_id=tok.eos_token_id)
        expected.append(clean_text(tok.decode(out[0], skip_special_tokens=True)))
    assert gen(images, prompts) == expected

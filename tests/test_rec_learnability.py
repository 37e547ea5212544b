"""scripts/bench/rec_learnability.py: the REC samples it builds are the generator's REC turns, rewritten as asked."""
import importlib.util
import json
import re

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("rec_learnability", ROOT / "scripts" / "bench" / "rec_learnability.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from rgpt_llava.data import shapes
    out = tmp_path_factory.mktemp("shapes")
    assert shapes.main(["--out", str(out), "--n-train", "12", "--n-val", "4", "--seed", "3"]) in (0, None)
    return out


def rec_turns(data, split):
    turns = []
    for s in json.loads((data / f"{split}.json").read_text()):
        c = s["conversations"]
        turns += [(q["value"], a["value"], s) for q, a in zip(c[0::2], c[1::2]) if "template Region [x]" in q["value"]]
    return turns


def anns(data, split):
    return {a["id"]: a for a in json.loads((data / "annotations" / f"instances_{split}.json").read_text())["annotations"]}


def test_oracle_paper_keeps_prompt_answer_and_region_order(data):
    turns, by_id = rec_turns(data, "train"), anns(data, "train")
    got = study.rec_samples(data, "train", "oracle", "paper")
    assert len(got) == len(turns) > 0
    for (q, a, s), (prompt, answer, feats) in zip(turns, got):
        assert answer == a
        numbers = [int(n) for n in re.findall(r"<region(\d+)>", q)]
        assert len(feats) == len(numbers) == prompt.count("<region")
        for n, f in zip(numbers, feats):   # k-th placeholder of the prompt -> one-hot of that annotation
            assert f == study.one_hot(by_id[s["regions"][n - 1]["ann_id"]])
            assert sum(f) == 4   # shape, colour, size, texture: one each
        assert re.findall(r"<region(\d+)>", prompt) == [str(k) for k in range(1, len(feats) + 1)]


def test_layouts_write_the_list_position(data):
    for layout, fmt in (("indexed", "Region [{p}] <region{p}>"), ("after", "<region{p}> Region [{p}]")):
        for prompt, _, feats in study.rec_samples(data, "val", "oracle", layout):
            for p in range(1, len(feats) + 1):
                assert fmt.format(p=p) in prompt


def test_exact_query_is_the_named_object(data):
    by_id = anns(data, "train")
    samples = study.rec_samples(data, "train", "exact", "paper")
    matched = 0
    for (q, a, s), (prompt, answer, feats) in zip(rec_turns(data, "train"), samples):
        assert prompt.count("<region") == len(feats) == q.count("<region") + 1
        assert "template Region [x]" in prompt and not study.EXPRESSION.search(prompt)
        hit = re.search(r"Region \[(\d+)\]", answer)
        if hit:   # the query vector is the answer's candidate
            assert feats[-1] == feats[int(hit.group(1)) - 1]
            matched += 1
        else:     # no match: the named object is not among the candidates
            assert feats[-1] not in feats[:-1]
    assert matched > 0


def test_named_by():
    ann = {"shape": "square", "colour": "red", "size": "small", "texture": "striped"}
    assert study.named_by(ann, "the square") and study.named_by(ann, "the small striped red square")
    assert not study.named_by(ann, "the solid square") and not study.named_by(ann, "the red circle")


def test_text_regions_are_captions(data):
    by_id = anns(data, "val")
    for (q, a, s), (prompt, _, feats) in zip(rec_turns(data, "val"), study.rec_samples(data, "val", "text", "paper")):
        assert feats == [] and "<region" not in prompt
        for n in re.findall(r"<region(\d+)>", q):
            assert by_id[s["regions"][int(n) - 1]["ann_id"]]["caption"] in prompt


def test_runs_and_writes_its_curve(data, real_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(real_tokenizer_dir, use_fast=False)
    samples = study.rec_samples(data, "val", "oracle", "paper")
    for ids, answer, feats in study.encode(samples, tok):   # one sentinel per region, the answer ends with </s>
        assert sum(i <= study.REGION_TOKEN_INDEX for i in ids) == len(feats) and answer[-1] == tok.eos_token_id
    out = tmp_path / "curve.json"
    res = study.main(["--data", str(data), "--tokenizer", real_tokenizer_dir, "--steps", "3", "--eval-every", "2",
                      "--batch-size", "4", "--hidden", "32", "--json", str(out)])
    assert [c["step"] for c in res["curve"]] == [2, 3]
    assert json.loads(out.read_text())["val_turns"] == len(samples) == res["val_turns"]
    assert all(0 <= c["rec_acc"] <= 100 for c in res["curve"])


def test_bad_input_is_named(tmp_path, data, real_tokenizer_dir, capsys):
    with pytest.raises(SystemExit) as e:
        study.main(["--data", str(tmp_path), "--tokenizer", real_tokenizer_dir])
    assert e.value.code == 2 and "train.json is missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main(["--data", str(data), "--tokenizer", real_tokenizer_dir, "--regions", "text", "--layout", "after"])
    assert "no region tokens to index" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main(["--data", str(data), "--tokenizer", real_tokenizer_dir, "--steps", "0"])
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_bad_device_is_named(data, real_tokenizer_dir, capsys):
    with pytest.raises(SystemExit):
        study.main(["--data", str(data), "--tokenizer", real_tokenizer_dir, "--device", "gpu0"])
    assert "--device gpu0" in capsys.readouterr().err


def test_listing_classifies_each_rec_candidate_list_in_order(data):
    rec = study.rec_samples(data, "train", "oracle", "paper")
    both = study.rec_samples(data, "train", "oracle", "paper", listing=True)
    assert len(both) == 2 * len(rec) and both[0::2] == rec
    colours, shapes_ = study.ATTRIBUTES["colour"], study.ATTRIBUTES["shape"]
    for (_, _, feats), (prompt, answer, listed) in zip(rec, both[1::2]):
        assert listed == feats and "RegionShapes category names" in prompt
        names = [f"{colours[f[5:9].index(1.0)]} {shapes_[f[0:5].index(1.0)]}" for f in feats]
        assert answer == ", ".join(names)
    # held-out data is REC only, whatever --listing says
    assert len(study.rec_samples(data, "val", "oracle", "paper")) == len(rec_turns(data, "val"))

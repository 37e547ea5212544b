"""research/rec_learnability.py: the REC samples it builds are the generator's REC turns, rewritten as asked."""
import importlib.util
import json
import re

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("rec_learnability", ROOT / "research" / "rec_learnability.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from rgpt_llava.shapes import generator as shapes
    out = tmp_path_factory.mktemp("shapes")
    assert shapes.main(["--out", str(out), "--n-train", "12", "--n-val", "4", "--seed", "3"]) in (0, None)
    return out


def rec_turns(data, split):
    turns = []
    for s in json.loads((data / f"{split}.json").read_text()):
        c = s["conversations"]
        turns += [(q["value"], a["value"], s) for q, a in zip(c[0::2], c[1::2]) if "template Region [x]" in q["value"]]
    return turns


def single(samples):
    """One-turn samples ([(question, answer)], rows) as (question, answer, rows)."""
    assert all(len(pairs) == 1 for pairs, _ in samples)
    return [(pairs[0][0], pairs[0][1], rows) for pairs, rows in samples]


def anns(data, split):
    return {a["id"]: a for a in json.loads((data / "annotations" / f"instances_{split}.json").read_text())["annotations"]}


def test_oracle_paper_keeps_prompt_answer_and_region_order(data):
    turns, by_id = rec_turns(data, "train"), anns(data, "train")
    got = single(study.rec_samples(data, "train", "oracle", "paper"))
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
        for prompt, _, feats in single(study.rec_samples(data, "val", "oracle", layout)):
            for p in range(1, len(feats) + 1):
                assert fmt.format(p=p) in prompt


def test_exact_query_is_the_named_object(data):
    by_id = anns(data, "train")
    samples = single(study.rec_samples(data, "train", "exact", "paper"))
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
    text = single(study.rec_samples(data, "val", "text", "paper"))
    for (q, a, s), (prompt, _, feats) in zip(rec_turns(data, "val"), text):
        assert feats == [] and "<region" not in prompt
        for n in re.findall(r"<region(\d+)>", q):
            assert by_id[s["regions"][int(n) - 1]["ann_id"]]["caption"] in prompt


def test_runs_and_writes_its_curve(data, real_tokenizer_dir, tmp_path):
    from rgpt_llava.tokenization import load_tokenizer
    tok = load_tokenizer(real_tokenizer_dir)
    samples = study.rec_samples(data, "val", "oracle", "paper")
    for (pairs, _), (ids, labels, feats) in zip(samples, study.encode(samples, tok)):
        # one sentinel per region; the labels are exactly the answer and its </s>, at the end
        assert sum(i <= study.REGION_TOKEN_INDEX for i in ids) == len(feats)
        answer = tok(pairs[0][1]).input_ids[1:] + [tok.eos_token_id]
        assert labels[-len(answer):] == ids[-len(answer):] == answer
        assert set(labels[:-len(answer)]) == {-100}
    out = tmp_path / "curve.json"
    res = study.main(["--data", str(data), "--tokenizer", real_tokenizer_dir, "--steps", "3", "--eval-every", "2",
                      "--batch-size", "4", "--hidden", "32", "--json", str(out)])
    assert [c["step"] for c in res["curve"]] == [2, 3]
    assert json.loads(out.read_text())["val_turns"] == len(samples) == res["val_turns"]
    assert all(0 <= c["rec_acc"] <= 100 for c in res["curve"])
    # the studies' start stays transformers' scale, so docs/SHAPES.md's commands keep reproducing their tables
    # (the benchmark itself draws at 1/sqrt(width))
    assert res["args"]["init_std"] == study.STUDY_INIT_STD == 0.02 != study.LLM["init_std"]


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
    with pytest.raises(SystemExit):
        study.main(["--data", str(data), "--tokenizer", real_tokenizer_dir, "--max-seconds", "0"])
    assert "--max-seconds must be positive" in capsys.readouterr().err


def test_heads_betas_and_init_std_reach_the_model_and_the_optimizer(data, real_tokenizer_dir, tmp_path, monkeypatch,
                                                                    capsys):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    betas = []
    real_adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **k: betas.append(k.get("betas")) or real_adamw(*a, **k))
    res = study.main(["--data", str(data), "--tokenizer", real_tokenizer_dir, "--steps", "1", "--batch-size", "2",
                      "--hidden", "32", "--heads", "8", "--beta1", "0.99", "--beta2", "0.95", "--init-std", "0.1",
                      "--lr", "1e-9", "--save", str(tmp_path / "llm")])
    assert LlamaConfig.from_pretrained(tmp_path / "llm").num_attention_heads == 8 == res["args"]["heads"]
    assert betas == [(0.99, 0.95)]
    # one step at lr 1e-9 leaves the random weights as drawn: std 0.1 (transformers' default would give 0.02)
    llm = LlamaForCausalLM.from_pretrained(tmp_path / "llm")
    assert llm.config.initializer_range == 0.1
    for weight in (llm.model.embed_tokens.weight, llm.model.layers[0].self_attn.q_proj.weight):
        assert abs(weight.std().item() - 0.1) < 0.005
    for flags, message in ((["--hidden", "32", "--heads", "3"], "--heads 3 does not divide the width 32"),
                           (["--heads", "0"], "--heads must be at least 1"),
                           (["--beta2", "1"], "--beta2 must lie in (0, 1)"),
                           (["--beta1", "0"], "--beta1 must lie in (0, 1)"),
                           (["--init-std", "0"], "--init-std must be positive"),
                           (["--init-std", "0.1", "--init-llm", str(tmp_path / "llm")],
                            "drop --hidden/--layers/--heads/--init-std")):
        with pytest.raises(SystemExit):
            study.main(["--data", str(data), "--tokenizer", real_tokenizer_dir] + flags)
        assert message in capsys.readouterr().err


def test_bad_device_is_named(data, real_tokenizer_dir, capsys):
    with pytest.raises(SystemExit):
        study.main(["--data", str(data), "--tokenizer", real_tokenizer_dir, "--device", "gpu0"])
    assert "--device gpu0" in capsys.readouterr().err


def test_listing_classifies_each_rec_candidate_list_in_order(data):
    rec = single(study.rec_samples(data, "train", "oracle", "paper"))
    both = single(study.rec_samples(data, "train", "oracle", "paper", listing=True))
    listing = [x for x in both if "template Region [x]" not in x[0]]
    assert len(both) == 2 * len(rec) and [x for x in both if x not in listing] == rec
    colours, shapes_ = study.ATTRIBUTES["colour"], study.ATTRIBUTES["shape"]
    for (_, _, feats), (prompt, answer, listed) in zip(rec, listing):
        assert listed == feats and "RegionShapes category names" in prompt
        names = [f"{colours[f[5:9].index(1.0)]} {shapes_[f[0:5].index(1.0)]}" for f in feats]
        assert answer == ", ".join(names)
    # held-out data is REC only, whatever --listing says
    assert len(single(study.rec_samples(data, "val", "oracle", "paper"))) == len(rec_turns(data, "val"))


def test_batched_forward_equals_one_sample_at_a_time(data, real_tokenizer_dir, tmp_path):
    """The batched splice puts each sample's own k-th projected feature at its k-th sentinel: same loss and argmax as
    running every sample alone (exact mode: several regions per sample, the query last)."""
    import torch
    from transformers import LlamaForCausalLM
    from rgpt_llava.tokenization import load_tokenizer
    from rgpt_llava.tiny import build_tiny_llm
    build_tiny_llm(tmp_path, real_tokenizer_dir, hidden_size=32, num_layers=1, seed=0)
    tok = load_tokenizer(tmp_path)
    model = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    batch = study.encode(study.rec_samples(data, "train", "exact", "paper"), tok)[:6]
    assert len({len(f) for _, _, f in batch}) > 1          # different region counts in one batch
    torch.manual_seed(0)
    projector = torch.nn.Linear(len(batch[0][2][0]), 32)
    with torch.no_grad():
        loss, pred, gold = study.forward(model, projector, batch)
        token_losses, preds = [], []
        for ids, labels, feats in batch:
            full = torch.tensor(ids)
            n_ans = sum(t != -100 for t in labels)    # one turn: the answer is the last n_ans tokens
            ans = full[-n_ans:]
            x = model.get_input_embeddings()(full.clamp_min(0))
            for pos in (full <= study.REGION_TOKEN_INDEX).nonzero().flatten().tolist():
                x[pos] = projector(torch.tensor(feats[study.REGION_TOKEN_INDEX - full[pos].item()]))
            logits = model(inputs_embeds=x[None]).logits[0, len(ids) - n_ans - 1:-1]
            token_losses.append(torch.nn.functional.cross_entropy(logits, ans, reduction="none"))
            preds.append(logits.argmax(-1))
    assert torch.equal(gold, torch.tensor([t for _, labels, _ in batch for t in labels if t != -100]))
    assert torch.allclose(loss, torch.cat(token_losses).mean(), atol=1e-5)
    assert torch.equal(pred, torch.cat(preds))


def test_max_seconds_caps_the_steps_and_the_schedule(data, real_tokenizer_dir, tmp_path):
    out = tmp_path / "curve.json"
    res = study.main(["--data", str(data), "--tokenizer", real_tokenizer_dir, "--steps", "1000000", "--eval-every",
                      "1000000", "--batch-size", "2", "--hidden", "16", "--layers", "1", "--max-seconds", "1",
                      "--json", str(out)])
    steps = res["args"]["steps"]
    assert res["requested_steps"] == 1000000 and 1 <= steps < 1000000
    assert [c["step"] for c in res["curve"]] == [steps]       # the last step is evaluated, the schedule ended there
    assert json.loads(out.read_text())["args"]["steps"] == steps


def test_save_then_init_llm_continues_from_the_saved_weights(data, real_tokenizer_dir, tmp_path, capsys):
    import torch
    from transformers import LlamaForCausalLM
    saved = tmp_path / "llm"
    common = ["--data", str(data), "--tokenizer", real_tokenizer_dir, "--batch-size", "2", "--eval-every", "1"]
    first = study.main(common + ["--steps", "2", "--hidden", "16", "--layers", "1", "--heads", "2",
                                 "--init-std", "0.05", "--regions", "text", "--save", str(saved)])
    model = LlamaForCausalLM.from_pretrained(saved)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (16, 1)
    # --lr tiny: the continued run starts from (and so stays at) the saved weights, not at a fresh model's
    second = study.main(common + ["--steps", "1", "--lr", "1e-12", "--regions", "text", "--init-llm", str(saved),
                                  "--save", str(tmp_path / "again")])
    assert tuple(second["args"][k] for k in ("hidden", "layers", "heads", "init_std")) == (16, 1, 2, 0.05)
    again = LlamaForCausalLM.from_pretrained(tmp_path / "again").state_dict()
    fresh = study.main(common + ["--steps", "1", "--lr", "1e-12", "--regions", "text", "--hidden", "16",
                                "--layers", "1", "--save", str(tmp_path / "fresh")])
    fresh = LlamaForCausalLM.from_pretrained(tmp_path / "fresh").state_dict()
    assert all(torch.allclose(v, again[k], atol=1e-6) for k, v in model.state_dict().items())
    assert not all(torch.allclose(v, fresh[k], atol=1e-6) for k, v in model.state_dict().items())
    with pytest.raises(SystemExit):
        study.main(common + ["--init-llm", str(saved), "--hidden", "32"])
    assert "drop --hidden/--layers/--heads" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main(common + ["--init-llm", str(saved), "--heads", "2"])
    assert "drop --hidden/--layers/--heads" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main(common + ["--init-llm", str(tmp_path / "nowhere")])
    assert "no config.json there" in capsys.readouterr().err


def test_extra_train_adds_other_folders_turns_and_keeps_the_held_out_split(data, real_tokenizer_dir, tmp_path):
    from rgpt_llava.shapes import generator as shapes
    other = tmp_path / "other"
    assert shapes.main(["--out", str(other), "--n-train", "7", "--n-val", "1", "--seed", "4"]) in (0, None)
    common = ["--data", str(data), "--tokenizer", real_tokenizer_dir, "--steps", "1", "--batch-size", "2",
              "--hidden", "16", "--layers", "1"]
    alone = study.main(common)
    both = study.main(common + ["--extra-train", str(other), "--json", str(tmp_path / "both.json")])
    assert json.loads((tmp_path / "both.json").read_text())["args"]["extra_train"] == [str(other)]
    assert both["train_turns"] == alone["train_turns"] + len(rec_turns(other, "train"))
    assert both["val_turns"] == alone["val_turns"] == len(rec_turns(data, "val"))
    with pytest.raises(SystemExit):
        study.main(common + ["--extra-train", str(tmp_path / "nowhere")])


def test_freeze_llm_trains_the_projector_alone(data, real_tokenizer_dir, tmp_path, capsys):
    import torch
    from transformers import LlamaForCausalLM
    common = ["--data", str(data), "--tokenizer", real_tokenizer_dir, "--batch-size", "2", "--eval-every", "1"]
    study.main(common + ["--steps", "1", "--hidden", "16", "--layers", "1", "--save", str(tmp_path / "a")])
    study.main(common + ["--steps", "3", "--lr", "1e-2", "--init-llm", str(tmp_path / "a"), "--freeze-llm",
                         "--save", str(tmp_path / "b")])
    study.main(common + ["--steps", "3", "--lr", "1e-2", "--init-llm", str(tmp_path / "a"), "--save", str(tmp_path / "c")])
    a, b, c = (LlamaForCausalLM.from_pretrained(tmp_path / n).state_dict() for n in "abc")
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert not all(torch.equal(v, c[k]) for k, v in a.items())
    with pytest.raises(SystemExit):
        study.main(common + ["--regions", "text", "--freeze-llm"])
    assert "leaves nothing to train" in capsys.readouterr().err


def test_fewer_candidates_keeps_the_target_and_renumbers_the_answer(data):
    by_id, pools = anns(data, "train"), study.load_pools()
    full = single(study.rec_samples(data, "train", "oracle", "paper"))
    short = single(study.rec_samples(data, "train", "oracle", "paper", max_candidates=2, seed=5))
    assert len(full) == len(short)
    shortened = no_match = 0
    for (q, a, feats), (q2, a2, feats2) in zip(full, short):
        assert len(feats2) == min(2, len(feats)) == q2.count("<region")
        assert all(f in feats for f in feats2)          # a subset of the listed candidates, in their order
        if a == study.no_match_answer(pools):
            assert a2 == a
            no_match += 1
        else:   # the answer points at the same candidate's features in the shorter list
            x, x2 = (int(re.fullmatch(r"Region \[(\d+)\]", s).group(1)) for s in (a, a2))
            assert feats2[x2 - 1] == feats[x - 1]
        shortened += len(feats) > 2
    assert shortened > 0
    q = "Pick <region1>, <region2>, <region3> and <region4>, please."
    for seed in range(10):
        q2, a2 = study.fewer_candidates(q, "Region [3]", 2, study.random.Random(seed), "x")
        kept = re.findall(r"<region\d+>", q2)
        assert "<region3>" in kept and kept == sorted(kept) and len(kept) == 2
        assert q2 == f"Pick {kept[0]} and {kept[1]}, please." and a2 == f"Region [{kept.index('<region3>') + 1}]"
    assert study.fewer_candidates(q, "Region [2]", 4, study.random.Random(0), "x") == (q, "Region [2]")
    with pytest.raises(study.StudyError, match="neither a list position"):
        study.fewer_candidates("Pick <region1>, <region2> and <region3>.", "Region [7]", 2, study.random.Random(0), "x")


def test_curriculum_reports_both_held_out_sets_and_refuses_bad_flags(data, real_tokenizer_dir, capsys):
    res = study.main(["--data", str(data), "--tokenizer", real_tokenizer_dir, "--steps", "3", "--eval-every", "3",
                      "--batch-size", "4", "--hidden", "32", "--max-candidates", "2", "--easy-steps", "2"])
    assert [sorted(c) for c in res["curve"]] == [["loss", "rec_acc", "rec_acc_shortened", "seconds", "step"]]
    for flags, message in ((["--easy-steps", "5"], "--easy-steps needs --max-candidates"),
                           (["--max-candidates", "1"], "--max-candidates must be at least 2"),
                           (["--turns-per-sample", "0"], "--turns-per-sample must be at least 1")):
        with pytest.raises(SystemExit) as e:
            study.main(["--data", str(data), "--tokenizer", real_tokenizer_dir] + flags)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_turns_per_sample_keeps_an_images_rec_turns_together(data, real_tokenizer_dir):
    from rgpt_llava.tokenization import load_tokenizer
    one = single(study.rec_samples(data, "train", "oracle", "paper"))
    grouped = study.rec_samples(data, "train", "oracle", "paper", turns_per_sample=2)
    assert len(grouped) < len(one) and max(len(p) for p, _ in grouped) == 2
    flat = []
    for pairs, rows in grouped:   # the same turns, in order, each placeholder renumbered onto its own rows
        offset = 0
        for q, a in pairs:
            numbers = [int(n) for n in re.findall(r"<region(\d+)>", q)]
            assert numbers == list(range(offset + 1, offset + len(numbers) + 1))
            flat.append((re.sub(r"<region(\d+)>", lambda m: f"<region{int(m.group(1)) - offset}>", q), a,
                         rows[offset:offset + len(numbers)]))
            offset += len(numbers)
        assert offset == len(rows)
    assert flat == one
    tok = load_tokenizer(real_tokenizer_dir)
    for (pairs, _), (ids, labels, _) in zip(grouped, study.encode(grouped, tok)):
        spans = study.answer_spans(labels)    # LLaVA's masking: every answer supervised, nothing else
        assert [ids[a:b] for a, b in spans] == [tok(ans).input_ids[1:] + [tok.eos_token_id] for _, ans in pairs]

"""research.pretrain_llm: the synthetic conversations say what they claim; the model reads what they mean."""
import json
import random
import re

import pytest
import torch

from rgpt_llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX, REGION_TOKEN_INDEX
from rgpt_llava.data.instructions import load_pools
from research import pretrain_llm as P

REC = re.compile(r"(?:<region\d+>(?:, | and )?)+")


def test_unique_subsets_by_hand():
    items = [(0, 0, 0, 0), (0, 1, 0, 0), (1, 1, 0, 0)]
    # item 0 is the only one with slot-1 value 0: every subset holding slot 1 names it, no other does
    assert P.unique_subsets(items, 0) == [s for s in
                                          [(1,), (0, 1), (1, 2), (0, 1, 2), (1, 3), (0, 1, 3), (1, 2, 3), (0, 1, 2, 3)]]
    # item 1 shares slot 0 with item 0 and slot 1 with item 2: it takes both
    assert P.unique_subsets(items, 1) == [(0, 1), (0, 1, 2), (0, 1, 3), (0, 1, 2, 3)]
    assert P.unique_subsets(items, 2) == [(0,), (0, 1), (0, 2), (0, 1, 2), (0, 3), (0, 1, 3), (0, 2, 3), (0, 1, 2, 3)]
    assert P.unique_subsets([(0, 0, 0, 0), (0, 0, 0, 0)], 0) == []


def test_slot_vocabularies_split_the_pool_once_and_for_all():
    pool = [(i,) for i in range(100, 140)] + [(7, 8)]
    slots = P.slot_vocabularies(pool)
    assert len(slots) == P.SLOTS
    assert sorted(w for s in slots for w in s) == sorted(pool)
    assert slots == P.slot_vocabularies(pool)   # fixed: train and held-out samples share the classes


def toy_words():
    pool = [(i,) for i in range(1000, 1200)] + [(i, 5) for i in range(1200, 1220)]
    return P.slot_vocabularies(pool), (lambda ids: "w" + "_".join(map(str, ids)))


def test_samples_answer_what_they_ask():
    slot_words, words_of = toy_words()
    pools = load_pools()
    slot_of = {words_of(w): s for s, words in enumerate(slot_words) for w in words}
    seen = {"rec": 0, "no-match": 0, "describe": 0}
    rng = random.Random(1)
    for _ in range(300):
        turns, items = P.make_sample(rng, slot_words, pools, words_of)
        assert 2 <= len(items) <= 6 and len(set(items)) == len(items)
        phrases = [[words_of(item[k:k + 1] if item[k + 1:k + 2] != (5,) else item[k:k + 2])
                    for k in range(len(item)) if item[k] != 5] for item in items]
        assert all(len(p) == P.SLOTS and [slot_of[w] for w in p] == list(range(P.SLOTS)) for p in phrases)
        for q, a, kind in turns:
            numbers = [int(n) for n in re.findall(r"<region(\d+)>", q)]
            if kind == "describe":
                assert len(numbers) == 1 and a == "a " + " ".join(phrases[numbers[0] - 1])
                seen["describe"] += 1
                continue
            assert q.endswith(" Answer the question using the template Region [x].")
            said = re.search(r"\bthe ((?:w[\d_]+ ?)+)", q).group(1).split()
            named = [k for k, p in enumerate(phrases) if all(w in p for w in said)]
            assert len(named) == 1, (q, phrases)   # the expression names exactly one item of the sample
            assert numbers == sorted(numbers)
            if named[0] + 1 in numbers:
                assert a == f"Region [{numbers.index(named[0] + 1) + 1}]"
                seen["rec"] += 1
            else:
                assert a == "No corresponding options found." and len(numbers) == len(items) - 1
                seen["no-match"] += 1
    assert min(seen.values()) > 0, seen


def test_turn_counts_follow_the_flags():
    slot_words, words_of = toy_words()
    pools = load_pools()
    rng = random.Random(2)
    for rec, describe in [(2, 0), (0, 1), (1, 2)]:
        args = type("Args", (), {"max_items": 6, "rec_turns": rec, "describe_turns": describe})
        for _ in range(30):
            turns, items = P.draw_sample(rng, slot_words, pools, words_of, args)
            kinds = [k for _, _, k in turns]
            # every item of a sample is distinct, so every item is a possible REC target: the counts are exact
            assert kinds.count("rec") == rec and kinds.count("describe") == min(describe, len(items))


def test_fixed_samples_repeat_a_finite_set():
    samples = [("s", i) for i in range(5)]
    stream = iter(P.FixedSamples(samples, seed=3))
    drawn = [next(stream) for _ in range(200)]
    assert set(drawn) == set(samples)   # only the set's members, each of them many times
    again = iter(P.FixedSamples(samples, seed=3))
    assert [next(again) for _ in range(200)] == drawn


def test_samples_are_reproducible():
    slot_words, words_of = toy_words()
    pools = load_pools()
    a = [P.make_sample(random.Random(4), slot_words, pools, words_of) for _ in range(3)]
    b = [P.make_sample(random.Random(4), slot_words, pools, words_of) for _ in range(3)]
    assert a == b


@pytest.fixture(scope="module")
def tied_llm(tmp_path_factory, real_tokenizer_dir):
    from transformers import LlamaForCausalLM
    from rgpt_llava.tokenization import load_tokenizer
    from rgpt_llava.tiny import build_tiny_llm
    out = tmp_path_factory.mktemp("llm")
    build_tiny_llm(out, real_tokenizer_dir, hidden_size=32, num_layers=1, num_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM.from_pretrained(out)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    return load_tokenizer(out), model


def test_encoder_supervises_the_answers_and_widens_the_image(tied_llm):
    tokenizer, _ = tied_llm
    turns = [("Which of <region1> and <region2> is the red circle? Answer the question using the template "
              "Region [x].", "Region [2]", "rec"),
             ("Provide a brief caption for the area indicated by <region1>.", "a small red circle", "describe")]
    ids, labels, items, kinds = P.Encoder(tokenizer, 5)((turns, [(1, 2), (3,)]))
    assert ids.count(IMAGE_TOKEN_INDEX) == 5 and ids[ids.index(IMAGE_TOKEN_INDEX):][:5] == [IMAGE_TOKEN_INDEX] * 5
    assert [i for i in ids if i <= REGION_TOKEN_INDEX] == [REGION_TOKEN_INDEX, REGION_TOKEN_INDEX - 1,
                                                          REGION_TOKEN_INDEX]
    spans = P.answer_spans(labels)
    assert [tokenizer.decode([ids[i] for i in range(s, e)]) for s, e in spans] == ["Region [2]</s>",
                                                                                   "a small red circle</s>"]
    assert kinds == ["rec", "describe"]
    assert items.tolist() == [[1, 2], [3, -1]]


def test_forward_puts_mean_word_embeddings_at_the_regions_and_image(tied_llm):
    tokenizer, model = tied_llm
    turns = [("Describe <region2>, then <region1>.", "a cat", "describe")]
    sample = P.Encoder(tokenizer, 3)((turns, [(450, 451), (452, 453, 454)]))
    bank = P.padded([(500,), (501, 502)])
    seen = {}
    inner = model.model.forward

    def spy(*args, inputs_embeds=None, **kw):
        seen["inputs"] = inputs_embeds.detach()
        return inner(*args, inputs_embeds=inputs_embeds, **kw)

    model.model.forward = spy
    try:
        loss, pred, gold = P.forward(model, [sample], bank, torch.Generator().manual_seed(0))
    finally:
        del model.model.forward
    emb = model.get_input_embeddings().weight.detach()
    ids = sample[0]
    assert len(ids) == len(seen["inputs"][0])
    at = [i for i, t in enumerate(ids) if t <= REGION_TOKEN_INDEX]
    torch.testing.assert_close(seen["inputs"][0, at[0]], emb[[452, 453, 454]].mean(0))   # <region2>
    torch.testing.assert_close(seen["inputs"][0, at[1]], emb[[450, 451]].mean(0))        # <region1>
    # each image vector: the mean over the tokens of SLOTS bank rows, j of them (501, 502) and the rest (500,)
    means = [((P.SLOTS - j) * emb[500] + j * (emb[501] + emb[502])) / (P.SLOTS + j) for j in range(P.SLOTS + 1)]
    image_at = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX]
    assert len(image_at) == 3
    for i in image_at:
        assert min((seen["inputs"][0, i] - m).abs().max().item() for m in means) < 1e-6
    # the loss is the LM's own cross-entropy on the supervised tokens
    labels = torch.tensor(sample[1])
    sel = torch.nonzero(labels != IGNORE_INDEX).squeeze(1)
    assert gold.tolist() == labels[sel].tolist()
    assert loss.item() > 0 and pred.shape == gold.shape


def test_cli_refuses_bad_input(tmp_path, capsys, real_tokenizer_dir):
    for argv, says in [(["--max-items", "1"], "--max-items must be at least 2"),
                       (["--heads", "3"], "does not divide the width"),
                       (["--tokenizer", str(tmp_path)], "no LLaMA tokenizer"),
                       (["--steps", "0"], "--steps must be at least 1"),
                       (["--prefix-len", "-1"], "must not be negative"),
                       (["--max-seconds", "0"], "--max-seconds must be positive"),
                       (["--lr=-1e-3"], "--lr must not be negative"),
                       (["--device", "nonsense"], "--device nonsense"),
                       (["--max-word-id", "300"], "--max-word-id 300: the tokenizer has only"),
                       (["--rec-turns", "-1"], "--describe-turns must not be negative"),
                       (["--rec-turns", "0", "--describe-turns", "0"], "leaves nothing to learn"),
                       (["--train-samples", "0"], "--train-samples must be at least 1"),
                       (["--pool-words", "15"], "--pool-words 15: must be between 16")]:
        with pytest.raises(SystemExit):
            P.main(["--out", str(tmp_path / "o"), "--tokenizer", real_tokenizer_dir] + argv)
        assert says in capsys.readouterr().err


def test_a_short_run_writes_a_tied_llama_that_loads(tmp_path, real_tokenizer_dir):
    from transformers import LlamaForCausalLM
    out = tmp_path / "llm"
    result = P.main(["--out", str(out), "--tokenizer", real_tokenizer_dir, "--hidden", "32", "--layers", "1",
                     "--heads", "2", "--steps", "3", "--batch-size", "2", "--prefix-len", "2", "--val-samples", "4",
                     "--eval-every", "2", "--save-dtype", "float16"])
    assert [p["step"] for p in result["curve"]] == [2, 3]
    saved = json.loads((out / "llm_pretraining.json").read_text())
    assert saved["curve"] == result["curve"] and set(saved["curve"][0]) >= {"rec", "describe", "loss"}
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    from safetensors.torch import load_file
    weights = load_file(out / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float16} and "lm_head.weight" not in weights
    model = LlamaForCausalLM.from_pretrained(out)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    # continuing from it: the folder's shape and weights, its curve kept as "before"
    more = P.main(["--out", str(tmp_path / "more"), "--init-llm", str(out), "--steps", "1", "--batch-size", "2",
                   "--prefix-len", "2", "--val-samples", "4", "--lr", "0"])
    assert more["before"]["curve"] == result["curve"]
    assert (more["args"]["hidden"], more["args"]["layers"], more["args"]["untied"]) == (32, 1, False)
    again = LlamaForCausalLM.from_pretrained(tmp_path / "more")
    assert torch.equal(again.get_input_embeddings().weight.half(), model.get_input_embeddings().weight.half())


def test_continuing_refuses_shape_flags_and_odd_folders(tmp_path, capsys):
    for argv, says in [(["--init-llm", str(tmp_path)], "not a saved Llama with its tokenizer"),
                       (["--init-llm", str(tmp_path), "--layers", "3"], "not a saved Llama")]:
        with pytest.raises(SystemExit):
            P.main(["--out", str(tmp_path / "o")] + argv)
        assert says in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.model").write_text("")
    with pytest.raises(SystemExit):
        P.main(["--out", str(tmp_path / "o"), "--init-llm", str(tmp_path), "--layers", "3"])
    assert "takes the width, depth, heads, scale and tying from the saved model" in capsys.readouterr().err


def test_a_rec_only_run_on_a_fixed_set(tmp_path, real_tokenizer_dir):
    result = P.main(["--out", str(tmp_path / "llm"), "--tokenizer", real_tokenizer_dir, "--hidden", "32",
                     "--layers", "1", "--heads", "2", "--steps", "2", "--batch-size", "2", "--prefix-len", "2",
                     "--val-samples", "4", "--eval-every", "2", "--describe-turns", "0", "--train-samples", "3",
                     "--pool-words", "16"])
    assert [p["step"] for p in result["curve"]] == [2]
    assert "rec" in result["curve"][0] and "describe" not in result["curve"][0]
    assert result["args"]["train_samples"] == 3 and result["words"] == 16

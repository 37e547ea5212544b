"""One checkpoint, one answer: the ids LLaVA-1.5's tokenisation gives, identical on every supported stack.

tests/assets/token_ids.json holds ids recorded on the pinned stack (transformers 4.37.2, LLaVA's own) by
``.venv/bin/python tests/token_ids.py --record``; CI runs this file on the pinned, current (4.57) and tf5 (5.x)
stacks, so each is compared with LLaVA-1.5's ids: prompt tokens, region and image sentinels, decoded answers, and a
training sample's input_ids and labels.
"""
import json
import random

import pytest
import transformers

from token_ids import FIXTURE, SEED, VARIANTS, build_inputs, compute, load_variant

STACK = f"transformers {transformers.__version__}"


INPUT_OF = {"text": "texts", "region_prompt": "region_prompts", "image_prompt": "image_prompts", "decode": "decode",
            "train": "train"}
with open(FIXTURE) as _f:
    RECORDED = json.load(_f)
CASES = [(name, kind) for name in VARIANTS for kind in RECORDED["expected"][name]]


@pytest.fixture(scope="module")
def recorded():
    return RECORDED


@pytest.fixture(scope="module")
def computed():
    return {name: compute(load_variant(name), RECORDED["inputs"], name) for name in VARIANTS}


@pytest.mark.parametrize("name,kind", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_ids_equal_llava15s(name, kind, computed):
    expected, got = RECORDED["expected"][name][kind], computed[name][kind]
    inputs = RECORDED["inputs"][INPUT_OF[kind]]
    assert len(got) == len(expected) == len(inputs)
    wrong = [(inputs[i], expected[i], got[i]) for i in range(len(inputs)) if got[i] != expected[i]]
    detail = "\n".join(f"  input {inp!r}\n    pinned: {exp}\n    {STACK}: {g}" for inp, exp, g in wrong[:3])
    assert not wrong, f"{len(wrong)}/{len(inputs)} {kind} cases ({name}) differ from LLaVA-1.5's ids:\n{detail}"


def test_the_fixture_records_the_documented_cases(recorded):
    if transformers.__version__ != "4.37.2":
        pytest.skip("the cases are regenerated where they are recorded: the pinned stack")
    assert recorded["inputs"] == json.loads(json.dumps(build_inputs(random.Random(SEED)))), \
        "tests/token_ids.py's cases changed: re-record with `.venv/bin/python tests/token_ids.py --record`"


def test_a_placeholder_before_a_space_keeps_llava15s_prefix_piece(real_tokenizer_dir):
    # the example by hand: "<region1> a" -> sentinel, 29871 ("▁"), 263 ("▁a"), on every stack
    from rgpt_llava.constants import REGION_TOKEN_INDEX
    from rgpt_llava.mm_utils import tokenizer_region_token
    from rgpt_llava.tokenization import load_tokenizer
    tok = load_tokenizer(real_tokenizer_dir)
    # "Is " ends in a space: "▁Is", "▁"; " a star?" after the placeholder: "▁", "▁a", "▁star", "?"
    assert tokenizer_region_token("Is <region1> a star?", tok) == [1, 1317, 29871, REGION_TOKEN_INDEX,
                                                                    29871, 263, 5810, 29973]
    assert tok(" describes").input_ids == [1, 29871, 16612]
    assert tok.decode([1, 15043, 3186, 2], skip_special_tokens=True) == "Hello world"


def test_a_saved_tokenizer_is_llava15s_on_every_stack(tmp_path, real_tokenizer_dir, recorded):
    # what conversion and training save: the SentencePiece model and a config that 4.37, 4.57 and 5.x all load as
    # the slow LlamaTokenizer with the same `legacy` (transformers 5's own LlamaTokenizer saves neither)
    from rgpt_llava.tokenization import load_tokenizer
    for legacy in (False, True):
        out = tmp_path / f"legacy_{legacy}"
        load_tokenizer(real_tokenizer_dir, legacy=legacy).save_pretrained(out)
        with open(f"{real_tokenizer_dir}/tokenizer.model", "rb") as f:
            assert (out / "tokenizer.model").read_bytes() == f.read()
        config = json.loads((out / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == "LlamaTokenizer" and config["legacy"] is legacy
        assert "backend" not in config   # transformers 5's own LlamaTokenizer's key
        again = load_tokenizer(str(out))
        texts = recorded["inputs"]["texts"][:120]
        name = "llama_legacy" if legacy else "llama"
        assert [again(t).input_ids for t in texts] == recorded["expected"][name]["text"][:120]


def test_llavas_own_builder_gives_llava15s_ids(real_tok_llava_dir):
    # LLaVA's load_pretrained_model (with patches/0008 on 4.57 and 5.x): a user of LLaVA's CLI gets LLaVA-1.5's ids
    from llava.mm_utils import tokenizer_image_token
    from llava.model.builder import load_pretrained_model
    tok = load_pretrained_model(real_tok_llava_dir, None, "llava-tiny", device="cpu")[0]
    got = [tokenizer_image_token(p, tok) for p in RECORDED["inputs"]["image_prompts"]]
    assert got == RECORDED["expected"]["llama"]["image_prompt"]

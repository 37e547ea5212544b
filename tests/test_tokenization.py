"""<region> / <regionN> placeholders: tokenisation with the real LLaMA tokenizer and reference checks."""
import pytest
from transformers import AutoTokenizer

from llava.conversation import conv_templates
from llava.mm_utils import tokenizer_image_token

from rgpt_llava.constants import IMAGE_TOKEN_INDEX, REGION_TOKEN_INDEX
from rgpt_llava.mm_utils import check_region_references, region_references, tokenizer_region_token
from rgpt_llava.tokenization import load_tokenizer


@pytest.fixture(scope="module", params=["slow", "fast"])
def real_tok(request, real_tokenizer_dir):
    # slow: LLaVA-1.5's SentencePiece tokenizer (what every entry loads); fast: transformers' tokenizers-backed one
    if request.param == "slow":
        return load_tokenizer(real_tokenizer_dir)
    return AutoTokenizer.from_pretrained(real_tokenizer_dir, use_fast=True)


def test_real_tokenizer_reference(real_tok):
    # the shipped tokenizer's documented reference encoding
    assert real_tok("Hello world").input_ids == [1, 15043, 3186]


def vicuna_prompt(*turns):
    conv = conv_templates["vicuna_v1"].copy()
    for q, a in turns:
        conv.append_message(conv.roles[0], q)
        conv.append_message(conv.roles[1], a)
    return conv.get_prompt()


def test_image_only_prompt_equals_llava(real_tok):
    prompt = vicuna_prompt(("<image>\nWhat is shown in the picture?", "A cat."), ("And the colour?", None))
    assert tokenizer_region_token(prompt, real_tok) == tokenizer_image_token(prompt, real_tok)
    assert tokenizer_region_token("no placeholders at all", real_tok) == real_tok("no placeholders at all").input_ids


def test_region_sentinels_and_text_around_them(real_tok):
    prompt = "<image>\nWhat is <region2> next to <region1>?"
    ids = tokenizer_region_token(prompt, real_tok)
    assert ids[0] == real_tok.bos_token_id and ids[1] == IMAGE_TOKEN_INDEX
    sentinels = [i for i in ids if i <= REGION_TOKEN_INDEX]
    assert sentinels == [REGION_TOKEN_INDEX - 1, REGION_TOKEN_INDEX - 0]
    # the text between placeholders is tokenised exactly as LLaVA tokenises text between <image> placeholders
    as_images = tokenizer_image_token(prompt.replace("<region2>", "<image>").replace("<region1>", "<image>"),
                                      real_tok)
    assert [i for i in ids if i >= 0] == [i for i in as_images if i >= 0]
    assert len(ids) == len(as_images)


def test_plain_placeholders_take_regions_in_order(real_tok):
    ids = tokenizer_region_token("<region> and <region> and <region>", real_tok)
    assert [REGION_TOKEN_INDEX - i for i in ids if i <= REGION_TOKEN_INDEX] == [0, 1, 2]
    assert region_references("<region3> then <region> then <region>") == [2, 0, 1]


def test_tensor_output(real_tok):
    t = tokenizer_region_token("<image>\n<region1>", real_tok, return_tensors="pt")
    assert t.dtype.is_floating_point is False and t.ndim == 1
    with pytest.raises(ValueError, match="Unsupported tensor type"):
        tokenizer_region_token("x", real_tok, return_tensors="np")


def test_reference_checks():
    assert check_region_references("<region1> <region2>", 2) == [0, 1]
    with pytest.raises(ValueError, match=r"refers to region\(s\) \[3\] but 2 region\(s\) were supplied"):
        check_region_references("<region1> <region3>", 2)
    with pytest.raises(ValueError, match=r"region\(s\) \[2\] are not referenced"):
        check_region_references("describe <region1>", 2)
    # interactive use: unreferenced regions allowed, out-of-range not
    assert check_region_references("describe <region1>", 2, require_all=False) == [0]
    with pytest.raises(ValueError, match="supplied"):
        check_region_references("<region> <region>", 1, require_all=False)
    with pytest.raises(ValueError, match="numbered from 1"):
        region_references("<region0>")

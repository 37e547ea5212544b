"""LLaVA-1.5's token ids, recorded on the pinned stack, for every stack to match (tests/test_token_ids.py).

    .venv/bin/python tests/token_ids.py --record      # on the pinned stack only (transformers 4.37.2): rewrites
                                                      # tests/assets/token_ids.json

The pinned stack is LLaVA's own (transformers 4.37.2, its SentencePiece ``LlamaTokenizer``): the ids LLaVA-1.5 was
trained with. The fixture holds each case's input with its ids, so the other stacks are compared with the
recording, never with a regeneration. Cases, on the shipped LLaMA tokenizer (as ``load_tokenizer`` loads it, and
with ``legacy=True`` and with added tokens, as some checkpoints have):
- ``text``: ``tokenizer(text).input_ids`` -- hand-picked texts and seeded random ones (spaces, tabs, newlines,
  unicode, byte fallback, ``▁``, special tokens inside the text);
- ``region_prompt``: ``tokenizer_region_token`` on prompts from LLaVA's conversation templates with ``<image>``,
  ``<region>`` and ``<regionN>`` anywhere (after a space, before punctuation, adjacent, at either end);
- ``image_prompt``: LLaVA's own ``tokenizer_image_token`` (what a user of LLaVA's CLI gets);
- ``decode``: ``decode(ids)`` and ``decode(ids, skip_special_tokens=True)`` of seeded random ids (a model's answer);
- ``train``: a training sample's ``input_ids`` and ``labels`` through LLaVA's ``preprocess`` (vicuna_v1, as RGPT
  trains): RegionShapes samples from the generator, a text-only sample, LLaVA's image-only format.
"""
import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

FIXTURE = Path(__file__).resolve().parent / "assets" / "token_ids.json"
SEED = 20261207

# Tokenizer variants: the shipped one as load_tokenizer loads it (legacy=False, as Vicuna v1.5's config says), the
# legacy behaviour (a tokenizer_config without `legacy`), and one with tokens added as LLaVA's builder and llava-hf do.
VARIANTS = ("llama", "llama_legacy", "llama_added")
ADDED = ["<im_patch>", "<image>"]

HAND_TEXTS = [
    "", " ", "  ", "   ", "\n", " \n", "\n ", "\t", "Hello world", " describes", "  two", "\nWhat", "?", " ?",
    "a</s>USER: b", "a </s> USER", "</s>", " </s>", "<s>", " <s> hi", "<unk> hi", "x▁y", "▁", " ▁x", "▁▁ x",
    "é ünï 中文 🙂", " 🙂", "\u00a0x", "a\r\nb", "trailing space ", "  lead and trail  ", "1234 5678.90",
    "Region [2].", " Region [x]", "No corresponding options found.", "what's it? (it's a star!)",
    " ASSISTANT:", "USER: <image>\nWhat is this? ASSISTANT:", "don't\tstop\n\n\nbelieving", "ABC  DEF   GHI",
    "<im_patch><im_patch> x", " <image> ", "a<image>b",
]
ALPHABET = list("ab cdefXYZ\n\t?.,!:'") + ["  ", " ", "   ", "▁", "</s>", "<s>", "<unk>", "é", "中", "🙂", "ü",
                                          "\u00a0", "\r\n", "USER:", " ASSISTANT:", "0123", "'s", " the", "Region"]
QUESTIONS = [
    "Is <region1> a star?", "What is <region1> doing?", "Is <region1> a dog?",
    "Provide a brief caption for <region1> in this image.",
    "What category name best describes the region represented by <region1>? Answer the question using "
    "RegionShapes category names.",
    "What is <region2> next to <region1>?", "<region1><region2> touch.", "Compare <region2>, <region1>\nand <region3>.",
    "<region> and <region> and <region>", "  <region1>  two spaces  ", "中文 <region1> 🙂", "<region1>\n\nnewlines",
    "tab\t<region1>\tx", "ends with <region1>", "<region1>", " <region1>", "<region1> ", "(<region1>)",
    "Which of <region1>, <region2>, <region3> is the small red circle? Answer with the template Region [x].",
    "Region [1] is <region1>; <region2>'s colour?", "<region3> then <region> then <region>",
]
IMAGE_QUESTIONS = [
    "<image>\nWhat is this?", "<image> what is this?", "What is this? <image>", "<image>", " <image>\n  x",
    "<image>\n<image> twice", "Describe <image> briefly.",
]
TEMPLATES = ("vicuna_v1", "llava_v1", "llava_llama_2", "mistral_instruct", "plain")


def load_variant(name: str):
    from rgpt_llava.assets import llama_tokenizer_dir
    from rgpt_llava.tokenization import load_tokenizer
    path = str(llama_tokenizer_dir())
    if name == "llama":
        return load_tokenizer(path)
    if name == "llama_legacy":
        return load_tokenizer(path, legacy=True)
    tok = load_tokenizer(path)
    tok.add_tokens(ADDED, special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    return tok


def conversation_prompt(template: str, turns) -> str:
    from llava.conversation import conv_templates
    conv = conv_templates[template].copy()
    for q, a in turns:
        conv.append_message(conv.roles[0], q)
        conv.append_message(conv.roles[1], a)
    return conv.get_prompt()


def random_text(rng: random.Random, n_max: int = 25) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, n_max)))


def build_inputs(rng: random.Random) -> dict:
    """Every case's input (recorded with the ids, so the stacks compare on the same inputs)."""
    texts = HAND_TEXTS + [random_text(rng) for _ in range(400)]
    prompts = []
    for template in TEMPLATES:
        for q in QUESTIONS:
            body = q if template == "plain" else "<image>\n" + q
            prompts.append(conversation_prompt(template, [(body, None)]))
    prompts.append(conversation_prompt("vicuna_v1", [("<image>\n" + QUESTIONS[0], "Yes."),
                                                     (QUESTIONS[1], "It is spinning. "), (QUESTIONS[6], None)]))
    for _ in range(150):   # placeholders dropped into random text, anywhere
        parts = [random_text(rng, 12) for _ in range(rng.randint(1, 4))]
        out = parts[0]
        for p in parts[1:]:
            out += rng.choice(["<image>", "<region>", "<region1>", "<region2>", "<region3>"]) + p
        prompts.append(out)
    image_prompts = [conversation_prompt(t, [(q, None)]) for t in ("vicuna_v1", "llava_v1") for q in IMAGE_QUESTIONS]
    decode = [[rng.randrange(0, 32000) for _ in range(rng.randint(1, 24))] for _ in range(250)]
    decode += [[1, 2, 0] + [rng.randrange(0, 32000) for _ in range(6)] + [2] for _ in range(20)]
    decode += [[rng.randrange(3, 259) for _ in range(rng.randint(1, 8))] for _ in range(30)]   # byte fallback
    return {"texts": texts, "region_prompts": prompts, "image_prompts": image_prompts, "decode": decode,
            "train": training_samples()}


def training_samples() -> list:
    """Three RegionShapes training samples from the generator, a text-only and an image-only LLaVA sample."""
    from rgpt_llava.shapes.generator import main as generate
    with tempfile.TemporaryDirectory() as out:
        with open(os.devnull, "w") as devnull:
            stdout, sys.stdout = sys.stdout, devnull
            try:
                generate(["--out", out, "--n-train", "3", "--seed", "7"])
            finally:
                sys.stdout = stdout
        samples = json.load(open(os.path.join(out, "train.json")))
    shapes = [{"image": s["image"], "conversations": s["conversations"]} for s in samples]
    text_only = {"conversations": [{"from": "human", "value": "Tell me a joke.  Please!"},
                                   {"from": "gpt", "value": " Why did the circle stop? It was  tired."},
                                   {"from": "human", "value": "Another one"}, {"from": "gpt", "value": "No."}]}
    image_only = {"image": "x.png", "conversations": [{"from": "human", "value": "What is shown?\n<image>"},
                                                      {"from": "gpt", "value": "A red  star on stripes."}]}
    return shapes + [text_only, image_only]


def compute(tokenizer, inputs: dict, variant: str) -> dict:
    """Each case's ids on this stack."""
    from llava.mm_utils import tokenizer_image_token

    from rgpt_llava.mm_utils import tokenizer_region_token
    out = {"text": [tokenizer(t).input_ids for t in inputs["texts"]],
           "decode": [[tokenizer.decode(ids), tokenizer.decode(ids, skip_special_tokens=True)]
                      for ids in inputs["decode"]]}
    if variant != "llama":   # the prompt and training cases are the checkpoints' own tokenizer's
        return out
    out["region_prompt"] = [tokenizer_region_token(p, tokenizer) for p in inputs["region_prompts"]]
    out["image_prompt"] = [tokenizer_image_token(p, tokenizer) for p in inputs["image_prompts"]]
    out["train"] = [training_ids(tokenizer, s) for s in inputs["train"]]
    return out


def training_ids(tokenizer, sample: dict) -> dict:
    """input_ids and labels as RGPT's dataset makes them (LLaVA's preprocess, vicuna_v1, --version v1)."""
    from llava import conversation as conversation_lib

    from rgpt_llava.train.dataset import tokenize_conversation
    saved = conversation_lib.default_conversation
    conversation_lib.default_conversation = conversation_lib.conv_templates["vicuna_v1"]
    tokenizer.pad_token = tokenizer.unk_token   # LLaVA's train() for --version v1
    try:
        ids, labels = tokenize_conversation(sample, tokenizer, SimpleNamespace(is_multimodal=True,
                                                                               mm_use_im_start_end=False))
    finally:
        conversation_lib.default_conversation = saved
    return {"input_ids": ids.tolist(), "labels": labels.tolist()}


def record(path: Path = FIXTURE) -> None:
    import transformers
    if transformers.__version__ != "4.37.2":
        sys.exit(f"error: record on the pinned stack (transformers 4.37.2), not {transformers.__version__}: the "
                 f"fixture is LLaVA-1.5's own tokenisation")
    inputs = build_inputs(random.Random(SEED))
    expected = {v: compute(load_variant(v), inputs, v) for v in VARIANTS}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"recorded_with": f"transformers {transformers.__version__}", "inputs": inputs,
                   "expected": expected}, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    n = sum(len(c) for e in expected.values() for c in e.values())
    print(f"{path}: {n} cases over {len(VARIANTS)} tokenizer variants")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true", help="rewrite tests/assets/token_ids.json")
    args = ap.parse_args()
    if not args.record:
        ap.error("nothing to do: --record rewrites the fixture (pinned stack only)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    record()

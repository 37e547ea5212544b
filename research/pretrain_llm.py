"""Text-level pretraining of a small Llama, before RegionGPT's two stages: the LLM's analogue of ``pretrain_tower``.

RegionGPT starts from Vicuna-7B, an LLM that already reads, follows instructions and retrieves from its context. A
Llama built from scratch (RegionShapes) has none of that, and REC -- "which of ``<region1>``, ..., ``<regionK>``
fits the striped square?" -- needs exactly the in-context retrieval a pretrained LLM brings (research/REC.md, "Why
REC stays at chance"). This gives the tiny Llama an analogue, on synthetic text alone: no image, no RegionShapes
data.

Each sample is a Vicuna-v1 conversation about K *items*. An item is one word of the tokenizer's own vocabulary per
"attribute slot" (4 slots: the word pool is split once into 4 fixed word classes, as a language has colour words
and shape words; a sample draws 2-5 values per slot), and reaches the LLM as ONE input vector -- the mean of its
words' token embeddings -- at a ``<regionN>`` placeholder, just where RegionGPT puts a region embedding. The turns
use the paper's instruction pools (Tables 21 and 25, the task-guided suffix):

- describe: a brief-caption prompt about ``<regionN>`` -> ``a <its words in slot order>``;
- REC: the items listed as ``<region1>, ..., <regionK>`` and an expression ``the <a unique subset of the target's
  words>`` -> ``Region [x]``, or the no-match answer when the target is left out of the list.

The ``<image>`` placeholder becomes ``--prefix-len`` vectors, each the mean of random words' embeddings, so the
retrieval is learned behind an image's worth of tokens. Items as mean word embeddings are also what stage 1 can aim
the projector at: the same space the LLM reads its words in (as LLaVA's stage 1 aligns CLIP features to Vicuna's
word embeddings). The words are common single-token words (ids below ``--max-word-id``) plus some two-token words
(a word and a suffix piece); RegionShapes' words are among them as they are in any LLM's vocabulary, but its
images, classes and conversations never are.

    python -m research.pretrain_llm --out DIR [--steps N | --max-seconds S] [--device cuda --workers 14]

The result is a ``LlamaForCausalLM`` folder with its tokenizer (``--llm DIR`` of ``rgpt_llava.shapes.benchmark``,
``--model_name_or_path`` of training) and ``llm_pretraining.json`` (arguments, the held-out curve).
"""
import argparse
import itertools
import json
import math
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

from rgpt_llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX, REGION_TOKEN_INDEX
from rgpt_llava.data.instructions import (fill, load_pools, no_match_answer, rec_answer, rec_suffix, region_list,
                                          region_placeholder)

SLOTS = 4
TIMED_STEPS = 50   # steps timed before --max-seconds fixes the schedule's length
SUFFIX_PIECES = ("ed", "s", "ing", "er", "y")   # second pieces of the two-token words ("strip" + "ed")
WORD = re.compile("\u2581[a-z]{3,12}")


class PretrainError(ValueError):
    pass


def word_pool(tokenizer, max_word_id: int = 10000, two_token_words: int = 500, seed: int = 0) -> List[Tuple[int, ...]]:
    """Words as token-id tuples: every single-token lowercase word with id < ``max_word_id``, plus
    ``two_token_words`` pairs (one of those words and a suffix piece), drawn with ``seed``."""
    vocab = tokenizer.get_vocab()
    singles = sorted(i for p, i in vocab.items() if i < max_word_id and WORD.fullmatch(p))
    suffixes = [vocab[s] for s in SUFFIX_PIECES if s in vocab]
    if len(singles) < 50:
        raise PretrainError(f"the tokenizer has only {len(singles)} single-token words below id {max_word_id}; "
                            "a LLaMA-style SentencePiece vocabulary is expected")
    rng = random.Random(seed)
    pairs = set()
    while suffixes and len(pairs) < two_token_words:
        pairs.add((rng.choice(singles), rng.choice(suffixes)))
    return [(i,) for i in singles] + sorted(pairs)


def slot_vocabularies(pool: Sequence[tuple]) -> List[List[tuple]]:
    """The pool split into SLOTS fixed, disjoint word classes (seeded), as language has colour words and shape
    words: a description lists its words in slot order, so the order can be learned."""
    words = list(pool)
    random.Random("slots").shuffle(words)
    return [words[s::SLOTS] for s in range(SLOTS)]


def unique_subsets(items: Sequence[tuple], k: int) -> List[Tuple[int, ...]]:
    """Slot-index subsets of item ``k`` whose values no other item shares all of (an unsaid slot fits anything)."""
    out = []
    for mask in range(1, 1 << SLOTS):
        slots = tuple(s for s in range(SLOTS) if mask >> s & 1)
        if all(any(other[s] != items[k][s] for s in slots) for j, other in enumerate(items) if j != k):
            out.append(slots)
    return out


def make_sample(rng: random.Random, slot_words: Sequence[Sequence[tuple]], pools, words_of, min_items: int = 2,
                max_items: int = 6, max_rec: int = 2, max_describe: int = 2, no_match_ratio: float = 0.1):
    """One conversation: ``(turns, items)``. ``turns`` are (question, answer, kind) with kind ``rec`` /
    ``describe``; ``items[k]`` the token ids of region k+1's words (``slot_words``: :func:`slot_vocabularies`)."""
    n = rng.randint(min_items, max_items)
    values = [rng.sample(words, rng.randint(2, 5)) for words in slot_words]
    items = set()
    while len(items) < n:
        items.add(tuple(rng.randrange(len(v)) for v in values))
    items = sorted(items, key=lambda _: rng.random())
    phrase = [[words_of(values[s][it[s]]) for s in range(SLOTS)] for it in items]
    turns = []
    targets = [k for k in range(n) if unique_subsets(items, k)]
    for k in rng.sample(targets, min(max_rec, len(targets))):
        slots = rng.choice(unique_subsets(items, k))
        expression = "the " + " ".join(phrase[k][s] for s in slots)
        no_match = rng.random() < no_match_ratio
        listed = [c for c in range(n) if not (no_match and c == k)]
        q = fill(pools.sample("rec", rng), [region_list([region_placeholder(c + 1) for c in listed])], expression)
        turns.append((q + " " + rec_suffix(pools),
                      no_match_answer(pools) if no_match else rec_answer(listed.index(k) + 1, pools), "rec"))
    for k in rng.sample(range(n), min(max_describe, n)):
        turns.append((fill(pools.sample("brief_caption", rng), [region_placeholder(k + 1)]),
                      "a " + " ".join(phrase[k]), "describe"))
    rng.shuffle(turns)
    return turns, [tuple(t for s in range(SLOTS) for t in values[s][it[s]]) for it in items]


def vicuna_v1_ids(source: list, tokenizer) -> Tuple[list, list]:
    """(ids, labels) of one conversation (LLaVA's ``[{"from": "human"|"gpt", "value"}, ...]``), tokenised and masked by
    LLaVA's own ``preprocess`` in the Vicuna-v1 template (``--version v1``) with region placeholders as in training:
    labels are the ids on every answer (and its ``</s>``), ``IGNORE_INDEX`` elsewhere."""
    from llava import conversation as conversation_lib
    from llava.train import train as llava_train
    from rgpt_llava.train.dataset import region_aware_llava_preprocess
    if tokenizer.pad_token is None:   # what llava.train.train.train() sets for every template but v0
        tokenizer.pad_token = tokenizer.unk_token
    saved = conversation_lib.default_conversation
    conversation_lib.default_conversation = conversation_lib.conv_vicuna_v1
    try:
        with region_aware_llava_preprocess():
            out = llava_train.preprocess([source], tokenizer, has_image=True)
    finally:
        conversation_lib.default_conversation = saved
    ids, labels = out["input_ids"][0].tolist(), out["labels"][0].tolist()
    if all(t == IGNORE_INDEX for t in labels):
        raise PretrainError(f"LLaVA's preprocess masked every token of {source!r} (tokenization mismatch)")
    return ids, labels


class Encoder:
    """Samples -> (ids, labels, items, kinds), tokenised and masked by LLaVA's own ``preprocess``
    (Vicuna-v1 template, region-aware tokenizer) as training does; the one ``<image>`` id is widened to the prefix."""

    def __init__(self, tokenizer, prefix_len: int):
        self.tokenizer, self.prefix_len = tokenizer, prefix_len

    def __call__(self, sample) -> tuple:
        turns, items = sample
        source = []
        for n, (q, a, _) in enumerate(turns):
            source += [{"from": "human", "value": ("<image>\n" if n == 0 else "") + q}, {"from": "gpt", "value": a}]
        ids, labels = vicuna_v1_ids(source, self.tokenizer)
        at = ids.index(IMAGE_TOKEN_INDEX)
        ids = ids[:at] + [IMAGE_TOKEN_INDEX] * self.prefix_len + ids[at + 1:]
        labels = labels[:at] + [IGNORE_INDEX] * self.prefix_len + labels[at + 1:]
        return ids, labels, padded(items), [k for _, _, k in turns]


def worker_rng(key: str) -> random.Random:
    """A generator of its own for each dataloader worker (``key/worker id``; ``key/0`` in the main process)."""
    info = torch.utils.data.get_worker_info()
    return random.Random(f"{key}/{info.id if info else 0}")


class SampleStream(torch.utils.data.IterableDataset):
    """Endless encoded training samples; each dataloader worker draws from its own seed."""

    def __init__(self, tokenizer, slot_words, args):
        self.tokenizer, self.slot_words, self.args = tokenizer, slot_words, args

    def __iter__(self):
        rng = worker_rng(f"{self.args.seed}/train")
        encode, pools = Encoder(self.tokenizer, self.args.prefix_len), load_pools()
        while True:
            yield encode(draw_sample(rng, self.slot_words, pools, self.tokenizer.decode, self.args))


def draw_sample(rng: random.Random, slot_words, pools, words_of, args):
    """:func:`make_sample` with the run's turn counts and list length."""
    return make_sample(rng, slot_words, pools, words_of, max_items=args.max_items, max_rec=args.rec_turns,
                       max_describe=args.describe_turns)


class FixedSamples(torch.utils.data.IterableDataset):
    """``--train-samples N``: N conversations drawn once, then batches drawn from them at random (with ``seed``),
    so every conversation is seen many times -- as a finite training set is."""

    def __init__(self, samples: list, seed: int):
        self.samples, self.seed = samples, seed

    def __iter__(self):
        rng = worker_rng(f"{self.seed}/fixed")
        while True:
            yield self.samples[rng.randrange(len(self.samples))]


def padded(bags: Sequence[tuple]) -> torch.Tensor:
    """Bags of token ids as one (len(bags), longest) tensor, -1 after each bag's end."""
    out = torch.full((len(bags), max(len(b) for b in bags)), -1, dtype=torch.long)
    for r, b in enumerate(bags):
        out[r, :len(b)] = torch.tensor(b)
    return out


def bag_means(emb, bags: torch.Tensor) -> torch.Tensor:
    """The mean token embedding of each row of a :func:`padded` tensor, (rows, width)."""
    mask = (bags >= 0).to(emb.weight.dtype)
    return (emb(bags.clamp_min(0)) * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)


def padded_batch(samples: Sequence[tuple]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, labels)`` samples as right-padded (ids, attention mask, labels) tensors; the labels are shifted so
    that position t holds the target of position t (token t + 1), ``IGNORE_INDEX`` elsewhere."""
    length = max(len(ids) for ids, _ in samples)
    ids = torch.zeros(len(samples), length, dtype=torch.long)
    mask = torch.zeros(len(samples), length, dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
    for b, (sample_ids, sample_labels) in enumerate(samples):
        n = len(sample_ids)
        ids[b, :n] = torch.tensor(sample_ids)
        mask[b, :n] = 1
        labels[b, :n - 1] = torch.tensor(sample_labels[1:])   # position t predicts token t + 1
    return ids, mask, labels


def stacked(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """:func:`padded` tensors of different widths as one, -1 padded."""
    width = max(t.shape[1] for t in tensors)
    return torch.cat([F.pad(t, (0, width - t.shape[1]), value=-1) for t in tensors])


def forward(model, batch: list, image_bank: torch.Tensor, generator: torch.Generator):
    """Loss and per-token argmax on the answer tokens. Region sentinels become their items' mean word embeddings;
    each ``<image>`` position the mean embedding of SLOTS random words of ``image_bank`` (a :func:`padded` word
    pool on the model's device), drawn with ``generator``."""
    emb = model.get_input_embeddings()
    dev = emb.weight.device
    ids, mask, labels = (t.to(dev) for t in padded_batch([(s[0], s[1]) for s in batch]))
    items = [s[2] for s in batch]
    first = [0] + list(itertools.accumulate(len(i) for i in items))[:-1]   # each sample's first item row
    inputs = emb(ids.clamp_min(0)) * mask.unsqueeze(-1)
    is_image = ids == IMAGE_TOKEN_INDEX
    n_image = int(is_image.sum())
    if n_image:
        drawn = torch.randint(len(image_bank), (n_image * SLOTS,), generator=generator, device=generator.device)
        words = image_bank[drawn.to(dev)].view(n_image, -1)
        inputs = inputs.masked_scatter(is_image.unsqueeze(-1), bag_means(emb, words))
    is_region = ids <= REGION_TOKEN_INDEX
    if is_region.any():
        row_of = torch.tensor(first, device=dev)[:, None] + (REGION_TOKEN_INDEX - ids)
        inputs = inputs.masked_scatter(is_region.unsqueeze(-1),
                                       bag_means(emb, stacked(items).to(dev))[row_of[is_region]])
    h = model.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
    sel = labels != IGNORE_INDEX
    logits = model.lm_head(h[sel])
    return F.cross_entropy(logits, labels[sel]), logits.argmax(-1), labels[sel]


def answer_spans(labels) -> list:
    """(start, end) of each run of supervised positions: one per answer."""
    spans, start = [], None
    for i, t in enumerate(list(labels) + [IGNORE_INDEX]):
        if t != IGNORE_INDEX and start is None:
            start = i
        elif t == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return spans


@torch.no_grad()
def accuracy(model, val: list, image_bank: torch.Tensor, batch_size: int = 64) -> dict:
    """Held-out answers exactly right (teacher-forced), % per turn kind (the same image vectors at every call)."""
    model.eval()
    generator = torch.Generator(image_bank.device).manual_seed(12345)
    right, total = {}, {}
    for i in range(0, len(val), batch_size):
        chunk = val[i:i + batch_size]
        _, pred, gold = forward(model, chunk, image_bank, generator)
        k = 0
        for s in chunk:
            spans = answer_spans(s[1])
            if len(spans) != len(s[3]):
                raise PretrainError(f"{len(spans)} supervised answers for {len(s[3])} turns")
            for (start, end), kind in zip(spans, s[3]):
                right[kind] = right.get(kind, 0) + int(torch.equal(pred[k:k + end - start], gold[k:k + end - start]))
                total[kind] = total.get(kind, 0) + 1
                k += end - start
    model.train()
    return {kind: round(100.0 * right[kind] / total[kind], 2) for kind in sorted(total)}


def main(argv=None):
    from rgpt_llava.shapes.benchmark import DEFAULT_TOKENIZER, LLM
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the pretrained Llama and its tokenizer")
    ap.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    ap.add_argument("--hidden", type=int, help=f"width of the random Llama (default {LLM['hidden_size']}, the "
                                                  "benchmark's)")
    ap.add_argument("--layers", type=int, help=f"its depth (default {LLM['num_layers']})")
    ap.add_argument("--heads", type=int, help=f"its attention heads (default {LLM['num_heads']})")
    ap.add_argument("--init-std", type=float, help=f"its initializer_range (default {LLM['init_std']})")
    ap.add_argument("--untied", action="store_true",
                    help="separate input embeddings and LM head (default: tied, half the parameters)")
    ap.add_argument("--init-llm", type=Path, help="continue from this saved Llama (an --out folder) instead of a "
                                                  "random one; its shape and tokenizer are the folder's")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--prefix-len", type=int, default=256, help="vectors standing in for the image's tokens")
    ap.add_argument("--max-items", type=int, default=6)
    ap.add_argument("--max-word-id", type=int, default=10000)
    ap.add_argument("--pool-words", type=int,
                    help="use only this many words of the pool, drawn with --seed (default: all of them)")
    ap.add_argument("--rec-turns", type=int, default=2, help="REC turns per conversation (at most)")
    ap.add_argument("--describe-turns", type=int, default=2, help="describe turns per conversation (at most)")
    ap.add_argument("--train-samples", type=int,
                    help="a finite training set of this many conversations, drawn once and repeated (default: "
                         "every training conversation new)")
    ap.add_argument("--val-samples", type=int, default=512)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--workers", type=int, default=0, help="dataloader workers making the samples")
    ap.add_argument("--seed", type=int, default=0, help="draws the random Llama and the training samples")
    ap.add_argument("--val-seed", type=int, default=0, help="draws the held-out samples (keep it to compare runs)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-seconds", type=float, help="stop training after this wall time (the schedule is cut)")
    ap.add_argument("--save-dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                    help="dtype of the saved weights (training is float32)")
    args = ap.parse_args(argv)
    shape_flags = ("hidden", "layers", "heads", "init_std")
    if args.init_llm is not None:
        if not (args.init_llm / "config.json").is_file() or not (args.init_llm / "tokenizer.model").is_file():
            ap.error(f"--init-llm {args.init_llm}: not a saved Llama with its tokenizer (config.json, "
                     "tokenizer.model)")
        if args.untied or any(getattr(args, n) is not None for n in shape_flags):
            ap.error("--init-llm takes the width, depth, heads, scale and tying from the saved model; drop "
                     "--hidden/--layers/--heads/--init-std/--untied")
    else:
        for name, key in zip(shape_flags, ("hidden_size", "num_layers", "num_heads", "init_std")):
            if getattr(args, name) is None:
                setattr(args, name, LLM[key])
        if args.init_std <= 0:
            ap.error("--init-std must be positive")
    for name in ("hidden", "layers", "heads", "steps", "batch_size", "eval_every", "max_items", "val_samples",
                 "train_samples", "pool_words"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.prefix_len < 0 or args.workers < 0 or args.rec_turns < 0 or args.describe_turns < 0:
        ap.error("--prefix-len, --workers, --rec-turns and --describe-turns must not be negative")
    if args.rec_turns + args.describe_turns == 0:
        ap.error("--rec-turns 0 --describe-turns 0 leaves nothing to learn")
    if args.max_seconds is not None and args.max_seconds <= 0:
        ap.error("--max-seconds must be positive")
    if args.lr < 0:
        ap.error("--lr must not be negative")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        ap.error(f"--device {args.device}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: this torch build sees no CUDA device")
    if args.max_items < 2:
        ap.error("--max-items must be at least 2 (REC needs a choice)")
    if not (args.tokenizer / "tokenizer.model").is_file():
        ap.error(f"no LLaMA tokenizer at {args.tokenizer} (tokenizer.model missing)")
    if args.init_llm is None and args.hidden % args.heads:
        ap.error(f"--heads {args.heads} does not divide the width {args.hidden}")

    from transformers import LlamaForCausalLM
    from rgpt_llava.tokenization import load_tokenizer
    from rgpt_llava.tiny import build_tiny_llm
    torch.manual_seed(args.seed)
    if args.init_llm is not None:
        tokenizer = load_tokenizer(args.init_llm)
        model = LlamaForCausalLM.from_pretrained(args.init_llm, torch_dtype=torch.float32)
        c = model.config
        args.hidden, args.layers, args.heads, args.init_std = (c.hidden_size, c.num_hidden_layers,
                                                               c.num_attention_heads, c.initializer_range)
        args.untied = not c.tie_word_embeddings
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build_tiny_llm(tmp, args.tokenizer, hidden_size=args.hidden, num_layers=args.layers, seed=args.seed,
                           num_heads=args.heads, init_std=args.init_std, tie_word_embeddings=not args.untied)
            tokenizer = load_tokenizer(tmp)
            model = LlamaForCausalLM.from_pretrained(tmp)
    try:
        pool = word_pool(tokenizer, args.max_word_id, seed=args.seed)
    except PretrainError as e:
        ap.error(f"--max-word-id {args.max_word_id}: {e}")
    if args.pool_words is not None:
        if args.pool_words < 4 * SLOTS or args.pool_words > len(pool):
            ap.error(f"--pool-words {args.pool_words}: must be between {4 * SLOTS} (4 words per slot) and the "
                     f"pool's {len(pool)} words")
        pool = sorted(random.Random(f"{args.seed}/pool").sample(pool, args.pool_words))
    slot_words = slot_vocabularies(pool)
    val_rng, pools, encode = random.Random(f"{args.val_seed}/val"), load_pools(), Encoder(tokenizer, args.prefix_len)
    val = [encode(draw_sample(val_rng, slot_words, pools, tokenizer.decode, args)) for _ in range(args.val_samples)]
    if device.type == "cuda":
        # the main process only feeds the GPU; idle CPU threads of its own would take cores from the sample makers
        torch.set_num_threads(1)
    model.to(args.device)
    image_bank = padded(pool).to(args.device)
    generator = torch.Generator(args.device).manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = max(1, min(args.steps, 3000) // 33)   # 3 %, then cosine to args.steps (which --max-seconds may cut)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    if args.train_samples is None:
        stream = SampleStream(tokenizer, slot_words, args)
    else:
        train_rng = random.Random(f"{args.seed}/train/fixed")
        stream = FixedSamples([encode(draw_sample(train_rng, slot_words, pools, tokenizer.decode, args))
                               for _ in range(args.train_samples)], args.seed)
    loader = torch.utils.data.DataLoader(stream, batch_size=args.batch_size, num_workers=args.workers,
                                         collate_fn=list)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{len(pool)} words; LLM {args.layers} x {args.hidden}, tied {not args.untied}; "
          f"{args.val_samples} held-out samples", flush=True)
    before = None   # what made the --init-llm model, kept with the new curve
    if args.init_llm is not None and (args.init_llm / "llm_pretraining.json").is_file():
        before = json.loads((args.init_llm / "llm_pretraining.json").read_text())
    curve, t0, step = [], time.time(), 0
    result = {}
    for batch in loader:
        step += 1
        loss, _, _ = forward(model, batch, image_bank, generator)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if args.max_seconds is not None and step == TIMED_STEPS:
            # fit the schedule to the time left, so the learning rate still decays to its end
            per_step = (time.time() - t0) / step
            args.steps = min(args.steps, step + int((args.max_seconds - (time.time() - t0)) / per_step))
            print(f"--max-seconds {args.max_seconds:g}: {per_step * 1000:.0f} ms/step -> {args.steps} steps",
                  flush=True)
        out_of_time = args.max_seconds is not None and time.time() - t0 > args.max_seconds
        if step % args.eval_every == 0 or step == args.steps or out_of_time:
            curve.append({"step": step, "loss": round(loss.item(), 4), **accuracy(model, val, image_bank),
                          "seconds": round(time.time() - t0, 1)})
            print(json.dumps(curve[-1]), flush=True)
            result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                      "words": len(pool), "curve": curve, "device": str(args.device), "before": before}
            save(model, args.out, getattr(torch, args.save_dtype))
            tokenizer.save_pretrained(args.out)
            (args.out / "llm_pretraining.json").write_text(json.dumps(result, indent=1))
        if step >= args.steps or out_of_time:
            break
    return result


def save(model, out: Path, dtype) -> None:
    """save_pretrained in ``dtype``; the training copy stays float32."""
    if dtype == torch.float32:
        model.save_pretrained(out, safe_serialization=True)
        return
    import copy
    low = copy.deepcopy(model).to("cpu", dtype)
    low.config.torch_dtype = dtype
    low.save_pretrained(out, safe_serialization=True)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

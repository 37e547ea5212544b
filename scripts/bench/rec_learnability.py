#!/usr/bin/env python
"""Can RegionShapes' tiny LLM learn REC at all? A study that takes the vision side out of the question.

    python -m rgpt_llava.data.shapes --out D --n-train 6000 --n-val 300 --seed 0
    python scripts/bench/rec_learnability.py --data D --regions oracle --steps 2000 --json out.json

Only the REC turns of the generated conversations are used, each as its own one-turn Vicuna-v1 sample; the loss is on
the answer (`Region [x]` / the no-match answer), as in training. The LLM is the benchmark's tiny Llama (same
builder, same width and depth by default, random start) and the region tokens go through LLaVA's `mlp2x_gelu`
projector shape, but the region *features* are not the tower's:

  --regions oracle   a one-hot of the region's true attributes (shape, colour, size, texture): perfect features, so
                     a failure cannot be blamed on the tower, refiner or pooling.
  --regions exact    oracle, and the expression ("the striped square") replaced by a region token of the target
                     itself: the query is the very vector to find among the candidates.
  --regions text     no region tokens: each placeholder replaced by the region's caption ("a small striped yellow
                     square") — REC as a text-only task.

  --layout paper     the generated prompt: "<region1>, <region2> and <region3>" (the answer's x is a list position)
  --layout indexed   "Region [1] <region1>, ...": the position written before each candidate
  --layout after     "<region1> Region [1], ...": the position written after each candidate

Accuracy is the exact match of the whole answer, teacher-forced on the held-out REC turns (the same as greedy decoding
would give when it is right). Measured curves and their commands: docs/SHAPES.md, "Why REC stays at chance".
"""
import argparse
import json
import math
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rgpt_llava.constants import REGION_TOKEN_INDEX  # noqa: E402
from rgpt_llava.data import shapes  # noqa: E402
from rgpt_llava.data.instructions import category_suffix, load_pools, rec_suffix, region_list  # noqa: E402
from rgpt_llava.mm_utils import tokenizer_region_token  # noqa: E402
from rgpt_llava.shapes_benchmark import DEFAULT_TOKENIZER, LLM  # noqa: E402

ATTRIBUTES = {"shape": shapes.SHAPES, "colour": tuple(shapes.COLOURS), "size": shapes.SIZES,
              "texture": shapes.TEXTURES}
PLACEHOLDER = re.compile(r"<region(\d+)>")
EXPRESSION = re.compile(r"the ((?:{}) )*(?:{})(?=[?.])".format(
    "|".join(shapes.SIZES + shapes.TEXTURES + tuple(shapes.COLOURS)), "|".join(shapes.SHAPES)))


class StudyError(ValueError):
    pass


def one_hot(ann: dict) -> list:
    out = []
    for key, values in ATTRIBUTES.items():
        out += [float(ann[key] == v) for v in values]
    return out


def named_by(ann: dict, expression: str) -> bool:
    """Does "the [size] [texture] [colour] shape" fit this annotation (an unsaid attribute fits anything)?"""
    words = expression.split()[1:]
    if ann["shape"] != words[-1]:
        return False
    return all(any(w == ann[key] for key, values in ATTRIBUTES.items() if w in values) for w in words[:-1])


def vicuna_prompt(question: str) -> str:
    """One user turn in LLaVA's Vicuna-v1 template (``--version v1``, as the benchmark trains), ready for the answer."""
    from llava.conversation import conv_vicuna_v1
    conv = conv_vicuna_v1.copy()
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def rec_samples(data: Path, split: str, regions: str, layout: str, listing: bool = False) -> list:
    """(prompt with ``<regionK>`` placeholders, answer, region feature rows in placeholder order) per REC turn."""
    conv_file, ann_file = data / f"{split}.json", data / "annotations" / f"instances_{split}.json"
    for f in (conv_file, ann_file):
        if not f.is_file():
            raise StudyError(f"{f} is missing: --data must be a folder made by `python -m rgpt_llava.data.shapes`")
    anns = {a["id"]: a for a in json.loads(ann_file.read_text())["annotations"]}
    by_image = {}
    for a in anns.values():
        by_image.setdefault(a["image_id"], []).append(a)
    suffix = rec_suffix(load_pools())
    out = []
    for sample in json.loads(conv_file.read_text()):
        turns = sample["conversations"]
        for q, a in zip(turns[0::2], turns[1::2]):
            question, answer = q["value"].replace("<image>\n", "").replace("<image>", ""), a["value"]
            if suffix not in question:
                continue
            feats, position, listed = [], 0, []

            def place(m):
                nonlocal position
                position += 1
                ann = anns[sample["regions"][int(m.group(1)) - 1]["ann_id"]]
                listed.append(ann)
                if regions == "text":
                    return ann["caption"]
                feats.append(one_hot(ann))
                ph = f"<region{len(feats)}>"
                return {"paper": ph, "indexed": f"Region [{position}] {ph}", "after": f"{ph} Region [{position}]"}[layout]

            question = PLACEHOLDER.sub(place, question)
            if regions == "exact":
                found = list(EXPRESSION.finditer(question))
                if len(found) != 1:
                    raise StudyError(f"{conv_file}: sample {sample['id']}: no single expression in {question!r}")
                image = anns[sample["regions"][0]["ann_id"]]["image_id"]
                # the object the expression names (also when it was left out of the list: the no-match turns)
                expr = found[0]
                named = [a for a in by_image[image] if named_by(a, expr.group(0))]
                if len(named) != 1:
                    raise StudyError(f"{conv_file}: sample {sample['id']}: {expr.group(0)!r} names {len(named)} "
                                     f"objects of its image, not one")
                question = question[:expr.start()] + f"<region{len(feats) + 1}>" + question[expr.end():]
                feats.append(one_hot(named[0]))
            out.append((vicuna_prompt(question), answer, feats))
            if listing and regions != "text":   # Table 13's "one turn for all RoIs" over the same candidates
                q = (f"What category name best describes the region represented by "
                     f"{region_list([f'<region{k}>' for k in range(1, len(listed) + 1)])}? "
                     f"{category_suffix(shapes.VOCAB_NAME)}")
                out.append((vicuna_prompt(q), ", ".join(f"{a['colour']} {a['shape']}" for a in listed),
                            [one_hot(a) for a in listed]))
    if not out:
        raise StudyError(f"{conv_file} has no REC turns (generated with --max-rec 0?)")
    return out


def encode(samples: list, tokenizer) -> list:
    enc = []
    for prompt, answer, feats in samples:
        ids = tokenizer_region_token(prompt, tokenizer)
        enc.append((ids, tokenizer(answer).input_ids[1:] + [tokenizer.eos_token_id], feats))
    return enc


def forward(model, projector, batch: list):
    """Loss and per-token argmax on the answer tokens; region sentinels replaced by projected features."""
    emb = model.get_input_embeddings()
    dev = emb.weight.device
    length = max(len(i) + len(a) for i, a, _ in batch)
    inputs = torch.zeros(len(batch), length, emb.weight.shape[1], device=dev)
    mask = torch.zeros(len(batch), length, dtype=torch.long, device=dev)
    labels = torch.full((len(batch), length), -100, device=dev)
    for b, (ids, ans, feats) in enumerate(batch):
        full = torch.tensor(ids + ans, device=dev)
        is_region = full <= REGION_TOKEN_INDEX
        row = emb(full.clamp_min(0))
        if is_region.any():
            k = REGION_TOKEN_INDEX - full[is_region]          # the k-th supplied region, as in training
            row = row.clone()
            row[is_region] = projector(torch.tensor(feats, device=dev))[k]
        inputs[b, :len(full)] = row
        mask[b, :len(full)] = 1
        labels[b, len(ids) - 1:len(full) - 1] = torch.tensor(ans, device=dev)
    h = model.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
    sel = labels != -100
    logits = model.lm_head(h[sel])
    return F.cross_entropy(logits, labels[sel]), logits.argmax(-1), labels[sel]


@torch.no_grad()
def accuracy(model, projector, val: list, batch_size: int = 64) -> float:
    model.eval()
    right = 0
    for i in range(0, len(val), batch_size):
        chunk = val[i:i + batch_size]
        _, pred, gold = forward(model, projector, chunk)
        k = 0
        for _, ans, _ in chunk:
            right += int(torch.equal(pred[k:k + len(ans)], gold[k:k + len(ans)]))
            k += len(ans)
    model.train()
    return 100.0 * right / len(val)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a folder made by python -m rgpt_llava.data.shapes")
    ap.add_argument("--regions", choices=("oracle", "exact", "text"), default="oracle")
    ap.add_argument("--layout", choices=("paper", "indexed", "after"), default="paper")
    ap.add_argument("--listing", action="store_true",
                    help="train also on one-turn classification of the same candidates (Table 13), REC scored alone")
    ap.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    ap.add_argument("--hidden", type=int, default=LLM["hidden_size"])
    ap.add_argument("--layers", type=int, default=LLM["num_layers"])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (fp32 either way)")
    ap.add_argument("--json", type=Path, help="write the curve here")
    args = ap.parse_args(argv)
    for name in ("hidden", "layers", "steps", "batch_size", "eval_every"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if not (args.tokenizer / "tokenizer.model").is_file():
        ap.error(f"no LLaMA tokenizer at {args.tokenizer} (tokenizer.model missing)")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        ap.error(f"--device {args.device}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: this torch build sees no CUDA device")
    if args.regions == "text" and args.layout != "paper":
        ap.error("--regions text has no region tokens to index; use --layout paper")
    try:
        train = rec_samples(args.data, "train", args.regions, args.layout, args.listing)
        val = rec_samples(args.data, "val", args.regions, args.layout)
    except StudyError as e:
        ap.error(str(e))

    from transformers import AutoTokenizer, LlamaForCausalLM
    from rgpt_llava.tiny import build_tiny_llm
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_llm(tmp, args.tokenizer, hidden_size=args.hidden, num_layers=args.layers, seed=args.seed)
        tokenizer = AutoTokenizer.from_pretrained(tmp, use_fast=False)
        model = LlamaForCausalLM.from_pretrained(tmp)
    train, val = encode(train, tokenizer), encode(val, tokenizer)
    feat_dim = sum(len(v) for v in ATTRIBUTES.values())
    projector = torch.nn.Sequential(torch.nn.Linear(feat_dim, args.hidden), torch.nn.GELU(),
                                    torch.nn.Linear(args.hidden, args.hidden))   # LLaVA's mlp2x_gelu shape
    model.to(args.device)
    projector.to(args.device)
    params = list(model.parameters()) + list(projector.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.steps // 33)   # 3 %, then cosine: the benchmark's schedule
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / args.steps)))
    print(f"{len(train)} train / {len(val)} held-out REC turns; regions {args.regions}, layout {args.layout}, "
          f"LLM {args.layers} layers x {args.hidden}", flush=True)
    curve, t0 = [], time.time()
    for step in range(1, args.steps + 1):
        loss, _, _ = forward(model, projector, rng.sample(train, min(args.batch_size, len(train))))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            curve.append({"step": step, "loss": round(loss.item(), 4), "rec_acc": round(accuracy(model, projector, val), 2),
                          "seconds": round(time.time() - t0, 1)})
            print(json.dumps(curve[-1]), flush=True)
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "train_turns": len(train), "val_turns": len(val), "curve": curve,
              "torch_threads": torch.get_num_threads(), "device": str(args.device)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

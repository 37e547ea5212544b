#!/usr/bin/env python
"""Can RegionShapes' tiny LLM learn REC at all? A study that takes the vision side out of the question.

    python -m rgpt_llava.shapes.generator --out D --n-train 6000 --n-val 300 --seed 0
    python research/rec_learnability.py --data D --regions oracle --steps 2000 --json out.json

Only the REC turns of the generated conversations are used, by default each as its own one-turn sample; the loss is on
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

  --max-candidates K [--easy-steps S]   a curriculum: training lists cut to the target and K-1 others (for the first
                     S steps, or throughout); held-out accuracy on full and on cut lists
  --turns-per-sample N                  an image's REC turns kept together as one multi-turn sample (LLaVA's v1
                     masking supervises every answer), as a training conversation carries them
  --lr, --beta1, --beta2, --batch-size, --layers, --hidden, --heads   the optimiser and the random Llama's shape
                     (what sets the plateau's length: research/REC.md, "Learning rate, heads, depth and batch")
  --init-std S       the random Llama's initializer_range (transformers' 0.02 by default; research/REC.md, "The
                     Llama's initial scale")

Samples are tokenised and masked by LLaVA's own ``preprocess`` (Vicuna-v1 template, region-aware tokenizer).
Accuracy is the exact match of the whole answer, teacher-forced on the held-out REC turns (the same as greedy decoding
would give when it is right). Measured curves and their commands: research/REC.md.
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rgpt_llava.constants import IGNORE_INDEX, REGION_TOKEN_INDEX  # noqa: E402
from rgpt_llava.shapes import generator as shapes  # noqa: E402
from rgpt_llava.data.instructions import (category_suffix, load_pools, no_match_answer, rec_answer, rec_suffix,
                                          region_list)  # noqa: E402
from rgpt_llava.shapes.benchmark import DEFAULT_TOKENIZER, LLM  # noqa: E402
from research.pretrain_llm import PretrainError, answer_spans, padded_batch, vicuna_v1_ids  # noqa: E402

# The studies ran at transformers' initializer_range before the benchmark moved to the fan-in scale (LLM["init_std"]);
# keeping their default keeps the commands in docs/SHAPES.md reproducing their tables.
STUDY_INIT_STD = 0.02

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


def merged(turns: list) -> tuple:
    """Several (question, answer, feature rows) turns as one multi-turn sample: ([(question, answer), ...], rows),
    each turn's ``<regionK>`` renumbered after the rows of the turns before it."""
    pairs, rows = [], []
    for question, answer, feats in turns:
        offset = len(rows)
        pairs.append((PLACEHOLDER.sub(lambda m: f"<region{int(m.group(1)) + offset}>", question), answer))
        rows += feats
    return pairs, rows


def fewer_candidates(question: str, answer: str, keep: int, rng: random.Random, where: str):
    """The same REC turn over at most ``keep`` of its candidates: the target (when listed) and random others, in their
    listed order, renumbered as a list of its own. The expression still names one object (it named one in the image)."""
    found = list(PLACEHOLDER.finditer(question))
    listed = [m.group(0) for m in found]
    if question[found[0].start():found[-1].end()] != region_list(listed):
        raise StudyError(f"{where}: the candidates are not one list in {question!r}")
    if len(listed) <= keep:
        return question, answer
    positions = {rec_answer(k + 1): k for k in range(len(listed))}
    if answer != no_match_answer() and answer not in positions:
        raise StudyError(f"{where}: {answer!r} is neither a list position of {len(listed)} candidates nor no-match")
    target = positions.get(answer)
    others = [i for i in range(len(listed)) if i != target]
    chosen = sorted(rng.sample(others, keep - (target is not None)) + ([target] if target is not None else []))
    question = question[:found[0].start()] + region_list([listed[i] for i in chosen]) + question[found[-1].end():]
    return question, answer if target is None else rec_answer(chosen.index(target) + 1)


def rec_samples(data: Path, split: str, regions: str, layout: str, listing: bool = False,
                max_candidates: int = None, seed: int = 0, turns_per_sample: int = 1) -> list:
    """Samples ``([(question, answer), ...], region feature rows in placeholder order)``: by default one REC turn
    each; ``turns_per_sample`` N > 1 keeps up to N REC turns of the same image together as one multi-turn sample
    (as a training conversation carries them), its placeholders numbered across the turns.

    ``max_candidates``: shorten each candidate list to the target and random others (:func:`fewer_candidates`), an
    easier REC for a curriculum."""
    rng = random.Random(seed)
    conv_file, ann_file = data / f"{split}.json", data / "annotations" / f"instances_{split}.json"
    for f in (conv_file, ann_file):
        if not f.is_file():
            raise StudyError(f"{f} is missing: --data must be a folder made by `python -m rgpt_llava.shapes.generator`")
    anns = {a["id"]: a for a in json.loads(ann_file.read_text())["annotations"]}
    by_image = {}
    for a in anns.values():
        by_image.setdefault(a["image_id"], []).append(a)
    suffix = rec_suffix(load_pools())
    out = []
    for sample in json.loads(conv_file.read_text()):
        turns, rec = sample["conversations"], []
        for q, a in zip(turns[0::2], turns[1::2]):
            question, answer = q["value"].replace("<image>\n", "").replace("<image>", ""), a["value"]
            if suffix not in question:
                continue
            if max_candidates is not None:
                question, answer = fewer_candidates(question, answer, max_candidates, rng,
                                                    f"{conv_file}: sample {sample['id']}")
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
            rec.append((question, answer, feats))
            if listing and regions != "text":   # Table 13's "one turn for all RoIs" over the same candidates
                q = (f"What category name best describes the region represented by "
                     f"{region_list([f'<region{k}>' for k in range(1, len(listed) + 1)])}? "
                     f"{category_suffix(shapes.VOCAB_NAME)}")
                out.append(([(q, ", ".join(f"{a['colour']} {a['shape']}" for a in listed))],
                            [one_hot(a) for a in listed]))
        out += [merged(rec[i:i + turns_per_sample]) for i in range(0, len(rec), turns_per_sample)]
    if not out:
        raise StudyError(f"{conv_file} has no REC turns (generated with --max-rec 0?)")
    return out


def encode(samples: list, tokenizer) -> list:
    """(ids, labels, feature rows) per sample, tokenised and masked by LLaVA's own ``preprocess`` (as
    ``RegionSupervisedDataset`` calls it) in the Vicuna-v1 template (``--version v1``, as the benchmark trains), with
    region placeholders as in training (:func:`research.pretrain_llm.vicuna_v1_ids`)."""
    enc = []
    for pairs, feats in samples:
        source = [m for q, a in pairs for m in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]
        try:
            ids, labels = vicuna_v1_ids(source, tokenizer)
        except PretrainError as e:
            raise StudyError(str(e)) from None
        enc.append((ids, labels, feats))
    return enc


def forward(model, projector, batch: list):
    """Loss and per-token argmax on the answer tokens; region sentinels replaced by projected features.

    One padded id tensor, one embedding call and one projector call per batch (not per sample): on a GPU the step
    is then a handful of kernels instead of hundreds of small ones.
    """
    emb = model.get_input_embeddings()
    dev = emb.weight.device
    ids, mask, labels = (t.to(dev) for t in padded_batch([(i, l) for i, l, _ in batch]))
    feats, first = [], []            # all samples' feature rows stacked; the row where each sample's rows start
    for _, _, rows in batch:
        first.append(len(feats))
        feats += rows
    inputs = emb(ids.clamp_min(0)) * mask.unsqueeze(-1)
    is_region = ids <= REGION_TOKEN_INDEX
    if is_region.any():
        # the k-th supplied region of its own sample, as in training
        row_of = torch.tensor(first, device=dev)[:, None] + (REGION_TOKEN_INDEX - ids)
        projected = projector(torch.tensor(feats, device=dev))
        inputs = inputs.masked_scatter(is_region.unsqueeze(-1), projected[row_of[is_region]])
    h = model.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
    sel = labels != IGNORE_INDEX
    logits = model.lm_head(h[sel])
    return F.cross_entropy(logits, labels[sel]), logits.argmax(-1), labels[sel]


@torch.no_grad()
def accuracy(model, projector, val: list, batch_size: int = 64) -> float:
    """Held-out answers that are exactly right, % (every answer of a multi-turn sample counts)."""
    model.eval()
    right = total = 0
    for i in range(0, len(val), batch_size):
        chunk = val[i:i + batch_size]
        _, pred, gold = forward(model, projector, chunk)
        k = 0
        for _, labels, _ in chunk:
            for start, end in answer_spans(labels):
                right += int(torch.equal(pred[k:k + end - start], gold[k:k + end - start]))
                k += end - start
                total += 1
    model.train()
    return 100.0 * right / total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a folder made by python -m rgpt_llava.shapes.generator")
    ap.add_argument("--extra-train", type=Path, nargs="+", default=[], metavar="DIR",
                    help="more generator folders (other seeds) whose training REC turns are added; the held-out "
                         "turns stay --data's")
    ap.add_argument("--regions", choices=("oracle", "exact", "text"), default="oracle")
    ap.add_argument("--layout", choices=("paper", "indexed", "after"), default="paper")
    ap.add_argument("--listing", action="store_true",
                    help="train also on one-turn classification of the same candidates (Table 13), REC scored alone")
    ap.add_argument("--max-candidates", type=int, metavar="K",
                    help="an easier REC: each training turn keeps its target and at most K-1 other candidates "
                         "(renumbered); held-out accuracy is reported on the full lists and on lists shortened the "
                         "same way")
    ap.add_argument("--easy-steps", type=int, metavar="S",
                    help="with --max-candidates: a curriculum, the shortened lists for the first S steps, the full "
                         "lists after (default: shortened lists throughout)")
    ap.add_argument("--turns-per-sample", type=int, default=1, metavar="N",
                    help="keep up to N REC turns of an image together as one multi-turn training sample (the "
                         "generator's --max-rec sets how many an image has); held-out turns stay one per sample")
    ap.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    ap.add_argument("--hidden", type=int, help=f"default {LLM['hidden_size']} (the benchmark's)")
    ap.add_argument("--layers", type=int, help=f"default {LLM['num_layers']} (the benchmark's)")
    ap.add_argument("--heads", type=int, help=f"attention heads of the random Llama (default {LLM['num_heads']}, "
                                                 "the benchmark's)")
    ap.add_argument("--init-std", type=float, help=f"std of the random Llama's weights, its initializer_range "
                    f"(default {STUDY_INIT_STD}, transformers'; the benchmark draws at 1/sqrt(width))")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--beta1", type=float, default=0.9,
                    help="AdamW's first-moment (momentum) decay (default torch's 0.9); 0.99 averages the gradient over "
                         "~100 steps, but does not stand in for a larger batch (docs/SHAPES.md)")
    ap.add_argument("--beta2", type=float, default=0.999, help="AdamW's second-moment decay (default torch's 0.999)")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (fp32 either way)")
    ap.add_argument("--init-llm", type=Path,
                    help="start from this saved Llama (a --save folder) instead of a random one, with its width "
                         "and depth")
    ap.add_argument("--freeze-llm", action="store_true",
                    help="train the projector alone (the LLM frozen, as in stage 1): can a given LLM's REC be "
                         "reached through the projector?")
    ap.add_argument("--save", type=Path, help="save the trained Llama and tokenizer here (save_pretrained)")
    ap.add_argument("--json", type=Path, help="write the curve here (rewritten at every evaluation)")
    ap.add_argument("--max-seconds", type=float,
                    help="cap --steps so training and its evaluations fit this wall time: 20 timed steps at learning "
                         "rate 0 and one timed evaluation set the cap before training starts, so the learning-rate "
                         "schedule still runs to its end")
    args = ap.parse_args(argv)
    if args.easy_steps is not None and args.max_candidates is None:
        ap.error("--easy-steps needs --max-candidates")
    if args.max_candidates is not None and args.max_candidates < 2:
        ap.error("--max-candidates must be at least 2 (one candidate leaves nothing to choose)")
    for name in ("hidden", "layers", "heads", "steps", "batch_size", "eval_every", "turns_per_sample"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_seconds is not None and args.max_seconds <= 0:
        ap.error("--max-seconds must be positive")
    if args.init_llm is not None and not (args.init_llm / "config.json").is_file():
        ap.error(f"--init-llm {args.init_llm}: no config.json there (a folder written by --save is expected)")
    shape_flags = ("hidden", "layers", "heads", "init_std")   # what a saved model (--init-llm) brings itself
    if args.init_llm is not None and any(getattr(args, name) is not None for name in shape_flags):
        ap.error("--init-llm takes the width, depth, heads and weights from the saved model; "
                 "drop --hidden/--layers/--heads/--init-std")
    if args.init_std is not None and args.init_std <= 0:
        ap.error("--init-std must be positive")
    args.init_std = args.init_std or STUDY_INIT_STD
    args.hidden = args.hidden or LLM["hidden_size"]
    args.layers = args.layers or LLM["num_layers"]
    args.heads = args.heads or LLM["num_heads"]
    if args.hidden % args.heads:
        ap.error(f"--heads {args.heads} does not divide the width {args.hidden}")
    for name in ("beta1", "beta2"):
        if not 0 < getattr(args, name) < 1:
            ap.error(f"--{name} must lie in (0, 1)")
    if not (args.tokenizer / "tokenizer.model").is_file():
        ap.error(f"no LLaMA tokenizer at {args.tokenizer} (tokenizer.model missing)")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        ap.error(f"--device {args.device}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: this torch build sees no CUDA device")
    if args.regions == "text" and args.freeze_llm:
        ap.error("--freeze-llm with --regions text leaves nothing to train (no region tokens, no projector)")
    if args.regions == "text" and args.layout != "paper":
        ap.error("--regions text has no region tokens to index; use --layout paper")
    try:
        def training_samples(max_candidates=None):   # --data's and every --extra-train folder's training turns
            return [x for folder in [args.data] + args.extra_train
                    for x in rec_samples(folder, "train", args.regions, args.layout, args.listing, max_candidates,
                                         args.seed, args.turns_per_sample)]

        train = training_samples()
        val = rec_samples(args.data, "val", args.regions, args.layout)
        easy, easy_val = None, None
        if args.max_candidates is not None:
            easy = training_samples(args.max_candidates)
            easy_val = rec_samples(args.data, "val", args.regions, args.layout, max_candidates=args.max_candidates,
                                   seed=args.seed)
    except StudyError as e:
        ap.error(str(e))

    from transformers import LlamaForCausalLM
    from rgpt_llava.tokenization import load_tokenizer
    from rgpt_llava.tiny import build_tiny_llm
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    if args.init_llm is not None:
        tokenizer = load_tokenizer(args.init_llm)
        model = LlamaForCausalLM.from_pretrained(args.init_llm)
        args.hidden, args.layers, args.heads, args.init_std = (
            model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads,
            model.config.initializer_range)   # the saved model's own, as the curve records them
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build_tiny_llm(tmp, args.tokenizer, hidden_size=args.hidden, num_layers=args.layers, seed=args.seed,
                           num_heads=args.heads, init_std=args.init_std)
            tokenizer = load_tokenizer(tmp)
            model = LlamaForCausalLM.from_pretrained(tmp)
    train, val = encode(train, tokenizer), encode(val, tokenizer)
    if easy is not None:
        easy, easy_val = encode(easy, tokenizer), encode(easy_val, tokenizer)
    feat_dim = sum(len(v) for v in ATTRIBUTES.values())
    projector = torch.nn.Sequential(torch.nn.Linear(feat_dim, args.hidden), torch.nn.GELU(),
                                    torch.nn.Linear(args.hidden, args.hidden))   # LLaVA's mlp2x_gelu shape
    model.to(args.device)
    projector.to(args.device)
    if args.freeze_llm:
        model.requires_grad_(False)
    params = [p for p in list(model.parameters()) + list(projector.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(args.beta1, args.beta2), weight_decay=0.0)
    requested = args.steps
    if args.max_seconds is not None:
        args.steps = min(args.steps, fitting_steps(model, projector, train, val, params, args))
    warmup = max(1, args.steps // 33)   # 3 %, then cosine: the benchmark's schedule
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / args.steps)))
    train_turns, val_turns = (sum(len(answer_spans(labels)) for _, labels, _ in x) for x in (train, val))
    print(f"{train_turns} train turns in {len(train)} samples / {val_turns} held-out REC turns; regions "
          f"{args.regions}, layout {args.layout}, LLM {args.layers} layers x {args.hidden}", flush=True)
    curve, t0 = [], time.time()
    for step in range(1, args.steps + 1):
        pool = easy if easy is not None and (args.easy_steps is None or step <= args.easy_steps) else train
        loss = train_step(model, projector, rng.sample(pool, min(args.batch_size, len(pool))), params, opt)
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            curve.append({"step": step, "loss": round(loss.item(), 4), "rec_acc": round(accuracy(model, projector, val), 2),
                          "seconds": round(time.time() - t0, 1)})
            if easy_val is not None:
                curve[-1]["rec_acc_shortened"] = round(accuracy(model, projector, easy_val), 2)
            print(json.dumps(curve[-1]), flush=True)
            result = {"args": {k: as_json(v) for k, v in vars(args).items()},
                      "requested_steps": requested, "train_turns": train_turns,
                      "train_samples": len(train), "val_turns": val_turns, "curve": curve,
                      "torch_threads": torch.get_num_threads(), "device": str(args.device)}
            if args.json:   # at every evaluation, so a run cut short still leaves its curve
                args.json.write_text(json.dumps(result, indent=1))
    if args.save is not None:
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)
    return result


def train_step(model, projector, batch: list, params: list, opt) -> torch.Tensor:
    loss, _, _ = forward(model, projector, batch)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss


def as_json(value):
    """Paths (also lists of them, as --extra-train) as strings."""
    if isinstance(value, list):
        return [as_json(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def fitting_steps(model, projector, train: list, val: list, params: list, args) -> int:
    """How many training steps (with their evaluations every --eval-every) fit in --max-seconds."""
    rng = random.Random(args.seed + 1)
    sync = torch.cuda.synchronize if torch.device(args.device).type == "cuda" else (lambda: None)
    idle = torch.optim.AdamW(params, lr=0.0, weight_decay=0.0)   # the real step's cost, with weights left as they are

    def step():
        train_step(model, projector, rng.sample(train, min(args.batch_size, len(train))), params, idle)

    step()   # warm-up
    sync()
    t0 = time.time()
    for _ in range(20):
        step()
    sync()
    per_step = (time.time() - t0) / 20
    t0 = time.time()
    accuracy(model, projector, val)
    sync()
    per_eval = time.time() - t0
    steps = max(1, int(args.max_seconds / (per_step + per_eval / args.eval_every)))
    print(f"--max-seconds {args.max_seconds:g}: {per_step * 1000:.1f} ms/step, {per_eval:.1f} s/evaluation "
          f"-> {min(steps, args.steps)} steps", flush=True)
    return steps


if __name__ == "__main__":
    main()

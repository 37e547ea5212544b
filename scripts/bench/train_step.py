#!/usr/bin/env python
"""One training step of RegionGPT against one of LLaVA-1.5, on the same tiny model and the same image batch.

    python scripts/bench/train_step.py                     # CPU, ~2 minutes on 2 cores
    python scripts/bench/train_step.py --runs 20 --json out.json

Both models are built from one tiny random LLaVA checkpoint (``rgpt_llava.tiny``; the RegionShapes demo's shapes: a
224 px CLIP-style tower of 3 layers, a 2-layer Llama of width 128, the shipped LLaMA tokenizer): LLaVA's
``LlavaLlamaForCausalLM`` as saved, and RGPT's model with the same weights plus the paper's deconv refiner. A step is
what stage 2 trains (the tower frozen; LLM, projector and refiner trained): forward with labels, backward, AdamW.

The batch: --batch images with --regions boxes each on a 640x480 photo, one question per box. RGPT's prompt names
each box with ``<regionK>`` and its step includes making the masks from the boxes (``process_regions`` at the refined
map's resolution, as the dataset's workers do); LLaVA's prompt says "the object" instead and has no regions. Answers
and everything else are the same.

Steps are timed round-robin (ABBA order), medians over --runs rounds; the ratio RGPT / LLaVA is printed, never
asserted. Then one profiled step of each model shows where the time goes (torch.profiler, CPU).
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench_common import device_name  # noqa: E402  (scripts/bench/, the script's folder, is on sys.path)
from rgpt_llava.constants import IGNORE_INDEX  # noqa: E402

PHOTO = (640, 480)
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")


def build_models(tmp: Path, seed: int):
    """(tokenizer, image processor, LLaVA model, RGPT model): the same weights where they share them."""
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    from rgpt_llava.assets import llama_tokenizer_dir
    from rgpt_llava.convert import rgpt_config_from_llava
    from rgpt_llava.tokenization import load_tokenizer
    from rgpt_llava.model import RGPTLlamaForCausalLM
    from rgpt_llava.model.builder import read_config
    from rgpt_llava.model.region_encoder import build_refiner
    from rgpt_llava.shapes.benchmark import LLM, TOWER
    from rgpt_llava.tiny import build_tiny_clip, build_tiny_llava

    clip = build_tiny_clip(tmp / "clip", image_size=TOWER["image_size"], patch_size=TOWER["patch_size"],
                           hidden_size=TOWER["hidden_size"], num_layers=TOWER["num_layers"],
                           num_heads=TOWER["num_heads"], seed=seed)
    llava_dir = build_tiny_llava(tmp / "llava", str(llama_tokenizer_dir()), clip, seed=seed,
                                 hidden_size=LLM["hidden_size"], num_layers=LLM["num_layers"])
    tokenizer = load_tokenizer(llava_dir)
    tokenizer.pad_token = tokenizer.unk_token
    llava = LlavaLlamaForCausalLM.from_pretrained(llava_dir, torch_dtype=torch.float32)
    config = rgpt_config_from_llava(read_config(llava_dir), refiner="deconv")
    rgpt = RGPTLlamaForCausalLM.from_pretrained(llava_dir, config=config, torch_dtype=torch.float32)
    torch.manual_seed(seed)
    rgpt.get_model().mm_refiner = build_refiner(config)
    models = []
    for model in (llava, rgpt):
        tower = model.get_vision_tower()
        if not tower.is_loaded:
            tower.load_model()
        model.config.tokenizer_padding_side = "right"
        model.train()
        tower.requires_grad_(False)  # stage 2: the tower stays frozen
        models.append(model)
    return tokenizer, llava.get_vision_tower().image_processor, models[0], models[1]


def random_boxes(n, seed):
    """n random boxes [x1, y1, x2, y2] on the photo, 24 px to half of it each way."""
    g = torch.Generator().manual_seed(seed)

    def draw(lo, hi):
        return int(torch.randint(lo, hi, (1,), generator=g))

    boxes = []
    for _ in range(n):
        w, h = draw(24, PHOTO[0] // 2), draw(24, PHOTO[1] // 2)
        x0, y0 = draw(0, PHOTO[0] - w), draw(0, PHOTO[1] - h)
        boxes.append([x0, y0, x0 + w, y0 + h])
    return boxes


def conversation(n_regions, with_regions, seed):
    """LLaVA's training JSON turns: one question per region; with_regions names each as <regionK>, else "the
    object"."""
    turns = []
    for k in range(n_regions):
        ref = f"<region{k + 1}>" if with_regions else "the object"
        question = f"What shape is {ref}?"
        turns.append({"from": "human", "value": ("<image>\n" + question) if k == 0 else question})
        turns.append({"from": "gpt", "value": f"A {SHAPES[(seed + k) % len(SHAPES)]}."})
    return turns


def tokenize_batch(tokenizer, conversations):
    """Ids and labels by LLaVA's own preprocess (as the training data module does), right-padded."""
    import llava.train.train as llava_train
    from llava import conversation as conversation_lib

    from rgpt_llava.train.dataset import region_aware_llava_preprocess

    conversation_lib.default_conversation = conversation_lib.conv_templates["vicuna_v1"]
    ids_list, labels_list = [], []
    with region_aware_llava_preprocess():
        for turns in conversations:
            data = llava_train.preprocess([turns], tokenizer, has_image=True)
            ids_list.append(data["input_ids"][0])
            labels_list.append(data["labels"][0])
    n = max(len(x) for x in ids_list)
    ids = torch.full((len(ids_list), n), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(ids_list), n), IGNORE_INDEX, dtype=torch.long)
    att = torch.zeros((len(ids_list), n), dtype=torch.bool)
    for i, (x, y) in enumerate(zip(ids_list, labels_list)):
        ids[i, :len(x)], labels[i, :len(y)], att[i, :len(x)] = x, y, True
    return ids, labels, att


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--regions", type=int, default=4, help="boxes (and questions) per image")
    ap.add_argument("--runs", type=int, default=10, help="timed rounds")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, metavar="PATH")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from rgpt_llava.geometry import process_regions

    with tempfile.TemporaryDirectory(prefix="rgpt_train_step_") as tmp:
        tokenizer, processor, llava, rgpt = build_models(Path(tmp), args.seed)
    side = processor.crop_size["height"]
    g = torch.Generator().manual_seed(args.seed + 1)
    images = torch.randn(args.batch, 3, side, side, generator=g)
    boxes = [random_boxes(args.regions, args.seed + 10 + b) for b in range(args.batch)]
    batches = {}
    for name, with_regions in (("llava", False), ("rgpt", True)):
        batches[name] = tokenize_batch(tokenizer, [conversation(args.regions, with_regions, args.seed + b)
                                                   for b in range(args.batch)])
    map_size = rgpt.region_map_size()
    aspect = rgpt.config.image_aspect_ratio
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
                  for name, m in (("llava", llava), ("rgpt", rgpt))}

    def step(name):
        ids, labels, att = batches[name]
        model, opt = (llava, optimizers["llava"]) if name == "llava" else (rgpt, optimizers["rgpt"])
        kwargs = {}
        if name == "rgpt":
            with torch.profiler.record_function("rgpt: masks from boxes"):
                kwargs["region_masks"] = [process_regions(b, PHOTO, processor, aspect, map_size=map_size)
                                          for b in boxes]
        with torch.profiler.record_function(f"{name}: forward"):
            loss = model(input_ids=ids, attention_mask=att, labels=labels, images=images, **kwargs).loss
        with torch.profiler.record_function(f"{name}: backward"):
            loss.backward()
        with torch.profiler.record_function(f"{name}: optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.item()

    times = {"llava": [], "rgpt": []}
    for rnd in range(args.warmup + args.runs):
        order = ["llava", "rgpt"] if rnd % 2 == 0 else ["rgpt", "llava"]
        for name in order:
            t0 = time.perf_counter()
            step(name)
            if rnd >= args.warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["rgpt"] / med["llava"]
    paired = statistics.median(r / l for r, l in zip(times["rgpt"], times["llava"]))

    profiles = {}
    for name in ("llava", "rgpt"):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step(name)
        profiles[name] = prof.key_averages()

    tokens = {k: int(v[2].sum()) for k, v in batches.items()}
    out = sys.stdout
    print("\nTraining step: RGPT vs LLaVA-1.5 on the same tiny model (RegionShapes demo shapes)", file=out)
    print(f"device   : {device_name()} (cpu)   torch {torch.__version__}   threads {torch.get_num_threads()}", file=out)
    print(f"batch    : {args.batch} images {side}x{side}, {args.regions} boxes each on a {PHOTO[0]}x{PHOTO[1]} photo; "
          f"text tokens {tokens['llava']} (LLaVA) / {tokens['rgpt']} (RGPT); refined map "
          f"{map_size[0]}x{map_size[1]}", file=out)
    print(f"steps    : {args.runs} rounds (+{args.warmup} warm-up), ABBA order, median", file=out)
    print("", file=out)
    for name in ("llava", "rgpt"):
        v = times[name]
        print(f"{name:<6} step {med[name]:8.1f} ms   (min {min(v):.1f}, max {max(v):.1f})", file=out)
    print(f"ratio    : RGPT / LLaVA = {ratio:.3f}x (paired {paired:.3f}x; target <= 1.10x)", file=out)
    print("", file=out)
    summary = {}
    for name in ("llava", "rgpt"):
        rows = [e for e in profiles[name] if e.key.startswith(f"{name}: ")]
        total = sum(e.cpu_time_total for e in rows)
        summary[name] = {e.key.split(": ", 1)[1]: e.cpu_time_total / 1e3 for e in rows}
        print(f"where {name}'s profiled step goes (ms): " + ", ".join(
            f"{e.key.split(': ', 1)[1]} {e.cpu_time_total / 1e3:.1f}" for e in sorted(rows, key=lambda e: e.key))
            + f"; total {total / 1e3:.1f}", file=out)
    print("", file=out)
    print("top operators of RGPT's profiled step (self CPU time):", file=out)
    print(profiles["rgpt"].table(sort_by="self_cpu_time_total", row_limit=15), file=out)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(
            device=device_name(), torch=torch.__version__, threads=torch.get_num_threads(), batch=args.batch,
            regions=args.regions, runs=args.runs, warmup=args.warmup, tokens=tokens, map_size=list(map_size),
            times_ms=times, median_ms=med, ratio=ratio, paired_ratio=paired, profile_ms=summary), indent=2))
        print(f"json     : {args.json}", file=out)
    return ratio


if __name__ == "__main__":
    main()

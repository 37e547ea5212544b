"""Describe everything: one answer per region of a photo, the image encoded once.

    python -m rgpt_llava.serve.describe --model-path CKPT --image-file F (--sam-model PATH | --regions FILE.json)
        [--out OUT.json] [--png OUT.png] [--prompt "..."] [--max-regions N]

Regions come from SAM's automatic mask generation (``--sam-model``: transformers' ``mask-generation`` pipeline on a
points grid, best predicted IoU first) or from ``--regions``, a JSON list of REGION objects (docs/SERVING.md; prompts
for SAM among them need ``--sam-model``). Each region gets the prompt (default: the caption prompt of the paper's
Table 21; a task-guided one such as "What is the category of <region1>? Answer the question using COCO-80 category
names." gives classes) through the serving engine: one image encoding and one shared prompt prefix per batch of
``--batch-size`` regions, greedy decoding. Written: a JSON (per region: index, box, area, SAM's score, COCO RLE, text)
and a PNG (numbered, coloured outlines and a legend).
"""
import argparse
import json
import sys
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from rgpt_llava.prompt import build_prompt, with_image
from rgpt_llava.geometry import Region, parse_region
from rgpt_llava.serve.engine import RegionEngine, Sampling
from rgpt_llava.serve.inputs import InputError, load_image_file, parse_regions

DEFAULT_PROMPT = "Provide a brief caption for the area indicated by <region1>."   # Table 21, as the caption eval
COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
           (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0)]


def full_mask(region: Region, width: int, height: int) -> np.ndarray:
    """The region as a bool mask of the whole image (pixels it covers at all)."""
    values, (x0, y0) = region.rasterize(width, height)
    mask = np.zeros((height, width), bool)
    mask[y0:y0 + values.shape[0], x0:x0 + values.shape[1]] = values > 0
    return mask


def proposals(sam, image: Image.Image, max_regions: Optional[int] = None, **generation) -> List[Region]:
    """SAM's automatic masks as regions, best predicted IoU first, at most ``max_regions``."""
    found = sam.propose(image, **generation)[:max_regions]
    regions = []
    for k, (mask, score) in enumerate(found):
        region = parse_region(mask, k, image.size)
        region.source, region.score = "SAM, automatic", score
        regions.append(region)
    return regions


def describe(engine: RegionEngine, image: Image.Image, regions: Sequence[Region], prompt: str = DEFAULT_PROMPT,
             conv_mode: str = "vicuna_v1", max_new_tokens: int = 64, batch_size: int = 32,
             progress: bool = True, ignore_eos: bool = False) -> List[str]:
    """One greedy answer to ``prompt`` (naming ``<region1>``) per region, ``batch_size`` regions per batch
    (``ignore_eos``: answers of exactly ``max_new_tokens`` tokens, for benchmarks)."""
    from tqdm import tqdm
    text = build_prompt([("user", with_image(prompt))], conv_mode)
    answers = [""] * len(regions)
    bar = tqdm(total=len(regions), desc="describing", unit="region", disable=not progress, file=sys.stderr)
    for start in range(0, len(regions), batch_size):
        chunk = regions[start:start + batch_size]
        job = engine.prepare(image, [(text, [r]) for r in chunk],
                             Sampling(temperature=0.0, max_new_tokens=max_new_tokens, ignore_eos=ignore_eos))
        for deltas in engine.generate(job, stream=False):
            for d in deltas:
                answers[start + d.index] += d.text
                if d.finish_reason:
                    bar.update(1)
    bar.close()
    return [a.strip() for a in answers]


def records(regions: Sequence[Region], texts: Sequence[str], width: int, height: int) -> List[dict]:
    from pycocotools import mask as mask_utils
    out = []
    for region, text in zip(regions, texts):
        mask = full_mask(region, width, height)
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        out.append({"index": region.index + 1, "box": [round(float(v), 2) for v in region.box],
                    "area": int(mask.sum()), "score": None if region.score is None else round(region.score, 4),
                    "source": region.source, "rle": {"size": [height, width], "counts": rle["counts"].decode()},
                    "text": text})
    return out


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def render(image: Image.Image, regions: Sequence[Region], texts: Sequence[str]) -> Image.Image:
    """The photo with each region's outline (2 px, its colour, a light fill) and number, above a legend of answers."""
    width, height = image.size
    canvas = np.asarray(image.convert("RGB")).astype(np.float32)
    for k, region in enumerate(regions):
        colour = np.array(COLOURS[k % len(COLOURS)], np.float32)
        mask = full_mask(region, width, height)
        canvas[mask] = 0.75 * canvas[mask] + 0.25 * colour
        edge = _outline(mask)
        edge[1:, :] |= edge[:-1, :]
        edge[:, 1:] |= edge[:, :-1]
        canvas[edge] = colour
    font = ImageFont.load_default()
    line = 14
    legend = Image.new("RGB", (width, 6 + line * len(regions)), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    per_line = max(8, (width - 30) // 6)
    for k, text in enumerate(texts):
        y = 3 + k * line
        draw.rectangle([4, y + 2, 14, y + 11], fill=COLOURS[k % len(COLOURS)])
        caption = f"{k + 1}: {text}"
        draw.text((20, y), caption if len(caption) <= per_line else caption[:per_line - 3] + "...", fill=(0, 0, 0),
                  font=font)
    photo = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(photo)
    for k, region in enumerate(regions):
        x, y = int(region.box[0]), int(region.box[1])
        label = str(k + 1)
        draw.rectangle([x, y, x + 7 * len(label) + 3, y + 12], fill=COLOURS[k % len(COLOURS)])
        draw.text((x + 2, y), label, fill=(0, 0, 0), font=font)
    out = Image.new("RGB", (width, height + legend.height), (255, 255, 255))
    out.paste(photo, (0, 0))
    out.paste(legend, (0, height))
    return out


def load_region_file(path: str) -> list:
    try:
        with open(path, encoding="utf-8") as f:
            items = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file", "--regions") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a JSON file ({e})", "--regions") from None
    if not isinstance(items, list) or not items:
        raise InputError(f"{path}: expected a non-empty JSON list of REGION objects, e.g. [{{\"box\": [x1, y1, x2, "
                         f"y2]}}]", "--regions")
    return items


def build_parser():
    from rgpt_llava.model.builder import device_arg
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True)
    p.add_argument("--model-base", default=None)
    p.add_argument("--image-file", required=True)
    p.add_argument("--sam-model", default=None, metavar="PATH",
                   help="a local SAM folder: proposes the regions (without --regions) and resolves prompts in them")
    p.add_argument("--regions", default=None, metavar="FILE.json", help="a JSON list of REGION objects to describe")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question for each region; names it as <region1>")
    p.add_argument("--max-regions", type=int, default=64, help="describe at most this many regions (default 64)")
    p.add_argument("--out", default=None, metavar="OUT.json", help="write the regions and answers here")
    p.add_argument("--png", default=None, metavar="OUT.png", help="write the outlined, numbered picture here")
    p.add_argument("--conv-mode", default="vicuna_v1")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32, help="regions decoded together")
    p.add_argument("--points-per-side", type=int, default=32, help="SAM's proposal grid (points per side)")
    p.add_argument("--pred-iou-thresh", type=float, default=0.88, help="SAM proposals below this predicted IoU go")
    p.add_argument("--stability-score-thresh", type=float, default=0.95, help="SAM proposals less stable go")
    p.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--load-4bit", action="store_true")
    p.add_argument("--load-8bit", action="store_true")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    for flag in ("max_regions", "max_new_tokens", "batch_size", "points_per_side"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if not args.regions and not args.sam_model:
        p.error("give the regions: --sam-model PATH (SAM proposes them) or --regions FILE.json")
    from rgpt_llava.paths import output_clash
    clash = output_clash({"--out": args.out, "--png": args.png}, {"--image-file": args.image_file,
                                                                  "--regions": args.regions})
    if clash:
        p.error(clash)
    from rgpt_llava.mm_utils import region_references
    from rgpt_llava.model.builder import CheckpointError
    from rgpt_llava.sam import SamPrompter
    try:
        if sorted(set(region_references(args.prompt))) != [0]:
            raise InputError("the prompt must name the one region as <region1> (or <region>), e.g. "
                             f"{DEFAULT_PROMPT!r}", "--prompt")
        image = load_image_file(args.image_file).convert("RGB")
        sam = SamPrompter(args.sam_model, args.device) if args.sam_model else None
        if args.regions:
            items = load_region_file(args.regions)
            if len(items) > args.max_regions:
                print(f"describing the first {args.max_regions} of {len(items)} regions (--max-regions)",
                      file=sys.stderr)
                items = items[:args.max_regions]
            regions = parse_regions([(r, f"--regions item {k}") for k, r in enumerate(items)], image.size,
                                    len(items), image=image, sam=sam)
        else:
            regions = proposals(sam, image, args.max_regions, points_per_side=args.points_per_side,
                                pred_iou_thresh=args.pred_iou_thresh,
                                stability_score_thresh=args.stability_score_thresh)
            if not regions:
                raise InputError("SAM proposed no region above the thresholds; lower --pred-iou-thresh / "
                                 "--stability-score-thresh or give --regions", "--sam-model")
        engine = RegionEngine.load(args.model_path, args.model_base, args.device, args.load_8bit, args.load_4bit,
                                   max_regions=1)
        texts = describe(engine, image, regions, args.prompt, args.conv_mode, args.max_new_tokens, args.batch_size)
    except (ValueError, FileNotFoundError, CheckpointError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    width, height = image.size
    result = {"image": args.image_file, "width": width, "height": height, "prompt": args.prompt,
              "regions": records(regions, texts, width, height)}
    for r in result["regions"]:
        print(f"region {r['index']} [{', '.join(f'{v:g}' for v in r['box'])}]: {r['text']}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    if args.png:
        render(image, regions, texts).save(args.png)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

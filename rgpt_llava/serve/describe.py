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
from PIL import Image, ImageDraw, ImageFont

from rgpt_llava.prompt import build_prompt, with_image
from rgpt_llava.regions.kinds import parse_region
from rgpt_llava.regions.rasterize import full_mask
from rgpt_llava.regions.region import Region
from rgpt_llava.serve.engine import RegionEngine, Sampling
from rgpt_llava.serve.inputs import InputError, load_image_file, parse_regions
from rgpt_llava.serve.options import (StartupError, add_conv_mode_flag, add_model_flags, load_engine, load_sam,
                                      resolve_conv_mode_flag)
from rgpt_llava.serve.palette import rgb_colour

DEFAULT_PROMPT = "Provide a brief caption for the area indicated by <region1>."   # Table 21, as the caption eval


def proposals(sam, image: Image.Image, max_regions: Optional[int] = None, **generation) -> List[Region]:
    """SAM's automatic masks as regions, best predicted IoU first, at most ``max_regions``."""
    found = sam.propose(image, **generation)[:max_regions]
    regions = []
    for k, (mask, score) in enumerate(found):
        region = parse_region(mask, k, image.size)
        region.source, region.score = "SAM, automatic", score
        regions.append(region)
    return regions


def describe_prompt(prompt: str = DEFAULT_PROMPT, conv_mode: str = "vicuna_v1") -> str:
    """The text every region is asked with: ``prompt`` as the one user turn on the image, in LLaVA's template."""
    return build_prompt([("user", with_image(prompt))], conv_mode)


def describe(engine: RegionEngine, image: Image.Image, regions: Sequence[Region], prompt: str = DEFAULT_PROMPT,
             conv_mode: str = "vicuna_v1", max_new_tokens: int = 64, batch_size: int = 32,
             progress: bool = True, ignore_eos: bool = False) -> List[str]:
    """One greedy answer to ``prompt`` (naming ``<region1>``) per region, ``batch_size`` regions per batch
    (``ignore_eos``: answers of exactly ``max_new_tokens`` tokens, for benchmarks)."""
    from tqdm import tqdm
    text = describe_prompt(prompt, conv_mode)
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


def region_records(regions: Sequence[Region], texts: Sequence[str], width: int, height: int) -> List[dict]:
    """Per region and its answer: what ``--out`` and the API's ``/v1/regions/describe`` report (masks as COCO RLE)."""
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


def draw_outlines(image: Image.Image, regions: Sequence[Region], texts: Sequence[str]) -> Image.Image:
    """The photo with each region's outline (2 px, its colour, a light fill) and number, above a legend of answers."""
    width, height = image.size
    canvas = np.asarray(image.convert("RGB")).astype(np.float32)
    for k, region in enumerate(regions):
        colour = np.array(rgb_colour(k + 1), np.float32)
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
        draw.rectangle([4, y + 2, 14, y + 11], fill=rgb_colour(k + 1))
        caption = f"{k + 1}: {text}"
        draw.text((20, y), caption if len(caption) <= per_line else caption[:per_line - 3] + "...", fill=(0, 0, 0),
                  font=font)
    photo = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(photo)
    for k, region in enumerate(regions):
        x, y = int(region.box[0]), int(region.box[1])
        label = str(k + 1)
        draw.rectangle([x, y, x + 7 * len(label) + 3, y + 12], fill=rgb_colour(k + 1))
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p, "a local SAM folder: proposes the regions (without --regions) and resolves prompts in them")
    p.add_argument("--image-file", required=True)
    p.add_argument("--regions", default=None, metavar="FILE.json", help="a JSON list of REGION objects to describe")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question for each region; names it as <region1>")
    p.add_argument("--max-regions", type=int, default=64, help="describe at most this many regions (default 64)")
    p.add_argument("--out", default=None, metavar="OUT.json", help="write the regions and answers here")
    p.add_argument("--png", default=None, metavar="OUT.png", help="write the outlined, numbered picture here")
    add_conv_mode_flag(p)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32, help="regions decoded together")
    p.add_argument("--points-per-side", type=int, default=32, help="SAM's proposal grid (points per side)")
    p.add_argument("--pred-iou-thresh", type=float, default=0.88, help="SAM proposals below this predicted IoU go")
    p.add_argument("--stability-score-thresh", type=float, default=0.95, help="SAM proposals less stable go")
    return p


def main(argv=None) -> int:
    from rgpt_llava.mm_utils import region_references
    from rgpt_llava.paths import parse_args_checked
    from rgpt_llava.serve.options import check_at_least_one
    p = build_parser()
    args = parse_args_checked(p, argv, outputs=("out", "png"))
    resolve_conv_mode_flag(args)
    check_at_least_one(p, args, "max_regions", "max_new_tokens", "batch_size", "points_per_side")
    if not args.regions and not args.sam_model:
        p.error("give the regions: --sam-model PATH (SAM proposes them) or --regions FILE.json")
    try:
        if sorted(set(region_references(args.prompt))) != [0]:
            raise InputError("the prompt must name the one region as <region1> (or <region>), e.g. "
                             f"{DEFAULT_PROMPT!r}", "--prompt")
        image = load_image_file(args.image_file).convert("RGB")
        sam = load_sam(args)
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
        # SAM is done with (the regions are masks now); the engine answers one region per prompt
        engine = load_engine(args, max_regions=1, sam_model=None)
        texts = describe(engine, image, regions, args.prompt, args.conv_mode, args.max_new_tokens, args.batch_size)
    except (ValueError, FileNotFoundError, StartupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    width, height = image.size
    result = {"image": args.image_file, "width": width, "height": height, "prompt": args.prompt,
              "regions": region_records(regions, texts, width, height)}
    for r in result["regions"]:
        print(f"region {r['index']} [{', '.join(f'{v:g}' for v in r['box'])}]: {r['text']}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    if args.png:
        draw_outlines(image, regions, texts).save(args.png)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

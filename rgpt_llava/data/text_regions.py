"""Regions as text coordinates: the plain-LLaVA baseline's way of pointing at a region.

LLaVA-1.5 refers to a region by its box written in the prompt, ``[x1, y1, x2, y2]``, normalised to [0, 1] over the
image the model sees (for ``image_aspect_ratio pad``: the image padded to a square, centred) with two decimals. This
module writes those strings, and converts region conversations (docs/DATA.md format) into plain LLaVA conversations:
every ``<regionN>`` becomes region N's box text and the ``regions`` field is dropped, so LLaVA's own training and any
LLaVA checkpoint can use them.

    python -m rgpt_llava.data.text_regions --in train.json --out train_text.json [--image-aspect-ratio pad]
"""
import argparse
import json
import re
import sys
from pathlib import Path
from typing import Sequence, Tuple

from rgpt_llava.constants import REGION_PLACEHOLDER_PATTERN
from rgpt_llava.jsonl import NOT_A_LIST, JsonFileError, read_records
from rgpt_llava.mm_utils import region_references
from rgpt_llava.paths import parse_args_checked

ASPECTS = ("pad", "square")


def box_text(bbox_xywh: Sequence[float], width: int, height: int, image_aspect_ratio: str = "pad",
             decimals: int = 2) -> str:
    """``[x1, y1, x2, y2]`` of a COCO box, normalised to the image the model sees, clamped to [0, 1]."""
    if image_aspect_ratio not in ASPECTS:
        raise ValueError(f"image_aspect_ratio {image_aspect_ratio!r}: text coordinates support {ASPECTS}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {width}x{height} is not positive")
    x, y, w, h = (float(v) for v in bbox_xywh)
    if w <= 0 or h <= 0:
        raise ValueError(f"box {list(bbox_xywh)} has no area")
    if image_aspect_ratio == "pad":
        side = max(width, height)
        # llava.mm_utils.expand2square pastes the image at ((side - w) // 2, (side - h) // 2).
        ox, oy = (side - width) // 2, (side - height) // 2
        sx = sy = float(side)
    else:  # "square": LLaVA resizes the image itself to the square
        ox = oy = 0
        sx, sy = float(width), float(height)
    coords = [(x + ox) / sx, (y + oy) / sy, (x + w + ox) / sx, (y + h + oy) / sy]
    return "[" + ", ".join(f"{min(max(c, 0.0), 1.0):.{decimals}f}" for c in coords) + "]"


def replace_regions(text: str, boxes: Sequence[str]) -> str:
    """Every ``<regionN>`` (and plain ``<region>``, in order) replaced by ``boxes[N-1]``."""
    refs = region_references(text)
    if refs and max(refs) >= len(boxes):
        raise ValueError(f"the text refers to <region{max(refs) + 1}> but {len(boxes)} region box(es) were given")
    it = iter(refs)
    return re.sub(REGION_PLACEHOLDER_PATTERN, lambda m: boxes[next(it)], text)


def image_size(sample: dict, image_folder: str = None) -> Tuple[int, int]:
    if "width" in sample and "height" in sample:
        return int(sample["width"]), int(sample["height"])
    if image_folder is None:
        raise ValueError("has no width/height; pass --image-folder to read the image size")
    from PIL import Image
    path = Path(image_folder) / sample["image"]
    if not path.is_file():
        raise ValueError(f"image {path} does not exist")
    with Image.open(path) as im:
        return im.size


def to_text_sample(sample: dict, image_aspect_ratio: str = "pad", image_folder: str = None) -> dict:
    """A region conversation with its regions written as box text (a plain LLaVA sample)."""
    regions = sample.get("regions") or []
    if not regions:
        return {k: v for k, v in sample.items() if k != "regions"}
    w, h = image_size(sample, image_folder)
    boxes = []
    for k, r in enumerate(regions):
        if not isinstance(r, dict) or "bbox" not in r:
            raise ValueError(f"region {k + 1} has no 'bbox' (text coordinates need a box)")
        boxes.append(box_text(r["bbox"], w, h, image_aspect_ratio))
    out = {k: v for k, v in sample.items() if k != "regions"}
    out["conversations"] = [dict(turn, value=replace_regions(turn["value"], boxes))
                            for turn in sample["conversations"]]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in", dest="inp", required=True, help="region conversations (JSON list)")
    ap.add_argument("--out", required=True, help="plain LLaVA conversations (JSON list)")
    ap.add_argument("--image-aspect-ratio", default="pad", choices=ASPECTS)
    ap.add_argument("--image-folder", default=None, help="only needed for samples without width/height")
    args = parse_args_checked(ap, argv)   # --out may not be --in: the region conversations would be lost
    try:
        data = [sample for _, sample in read_records(args.inp, jsonl=False, objects=False)]
    except JsonFileError as e:
        print(f"error: --in {args.inp}: expected a JSON list of samples" if e.kind == NOT_A_LIST else
              f"error: --in {e}", file=sys.stderr)
        return 2
    out = []
    for i, s in enumerate(data):
        try:
            out.append(to_text_sample(s, args.image_aspect_ratio, args.image_folder))
        except (ValueError, KeyError, TypeError) as e:
            print(f"error: --in {args.inp}, sample {i} (id {s.get('id') if isinstance(s, dict) else None!r}): {e}",
                  file=sys.stderr)
            return 2
    Path(args.out).write_text(json.dumps(out))
    print(f"{len(out)} samples written to {args.out} (regions as text boxes, {args.image_aspect_ratio} geometry)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""RegionShapes: a synthetic region dataset with exact masks, for a CPU demo that learns (docs/SHAPES.md).

Each image holds 2-6 shapes (circle, square, triangle, star, ring) of 4 colours, 3 sizes and 2 textures (solid or
striped), drawn in order (later shapes on top). Every shape is rasterised into its own binary mask with PIL at the
image's geometry; the image is composited from those masks, so the annotation's mask is exactly the shape's VISIBLE
pixels. A shape left with less than ``--min-visible`` of its pixels by the shapes above it is dropped (not drawn,
counted). Classes are ``colour x shape`` (20): the shape is an attribute that a region's average colour cannot tell.

    python -m rgpt_llava.shapes.generator --out DIR --n-train 1000 --n-val 200 --seed 0 [--image-size 224 | 320x224]

writes (every path relative to DIR, which is the ``--image_folder`` / ``--image-folder`` of training and eval)::

    images/{train,val}/000000.png
    annotations/instances_{train,val}.json   COCO instances, RLE segmentations  -> rgpt_llava.eval.coco_cls
    train.json, val.json                     region conversations (docs/DATA.md format)
    eval/val_caption_refs.json               {ann_id: ["a small red circle"]}  -> rgpt_llava.eval.caption
    eval/val_caption_questions.jsonl         {question_id, image, file_name, bbox, segmentation} -> model_caption
    eval/val_rec.jsonl                       `rec build` format                -> rgpt_llava.eval.rec / model_rec
    meta.json                                seed, arguments, vocabulary, counts
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from rgpt_llava.data.common import Conversation, iter_progress, rng_for, write_json
from rgpt_llava.data.instructions import (category_suffix, fill, load_pools, no_match_answer, rec_answer, rec_suffix,
                                          region_list)

SOURCE = "shapes"
VOCAB_NAME = "RegionShapes"
SHAPES = ("circle", "square", "triangle", "star", "ring")
COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SIZES = ("small", "medium", "large")
# radius range per size, as a fraction of min(width, height); the gaps between ranges keep the words unambiguous
SIZE_RADIUS = {"small": (0.06, 0.08), "medium": (0.11, 0.14), "large": (0.18, 0.22)}
TEXTURES = ("solid", "striped")
BACKGROUND = (235, 235, 235)
STRIPE_PERIOD = 6           # diagonal stripes: colour / darker shade, 3 px each
STRIPE_SHADE = 0.5
RING_INNER = 0.55           # inner radius / outer radius
STAR_INNER = 0.45
MIN_IMAGE_SIDE = 64
OWNED = ("images", "annotations", "eval", "train.json", "val.json", "meta.json")

# category id = 1 + colour index * len(SHAPES) + shape index; name "red circle"
CATEGORIES = [{"id": 1 + ci * len(SHAPES) + si, "name": f"{c} {s}", "colour": c, "shape": s, "supercategory": s}
              for ci, c in enumerate(COLOURS) for si, s in enumerate(SHAPES)]
CATEGORY_ID = {(c["colour"], c["shape"]): c["id"] for c in CATEGORIES}


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    colour: str
    size: str
    texture: str
    cx: float
    cy: float
    radius: float
    angle: float = 0.0   # degrees

    @property
    def category(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def category_id(self) -> int:
        return CATEGORY_ID[(self.colour, self.shape)]

    def phrase(self, attrs: Sequence[str] = ("size", "texture", "colour")) -> str:
        """Attribute words in the fixed order size, texture, colour, then the shape; "solid" only when asked with
        ``"solid"`` in ``attrs`` (captions omit it: ``"small red circle"``, ``"large striped blue square"``)."""
        words = []
        if "size" in attrs:
            words.append(self.size)
        if "texture" in attrs and self.texture == "striped" or "solid" in attrs and self.texture == "solid":
            words.append(self.texture)
        if "colour" in attrs:
            words.append(self.colour)
        return " ".join(words + [self.shape])

    def caption(self) -> str:
        return "a " + self.phrase()


# ----------------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------------
def _polygon(spec: ShapeSpec, radii: Sequence[float], start_deg: float) -> List[Tuple[float, float]]:
    n = len(radii)
    return [(spec.cx + r * math.cos(math.radians(start_deg + spec.angle + 360.0 * k / n)),
             spec.cy + r * math.sin(math.radians(start_deg + spec.angle + 360.0 * k / n))) for k, r in enumerate(radii)]


def shape_mask(spec: ShapeSpec, size: Tuple[int, int]) -> np.ndarray:
    """The shape's full binary mask (bool ``[H, W]``), rasterised by PIL without anti-aliasing."""
    im = Image.new("L", size, 0)
    d = ImageDraw.Draw(im)
    r, cx, cy = spec.radius, spec.cx, spec.cy
    if spec.shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif spec.shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        ri = r * RING_INNER
        d.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif spec.shape == "square":
        d.polygon(_polygon(spec, [r] * 4, 45.0), fill=1)
    elif spec.shape == "triangle":
        d.polygon(_polygon(spec, [r * 1.15] * 3, -90.0), fill=1)
    elif spec.shape == "star":
        d.polygon(_polygon(spec, [r * 1.1, r * 1.1 * STAR_INNER] * 5, -90.0), fill=1)
    else:
        raise ValueError(f"unknown shape {spec.shape!r}")
    return np.asarray(im, dtype=np.uint8).astype(bool)


def _stripes(size: Tuple[int, int]) -> np.ndarray:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx + yy) // (STRIPE_PERIOD // 2)) % 2 == 1


def composite(specs: Sequence[ShapeSpec], masks: Sequence[np.ndarray], size: Tuple[int, int]) -> np.ndarray:
    """The RGB image (uint8 ``[H, W, 3]``): the shapes painted in order over the background."""
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BACKGROUND
    stripes = None
    for spec, m in zip(specs, masks):
        colour = np.array(COLOURS[spec.colour], np.uint8)
        if spec.texture == "striped":
            if stripes is None:
                stripes = _stripes(size)
            dark = (colour.astype(np.float64) * STRIPE_SHADE).round().astype(np.uint8)
            img[m & ~stripes] = colour
            img[m & stripes] = dark
        else:
            img[m] = colour
    return img


def visible_masks(masks: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Each mask minus the masks drawn after it (later shapes are on top)."""
    out, above = [None] * len(masks), None
    for k in range(len(masks) - 1, -1, -1):
        out[k] = masks[k] if above is None else masks[k] & ~above
        above = masks[k].copy() if above is None else above | masks[k]
    return out


def render(specs: Sequence[ShapeSpec], size: Tuple[int, int]) -> Tuple[np.ndarray, List[np.ndarray]]:
    """``(image, visible masks)`` for shapes drawn in order (no dropping)."""
    masks = [shape_mask(s, size) for s in specs]
    return composite(specs, masks, size), visible_masks(masks)


def sample_spec(rng, size: Tuple[int, int], texture_prob: float) -> ShapeSpec:
    w, h = size
    side = min(w, h)
    shape, colour, sz = rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES)
    texture = "striped" if rng.random() < texture_prob else "solid"
    lo, hi = SIZE_RADIUS[sz]
    r = side * rng.uniform(lo, hi)
    m = r * 1.15 + 1   # keep the whole shape inside the image
    cx, cy = rng.uniform(m, w - m), rng.uniform(m, h - m)
    angle = rng.uniform(-15.0, 15.0) if shape in ("square", "triangle", "star") else 0.0
    return ShapeSpec(shape, colour, sz, texture, round(cx, 2), round(cy, 2), round(r, 2), round(angle, 2))


def place_shapes(rng, n: int, size: Tuple[int, int], min_visible: float, texture_prob: float,
                 max_tries: Optional[int] = None) -> Tuple[List[ShapeSpec], List[np.ndarray], int]:
    """Add random shapes on top until ``n`` are kept. A shape whose visible fraction falls below ``min_visible``
    (covered by later ones) is dropped: not drawn, counted. Returns ``(specs, full masks, dropped)``."""
    specs: List[ShapeSpec] = []
    masks: List[np.ndarray] = []
    dropped = 0
    for _ in range(max_tries or 30 * n):
        if len(specs) >= n:
            break
        spec = sample_spec(rng, size, texture_prob)
        m = shape_mask(spec, size)
        cand_specs, cand_masks = specs + [spec], masks + [m]
        vis = visible_masks(cand_masks)
        keep = [k for k in range(len(cand_masks))
                if vis[k].sum() >= min_visible * cand_masks[k].sum() and vis[k].any()]
        dropped += len(cand_masks) - len(keep)
        specs, masks = [cand_specs[k] for k in keep], [cand_masks[k] for k in keep]
    return specs, masks, dropped


# ----------------------------------------------------------------------------------------------------------------------
# Annotations
# ----------------------------------------------------------------------------------------------------------------------
def encode_mask(mask: np.ndarray) -> Tuple[dict, List[float], int]:
    """``(RLE with str counts, bbox [x, y, w, h], area)`` of a bool mask (pycocotools)."""
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    area = int(mask_utils.area(rle))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}, bbox, area


def relations(a: dict, b: dict, min_area_ratio: float = 2.0) -> List[str]:
    """Unambiguous relations "a REL b" from boxes and visible areas: left of / right of (the boxes do not overlap
    horizontally), above / below (nor vertically), larger than / smaller than (size words differ and the visible
    areas differ by ``min_area_ratio``)."""
    ba, bb = a["bbox"], b["bbox"]
    out = []
    if ba[0] + ba[2] <= bb[0]:
        out.append("left of")
    if bb[0] + bb[2] <= ba[0]:
        out.append("right of")
    if ba[1] + ba[3] <= bb[1]:
        out.append("above")
    if bb[1] + bb[3] <= ba[1]:
        out.append("below")
    sa, sb = SIZES.index(a["size"]), SIZES.index(b["size"])
    if sa > sb and a["area"] >= min_area_ratio * b["area"]:
        out.append("larger than")
    if sa < sb and b["area"] >= min_area_ratio * a["area"]:
        out.append("smaller than")
    return out


REL_WORDS = {"left of": "is left of", "right of": "is right of", "above": "is above", "below": "is below",
             "larger than": "is larger than", "smaller than": "is smaller than"}
# REC expression attribute sets (the shape noun is always said), from short to full
REC_ATTRS = [(), ("colour",), ("size",), ("texture",), ("size", "colour"), ("colour", "texture"),
             ("size", "texture"), ("size", "texture", "colour")]


def _matches(obj: dict, attrs: Sequence[str], target: dict) -> bool:
    if obj["shape"] != target["shape"]:
        return False
    return all(obj[a] == target[a] for a in attrs)


def unique_expressions(objs: List[dict], k: int) -> List[str]:
    """Phrases that name object ``k`` and no other object of the image ("the red circle", "the small striped
    star", ...); an unsaid attribute matches anything, and "texture" is said as "solid" / "striped"."""
    t = objs[k]
    out = []
    for attrs in REC_ATTRS:
        if sum(_matches(o, attrs, t) for o in objs) == 1:
            words = list(attrs) + (["solid"] if "texture" in attrs else [])
            out.append("the " + t["spec"].phrase(words))
    return out


def _region(obj: dict) -> dict:
    return {"bbox": obj["bbox"], "segmentation": obj["segmentation"], "category_id": obj["category_id"],
            "category": obj["category"], "ann_id": obj["id"]}


def conversation(objs: List[dict], rng, pools, image: str, size: Tuple[int, int], sample_id: str,
                 max_relations: int, max_rec: int, no_match_ratio: float, stats: Counter) -> dict:
    """One multi-turn sample: every region classified, captions for some, relationships, REC among all regions."""
    n = len(objs)
    turns = []   # (kind, payload)
    for k in range(n):
        turns.append(("cls", k))
    cap = [k for k in range(n) if rng.random() < 0.5] or [rng.randrange(n)]
    turns += [("cap", k) for k in cap]
    rels = [(i, j, r) for i, j in combinations(range(n), 2) for r in relations(objs[i], objs[j])]
    rels += [(j, i, r) for i, j in combinations(range(n), 2) for r in relations(objs[j], objs[i])]
    rels.sort()
    for i, j, r in rng.sample(rels, min(max_relations, len(rels))):
        turns.append(("rel", (i, j, r)))
    rec_targets = [k for k in range(n) if unique_expressions(objs, k)]
    for k in rng.sample(rec_targets, min(max_rec, len(rec_targets))):
        no_match = n > 1 and rng.random() < no_match_ratio
        turns.append(("rec", (k, rng.choice(unique_expressions(objs, k)), no_match)))
    rng.shuffle(turns)

    conv = Conversation()
    numbers: Dict[int, int] = {}
    order = list(range(n))
    rng.shuffle(order)   # first-mention order of regions that a REC list introduces

    def ph(k: int) -> str:
        p = conv.region(k, _region(objs[k]))
        numbers[k] = int(p[len("<region"):-1])
        return p

    first_cls = True
    for kind, payload in turns:
        if kind == "cls":
            q = fill(pools.sample("category", rng), [ph(payload)])
            if first_cls:
                q += " " + category_suffix(VOCAB_NAME, pools)
                first_cls = False
            conv.ask(q, objs[payload]["category"])
            stats["turns: classification"] += 1
        elif kind == "cap":
            conv.ask(fill(pools.sample("brief_caption", rng), [ph(payload)]), objs[payload]["caption"])
            stats["turns: brief caption"] += 1
        elif kind == "rel":
            i, j, r = payload
            q = fill(pools.sample("relationship", rng), [ph(i), ph(j)])
            a = f"the {objs[i]['spec'].phrase()} {REL_WORDS[r]} the {objs[j]['spec'].phrase()}"
            conv.ask(q, a)
            stats["turns: relationship"] += 1
            stats[f"relation: {r}"] += 1
        else:
            k, expr, no_match = payload
            cands = [c for c in range(n) if not (no_match and c == k)]
            known = sorted((c for c in cands if c in numbers), key=numbers.get)
            listed = known + [c for c in order if c in cands and c not in numbers]
            places = [ph(c) for c in listed]   # ascending region numbers: position x is <regionx> when all listed
            q = fill(pools.sample("rec", rng), [region_list(places)], expr) + " " + rec_suffix(pools)
            conv.ask(q, no_match_answer(pools) if no_match else rec_answer(listed.index(k) + 1, pools))
            stats["turns: REC (no match)" if no_match else "turns: REC"] += 1
    return conv.sample(sample_id, image, size)


# ----------------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------------
def generate_image(seed: int, split: str, index: int, args) -> dict:
    rng = rng_for(seed, SOURCE, split, index)
    size = args.size
    n = rng.randint(args.min_shapes, args.max_shapes)
    specs, masks, dropped = place_shapes(rng, n, size, args.min_visible, args.striped_ratio)
    if len(specs) < args.min_shapes:
        raise RuntimeError(f"{split} image {index}: could not place {args.min_shapes} shapes (image too crowded)")
    img = composite(specs, masks, size)
    objs = []
    for spec, vis in zip(specs, visible_masks(masks)):
        seg, bbox, area = encode_mask(vis)
        objs.append({"spec": spec, "shape": spec.shape, "colour": spec.colour, "size": spec.size,
                     "texture": spec.texture, "category": spec.category, "category_id": spec.category_id,
                     "caption": spec.caption(), "segmentation": seg, "bbox": bbox, "area": area})
    return {"rng": rng, "image": img, "objs": objs, "dropped": dropped}


def _prepare_out(out: str, overwrite: bool) -> None:
    if os.path.isdir(out) and os.listdir(out) and overwrite:
        for name in OWNED:   # only what this generator writes
            p = os.path.join(out, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
    os.makedirs(out, exist_ok=True)


def _dump(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def _dump_jsonl(path: str, rows: List[dict]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def build_split(split: str, count: int, args, stats: Counter, class_counts: Counter) -> Dict[str, list]:
    pools = load_pools()
    w, h = args.size
    img_dir = os.path.join(args.out, "images", split)
    os.makedirs(img_dir, exist_ok=True)
    images, anns, samples, cap_refs, cap_qs, rec_qs = [], [], [], {}, [], []
    ann_id = 0
    for index in iter_progress(range(count), desc=f"RegionShapes {split}", total=count):
        g = generate_image(args.seed, split, index, args)
        image_id = index + 1
        file_name = f"images/{split}/{index:06d}.png"
        Image.fromarray(g["image"], "RGB").save(os.path.join(args.out, file_name), format="PNG", compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        objs = g["objs"]
        for o in objs:
            ann_id += 1
            o["id"] = ann_id
            anns.append({"id": ann_id, "image_id": image_id, "category_id": o["category_id"], "bbox": o["bbox"],
                         "area": o["area"], "segmentation": o["segmentation"], "iscrowd": 0, "shape": o["shape"],
                         "colour": o["colour"], "size": o["size"], "texture": o["texture"], "caption": o["caption"]})
            class_counts[o["category"]] += 1
        stats[f"{split}: images"] += 1
        stats[f"{split}: shapes"] += len(objs)
        stats[f"{split}: dropped occluded shapes"] += g["dropped"]
        samples.append(conversation(objs, g["rng"], pools, file_name, (w, h), f"{SOURCE}_{split}_{image_id}",
                                    args.max_relations, args.max_rec, args.no_match_ratio, stats))
        if split == "val":
            from rgpt_llava.eval.rec import iou
            erng = rng_for(args.seed, SOURCE, "eval", index)
            order = list(range(len(objs)))
            erng.shuffle(order)
            cands = [objs[c]["bbox"] for c in order]
            for k, o in enumerate(objs):
                cap_refs[str(o["id"])] = [o["caption"]]
                cap_qs.append({"question_id": o["id"], "image_id": image_id, "image": file_name,
                               "file_name": file_name, "bbox": o["bbox"], "segmentation": o["segmentation"],
                               "ann_id": o["id"]})
                exprs = unique_expressions(objs, k)
                if not exprs:
                    stats["val: REC skipped (no unique expression)"] += 1
                    continue
                if any(j != k and iou(p["bbox"], o["bbox"]) >= 0.5 for j, p in enumerate(objs)):
                    stats["val: REC skipped (another box has IoU >= 0.5)"] += 1
                    continue
                rec_qs.append({"question_id": o["id"], "ref_id": o["id"], "ann_id": o["id"], "image_id": image_id,
                               "file_name": file_name, "expression": erng.choice(exprs), "gt_bbox": o["bbox"],
                               "candidates": cands, "gt_added": False})
    categories = [{"id": c["id"], "name": c["name"], "supercategory": c["supercategory"]} for c in CATEGORIES]
    os.makedirs(os.path.join(args.out, "annotations"), exist_ok=True)
    _dump(os.path.join(args.out, "annotations", f"instances_{split}.json"),
          {"info": {"description": f"RegionShapes {split}", "seed": args.seed}, "images": images,
           "annotations": anns, "categories": categories})
    write_json(os.path.join(args.out, f"{split}.json"), samples)
    if split == "val":
        os.makedirs(os.path.join(args.out, "eval"), exist_ok=True)
        _dump(os.path.join(args.out, "eval", "val_caption_refs.json"), cap_refs)
        _dump_jsonl(os.path.join(args.out, "eval", "val_caption_questions.jsonl"), cap_qs)
        _dump_jsonl(os.path.join(args.out, "eval", "val_rec.jsonl"), rec_qs)
        stats["val: caption questions"] += len(cap_qs)
        stats["val: REC questions"] += len(rec_qs)
    return {"samples": samples}


def parse_size(text: str) -> Tuple[int, int]:
    t = text.lower().replace(" ", "")
    try:
        if "x" in t:
            w, h = (int(v) for v in t.split("x"))
        else:
            w = h = int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or WxH (e.g. 224 or 320x224), got {text!r}") from None
    return w, h


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rgpt_llava.shapes.generator", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (also the image folder for training / eval)")
    ap.add_argument("--n-train", type=int, required=True, help="training images (>= 1)")
    ap.add_argument("--n-val", type=int, default=0, help="held-out images (>= 0); the eval files need >= 1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=parse_size, default=(224, 224), metavar="N|WxH",
                    help=f"square side or WxH (each >= {MIN_IMAGE_SIDE}); default 224")
    ap.add_argument("--min-shapes", type=int, default=2)
    ap.add_argument("--max-shapes", type=int, default=6)
    ap.add_argument("--min-visible", type=float, default=0.5,
                    help="drop a shape with less than this fraction of its pixels visible (default 0.5)")
    ap.add_argument("--striped-ratio", type=float, default=0.3, help="probability of the striped texture (0: none)")
    ap.add_argument("--max-relations", type=int, default=2, help="relationship turns per image")
    ap.add_argument("--max-rec", type=int, default=2, help="REC turns per image")
    ap.add_argument("--no-match-ratio", type=float, default=0.1,
                    help="fraction of REC turns with the target left out ('No corresponding options found.')")
    ap.add_argument("--overwrite", action="store_true", help="replace this generator's files in a non-empty --out")
    return ap


def check_args(ap: argparse.ArgumentParser, args) -> None:
    if args.n_train < 1:
        ap.error(f"--n-train must be >= 1, got {args.n_train}")
    if args.n_val < 0:
        ap.error(f"--n-val must be >= 0, got {args.n_val}")
    if args.min_shapes < 1:
        ap.error(f"--min-shapes must be >= 1, got {args.min_shapes}")
    if args.min_shapes > args.max_shapes:
        ap.error(f"--min-shapes ({args.min_shapes}) is larger than --max-shapes ({args.max_shapes})")
    if args.max_shapes > 12:
        ap.error(f"--max-shapes must be <= 12 (the shapes would not fit), got {args.max_shapes}")
    w, h = args.image_size
    if min(w, h) < MIN_IMAGE_SIDE:
        ap.error(f"--image-size {w}x{h} is too small: each side must be >= {MIN_IMAGE_SIDE} px")
    if max(w, h) > 4096:
        ap.error(f"--image-size {w}x{h} is too large: each side must be <= 4096 px")
    if not 0.0 < args.min_visible <= 1.0:
        ap.error(f"--min-visible must be in (0, 1], got {args.min_visible}")
    for name in ("striped_ratio", "no_match_ratio"):
        v = getattr(args, name)
        if not 0.0 <= v <= 1.0:
            ap.error(f"--{name.replace('_', '-')} must be in [0, 1], got {v}")
    if args.max_relations < 0 or args.max_rec < 0:
        ap.error("--max-relations and --max-rec must be >= 0")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        ap.error(f"--out {args.out} exists and is not a folder")
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        ap.error(f"--out {args.out} exists and is not empty; pass --overwrite to replace the generator's files in it")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    check_args(ap, args)
    args.size = tuple(args.image_size)
    t0 = time.time()
    _prepare_out(args.out, args.overwrite)
    stats, class_counts = Counter(), Counter()
    build_split("train", args.n_train, args, stats, class_counts)
    if args.n_val:
        build_split("val", args.n_val, args, stats, class_counts)
    meta = {"dataset": VOCAB_NAME, "seed": args.seed,
            "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(vars(args).items())
                     if k not in ("size", "out", "overwrite")},
            "vocabulary": {"vocab_name": VOCAB_NAME,
                           "categories": [{"id": c["id"], "name": c["name"]} for c in CATEGORIES],
                           "shapes": list(SHAPES), "colours": COLOURS, "sizes": list(SIZES),
                           "size_radius_fraction": SIZE_RADIUS, "textures": list(TEXTURES),
                           "relations": list(REL_WORDS), "background": BACKGROUND},
            "counts": dict(sorted(stats.items())),
            "class_counts": {c["name"]: class_counts[c["name"]] for c in CATEGORIES}}
    _dump(os.path.join(args.out, "meta.json"), meta)
    print(summary(args, stats, class_counts, time.time() - t0))
    return 0


def summary(args, stats: Counter, class_counts: Counter, seconds: float) -> str:
    w, h = args.size
    lines = [f"RegionShapes -> {args.out} (seed {args.seed}, {w}x{h}, {seconds:.1f} s)"]
    for split in ("train", "val"):
        if stats[f"{split}: images"]:
            lines.append(f"  {split}: {stats[f'{split}: images']} images, {stats[f'{split}: shapes']} shapes, "
                         f"{stats[f'{split}: dropped occluded shapes']} dropped occluded shapes "
                         f"(visible < {args.min_visible:g})")
    lines.append("  turns: " + ", ".join(f"{k[7:]} {v}" for k, v in sorted(stats.items()) if k.startswith("turns: ")))
    lines.append("  relations: " + ", ".join(f"{k[10:]} {v}" for k, v in sorted(stats.items())
                                            if k.startswith("relation: ")))
    for k, v in sorted(stats.items()):
        if k.startswith("val: ") and k not in ("val: images", "val: shapes", "val: dropped occluded shapes"):
            lines.append(f"  {k}: {v}")
    lines.append(f"  per-class shapes ({len(CATEGORIES)} classes, train + val):")
    names = [c["name"] for c in CATEGORIES]
    for i in range(0, len(names), 5):
        lines.append("    " + "  ".join(f"{n:>15} {class_counts[n]:5d}" for n in names[i:i + 5]))
    lines.append("  files: images/{train,val}/*.png, annotations/instances_{train,val}.json, train.json"
                 + (", val.json, eval/val_caption_refs.json, eval/val_caption_questions.jsonl, eval/val_rec.jsonl"
                    if stats["val: images"] else "") + ", meta.json")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

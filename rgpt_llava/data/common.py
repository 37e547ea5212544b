"""What every converter shares: input loading with clear errors, region validation, conversation assembly, counters.

Error policy (``docs/DATA.md``): a problem with the *structure* of an input (missing file, wrong JSON shape, an
annotation naming an image or category the file does not have, ...) raises :class:`DataError` naming the file, the
item and the problem; the command line prints it and exits with status 1. A single bad annotation (crowd, degenerate
box, odd-length polygon, ...) is skipped, counted under a short reason, and warned about (the first few of each
reason on stderr); the summary lists every count. Nothing is silently dropped or re-aligned.
"""
from __future__ import annotations

import json
import math
import os
import posixpath
import random
import sys
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rgpt_llava import jsonl
from rgpt_llava.geometry import BOX_TOLERANCE_PX
from rgpt_llava.jsonl import JsonFileError
from rgpt_llava.mm_utils import check_region_references, region_references
from rgpt_llava.progress import iter_progress  # noqa: F401  (re-exported for the converters)

__all__ = [
    "DataError",
    "Stats",
    "Conversation",
    "CocoIndex",
    "load_json",
    "write_json",
    "require",
    "iter_progress",
    "rng_for",
    "image_path",
    "clean_text",
    "coco_region",
    "box_region",
    "check_sample",
    "summarize",
]

IMAGE_PREFIX = "<image>\n"
MAX_WARNINGS_PER_REASON = 5


class DataError(ValueError):
    """A fatal problem with an input file's structure; the message names the file, the item and the problem."""


# ----------------------------------------------------------------------------------------------------------------------
# Input / output
# ----------------------------------------------------------------------------------------------------------------------
def load_json(path: str, what: str) -> Any:
    """The JSON document of a file (:mod:`rgpt_llava.jsonl`), with errors that name the file and what it was supposed
    to be."""
    try:
        return jsonl.read_json(path)
    except JsonFileError as e:
        if e.kind == jsonl.MISSING:
            raise DataError(f"{path}: file not found ({what})") from None
        if e.kind == jsonl.MALFORMED:
            raise DataError(f"{path}: not valid JSON ({what}): {e.cause}") from None
        if e.kind == jsonl.NOT_UTF8:
            raise DataError(f"{path}: not UTF-8 text ({what}): {e.problem}") from None
        raise DataError(f"{e} ({what})") from None


def write_json(path: str, samples: List[dict]) -> None:
    """Write ``samples`` as one JSON list (UTF-8), atomically: a crash never leaves half a file behind."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(samples, f, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def require(cond: bool, path: str, problem: str) -> None:
    if not cond:
        raise DataError(f"{path}: {problem}")


def rng_for(seed: int, *parts: Any) -> random.Random:
    """An independent, reproducible random stream per (seed, purpose, item): string seeds are hashed with SHA-512 by
    ``random.Random`` (not Python's salted ``hash``), so streams are stable across runs, machines and item order."""
    return random.Random("/".join(str(p) for p in (seed,) + parts))


def image_path(prefix: str, rel: str) -> str:
    """``prefix/rel`` with forward slashes (LLaVA joins ``--image_folder`` with this)."""
    rel = rel.replace("\\", "/")
    return posixpath.join(prefix, rel) if prefix else rel


def clean_text(text: Any) -> str:
    """Whitespace collapsed and stripped (``""`` for non-strings)."""
    return " ".join(text.split()) if isinstance(text, str) else ""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _all_numbers(seq: list) -> bool:
    """Every item a finite int / float (not bool); fast enough for millions of polygon coordinates (the sum of finite
    numbers is finite, NaN / inf propagate)."""
    return all(type(v) is float or type(v) is int for v in seq) and math.isfinite(sum(seq))


# ----------------------------------------------------------------------------------------------------------------------
# Counters and warnings
# ----------------------------------------------------------------------------------------------------------------------
class Stats:
    """Counts for the summary: ``info`` (input facts, e.g. ``images in input``), ``skipped`` (reason -> count of items
    dropped) and ``notes`` (kept but changed, e.g. boxes clipped to the image). The first few skips of each reason are
    warned about on stderr with the item and the problem."""

    def __init__(self, source: str, stream=None):
        self.source = source
        self.info: Counter = Counter()
        self.skipped: Counter = Counter()
        self.notes: Counter = Counter()
        self.stream = stream if stream is not None else sys.stderr

    def skip(self, reason: str, item: str, problem: Optional[str] = None, n: int = 1) -> None:
        self.skipped[reason] += n
        if self.skipped[reason] - n < MAX_WARNINGS_PER_REASON:
            print(f"warning: [{self.source}] {item}: {problem or reason}; skipped", file=self.stream)

    def note(self, reason: str, n: int = 1) -> None:
        self.notes[reason] += n

    def flush_warnings(self) -> None:
        for reason, n in self.skipped.items():
            if n > MAX_WARNINGS_PER_REASON:
                print(f"warning: [{self.source}] ... {n - MAX_WARNINGS_PER_REASON} more skipped: {reason}",
                      file=self.stream)


def summarize(stats: Stats, samples: Sequence[dict], out: str) -> str:
    """The summary printed after a build: what was written, the input, and every skip / change with its reason."""
    images = {s.get("image") for s in samples if s.get("image")}
    regions = sum(len(s.get("regions") or ()) for s in samples)
    turns = sum(1 for s in samples for t in s.get("conversations", ()) if t.get("from") == "human")
    lines = [f"[{stats.source}] wrote {len(samples)} samples to {out}: {len(images)} images, {regions} regions, "
             f"{turns} turns"]
    lines += [f"  input   {k}: {v}" for k, v in stats.info.items()]
    lines += [f"  skipped {k}: {v}" for k, v in stats.skipped.items()]
    lines += [f"  note    {k}: {v}" for k, v in stats.notes.items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Regions
# ----------------------------------------------------------------------------------------------------------------------
def box_region(bbox: Any, size: Optional[Tuple[int, int]], stats: Stats, item: str) -> Optional[List[float]]:
    """A COCO ``[x, y, w, h]`` box checked against the image ``size = (width, height)`` (when known).

    Returns the box (clipped to the image when it sticks out by more than the geometry's 1 px tolerance, counted as a
    note) or ``None`` after counting a skip: not 4 finite numbers, ``w`` or ``h`` <= 0, or no area inside the image."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        stats.skip("malformed bbox", item, f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        return None
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        stats.skip("degenerate box (w or h <= 0)", item, f"degenerate box [x, y, w, h] = {list(bbox)}")
        return None
    if size is None:
        return list(bbox)
    width, height = size
    tol = BOX_TOLERANCE_PX
    if x >= -tol and y >= -tol and x + w <= width + tol and y + h <= height + tol:
        return list(bbox)
    x1, y1 = max(x, 0), max(y, 0)
    x2, y2 = min(x + w, width), min(y + h, height)
    if x2 <= x1 or y2 <= y1:
        stats.skip("box outside the image", item, f"box {list(bbox)} has no area inside the {width}x{height} image")
        return None
    stats.note("boxes clipped to the image")
    return [x1, y1, x2 - x1, y2 - y1]


def _polygon_area(coords: Sequence[float]) -> float:
    xs, ys = coords[0::2], coords[1::2]
    n = len(xs)
    return abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))) / 2.0


def _check_segmentation(seg: Any, size: Optional[Tuple[int, int]], bbox: List[float],
                        area: Any = None) -> Tuple[Any, str]:
    """``(normalised segmentation, "")`` or ``(None, problem)``; ``problem`` starts with the skip reason."""
    if isinstance(seg, dict):
        counts, rle_size = seg.get("counts"), seg.get("size")
        if not (isinstance(rle_size, (list, tuple)) and len(rle_size) == 2 and all(_is_number(v) for v in rle_size)):
            return None, f"malformed segmentation: RLE 'size' must be [height, width], got {rle_size!r}"
        h, w = int(rle_size[0]), int(rle_size[1])
        if size is not None and (w, h) != tuple(size):
            return None, (f"malformed segmentation: RLE size [h, w] = [{h}, {w}] does not match the image "
                          f"({size[0]}x{size[1]})")
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != h * w:
                return None, "malformed segmentation: uncompressed RLE counts must be non-negative ints summing to h*w"
            if not any(counts[1::2]):
                return None, "empty segmentation: the RLE has no foreground pixel"
        elif isinstance(counts, str):
            from pycocotools import mask as mask_utils
            try:
                pixels = int(mask_utils.area({"size": [h, w], "counts": counts.encode("ascii")}))
            except Exception as e:  # corrupt strings raise assorted errors
                return None, f"malformed segmentation: cannot decode the RLE counts ({e})"
            if pixels == 0:
                return None, "empty segmentation: the RLE has no foreground pixel"
        else:
            return None, "malformed segmentation: RLE 'counts' must be a string or a list of ints"
        return dict(seg), ""
    if not isinstance(seg, list):
        return None, f"malformed segmentation: expected a polygon list or an RLE dict, got {type(seg).__name__}"
    polys = [seg] if seg and not isinstance(seg[0], list) else seg
    clean = []
    for k, poly in enumerate(polys):
        if not isinstance(poly, list) or not _all_numbers(poly):
            return None, f"malformed segmentation: polygon {k} must be a list of finite x,y numbers"
        if len(poly) % 2:
            return None, f"malformed segmentation: polygon {k} has an odd number of coordinates ({len(poly)})"
        if len(poly) < 6:
            return None, f"malformed segmentation: polygon {k} has {len(poly) // 2} points, need at least 3"
        if size is not None:
            tol = BOX_TOLERANCE_PX
            xs, ys = poly[0::2], poly[1::2]
            if min(xs) < -tol or min(ys) < -tol or max(xs) > size[0] + tol or max(ys) > size[1] + tol:
                return None, (f"segmentation outside the image: polygon {k} extends beyond the {size[0]}x{size[1]} "
                              f"image by more than {BOX_TOLERANCE_PX:g} px")
        clean.append(list(poly))
    if not clean:
        return None, "malformed segmentation: empty polygon list"
    # A tiny or sliver polygon can rasterise to no pixel at all, which the model's mask pooling rejects. Rasterising
    # every polygon costs ~0.2 ms each (minutes on LVIS), so only suspicious ones are rasterised (pycocotools, the
    # same rasterisation rgpt_llava.geometry uses): a box side under 4 px, or a small area (the annotation's own
    # 'area', which COCO and LVIS compute from the mask, else the polygons' shoelace area).
    if not _is_number(area):
        area = sum(_polygon_area(p) for p in clean)
    small = min(bbox[2], bbox[3]) < 4.0 or area < 16.0
    if small and size is not None:
        from pycocotools import mask as mask_utils
        rle = mask_utils.merge(mask_utils.frPyObjects(clean, int(size[1]), int(size[0])))
        if int(mask_utils.area(rle)) == 0:
            return None, "empty segmentation: the polygon covers no pixel"
    return clean, ""


def coco_region(ann: dict, size: Optional[Tuple[int, int]], stats: Stats, item: str,
                boxes_only: bool = False) -> Optional[dict]:
    """The region of a COCO-style annotation: ``{"bbox": [x, y, w, h]}`` plus ``"segmentation"`` (polygons or RLE)
    when present and ``boxes_only`` is false; ``None`` (counted skip with a warning) when the box or segmentation is
    unusable. The box is always required: every source has one, and the loader can fall back to it
    (``region_box_prob``). Polygons are checked for emptiness only when the image size is known."""
    bbox = box_region(ann.get("bbox"), size, stats, item)
    if bbox is None:
        return None
    region = {"bbox": bbox}
    seg = ann.get("segmentation")
    if not boxes_only and seg not in (None, [], {}):
        clean, problem = _check_segmentation(seg, size, bbox, ann.get("area"))
        if clean is None:
            reason = problem.split(":", 1)[0]
            stats.skip(reason, item, problem)
            return None
        region["segmentation"] = clean
    return region


# ----------------------------------------------------------------------------------------------------------------------
# Conversations
# ----------------------------------------------------------------------------------------------------------------------
class Conversation:
    """One image's multi-turn conversation under construction.

    ``region(key, region)`` registers a region (once per ``key``) and returns its ``<regionN>`` placeholder: regions
    are numbered in the order they are registered, so registering them in order of first mention numbers them as
    they appear."""

    def __init__(self):
        self.regions: List[dict] = []
        self._numbers: Dict[Any, int] = {}
        self.turns: List[Tuple[str, str]] = []

    def region(self, key: Any, region: dict) -> str:
        if key not in self._numbers:
            self.regions.append(region)
            self._numbers[key] = len(self.regions)
        return f"<region{self._numbers[key]}>"

    def ask(self, question: str, answer: str) -> None:
        self.turns.append((question, answer))

    def sample(self, sample_id: str, image: str, size: Optional[Tuple[int, int]] = None) -> dict:
        """The LLaVA sample: the first human turn starts with ``"<image>\\n"``; checked with :func:`check_sample`."""
        if not self.turns:
            raise ValueError(f"sample {sample_id}: no turns")
        conversations = []
        for i, (question, answer) in enumerate(self.turns):
            conversations.append({"from": "human", "value": (IMAGE_PREFIX + question) if i == 0 else question})
            conversations.append({"from": "gpt", "value": answer})
        sample = {"id": sample_id, "image": image}
        if size is not None:
            sample["width"], sample["height"] = int(size[0]), int(size[1])
        sample["conversations"] = conversations
        sample["regions"] = self.regions
        problem = check_sample(sample)
        if problem:  # a converter bug, not an input problem: never write a misaligned sample
            raise AssertionError(f"sample {sample_id}: {problem}")
        return sample


def check_sample(sample: Any) -> str:
    """``""`` if ``sample`` is a valid LLaVA / RGPT sample, else the problem.

    LLaVA samples: a dict with a non-empty ``conversations`` list of ``{"from": "human" | "gpt", "value": str}``,
    ``image`` a string when present. With ``regions`` (RGPT): an ``image``, a list of dicts each holding ``bbox`` or
    ``segmentation``, every region referenced by a ``<region>`` / ``<regionN>`` placeholder in the human turns,
    none in the answers. Without ``regions`` no placeholder may appear (the loader would have no region for it)."""
    if not isinstance(sample, dict):
        return f"a sample must be a JSON object, got {type(sample).__name__}"
    convs = sample.get("conversations")
    if not isinstance(convs, list) or not convs:
        return "no 'conversations' list (or an empty one)"
    for i, turn in enumerate(convs):
        if not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt") or not isinstance(
                turn.get("value"), str):
            return f"conversation turn {i} must be {{'from': 'human'|'gpt', 'value': str}}, got {str(turn)[:80]}"
    if "image" in sample and not isinstance(sample["image"], str):
        return f"'image' must be a string path, got {type(sample['image']).__name__}"
    for i, turn in enumerate(convs):
        if turn["from"] == "gpt" and region_references(turn["value"]):
            return f"answer turn {i} contains a region placeholder: {turn['value'][:80]!r}"
    regions = sample.get("regions")
    if regions is None:
        regions = []
    elif not isinstance(regions, list):
        return f"'regions' must be a list, got {type(regions).__name__}"
    elif regions and not isinstance(sample.get("image"), str):
        return "a sample with regions needs an 'image'"
    for k, region in enumerate(regions):
        if not isinstance(region, dict) or not ("bbox" in region or "segmentation" in region):
            return f"region {k + 1} must be a dict with 'bbox' [x, y, w, h] and/or 'segmentation'"
    human = "\n".join(t["value"] for t in convs if t["from"] == "human")
    try:
        check_region_references(human, len(regions), require_all=True)
    except ValueError as e:
        return str(e)
    return ""


# ----------------------------------------------------------------------------------------------------------------------
# COCO-style instances files (COCO, LVIS, V3Det, RefCOCOg's instances.json)
# ----------------------------------------------------------------------------------------------------------------------
class CocoIndex:
    """A COCO-style instances file, checked and indexed: ``images`` (id -> entry), ``categories`` (id -> entry),
    ``anns`` (id -> entry) and ``anns_by_image`` (image id -> annotations in file order).

    Fatal (``DataError`` naming the file and item): not a JSON object with ``images`` / ``annotations`` /
    ``categories`` lists, an entry without ``id``, duplicate ids, an annotation whose ``image_id`` or ``category_id``
    is not in the file."""

    def __init__(self, path: str, what: str = "COCO-style instances JSON", need_categories: bool = True):
        data = load_json(path, what)
        require(isinstance(data, dict), path, f"expected a JSON object with 'images', 'annotations' and 'categories' "
                                              f"({what}), got a {type(data).__name__}")
        keys = ("images", "annotations", "categories") if need_categories else ("images", "annotations")
        for key in keys:
            require(isinstance(data.get(key), list), path, f"'{key}' must be a list ({what})")
        self.path = path
        self.images = self._index(data["images"], "image")
        self.categories = self._index(data.get("categories") or [], "category")
        self.anns = self._index(data["annotations"], "annotation")
        self.anns_by_image: Dict[Any, List[dict]] = {}
        self._sizes: Dict[Any, Optional[Tuple[int, int]]] = {}
        for ann in data["annotations"]:  # hot loop (millions on LVIS / V3Det): messages built only on failure
            image_id, category_id = ann.get("image_id"), ann.get("category_id")
            if image_id not in self.images:
                raise DataError(f"{path}: annotation {ann['id']} " + (
                    f"refers to image id {image_id!r}, which is not in 'images'" if "image_id" in ann
                    else "has no 'image_id'"))
            if need_categories and category_id not in self.categories:
                raise DataError(f"{path}: annotation {ann['id']} " + (
                    f"refers to category id {category_id!r}, which is not in 'categories'" if "category_id" in ann
                    else "has no 'category_id'"))
            self.anns_by_image.setdefault(image_id, []).append(ann)

    def _index(self, items: list, what: str) -> Dict[Any, dict]:
        out: Dict[Any, dict] = {}
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "id" not in item:
                raise DataError(f"{self.path}: {what} #{i} must be an object with an 'id', got {str(item)[:80]}")
            if item["id"] in out:
                raise DataError(f"{self.path}: duplicate {what} id {item['id']!r}")
            out[item["id"]] = item
        return out

    def size(self, image_id: Any) -> Optional[Tuple[int, int]]:
        """``(width, height)`` of the image when the file has them (positive numbers), else ``None``."""
        if image_id not in self._sizes:
            img = self.images[image_id]
            w, h = img.get("width"), img.get("height")
            size = None
            if _is_number(w) and _is_number(h):
                require(w > 0 and h > 0, self.path, f"image {image_id} has a non-positive size {w}x{h}")
                size = (int(w), int(h))
            self._sizes[image_id] = size
        return self._sizes[image_id]

    def file_name(self, image_id: Any) -> str:
        """The image's path relative to the dataset's image root: ``file_name`` (COCO, V3Det, RefCOCOg), else the last
        two parts of ``coco_url`` (LVIS v1 has only the URL: ``train2017/000000391895.jpg``, ``val2017/...``)."""
        img = self.images[image_id]
        name = img.get("file_name")
        if isinstance(name, str) and name:
            return name
        url = img.get("coco_url") or img.get("url")
        if isinstance(url, str) and url.count("/") >= 2:
            return "/".join(url.rstrip("/").split("/")[-2:])
        raise DataError(f"{self.path}: image {image_id} has neither 'file_name' nor 'coco_url'")



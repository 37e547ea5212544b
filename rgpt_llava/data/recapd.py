"""RecapD-style detailed region captions (paper Sec. 3.3) -> detailed-description conversations (Table 22).

The rows are JSON Lines, one region caption per line, as the captioning pipeline (``rgpt_llava.data.recap``, docs/RECAPD.md)
will write them; ``docs/DATA.md`` is the reference::

    {"image": "coco/train2017/000000000009.jpg",  required: image path relative to the image folder
     "bbox": [x, y, w, h],                         required: COCO order, original pixels
     "caption": "A white ceramic bowl ...",         required: the detailed region caption (stage-2 output)
     "image_id": 9,                                 optional: groups rows per image (default: the "image" path)
     "width": 640, "height": 480,                   optional, recommended: the region is checked against them
     "segmentation": [[...]] | {"size", "counts"},  optional: the region's mask (polygons or RLE)
     "ann_id": 1038967,                             optional: source annotation id (duplicates are merged by it)
     "category": "bowl",                            optional: class name given to the captioner
     "clip_score": 0.31,                            optional: caption / region CLIP similarity, for --min-clip-score
     "global_caption": "...",                       optional: the stage-1 image caption used as context
     "prompt_variant": 0,                           optional: which captioning prompt produced the caption
     "source": "coco", "model": "llava-v1.5-13b"}   optional: provenance

Rows are grouped per image; an image's regions are shuffled (seeded) and split into conversations of at most
``max_regions`` regions (detailed captions are long: 5 x ~120 tokens plus 576 image tokens fits 2048), one Table 22
prompt per region, answered with the caption.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from rgpt_llava import jsonl
from rgpt_llava.jsonl import JsonFileError
from rgpt_llava.data.common import (Conversation, DataError, Stats, coco_region, image_path, iter_progress,
                                    rng_for)
from rgpt_llava.data.instructions import fill, load_pools

REQUIRED = ("image", "bbox", "caption")


def read_rows(path: str, stats: Stats) -> List[dict]:
    """The JSONL rows; an unparsable or incomplete line is a counted skip, a file with no valid row an error."""
    def item(line: int) -> str:
        return f"{os.path.basename(path)} line {line}"

    unparsable = []

    def skip(e: JsonFileError) -> None:
        unparsable.append(e)
        stats.skip("unparsable line", item(e.line), f"not valid JSON: {e.cause}" if e.kind == jsonl.MALFORMED
                   else f"expected a JSON object, got {e.problem}")
    try:
        records = jsonl.read_records(path, jsonl=True, skip=skip)
    except JsonFileError as e:
        raise DataError(f"{path}: file not found (RecapD JSONL rows)" if e.kind == jsonl.MISSING else str(e)) from None
    lines = len(records) + len(unparsable)
    rows = []
    for where, row in records:
        line = int(where.split()[1])
        missing = [k for k in REQUIRED if k not in row]
        if missing or not isinstance(row["image"], str) or not isinstance(row["caption"], str) \
                or not row["caption"].strip():
            stats.skip("row missing a required field", item(line),
                       f"missing {missing}" if missing else "'image' and 'caption' must be non-empty strings")
            continue
        row["_item"] = item(line)
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no valid RecapD row in {lines} non-empty line(s); expected JSON Lines with "
                        f"{list(REQUIRED)} (see docs/DATA.md)")
    stats.info["rows"] = lines
    return rows


def _size(row: dict) -> Optional[tuple]:
    w, h = row.get("width"), row.get("height")
    if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0:
        return int(w), int(h)
    return None


def convert(path: str, image_prefix: str = "", seed: int = 0, max_regions: int = 5,
            min_clip_score: Optional[float] = None, boxes_only: bool = False,
            stats: Optional[Stats] = None) -> List[dict]:
    if max_regions < 0:
        raise ValueError("--max-regions must be >= 0 (0 means no limit)")
    stats = stats or Stats("recapd")
    pools = load_pools()
    groups: Dict[Any, Dict[Any, dict]] = {}
    images: Dict[Any, tuple] = {}
    for row in read_rows(path, stats):
        item = row.pop("_item")
        if min_clip_score is not None:
            score = row.get("clip_score")
            if not isinstance(score, (int, float)) or score < min_clip_score:
                stats.note(f"rows below --min-clip-score {min_clip_score:g} (or without clip_score)")
                continue
        key = row.get("image_id", row["image"])
        size = _size(row)
        if key in images and images[key] != (row["image"], size):
            raise DataError(f"{path}: {item}: image {key!r} is {row['image']!r} with size {size} here but "
                            f"{images[key][0]!r} with size {images[key][1]} in an earlier row")
        images[key] = (row["image"], size)
        region = coco_region(row, size, stats, item, boxes_only)
        if region is None:
            continue
        for meta in ("ann_id", "category"):
            if row.get(meta) is not None:
                region[meta] = row[meta]
        entry = (region, row["caption"].strip(), row.get("clip_score"))
        regions = groups.setdefault(key, {})
        rkey = ("ann", row["ann_id"]) if row.get("ann_id") is not None else ("row", item)
        if rkey in regions:
            stats.note("duplicate rows (same image and ann_id): kept the highest clip_score")
            old = regions[rkey][2]
            if not (isinstance(entry[2], (int, float)) and (old is None or entry[2] > old)):
                continue
        regions[rkey] = entry

    samples = []
    for key in iter_progress(groups, "recapd: images"):
        rng = rng_for(seed, "recapd", "image", key)
        entries = list(groups[key].values())
        rng.shuffle(entries)
        step = max_regions or len(entries)
        chunks = [entries[i:i + step] for i in range(0, len(entries), step)]
        rel, size = images[key]
        for k, chunk in enumerate(chunks):
            conv = Conversation()
            for i, (region, caption, _) in enumerate(chunk):
                conv.ask(fill(pools.sample("detailed_description", rng), [conv.region(i, region)]), caption)
            sid = f"recapd_{key}" + (f"_{k}" if len(chunks) > 1 else "")
            samples.append(conv.sample(sid, image_path(image_prefix, rel), size))
    return samples

"""COCO / LVIS / V3Det instances JSON -> region classification conversations (paper Sec. 3.2, supplementary A.2).

Per-category sampling (A.2): "random selection across all annotations for each category, retaining a target number of
annotations per category. Images with no annotations selected are discarded." Targets (Tables 9, 10): V3Det 100 per
class (pre-training) and 10 (fine-tuning), COCO and LVIS 20. Each category draws from its own seeded stream
(``rng_for(seed, source, "category", category_id)``), so its selection does not depend on the other categories.

All selected regions of one image become ONE conversation (A.2), one region per turn (Table 13 "multi-turn for all
RoIs", the mode that worked best in Table 11), in a seeded random order. Question: a Table 24 prompt plus the Table 1
suffix "Answer the question using {vocab} category names." (on the first turn by default, as Table 13 shows it).
Answer: the category name as the file spells it (COCO: ``tv``, ``hair drier``), underscores read as spaces (LVIS:
``bow_(weapon)`` -> ``bow (weapon)``); case is kept, scorers compare case-insensitively.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from rgpt_llava.data.common import (CocoIndex, Conversation, DataError, Stats, coco_region, image_path,
                                    iter_progress, rng_for)
from rgpt_llava.data.instructions import category_suffix, fill, load_pools, region_list

SOURCES = ("coco", "lvis", "v3det")
# Tables 9 / 10 and the paper's "Data Processing" paragraph. V3Det: 100 for stage 1, pass --per-category 10 for
# stage 2.
DEFAULT_PER_CATEGORY = {"coco": 20, "lvis": 20, "v3det": 100}
DEFAULT_VOCAB = {"coco": "COCO-80", "lvis": "LVIS", "v3det": "V3Det"}
DIALOGUE_MODES = ("multi_turn", "one_turn_all", "one_turn_each")
SUFFIX_MODES = ("first", "every", "none")


def category_names(index: CocoIndex, keep_underscores: bool = False) -> Dict[Any, str]:
    """Category id -> answer text (``name``, underscores as spaces unless ``keep_underscores``)."""
    names = {}
    for cid, cat in index.categories.items():
        name = cat.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{index.path}: category {cid!r} has no 'name'")
        names[cid] = " ".join((name if keep_underscores else name.replace("_", " ")).split())
    return names


def convert(path: str, source: str = "coco", image_prefix: str = "", seed: int = 0,
            per_category: Optional[int] = None, vocab: Optional[str] = None, suffix: str = "first",
            dialogue_mode: str = "multi_turn", max_regions: int = 30, boxes_only: bool = False,
            keep_underscores: bool = False, stats: Optional[Stats] = None) -> List[dict]:
    """Samples for one COCO-style instances file. ``per_category``: annotations kept per category (``0``: all;
    default from the paper per ``source``). ``max_regions``: regions per conversation; an image with more selected
    regions is split into several samples (``0``: no limit). ``suffix``: where the task-guided suffix goes
    (``first`` turn, ``every`` turn, ``none``)."""
    if source not in SOURCES:
        raise ValueError(f"unknown COCO-style source {source!r}; expected one of {SOURCES}")
    if dialogue_mode not in DIALOGUE_MODES:
        raise ValueError(f"unknown dialogue mode {dialogue_mode!r}; expected one of {DIALOGUE_MODES}")
    if suffix not in SUFFIX_MODES:
        raise ValueError(f"unknown suffix mode {suffix!r}; expected one of {SUFFIX_MODES}")
    per_category = DEFAULT_PER_CATEGORY[source] if per_category is None else per_category
    if per_category < 0 or max_regions < 0:
        raise ValueError("--per-category and --max-regions must be >= 0 (0 means no limit)")
    stats = stats or Stats(source)
    pools = load_pools()
    guide = category_suffix(vocab or DEFAULT_VOCAB[source], pools)

    index = CocoIndex(path, f"{source} instances JSON")
    names = category_names(index, keep_underscores)
    stats.info["images"] = len(index.images)
    stats.info["annotations"] = len(index.anns)
    stats.info["categories"] = len(index.categories)

    # 1. Usable annotations per category, in file order (position kept to order an image's regions reproducibly).
    usable: Dict[Any, List[tuple]] = {}
    for pos, ann in enumerate(iter_progress(index.anns.values(), f"{source}: annotations", len(index.anns))):
        item = f"annotation {ann['id']} (image {ann['image_id']})"
        if ann.get("iscrowd", 0):
            stats.skip("crowd annotation", item)
            continue
        region = coco_region(ann, index.size(ann["image_id"]), stats, item, boxes_only)
        if region is None:
            continue
        cid = ann["category_id"]
        region.update(category_id=cid, category=names[cid], ann_id=ann["id"])
        usable.setdefault(cid, []).append((pos, ann["image_id"], region))

    # 2. Per-category sampling, one seeded stream per category.
    selected: Dict[Any, List[tuple]] = {}
    not_selected = 0
    for cid, cands in usable.items():
        if per_category and len(cands) > per_category:
            keep = rng_for(seed, source, "category", cid).sample(cands, per_category)
            not_selected += len(cands) - per_category
        else:
            keep = cands
        for pos, image_id, region in keep:
            selected.setdefault(image_id, []).append((pos, region))
    if not_selected:
        stats.note(f"annotations not selected ({per_category} per category)", not_selected)
    dropped = len(index.images) - len(selected)
    if dropped:
        stats.note("images dropped: no annotation selected", dropped)

    # 3. One conversation per image (split every max_regions regions), images in file order.
    samples = []
    for image_id in index.images:
        if image_id not in selected:
            continue
        rng = rng_for(seed, source, "image", image_id)
        regions = [r for _, r in sorted(selected[image_id], key=lambda t: t[0])]
        rng.shuffle(regions)
        step = max_regions or len(regions)
        chunks = [regions[i:i + step] for i in range(0, len(regions), step)]
        convs = []
        for chunk in chunks:
            convs.extend(_conversations(chunk, dialogue_mode, suffix, guide, pools, rng))
        image = image_path(image_prefix, index.file_name(image_id))
        size = index.size(image_id)
        for k, conv in enumerate(convs):
            sid = f"{source}_{image_id}" + (f"_{k}" if len(convs) > 1 else "")
            samples.append(conv.sample(sid, image, size))
    return samples


def _conversations(regions: List[dict], mode: str, suffix: str, guide: str, pools, rng) -> List[Conversation]:
    def question(placeholder: str, first: bool) -> str:
        q = fill(pools.sample("category", rng), [placeholder])
        return f"{q} {guide}" if suffix == "every" or (suffix == "first" and first) else q

    if mode == "one_turn_each":                    # Table 13 "one-turn for one RoI": one conversation per region
        convs = []
        for region in regions:
            conv = Conversation()
            conv.ask(question(conv.region(0, region), True), region["category"])
            convs.append(conv)
        return convs
    conv = Conversation()
    if mode == "one_turn_all":                     # Table 13 "one-turn for all RoIs": "Car, person, kite."
        placeholders = [conv.region(i, r) for i, r in enumerate(regions)]
        conv.ask(question(region_list(placeholders), True), ", ".join(r["category"] for r in regions))
    else:                                          # Table 13 "multi-turn for all RoIs"
        for i, region in enumerate(regions):
            conv.ask(question(conv.region(i, region), i == 0), region["category"])
    return [conv]

"""RefCOCOg (UMD split) -> brief-caption and referring-expression-comprehension (REC) conversations.

Inputs: ``refs(umd).p`` (a pickle list of refs ``{"ref_id", "ann_id", "image_id", "split", "sentences": [{"sent",
...}], "category_id", "file_name"}``; the ref's ``file_name`` names a per-ref crop and is NOT used: the image path comes
from ``instances.json``) and ``instances.json`` (COCO-style ``images`` / ``annotations``).

Per image, one conversation over all refs of the chosen split (paper A.2):

* the candidate regions are all usable annotations of the image, every ref's target kept, the others in a seeded
  random order up to ``max_candidates`` in all, then the list shuffled; regions are numbered in candidate order, so in
  a REC turn listing every candidate the answer's ``x`` is both the position in the list and the ``N`` of
  ``<regionN>``;
* caption turn per ref: a Table 21 prompt on the target, answered with one of the ref's sentences (seeded);
* REC turn per ref: a Table 25 prompt with ``<region>`` = the candidate list (``"<region1>, <region2> and
  <region3>"``) and ``<description>`` = another sentence of the ref when it has two or more (so a caption answer
  does not hand the REC question its answer verbatim), plus the Table 1 suffix; answered ``"Region [x]"``. With
  probability ``no_match_ratio`` the target is left out of the list and the answer is ``"No corresponding options
  found."`` (only when another candidate remains);
* turns in a seeded random order.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Dict, List, Optional, Sequence

from rgpt_llava.data.common import (CocoIndex, Conversation, DataError, Stats, clean_text, coco_region, image_path,
                                    iter_progress, load_json, require, rng_for)
from rgpt_llava.data.instructions import fill, load_pools, no_match_answer, rec_answer, rec_suffix, region_list

TASKS = ("caption", "rec")
REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


def load_refs(path: str) -> list:
    """The refs pickle (written by Python 2; read as ASCII, then Latin-1 for non-ASCII bytes). Pickles can run code:
    load only files from the dataset's own distribution."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found (RefCOCOg refs pickle)")
    if path.endswith(".json"):  # the same list, exported as JSON
        refs = load_json(path, "RefCOCOg refs JSON")
    else:
        refs = _load_pickle(path)
    require(isinstance(refs, list), path, f"expected a list of refs, got a {type(refs).__name__}")
    for i, ref in enumerate(refs):
        require(isinstance(ref, dict), path, f"ref #{i} must be a dict, got {type(ref).__name__}")
        missing = [k for k in REF_KEYS if k not in ref]
        require(not missing, path, f"ref #{i} (ref_id {ref.get('ref_id')!r}) lacks {missing}")
        require(isinstance(ref["sentences"], list), path, f"ref {ref['ref_id']}: 'sentences' must be a list")
    return refs


def _load_pickle(path: str):
    try:
        with open(path, "rb") as f:
            try:
                refs = pickle.load(f)
            except UnicodeDecodeError:
                f.seek(0)
                refs = pickle.load(f, encoding="latin1")
    except Exception as e:  # UnpicklingError, EOFError, ... : not a refs file
        raise DataError(f"{path}: cannot read the RefCOCOg refs pickle: {type(e).__name__}: {e}") from None
    return refs


def convert(refs_path: str, instances_path: str, split: str = "train", image_prefix: str = "", seed: int = 0,
            tasks: Sequence[str] = TASKS, max_candidates: int = 10, no_match_ratio: float = 0.1,
            boxes_only: bool = False, stats: Optional[Stats] = None) -> List[dict]:
    tasks = tuple(tasks)
    if not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"--tasks must name some of {TASKS}, got {tasks}")
    if max_candidates < 1:
        raise ValueError("--max-candidates must be >= 1")
    if not 0.0 <= no_match_ratio <= 1.0:
        raise ValueError(f"--no-match-ratio must lie in [0, 1], got {no_match_ratio}")
    stats = stats or Stats("refcocog")
    pools = load_pools()

    refs = load_refs(refs_path)
    splits: Dict[str, int] = {}
    for ref in refs:
        splits[ref["split"]] = splits.get(ref["split"], 0) + 1
    refs = [r for r in refs if r["split"] == split]
    if not refs:
        raise DataError(f"{refs_path}: no refs with split {split!r}; the file has {splits}")
    index = CocoIndex(instances_path, "RefCOCOg instances.json", need_categories=False)
    by_image: Dict[Any, List[dict]] = {}
    for ref in refs:
        rid, aid, iid = ref["ref_id"], ref["ann_id"], ref["image_id"]
        if iid not in index.images:
            raise DataError(f"{refs_path}: ref {rid} refers to image id {iid!r}, which is not in {instances_path}")
        if aid not in index.anns:
            raise DataError(f"{refs_path}: ref {rid} refers to annotation id {aid!r}, which is not in "
                            f"{instances_path}")
        if index.anns[aid]["image_id"] != iid:
            raise DataError(f"{refs_path}: ref {rid} says image {iid!r} but its annotation {aid} belongs to image "
                            f"{index.anns[aid]['image_id']!r} in {instances_path}")
        by_image.setdefault(iid, []).append(ref)
    stats.info[f"refs ({split})"] = len(refs)
    stats.info[f"images ({split})"] = len(by_image)

    samples = []
    for iid in iter_progress(by_image, "refcocog: images"):
        size = index.size(iid)
        usable: Dict[Any, dict] = {}
        for ann in index.anns_by_image[iid]:
            item = f"annotation {ann['id']} (image {iid})"
            if ann.get("iscrowd", 0):
                stats.skip("crowd annotation (not a candidate)", item)
                continue
            region = coco_region(ann, size, stats, item, boxes_only)
            if region is not None:
                region.update(ann_id=ann["id"], category_id=ann.get("category_id"))
                usable[ann["id"]] = region
        image_refs = []
        for ref in by_image[iid]:
            item = f"ref {ref['ref_id']} (image {iid})"
            sents = [clean_text(s.get("sent")) for s in ref["sentences"] if isinstance(s, dict)]
            sents = [s for s in sents if s]
            if not sents:
                stats.skip("ref without sentences", item)
            elif ref["ann_id"] not in usable:
                stats.skip("ref whose annotation is unusable", item, f"its annotation {ref['ann_id']} was skipped")
            else:
                image_refs.append((ref, sents))
        if not image_refs:
            stats.note("images dropped: no usable ref")
            continue
        samples.append(_conversation(iid, image_refs, usable, tasks, max_candidates, no_match_ratio, pools,
                                     rng_for(seed, "refcocog", "image", iid), stats)
                       .sample(f"refcocog_{iid}", image_path(image_prefix, index.file_name(iid)), size))
    return samples


def _conversation(iid, image_refs, usable, tasks, max_candidates, no_match_ratio, pools, rng, stats) -> Conversation:
    targets = list(dict.fromkeys(ref["ann_id"] for ref, _ in image_refs))
    if "rec" in tasks:
        others = [a for a in usable if a not in targets]
        rng.shuffle(others)
        if len(targets) > max_candidates:
            stats.note(f"images with more targets than --max-candidates {max_candidates} (all targets kept)")
        extra = max(0, max_candidates - len(targets))
        if len(others) > extra:
            stats.note("annotations left out of the candidates (--max-candidates)", len(others) - extra)
        candidates = targets + others[:extra]
    else:
        candidates = list(targets)
    rng.shuffle(candidates)

    # Turn specs first (which regions each turn names), text after: a region no turn names is not registered.
    specs = []
    for ref, sents in image_refs:
        picked = rng.sample(sents, min(2, len(sents)))
        target = ref["ann_id"]
        if "caption" in tasks:
            specs.append(("caption", target, [target], picked[0]))
        if "rec" in tasks:
            no_match = len(candidates) > 1 and rng.random() < no_match_ratio
            listed = [c for c in candidates if not (no_match and c == target)]
            specs.append(("rec", target, listed, picked[-1]))
    rng.shuffle(specs)
    named = {a for spec in specs for a in spec[2]}
    conv = Conversation()
    placeholder = {a: conv.region(a, usable[a]) for a in candidates if a in named}
    for kind, target, listed, sent in specs:
        if kind == "caption":
            conv.ask(fill(pools.sample("brief_caption", rng), [placeholder[target]]), sent)
        else:
            question = fill(pools.sample("rec", rng), [region_list([placeholder[a] for a in listed])],
                            description=sent.rstrip(" .") or sent)
            answer = rec_answer(listed.index(target) + 1, pools) if target in listed else no_match_answer(pools)
            conv.ask(f"{question} {rec_suffix(pools)}", answer)
            stats.note("REC turns with no match" if target not in listed else "REC turns with a match")
    return conv

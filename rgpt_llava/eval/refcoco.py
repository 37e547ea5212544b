"""Reading RefCOCO / RefCOCO+ / RefCOCOg annotations (``refs(umd).p`` of the refer toolkit + COCO instances).

``refs(umd).p`` is a pickled list of refs ``{"ref_id", "ann_id", "image_id", "split", "category_id",
"sentences": [{"sent_id", "sent", "raw", "tokens"}, ...]}``; the same list as JSON (``.json``) is read too. Pickles
can run code when loaded: only load files you trust (the official release).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from rgpt_llava.eval.common import EvalInputError


def load_refs(path: str) -> List[dict]:
    """The refs list, read and checked by the training data's reader (one reader for both)."""
    from rgpt_llava.data.common import DataError
    from rgpt_llava.data.refcocog import load_refs as read_refs
    try:
        return read_refs(path)
    except DataError as e:
        raise EvalInputError(f"refs file {e}") from None


def refcoco_items(refs: List[dict], split: str, instances: Optional[dict] = None) -> List[Dict[str, Any]]:
    """The refs of ``split`` as ``{"ref_id", "ann_id", "image_id", "category_id", "sentences": [{"sent_id",
    "sent"}], "bbox"?, "file_name"?}`` (box and file name when ``instances`` is given)."""
    anns = {a["id"]: a for a in instances["annotations"]} if instances else {}
    imgs = {i["id"]: i for i in instances["images"]} if instances else {}
    out = []
    for i, r in enumerate(refs):
        if r.get("split") != split:
            continue
        for key in ("ref_id", "ann_id", "image_id", "sentences"):
            if key not in r:
                raise EvalInputError(f"refs[{i}]: missing field '{key}'")
        item = {"ref_id": r["ref_id"], "ann_id": r["ann_id"], "image_id": r["image_id"],
                "category_id": r.get("category_id"),
                "sentences": [{"sent_id": s["sent_id"], "sent": s.get("sent", s.get("raw", ""))}
                              for s in r["sentences"]]}
        if instances is not None:
            if r["ann_id"] not in anns:
                raise EvalInputError(f"ref {r['ref_id']}: ann_id {r['ann_id']} is not in the instances file")
            item["bbox"] = list(anns[r["ann_id"]]["bbox"])
            if r["image_id"] in imgs:
                item["file_name"] = imgs[r["image_id"]].get("file_name")
        out.append(item)
    if not out:
        splits = sorted({str(r.get("split")) for r in refs})
        raise EvalInputError(f"no refs in split {split!r} (splits present: {', '.join(splits)})")
    return out

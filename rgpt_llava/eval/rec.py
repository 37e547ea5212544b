"""Referring expression comprehension among candidate regions (paper Sec. 4.2, Table 5: RefCOCOg umd val / test).

The model sees candidate boxes as ``<region1> ... <regionN>`` and an expression, and answers with the template
``Region [x]`` (or ``No corresponding options found.``). An answer is correct when candidate ``x`` (1-based) has
IoU >= 0.5 with the ground-truth box.

Candidate sets (``build``): the detector proposals of the image (the paper uses Co-DETR [61]; any COCO-style
detection results JSON ``[{"image_id", "bbox": [x, y, w, h], "score"}, ...]``), in descending score order (ties
keep file order), optionally only those with ``score >= --min-score`` and at most ``--max-candidates``. When no
kept proposal has IoU >= 0.5 with the ground-truth box, the ground-truth box is added (the paper's rule); under a cap
it replaces the lowest-scoring proposal. Where it goes (``--gt-position``): ``hash`` (default) — at index
``sha256("<ann_id>") mod (n + 1)`` of the n kept proposals, deterministic but not at a fixed place, so a model's
preference for the first or last option cannot inflate the score; ``end`` — appended; ``start`` — prepended.

Questions (``--annotation-file``, JSONL, written by ``build``), one per expression::

    {"question_id": <sent_id>, "ref_id", "ann_id", "image_id", "file_name", "expression",
     "gt_bbox": [x, y, w, h], "candidates": [[x, y, w, h], ...], "gt_added": bool}

Answers (``--result-file``, JSONL): ``{"question_id": ..., "text": "Region [2]"}``. If an answer also carries
``candidates`` / ``gt_bbox`` they must equal the question's (catches misaligned files). Without
``--annotation-file`` the answers themselves must carry ``candidates`` and ``gt_bbox``.

Parsing (case-insensitive, text around is ignored): ``Region [x]``, ``region [x]``, ``Region x``, ``Region #x``,
``Region [x] .``, ``<regionx>``, ``<region x>``, or an answer that is only ``x`` / ``[x]``; ``No corresponding
options found`` is a no-match answer (wrong: the candidates always hold a match). Two different region numbers are
*ambiguous*; anything else is *unparseable*; an index outside 1..N is *out of range*. All three count as wrong and
are reported with counts and examples.

CLI::

    python -m rgpt_llava.eval.rec --annotation-file questions.jsonl --result-file answers.jsonl [--out m.json]
    python -m rgpt_llava.eval.rec build --refs "refs(umd).p" --instances instances.json --split val \\
        --proposals codetr_dets.json --out refcocog_val_rec.jsonl [--max-candidates K] [--min-score S]
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from rgpt_llava.paths import parse_args_checked
from rgpt_llava.eval.common import (answer_text, EvalInputError, id_key, index_by_id, match_ids,
                                    print_table, read_json, read_rows, require, run_cli, write_json)

IOU_THRESHOLD = 0.5
_REGION = re.compile(r"\bregion\s*(?:\[\s*(\d+)\s*\]|#?\s*(\d+)(?!\d))", re.IGNORECASE)
_BARE = re.compile(r"^\W*\[?\s*(\d+)\s*\]?\W*$")
_NO_MATCH = re.compile(r"\bno\s+corresponding\s+options?\b", re.IGNORECASE)


def parse_answer(text: str) -> Tuple[str, Optional[int]]:
    """``("region", x)`` (1-based), ``("none", None)`` for "No corresponding options found.",
    ``("ambiguous", None)`` or ``("unparseable", None)``."""
    nums = {int(a or b) for a, b in _REGION.findall(text)}
    if not nums:
        m = _BARE.match(text)
        if m:
            nums = {int(m.group(1))}
    no_match = bool(_NO_MATCH.search(text))
    if len(nums) > 1 or (nums and no_match):
        return "ambiguous", None
    if nums:
        return "region", next(iter(nums))
    if no_match:
        return "none", None
    return "unparseable", None


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``[x, y, w, h]`` boxes (continuous coordinates, as COCO)."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _box(value: Any, where: str) -> List[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 4 or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise EvalInputError(f"{where}: a box must be 4 finite numbers [x, y, w, h], got {value!r}")
    if value[2] < 0 or value[3] < 0:
        raise EvalInputError(f"{where}: box {list(value)} has a negative width or height")
    return [float(v) for v in value]


def _boxes(value: Any, where: str) -> List[List[float]]:
    if not isinstance(value, list) or not value:
        raise EvalInputError(f"{where}: 'candidates' must be a non-empty list of [x, y, w, h] boxes")
    return [_box(b, f"{where}: candidates[{i}]") for i, b in enumerate(value)]


# ---------------------------------------------------------------------------------------------------------------------
# candidate sets
# ---------------------------------------------------------------------------------------------------------------------
def gt_insert_position(key: Any, n: int, mode: str = "hash") -> int:
    """Where the added ground-truth box goes among ``n`` kept proposals."""
    if mode == "end":
        return n
    if mode == "start":
        return 0
    if mode == "hash":
        return int(hashlib.sha256(str(key).encode()).hexdigest(), 16) % (n + 1)
    raise ValueError(f"gt position must be hash, end or start, got {mode!r}")


def build_candidates(gt_bbox: Sequence[float], proposals: Sequence[Union[dict, Sequence[float]]], key: Any = "",
                     max_candidates: Optional[int] = None, min_score: Optional[float] = None,
                     gt_position: str = "hash", iou_threshold: float = IOU_THRESHOLD) -> Tuple[List[List[float]], bool]:
    """``(candidates, gt_added)``: the proposals (dicts with ``bbox`` and optional ``score``, or bare boxes) by
    descending score (stable), filtered by ``min_score``, at most ``max_candidates``; the ground-truth box is
    added when none of them has IoU >= ``iou_threshold`` with it (replacing the last one under the cap), at
    :func:`gt_insert_position` (``key``: the ground-truth region's id)."""
    if max_candidates is not None and max_candidates < 1:
        raise ValueError("max_candidates must be >= 1")
    gt = _box(gt_bbox, "gt_bbox")
    items = []
    for i, p in enumerate(proposals):
        box, score = (p.get("bbox"), p.get("score")) if isinstance(p, dict) else (p, None)
        box = _box(box, f"proposal {i}")
        if box[2] <= 0 or box[3] <= 0:
            continue
        if min_score is not None and (score is None or score < min_score):
            continue
        items.append((-(score if score is not None else 0.0), i, box))
    items.sort(key=lambda t: (t[0], t[1]))
    cands = [b for _, _, b in items]
    if max_candidates is not None:
        cands = cands[:max_candidates]
    if any(iou(c, gt) >= iou_threshold for c in cands):
        return cands, False
    if max_candidates is not None and len(cands) >= max_candidates:
        cands = cands[:max_candidates - 1]
    pos = gt_insert_position(key, len(cands), gt_position)
    return cands[:pos] + [gt] + cands[pos:], True


def proposals_by_image(path_or_list: Union[str, list]) -> Dict[str, List[dict]]:
    data = read_json(path_or_list, "proposals file") if isinstance(path_or_list, str) else path_or_list
    if isinstance(data, dict) and "annotations" in data:   # a COCO-style file holding detections as annotations
        data = data["annotations"]
    if not isinstance(data, list):
        raise EvalInputError("proposals: expected a COCO-style detection results list [{image_id, bbox, score}]")
    out: Dict[str, List[dict]] = collections.defaultdict(list)
    for i, d in enumerate(data):
        where = f"proposals[{i}]"
        if not isinstance(d, dict):
            raise EvalInputError(f"{where}: expected an object")
        out[id_key(require(d, "image_id", where), f"{where}: image_")].append(
            {"bbox": _box(require(d, "bbox", where), where), "score": d.get("score")})
    return out


def build_questions(items: List[dict], proposals: Dict[str, List[dict]], **kw) -> List[dict]:
    """One question per expression of each ref item (see :func:`rgpt_llava.eval.refcoco.refcoco_items`)."""
    out = []
    for it in items:
        cands, added = build_candidates(it["bbox"], proposals.get(id_key(it["image_id"]), []), key=it["ann_id"], **kw)
        for s in it["sentences"]:
            out.append({"question_id": s["sent_id"], "ref_id": it["ref_id"], "ann_id": it["ann_id"],
                        "image_id": it["image_id"], "file_name": it.get("file_name"), "expression": s["sent"],
                        "gt_bbox": it["bbox"], "candidates": cands, "gt_added": added})
    return out


# ---------------------------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------------------------
def _same_boxes(a: List[List[float]], b: List[List[float]]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-3 for p, q in zip(a, b) for x, y in zip(p, q))


def evaluate(annotation_file: Union[None, str, List[dict]], answers: Union[str, List[dict]],
             allow_missing: bool = False, iou_threshold: float = IOU_THRESHOLD, examples: int = 5) -> Dict[str, Any]:
    rows = read_rows(answers, "result file") if isinstance(answers, str) else \
        [(f"answer {i}", a) for i, a in enumerate(answers)]
    by_id = index_by_id(rows, "question_id", "answer")
    where_of = {id_key(a["question_id"]): w for w, a in rows}
    if annotation_file is None:
        questions = {k: (where_of[k], a) for k, a in by_id.items()}
        ids, missing = list(by_id), []
    else:
        qrows = read_rows(annotation_file, "question file") if isinstance(annotation_file, str) else \
            [(f"question {i}", q) for i, q in enumerate(annotation_file)]
        qs = index_by_id(qrows, "question_id", "question")
        qwhere = {id_key(q["question_id"]): w for w, q in qrows}
        questions = {k: (qwhere[k], q) for k, q in qs.items()}
        ids, missing = match_ids(qs, by_id, "question file", "answers", allow_missing)
    if not ids:
        raise EvalInputError("no answers to score")

    kinds: Dict[str, int] = collections.Counter()
    bad: Dict[str, List[dict]] = collections.defaultdict(list)
    correct = oracle = total_cands = gt_added = 0
    for k in ids:
        qw, q = questions[k]
        a, aw = by_id[k], where_of[k]
        gt = _box(require(q, "gt_bbox", qw), f"{qw}: gt_bbox")
        cands = _boxes(require(q, "candidates", qw), qw)
        if annotation_file is not None:
            if "candidates" in a and not _same_boxes(_boxes(a["candidates"], aw), cands):
                raise EvalInputError(f"{aw}: the answer's candidates differ from question {q['question_id']!r}'s "
                                     f"(answers misaligned?)")
            if "gt_bbox" in a and not _same_boxes([_box(a["gt_bbox"], f"{aw}: gt_bbox")], [gt]):
                raise EvalInputError(f"{aw}: the answer's gt_bbox differs from question {q['question_id']!r}'s "
                                     f"(answers misaligned?)")
        text = answer_text(a, aw)
        kind, x = parse_answer(text)
        if kind == "region" and not 1 <= x <= len(cands):
            kind = "out_of_range"
        kinds[kind] += 1
        if kind in ("unparseable", "ambiguous", "out_of_range") and len(bad[kind]) < examples:
            bad[kind].append({"question_id": a["question_id"], "text": text, "num_candidates": len(cands)})
        if kind == "region" and iou(cands[x - 1], gt) >= iou_threshold:
            correct += 1
        oracle += any(iou(c, gt) >= iou_threshold for c in cands)
        total_cands += len(cands)
        gt_added += bool(q.get("gt_added", False))
    n = len(ids)
    return {"benchmark": "referring_expression_comprehension", "num_questions": n, "num_missing": len(missing),
            "missing_ids": [questions[k][1]["question_id"] for k in missing[:10]],
            "accuracy": 100.0 * correct / n, "num_correct": correct,
            "num_parsed": kinds["region"], "num_no_match": kinds["none"], "num_unparseable": kinds["unparseable"],
            "num_ambiguous": kinds["ambiguous"], "num_out_of_range": kinds["out_of_range"],
            "examples": {k: v for k, v in bad.items()},
            "oracle_accuracy": 100.0 * oracle / n, "mean_candidates": total_cands / n,
            "num_gt_added": gt_added, "iou_threshold": iou_threshold}


def build_main(argv: Sequence[str]) -> int:
    from rgpt_llava.eval.refcoco import load_refs, refcoco_items
    ap = argparse.ArgumentParser(prog="python -m rgpt_llava.eval.rec build",
                                 description="REC questions with candidate boxes (proposals + the GT rule)")
    ap.add_argument("--refs", required=True, help="refs(umd).p (or the same list as .json)")
    ap.add_argument("--instances", required=True, help="COCO instances JSON (train2014 for RefCOCOg)")
    ap.add_argument("--split", required=True, help="val / test (umd)")
    ap.add_argument("--proposals", required=True, help="COCO-style detection results JSON")
    ap.add_argument("--out", required=True, help="questions JSONL")
    ap.add_argument("--max-candidates", type=int)
    ap.add_argument("--min-score", type=float)
    ap.add_argument("--gt-position", choices=("hash", "end", "start"), default="hash")
    args = parse_args_checked(ap, argv, ("out",))
    items = refcoco_items(load_refs(args.refs), args.split, read_json(args.instances, "instances file"))
    qs = build_questions(items, proposals_by_image(args.proposals), max_candidates=args.max_candidates,
                         min_score=args.min_score, gt_position=args.gt_position)
    with open(args.out, "w", encoding="utf-8") as f:
        for q in qs:
            f.write(json.dumps(q) + "\n")
    n_add = sum(q["gt_added"] for q in qs)
    mean = sum(len(q["candidates"]) for q in qs) / max(1, len(qs))
    print(f"{len(qs)} questions ({len(items)} refs), {mean:.1f} candidates on average, ground truth added to "
          f"{n_add} -> {args.out}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build"]:
        return build_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m rgpt_llava.eval.rec", description=__doc__.split("\n\n")[0])
    ap.add_argument("--annotation-file", help="questions JSONL from `build` (omit if answers carry candidates)")
    ap.add_argument("--result-file", required=True, help="answers JSONL {question_id, text}")
    ap.add_argument("--out", help="write the metrics as JSON here")
    ap.add_argument("--allow-missing", action="store_true", help="score the answered subset, report the rest")
    args = parse_args_checked(ap, argv, ("out",))
    res = evaluate(args.annotation_file, args.result_file, args.allow_missing)
    rows = [("questions", res["num_questions"]), ("missing answers", res["num_missing"]),
            ("accuracy (%)", res["accuracy"]), ("parsed 'Region [x]'", res["num_parsed"]),
            ("'No corresponding options'", res["num_no_match"]), ("unparseable", res["num_unparseable"]),
            ("ambiguous", res["num_ambiguous"]), ("index out of range", res["num_out_of_range"]),
            ("oracle accuracy (%)", res["oracle_accuracy"]), ("mean candidates", res["mean_candidates"]),
            ("ground truth added", res["num_gt_added"])]
    print_table(f"REC (IoU >= {res['iou_threshold']}): {args.result_file}", rows)
    for kind, ex in res["examples"].items():
        print(f"{kind} examples: " + "; ".join(f"{e['question_id']!r}: {e['text'][:80]!r}" for e in ex))
    write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

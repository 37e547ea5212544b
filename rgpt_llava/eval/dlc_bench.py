"""DLC-Bench (Describe Anything, NVlabs/describe-anything): detailed localized descriptions judged by an LLM.

The model describes one masked region (``rgpt_llava.eval.model_dlc_bench``); a judge LLM behind any OpenAI-compatible
endpoint (OpenAI, vLLM, this project's ``rgpt_llava.serve.openai_api``) answers multiple-choice questions about each
description; each chosen option carries the benchmark's score. The protocol is the benchmark's
``evaluation/eval_model_outputs.py`` (facts carried over, code written here; docs/EVAL.md lists what was followed):

* per region (key = annotation id) the questions are a **recognition** question built from the class name ("Is it
  likely that the object in the description is a <class> or an object of a similar type? ...", Yes = correct) followed
  by the region's ``qa.json`` questions, each ``{"question", "choices": [[text, score], ...], "type": "positive" |
  "negative"}``; positives score 1 / 0.5 / 0 / -1 (right detail / part named without the detail / not mentioned /
  wrong detail), negatives 1 / 0 / -1 (not claimed / object not mentioned / claimed);
* each question is one chat request (the benchmark's prompt, temperature 0, max_tokens 300); the answer is matched to
  an option by the benchmark's rules (:func:`parse_choice`); an answer that matches no option scores 0 ("treat as no
  mention") -- here it is also **counted and listed** (``judge_out_of_format``); an unmatched recognition answer, on
  which the benchmark's script stops, counts as not recognised;
* recognition "No" caps every score of the region at 0; a region's positive score is the mean of its positives, its
  negative score the mean of its negatives (regions without negatives are left out of the negative average);
* **pos** = mean over regions of the positive scores, **neg** = mean over regions with negatives of the negative
  scores, **avg** = (pos + neg) / 2: the benchmark's "Avg(Pos, Neg)" (DAM-3B 0.670), reported x100 here.

The judge's answers are cached in ``--judgments-file`` (JSONL, one line per answer, keyed by the judge model and the
exact prompt): a rerun asks only what is not there, a changed description is asked anew.

CLI::

    python -m rgpt_llava.eval.dlc_bench --qa-file DLC-bench/qa.json --class-names DLC-bench/class_names.json \\
        --result-file answers.jsonl --judge-url http://127.0.0.1:9000/v1 --judge-model NAME \\
        --judgments-file judgments.jsonl --out metrics.json [--judge-api-key KEY]
    python -m rgpt_llava.eval.dlc_bench check-judge --judge-url URL --judge-model NAME   # fails fast, names the URL

The API key: ``--judge-api-key``, else the environment's ``JUDGE_API_KEY``, else ``OPENAI_API_KEY``, else a
placeholder (local servers ignore it).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rgpt_llava.eval.common import (EvalInputError, id_key, index_by_id, match_ids, print_table, read_json_or_jsonl,
                                    require, run_cli, write_json)
from rgpt_llava.jsonl import JsonFileError, read_resumable_jsonl
from rgpt_llava.paths import parse_args_checked

# The benchmark's judge prompt (eval_model_outputs.py, prompt_eval), verbatim.
JUDGE_PROMPT = """Answer the multiple-choice question based on the text description of an object in an image. \
You need to follow these rules:
1. Do not output any reasoning. Do not perform correction. Please output exactly one answer from the choices for \
each question. Do not repeat the question.
2. There is no need for exact matching. Please choose the closest option based on the description.

The description is:
{pred_caption}

From the description above, please answer the following question with one of the choices:
{question_text_str}
"""
JUDGE_MAX_TOKENS = 300          # eval_model_outputs.py: temperature 0, max_tokens 300, top_p 1, no penalties
LETTERS = "abcde"               # the benchmark labels at most five options A..E
RECOGNITION_CHOICES = [["Yes", "correct"], ["No", "incorrect"]]
TYPES = ("positive", "negative")


class JudgeError(EvalInputError):
    """The judge endpoint could not be used (unreachable, refused the key or the model, answered an error)."""


# ---------------------------------------------------------------------------------------------------------------------
# the questions
# ---------------------------------------------------------------------------------------------------------------------
def is_plural(name: str) -> bool:
    """The benchmark asks with ``inflect``'s ``singular_noun`` (and "bus" as singular). This is that rule on the
    benchmark's class names without the dependency: a name whose last word ends in "s" is plural ("sneakers",
    "scissors", and -- as inflect has it -- "wine glass"), "bus" is not. It reproduces all 100 recognition questions
    of DAM's published evaluation file (tests/test_dlc_bench.py); other names may differ from inflect at the edges."""
    return name != "bus" and name.split(" ")[-1].endswith("s")


_A_BEFORE_VOWEL = ("uni", "use", "usu", "uti", "ure", "uro", "ufo", "eu", "ewe", "one", "once")
_AN_BEFORE_CONSONANT = ("hour", "honest", "honor", "honour", "heir")


def with_article(name: str) -> str:
    """``inflect.engine().a(name)`` for ordinary names: "an" before a vowel sound ("an ice cream", "an orange/
    tangerine"), "a" otherwise ("a suv", as inflect reads the lower-case word)."""
    low = name.lower()
    vowel = low[:1] in "aeiou" and not low.startswith(_A_BEFORE_VOWEL) or low.startswith(_AN_BEFORE_CONSONANT)
    return f"{'an' if vowel else 'a'} {name}"


def recognition_question(class_name: str) -> dict:
    if is_plural(class_name):
        text = (f"Is it likely that the objects in the description are {class_name} or objects of a similar type? "
                f"Again, It does not have to be an exact match.")
    else:
        text = (f"Is it likely that the object in the description is {with_article(class_name)} or an object of a "
                f"similar type? Again, It does not have to be an exact match.")
    return {"question": text, "choices": RECOGNITION_CHOICES, "type": "recognition"}


def judge_prompt(description: str, q: dict) -> str:
    """One question's prompt: the question, then its options as ``A. text`` lines (the benchmark's layout)."""
    text = f"{q['question']}\n" + "".join(f"{LETTERS[i].upper()}. {c}\n" for i, (c, _) in enumerate(q["choices"]))
    return JUDGE_PROMPT.format(pred_caption=description, question_text_str=text.strip())


def _check_question(q: Any, where: str) -> dict:
    if not isinstance(q, dict):
        raise EvalInputError(f"{where}: expected a question object, got {str(q)[:100]}")
    require(q, "question", where, (str,))
    kind = require(q, "type", where, (str,))
    if kind not in TYPES:
        raise EvalInputError(f"{where}: type must be one of {TYPES}, got {kind!r}")
    choices = require(q, "choices", where, (list,))
    if not 2 <= len(choices) <= len(LETTERS):
        raise EvalInputError(f"{where}: {len(choices)} choices; the benchmark labels 2 to {len(LETTERS)} (A-E)")
    for i, c in enumerate(choices):
        if not (isinstance(c, (list, tuple)) and len(c) == 2 and isinstance(c[0], str)
                and isinstance(c[1], (int, float)) and not isinstance(c[1], bool)):
            raise EvalInputError(f"{where}, choice {i}: expected [text, score], got {c!r}")
    return q


def load_benchmark(qa_file: str, class_names_file: str) -> Dict[str, dict]:
    """``{key: {"id", "class_name", "questions": [recognition, *qa questions]}}`` in ``qa.json``'s order; every
    malformed entry is an error naming the key (and the question)."""
    qa = _read_object(qa_file, "qa file")
    names = _read_object(class_names_file, "class names file")
    out: Dict[str, dict] = {}
    for raw_key, questions in qa.items():
        where = f"qa file {qa_file}, key {raw_key!r}"
        key = id_key(raw_key, f"{where}: ")
        if not isinstance(questions, list) or not questions:
            raise EvalInputError(f"{where}: expected a non-empty list of questions")
        qs = [_check_question(q, f"{where}, question {i}") for i, q in enumerate(questions)]
        if not any(q["type"] == "positive" for q in qs):
            raise EvalInputError(f"{where}: no positive question (its positive score would be undefined)")
        if raw_key not in names:
            raise EvalInputError(f"class names file {class_names_file}: no class name for key {raw_key!r}")
        name = names[raw_key]
        if not isinstance(name, str) or not name.strip():
            raise EvalInputError(f"class names file {class_names_file}, key {raw_key!r}: expected a class name, "
                                 f"got {name!r}")
        out[key] = {"id": raw_key, "class_name": name, "questions": [recognition_question(name), *qs]}
    if not out:
        raise EvalInputError(f"qa file {qa_file}: no questions")
    return out


def _read_object(path: str, what: str) -> dict:
    kind, data = read_json_or_jsonl(path, what)
    if kind != "json" or not isinstance(data, dict):
        raise EvalInputError(f"{what} {path}: expected one JSON object {{annotation id: ...}}")
    return data


def load_predictions(path: str) -> Tuple[Dict[str, str], Dict[str, str]]:
    """``({key: description}, {key: where})`` from our answers JSONL (``{"question_id", "text"}`` per line) or from
    DAM's cache format (one JSON object ``{"<annotation id>": "description", "query": "..."}``)."""
    kind, data = read_json_or_jsonl(path, "result file")
    if kind == "json" and isinstance(data, dict) and "question_id" not in data:
        preds, where = {}, {}
        for k, v in data.items():
            if k == "query":            # DAM stores its prompt beside the answers
                continue
            w = f"result file {path}, key {k!r}"
            if not isinstance(v, str):
                raise EvalInputError(f"{w}: expected a description string, got {str(v)[:100]}")
            preds[id_key(k, f"{w}: ")] = v
            where[id_key(k)] = w
        return preds, where
    rows = [(f"result file {path}, item {i}", o) for i, o in enumerate(data if isinstance(data, list) else [data])] \
        if kind == "json" else [(f"result file {path}, line {n}", o) for n, o in data]
    for w, o in rows:
        if not isinstance(o, dict):
            raise EvalInputError(f"{w}: expected a JSON object, got {str(o)[:100]}")
    by_id = index_by_id(rows, "question_id", "answer")
    where = {id_key(o["question_id"]): w for w, o in rows}
    return {k: require(o, "text", where[k], (str,)) for k, o in by_id.items()}, where


# ---------------------------------------------------------------------------------------------------------------------
# the judge's answers
# ---------------------------------------------------------------------------------------------------------------------
def parse_choice(answer: str, choices: Sequence[str]) -> Tuple[Optional[int], str]:
    """``(option index or None, rule)``: the benchmark's ``parse_pred`` rules, in its order, on the lower-cased
    answer -- ``exact`` (the option, ``x. option`` or the letter alone), ``contains`` (exactly one option occurs in
    the answer), ``letter`` (the answer starts ``x.``), ``contains-last`` (several occur: the one starting last, the
    longest of those), ``part-of`` (the answer occurs in options: the longest), ``letter-line`` (a lone letter
    before a line break); else ``(None, "out-of-format")``. A letter past the last option is out of format (the
    benchmark's script would fail on it)."""
    pred = answer.strip().lower()
    if not pred:
        return None, "out-of-format"
    found = []
    for i, c in enumerate(choices):
        c = c.strip().lower()
        if pred in (c, f"{LETTERS[i]}. {c}", LETTERS[i]):
            return i, "exact"
        if c in pred:
            found.append((i, pred.index(c), len(c)))
    if len(found) == 1:
        return found[0][0], "contains"
    if len(pred) > 1 and pred[0] in LETTERS and pred[1] == ".":
        i = LETTERS.index(pred[0])
        return (i, "letter") if i < len(choices) else (None, "out-of-format")
    if found:
        last = max(pos for _, pos, _ in found)
        return max((f for f in found if f[1] == last), key=lambda f: f[2])[0], "contains-last"
    within = [(i, len(c.strip())) for i, c in enumerate(choices) if pred in c.strip().lower()]
    if within:
        return max(within, key=lambda w: w[1])[0], "part-of"
    if pred[0] in LETTERS and (len(pred) == 1 or pred[1] == "\n"):
        i = LETTERS.index(pred[0])
        return (i, "letter-line") if i < len(choices) else (None, "out-of-format")
    return None, "out-of-format"


def score_item(questions: Sequence[dict], responses: Sequence[str]) -> dict:
    """One region: the recognition verdict, its capped positive / negative scores (fractions, as the benchmark's
    per-region ``score_pos`` / ``score_neg``), and every answer's parse."""
    parsed = []
    for q, r in zip(questions, responses):
        index, rule = parse_choice(r, [c for c, _ in q["choices"]])
        parsed.append({"type": q["type"], "response": r, "index": index, "rule": rule,
                       "score": q["choices"][index][1] if index is not None else 0})
    recognised = parsed[0]["score"] == "correct"     # an unmatched answer (score 0) is not a recognition
    pos, neg = [], []
    for p in parsed[1:]:
        s = p["score"] if recognised else min(0, p["score"])
        p["final"] = s
        (pos if p["type"] == "positive" else neg).append(s)
    return {"recognised": recognised, "score_pos": sum(pos) / len(pos),
            "score_neg": sum(neg) / len(neg) if neg else None, "answers": parsed}


def score(bench: Dict[str, dict], preds: Dict[str, str], responses: Dict[str, List[str]],
          missing: Sequence[str] = (), per_item: bool = False) -> Dict[str, Any]:
    """The benchmark's averages (x100) over the regions in ``responses`` (``{key: [one judge answer per question,
    recognition first]}``), with every answer that matched no option counted and listed."""
    for k, r in responses.items():
        if k not in bench or len(r) != len(bench[k]["questions"]):
            raise EvalInputError(f"judge answers for id {k!r}: expected one per question of the qa file "
                                 f"({len(bench[k]['questions']) if k in bench else 'no such id'}), got {len(r)}")
    items = {k: score_item(bench[k]["questions"], responses[k]) for k in bench if k in responses}
    if not items:
        raise EvalInputError("no answers to score")
    pos = [it["score_pos"] for it in items.values()]
    neg = [it["score_neg"] for it in items.values() if it["score_neg"] is not None]
    avg_pos = sum(pos) / len(pos)
    avg_neg = sum(neg) / len(neg) if neg else None
    out_of_format, rules = [], {}
    for k, it in items.items():
        for i, a in enumerate(it["answers"]):
            rules[a["rule"]] = rules.get(a["rule"], 0) + 1
            if a["index"] is None:
                out_of_format.append({"question_id": bench[k]["id"], "question_index": i, "type": a["type"],
                                      "response": a["response"][:300]})
    res: Dict[str, Any] = {
        "benchmark": "dlc_bench", "num_items": len(items), "num_missing": len(missing),
        "missing_ids": [bench[k]["id"] for k in missing[:10]],
        "pos": 100 * avg_pos, "neg": None if avg_neg is None else 100 * avg_neg,
        "avg": None if avg_neg is None else 100 * (avg_pos + avg_neg) / 2,
        "num_items_with_negatives": len(neg),
        "num_not_recognised": sum(1 for it in items.values() if not it["recognised"]),
        "num_judge_answers": sum(rules.values()), "judge_match_rules": rules,
        "num_judge_out_of_format": len(out_of_format), "judge_out_of_format": out_of_format,
    }
    if per_item:
        res["per_item"] = [{"question_id": bench[k]["id"], "description": preds.get(k), "recognised": it["recognised"],
                            "score_pos": it["score_pos"], "score_neg": it["score_neg"],
                            "answers": it["answers"]} for k, it in items.items()]
    return res


# ---------------------------------------------------------------------------------------------------------------------
# the judge endpoint
# ---------------------------------------------------------------------------------------------------------------------
def api_key(given: Optional[str]) -> str:
    return given or os.environ.get("JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"


def _judge_error(e: Exception, url: str, model: str) -> Optional[JudgeError]:
    import openai
    if isinstance(e, openai.APIConnectionError):     # refused, unresolvable, timed out
        return JudgeError(f"cannot reach the judge at {url} ({e.__cause__ or e}); start the OpenAI-compatible "
                          f"server or fix --judge-url (its base URL, e.g. http://127.0.0.1:9000/v1)")
    if isinstance(e, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return JudgeError(f"the judge at {url} refused the API key (--judge-api-key / JUDGE_API_KEY): {e}")
    if isinstance(e, openai.NotFoundError):
        return JudgeError(f"the judge at {url} has no model {model!r} or no /chat/completions route: {e}")
    if isinstance(e, openai.APIStatusError):
        return JudgeError(f"the judge at {url} (model {model!r}) answered HTTP {e.status_code}: {e}")
    if isinstance(e, openai.OpenAIError):
        return JudgeError(f"the judge at {url} (model {model!r}): {e}")
    return None


def _check_judgment(obj: dict) -> None:
    if not isinstance(obj["key"], str) or not isinstance(obj["response"], str):
        raise ValueError("a judgment needs a string 'key' and 'response'")


class Judge:
    """Chat requests to one model of an OpenAI-compatible endpoint, with the answers cached in a JSONL file."""

    def __init__(self, url: str, model: str, key: Optional[str] = None, cache: Optional[str] = None,
                 max_tokens: int = JUDGE_MAX_TOKENS, workers: int = 8, timeout: float = 120.0):
        from openai import OpenAI
        self.url, self.model, self.max_tokens, self.workers = url, model, max_tokens, max(1, workers)
        self.client = OpenAI(base_url=url, api_key=api_key(key), timeout=timeout, max_retries=2)
        self.cache_path, self.cached, self.num_asked = cache, {}, 0
        if cache:
            try:
                rows = read_resumable_jsonl(cache, check=_check_judgment)
            except JsonFileError as e:
                raise EvalInputError(f"judgments file {e}; fix or delete the file") from None
            self.cached = {r["key"]: r["response"] for r in rows}
            os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)

    def _request(self, prompt: str, max_tokens: int) -> str:
        try:
            r = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0,
                max_tokens=max_tokens, top_p=1, frequency_penalty=0, presence_penalty=0)
        except Exception as e:  # every client error, worded with the URL and the model
            error = _judge_error(e, self.url, self.model)
            if error is None:
                raise
            raise error from None
        if not r.choices:
            raise JudgeError(f"the judge at {self.url} (model {self.model!r}) answered without a choice")
        return r.choices[0].message.content or ""

    def check(self) -> None:
        """One one-token request: the endpoint is up and serves the model (before anything is generated)."""
        self._request("Answer with one word: ready?", 1)

    def key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.model}\n{prompt}".encode("utf-8")).hexdigest()

    def ask(self, prompts: Sequence[Tuple[str, dict]]) -> List[str]:
        """The answers to ``[(prompt, info), ...]`` (info is written beside each new answer: which question); the
        cached ones are not asked again, each new one is appended to the cache as soon as it comes."""
        keys = [self.key(p) for p, _ in prompts]
        todo = {k: (p, info) for k, (p, info) in zip(keys, prompts) if k not in self.cached}
        lock = threading.Lock()
        f = open(self.cache_path, "a", encoding="utf-8") if self.cache_path and todo else None
        try:
            with ThreadPoolExecutor(self.workers) as pool:
                futures = {pool.submit(self._request, p, self.max_tokens): k for k, (p, _) in todo.items()}
                try:
                    for fut in as_completed(futures):
                        k = futures[fut]
                        response = fut.result()
                        with lock:
                            self.cached[k] = response
                            self.num_asked += 1
                            if f:
                                f.write(json.dumps({"key": k, "model": self.model, **todo[k][1],
                                                    "response": response}) + "\n")
                                f.flush()
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
        finally:
            if f:
                f.close()
        return [self.cached[k] for k in keys]


def judge_all(bench: Dict[str, dict], preds: Dict[str, str], judge: Judge) -> Dict[str, List[str]]:
    """Every question of every described region, asked (or read from the cache)."""
    prompts, owners = [], []
    for k, item in bench.items():
        if k not in preds:
            continue
        for i, q in enumerate(item["questions"]):
            prompts.append((judge_prompt(preds[k], q), {"question_id": item["id"], "question_index": i}))
            owners.append(k)
    out: Dict[str, List[str]] = {}
    for k, r in zip(owners, judge.ask(prompts)):
        out.setdefault(k, []).append(r)
    return out


def evaluate(qa_file: str, class_names_file: str, result_file: str, judge: Judge, allow_missing: bool = False,
             default_prediction: Optional[str] = None, per_item: bool = False) -> Dict[str, Any]:
    bench = load_benchmark(qa_file, class_names_file)
    preds, _ = load_predictions(result_file)
    # DAM's script takes a prediction that starts with "Error:" as missing
    preds = {k: v for k, v in preds.items() if not v.startswith("Error:")}
    ids, missing = match_ids(bench, preds, "qa file", "answers", allow_missing or default_prediction is not None)
    if default_prediction is not None:
        preds.update({k: default_prediction for k in missing})
        missing = []
    res = score(bench, preds, judge_all(bench, preds, judge), missing, per_item)
    res.update(judge_url=judge.url, judge_model=judge.model, num_judge_requests=judge.num_asked,
               num_default_predictions=len(bench) - len(ids) if default_prediction is not None else 0)
    return res


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------
def add_judge_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--judge-url", required=True, help="base URL of an OpenAI-compatible API, e.g. "
                                                       "http://127.0.0.1:9000/v1")
    ap.add_argument("--judge-model", required=True, help="the judge's model name (DAM: "
                                                         "meta-llama/Meta-Llama-3.1-8B-Instruct)")
    ap.add_argument("--judge-api-key", default=None, help="default: $JUDGE_API_KEY, else $OPENAI_API_KEY")
    ap.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per request")


def check_judge_main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m rgpt_llava.eval.dlc_bench check-judge",
                                 description="one one-token request to the judge: reachable, key and model accepted")
    add_judge_args(ap)
    args = ap.parse_args(argv)
    Judge(args.judge_url, args.judge_model, args.judge_api_key, timeout=args.judge_timeout).check()
    print(f"judge {args.judge_model!r} at {args.judge_url}: ready")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["check-judge"]:
        return check_judge_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m rgpt_llava.eval.dlc_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--qa-file", required=True, help="DLC-Bench qa.json {annotation id: [questions]}")
    ap.add_argument("--class-names", required=True, help="DLC-Bench class_names.json {annotation id: name}")
    ap.add_argument("--result-file", required=True, help="answers JSONL {question_id, text} (or DAM's JSON)")
    add_judge_args(ap)
    ap.add_argument("--judgments-file", help="JSONL cache of the judge's answers (resumable; reruns reuse it)")
    ap.add_argument("--judge-max-tokens", type=int, default=JUDGE_MAX_TOKENS)
    ap.add_argument("--judge-workers", type=int, default=8, help="requests in flight at once")
    ap.add_argument("--out", help="write the metrics as JSON here")
    ap.add_argument("--allow-missing", action="store_true", help="score the described subset, report the rest")
    ap.add_argument("--default-prediction", help="description of a region without one (DAM's flag)")
    ap.add_argument("--per-item", action="store_true", help="add every region's answers and scores to the JSON")
    args = parse_args_checked(ap, argv, ("out", "judgments_file"))
    judge = Judge(args.judge_url, args.judge_model, args.judge_api_key, args.judgments_file, args.judge_max_tokens,
                  args.judge_workers, args.judge_timeout)
    res = evaluate(args.qa_file, args.class_names, args.result_file, judge, args.allow_missing,
                   args.default_prediction, args.per_item)
    rows = [("regions", res["num_items"]), ("missing descriptions", res["num_missing"]),
            ("not recognised", res["num_not_recognised"]), ("judge answers", res["num_judge_answers"]),
            ("  asked now", res["num_judge_requests"]), ("  out of format", res["num_judge_out_of_format"]),
            ("pos", res["pos"]), ("neg", res["neg"]), ("avg (pos, neg)", res["avg"])]
    print_table(f"DLC-Bench (x100), judge {args.judge_model}: {args.result_file}", rows, digits=1)
    for o in res["judge_out_of_format"][:5]:
        print(f"  out of format: id {o['question_id']}, question {o['question_index']}: {o['response'][:80]!r}")
    write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

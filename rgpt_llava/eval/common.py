"""Shared input handling for the scorers: JSON / JSONL reading (:mod:`rgpt_llava.jsonl`) in their wording, id
matching, tables, output.

Every scorer matches answers to references BY ID, never by position: ids are compared by their string form (``5``
and ``"5"`` are the same id, so a file that has both is a duplicate), duplicates are errors, and missing / extra
ids are reported by name.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from rgpt_llava import jsonl
from rgpt_llava.jsonl import JsonFileError


class EvalInputError(ValueError):
    """Bad scorer input: the message names the file, line and / or id at fault."""


def id_key(value: Any, where: str = "") -> str:
    """The canonical (string) form of an id; ints and strings only (a float or bool id is almost always a bug)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise EvalInputError(f"{where}id must be an integer or a string, got {value!r}")
    key = str(value).strip()
    if not key:
        raise EvalInputError(f"{where}id is empty")
    return key


def input_error(e: JsonFileError, what: str) -> EvalInputError:
    """The scorers' wording of a file that could not be read: ``question file X, line 3: malformed JSON (...)``."""
    if e.kind == jsonl.MISSING:
        return EvalInputError(f"{what} not found: {e.path}")
    if e.kind == jsonl.DIRECTORY:
        return EvalInputError(f"{what} is a directory, expected a file: {e.path}")
    if e.kind == jsonl.NOT_A_LIST:
        return EvalInputError(f"{what} {e.path}: expected JSON lines or a JSON list of objects")
    if e.kind == jsonl.NOT_AN_OBJECT:
        return EvalInputError(f"{what} {e.path}, {e.where}: expected a JSON object, got {e.problem}")
    return EvalInputError(f"{what} {e}")


def read_json(path: str, what: str = "file") -> Any:
    try:
        return jsonl.read_json(path)
    except JsonFileError as e:
        raise input_error(e, what) from None


def read_json_or_jsonl(path: str, what: str = "file") -> Tuple[str, Any]:
    """``("json", obj)`` when the whole file is one JSON value, else ``("jsonl", [(lineno, obj), ...])``."""
    try:
        return jsonl.read_json_or_jsonl(path)
    except JsonFileError as e:
        raise input_error(e, what) from None


def read_rows(path: str, what: str) -> List[Tuple[str, dict]]:
    """Objects of a JSONL file (or a JSON list) as ``[(location, obj), ...]``; every item must be an object."""
    try:
        return [(f"{what} {path}, {where}", obj) for where, obj in jsonl.read_records(path)]
    except JsonFileError as e:
        raise input_error(e, what) from None


def require(obj: dict, field: str, where: str, types: Optional[tuple] = None) -> Any:
    if field not in obj:
        raise EvalInputError(f"{where}: missing field '{field}'")
    value = obj[field]
    if types is not None and (not isinstance(value, types) or isinstance(value, bool) and bool not in types):
        names = "/".join(t.__name__ for t in types)
        raise EvalInputError(f"{where}: field '{field}' must be {names}, got {value!r}")
    return value


def index_by_id(rows: Iterable[Tuple[str, dict]], field: str = "question_id", what: str = "answer") -> Dict[str, dict]:
    """``{id: obj}``; a missing id field or a duplicate id is an error naming both places."""
    out: Dict[str, dict] = {}
    seen: Dict[str, str] = {}
    for where, obj in rows:
        key = id_key(require(obj, field, where), f"{where}: '{field}' ")
        if key in out:
            raise EvalInputError(f"{where}: duplicate {what} {field} {obj[field]!r} (first at {seen[key]})")
        out[key] = obj
        seen[key] = where
    return out


def _examples(keys: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in list(keys)[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def match_ids(refs: Dict[str, Any], answers: Dict[str, Any], ref_what: str, ans_what: str = "answers",
              allow_missing: bool = False) -> Tuple[List[str], List[str]]:
    """Check the ids of ``answers`` against ``refs``: extra answer ids are always an error; missing ones are an
    error unless ``allow_missing`` (then they are returned, and the caller reports them). Returns
    ``(matched_ids_in_reference_order, missing_ids)``."""
    extra = [k for k in answers if k not in refs]
    if extra:
        raise EvalInputError(f"{len(extra)} {ans_what} have ids that are not in the {ref_what}: {_examples(extra)}")
    missing = [k for k in refs if k not in answers]
    if missing and not allow_missing:
        raise EvalInputError(f"{len(missing)} ids of the {ref_what} have no answer: {_examples(missing)} "
                             f"(pass allow_missing / --allow-missing to score the answered subset)")
    return [k for k in refs if k in answers], missing


def answer_text(obj: dict, where: str, field: str = "text") -> str:
    return require(obj, field, where, (str,))


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def print_table(title: str, rows: Sequence[Tuple[str, Any]], file=None, digits: int = 2) -> None:
    file = file or sys.stdout
    width = max([len(k) for k, _ in rows] + [20])
    print(title, file=file)
    print("-" * (width + 12), file=file)
    for k, v in rows:
        print(f"{k:<{width}}  {fmt(v, digits):>10}", file=file)


def write_json(path: Optional[str], obj: Any) -> None:
    if not path:
        return
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def run_cli(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run a scorer's ``main``: input errors become one ``error: ...`` line on stderr and exit status 2."""
    try:
        return main(argv)
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

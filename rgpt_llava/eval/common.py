"""Shared input handling for the scorers: JSON / JSONL reading with line numbers, id matching, tables, output.

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


def _check_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise EvalInputError(f"{what} not found: {path}")
    if os.path.isdir(path):
        raise EvalInputError(f"{what} is a directory, expected a file: {path}")


def read_jsonl(path: str, what: str = "file") -> List[Tuple[int, Any]]:
    """``[(line_number, object), ...]`` of a JSONL file; blank lines are skipped, a malformed line is an error."""
    _check_file(path, what)
    rows = []
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line.rstrip("\r\n"))))
            except json.JSONDecodeError as e:
                raise EvalInputError(f"{what} {path}, line {lineno}: malformed JSON ({e.msg} at column {e.colno})")
    return rows


def read_json(path: str, what: str = "file") -> Any:
    _check_file(path, what)
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise EvalInputError(f"{what} {path}, line {e.lineno}: malformed JSON ({e.msg} at column {e.colno})")


def read_json_or_jsonl(path: str, what: str = "file") -> Tuple[str, Any]:
    """``("json", obj)`` when the whole file is one JSON value, else ``("jsonl", [(lineno, obj), ...])``."""
    _check_file(path, what)
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    try:
        return "json", json.loads(text)
    except json.JSONDecodeError:
        pass
    return "jsonl", read_jsonl(path, what)


def records(path: str, what: str) -> List[Tuple[str, dict]]:
    """Objects of a JSONL file (or a JSON list) as ``[(location, obj), ...]``; every item must be an object."""
    kind, data = read_json_or_jsonl(path, what)
    if kind == "json":
        if isinstance(data, dict):   # a one-object JSONL file
            with open(path, "r", encoding="utf-8") as f:
                first = next((n for n, line in enumerate(f, 1) if line.strip()), 1)
            return [(f"{what} {path}, line {first}", data)]
        if not isinstance(data, list):
            raise EvalInputError(f"{what} {path}: expected JSON lines or a JSON list of objects")
        rows = [(f"{what} {path}, item {i}", obj) for i, obj in enumerate(data)]
    else:
        rows = [(f"{what} {path}, line {n}", obj) for n, obj in data]
    for where, obj in rows:
        if not isinstance(obj, dict):
            raise EvalInputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return rows


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

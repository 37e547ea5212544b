"""The one reader of JSON and JSON Lines files: question, answer, reference, annotation and training files, the
evaluation answers and the RecapD output.

Every function raises :class:`JsonFileError`, which knows the file, the line (or list item) and the problem; each
command wraps it in its own error type and wording (``EvalInputError`` "question file X, line 3: malformed JSON
(...)", ``DataError`` "X: not valid JSON (...)", the trainer's ``ValueError``).
"""
import json
import os
from typing import Any, Callable, List, Optional, Tuple

# why a file could not be read (JsonFileError.kind, worded for the default message)
MISSING, DIRECTORY, NOT_UTF8, MALFORMED, NOT_A_LIST, NOT_AN_OBJECT, CUT = (
    "file not found", "a directory, expected a file", "not UTF-8 text", "malformed JSON", "expected a JSON list",
    "expected a JSON object", "malformed line (not a cut last line)")


class JsonFileError(ValueError):
    """``path``; ``kind`` (one of the constants above); ``line`` / ``column`` (1-based) or ``item`` (0-based list
    index) where known; ``problem``: what the parser said (``json``'s message without its position), or the type
    found."""

    def __init__(self, path: str, kind: str, problem: str = "", line: Optional[int] = None,
                 column: Optional[int] = None, item: Optional[int] = None, cause: Optional[Exception] = None):
        self.path, self.kind, self.problem = path, kind, problem
        self.line, self.column, self.item, self.cause = line, column, item, cause
        super().__init__(f"{path}{', ' + self.where if self.where else ''}: {self.what}")

    @property
    def where(self) -> str:
        """``line 3`` / ``item 2`` / ``""``."""
        if self.item is not None:
            return f"item {self.item}"
        return f"line {self.line}" if self.line is not None else ""

    @property
    def what(self) -> str:
        """The problem without the place: ``malformed JSON (Expecting value at column 5)``."""
        return f"{self.kind} ({self.detail})" if self.detail else self.kind

    @property
    def detail(self) -> str:
        """The problem with its column: ``Expecting value at column 5``."""
        return f"{self.problem} at column {self.column}" if self.column is not None else self.problem


Record = Tuple[str, Any]     # (where: "line 3" / "item 2", value)


def _text(path: str) -> str:
    if not os.path.exists(path):
        raise JsonFileError(path, MISSING)
    if os.path.isdir(path):
        raise JsonFileError(path, DIRECTORY)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise JsonFileError(path, NOT_UTF8, str(e), cause=e) from None


def _parse(path: str, text: str, line_offset: int = 0) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise JsonFileError(path, MALFORMED, e.msg, line=e.lineno + line_offset, column=e.colno, cause=e) from None


def read_json(path: str) -> Any:
    """The one JSON document of a file."""
    return _parse(path, _text(path))


def _lines(path: str, text: str) -> List[Tuple[int, str]]:
    return [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def read_records(path: str, jsonl: Optional[bool] = None, objects: bool = True,
                 skip: Optional[Callable[[JsonFileError], None]] = None) -> List[Record]:
    """The values of a JSON list (``item i``) or of a JSON Lines file (``line n``), blank lines skipped.

    ``jsonl``: True for JSON Lines, False for a JSON list, None to tell by the content: a file starting with ``[`` is
    a list (its syntax errors at their real line), one whole JSON object is one record (a pretty-printed one too),
    anything else is JSON Lines. With ``objects`` every value must be a JSON object. A bad line or item is an error,
    or with ``skip`` handed to it and left out (a converter counts it and goes on)."""
    def bad(error: JsonFileError) -> None:
        if skip is None:
            raise error
        skip(error)

    text = _text(path)
    if jsonl is None and text.lstrip().startswith("["):
        jsonl = False
    if jsonl is None:
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            jsonl = True
        else:
            rows = [(f"line {_lines(path, text)[0][0]}", whole)] if isinstance(whole, dict) else None
            if rows is None:
                raise JsonFileError(path, NOT_A_LIST, type(whole).__name__)
    if jsonl is False:
        data = _parse(path, text)
        if not isinstance(data, list):
            raise JsonFileError(path, NOT_A_LIST, type(data).__name__)
        rows = [(f"item {i}", v) for i, v in enumerate(data)]
    elif jsonl:
        rows = []
        for n, line in _lines(path, text):
            try:
                rows.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as e:
                bad(JsonFileError(path, MALFORMED, e.msg, line=n, column=e.colno, cause=e))
    if not objects:
        return rows
    objs = []
    for where, value in rows:
        if isinstance(value, dict):
            objs.append((where, value))
        else:
            kind, _, number = where.partition(" ")
            bad(JsonFileError(path, NOT_AN_OBJECT, type(value).__name__, **{kind: int(number)}))
    return objs


def read_json_or_jsonl(path: str) -> Tuple[str, Any]:
    """``("json", value)`` when the whole file is one JSON value, else ``("jsonl", [(line, value), ...])``."""
    text = _text(path)
    try:
        return "json", json.loads(text)
    except json.JSONDecodeError:
        pass
    return "jsonl", [(int(where.split()[1]), v) for where, v in read_records(path, jsonl=True, objects=False)]


def read_resumable_jsonl(path: str, check: Optional[Callable[[dict], object]] = None) -> List[dict]:
    """The objects of an append-only JSONL file written one flushed line at a time.

    A crash can cut only the last line: such a line is dropped and the file rewritten without it, so a resumed run
    redoes that item. A malformed line anywhere else (or one ``check`` rejects with KeyError / TypeError /
    ValueError) is a :class:`JsonFileError` (kind :data:`CUT`) naming its line. A missing
    file has no objects.
    """
    if not os.path.exists(path):
        return []
    lines = _lines(path, _text(path))
    rows, cut = [], False
    for k, (n, line) in enumerate(lines):
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            if check is not None:
                check(obj)
            rows.append(obj)
        except (KeyError, TypeError, ValueError):
            if k < len(lines) - 1:
                raise JsonFileError(path, CUT, line=n) from None
            cut = True
    if cut:
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows

"""Resumable JSONL files: the one reader shared by the evaluation answers and the RecapD output."""
import json
import os
from typing import Callable, List, Optional


def read_resumable_jsonl(path: str, check: Optional[Callable[[dict], object]] = None) -> List[dict]:
    """The objects of an append-only JSONL file written one flushed line at a time.

    A crash can cut only the last line: such a line is dropped and the file rewritten without it, so a resumed run
    redoes that item. A malformed line anywhere else (or one ``check`` rejects with KeyError / TypeError /
    ValueError) is a ValueError naming its line number. A missing file has no objects.
    """
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    rows, cut = [], False
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            if check is not None:
                check(obj)
            rows.append(obj)
        except (KeyError, TypeError, ValueError):
            if any(x.strip() for x in lines[n:]):
                raise ValueError(f"line {n}: malformed line (not a cut last line)") from None
            cut = True
    if cut:
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows

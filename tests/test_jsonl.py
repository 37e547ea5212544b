"""The one JSON / JSON Lines reader (rgpt_llava.jsonl): formats, and errors that name the file and the line."""
import json

import pytest

from rgpt_llava import jsonl
from rgpt_llava.jsonl import JsonFileError, read_json_or_jsonl, read_records, read_resumable_jsonl


def test_formats(tmp_path):
    lines = tmp_path / "a.jsonl"
    lines.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_records(str(lines)) == [("line 1", {"a": 1}), ("line 3", {"a": 2})]
    listed = tmp_path / "a.json"
    listed.write_text(json.dumps([{"a": 1}, {"a": 2}], indent=1))
    assert read_records(str(listed)) == [("item 0", {"a": 1}), ("item 1", {"a": 2})]
    pretty = tmp_path / "one.json"
    pretty.write_text('\n{\n  "a": 1\n}\n')
    assert read_records(str(pretty)) == [("line 2", {"a": 1})]
    assert read_json_or_jsonl(str(lines)) == ("jsonl", [(1, {"a": 1}), (3, {"a": 2})])
    assert read_json_or_jsonl(str(listed))[0] == "json"


def test_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{"a": 2,\n{"a": 3}\n')
    with pytest.raises(JsonFileError) as e:
        read_records(str(bad))
    assert e.value.kind == jsonl.MALFORMED and (e.value.path, e.value.line) == (str(bad), 2)
    assert str(e.value).startswith(f"{bad}, line 2: malformed JSON (") and "at column" in str(e.value)
    listed = tmp_path / "bad.json"
    listed.write_text('[\n {"a": 1},\n {"a": }\n]\n')
    with pytest.raises(JsonFileError, match=r"bad.json, line 3: malformed JSON"):
        read_records(str(listed))
    listed.write_text('[{"a": 1}, 5]')
    with pytest.raises(JsonFileError, match=r"bad.json, item 1: expected a JSON object \(int\)"):
        read_records(str(listed))
    obj = tmp_path / "o.json"
    obj.write_text('{"a": 1}')
    with pytest.raises(JsonFileError, match="expected a JSON list"):
        read_records(str(obj), jsonl=False)
    with pytest.raises(JsonFileError, match="nope.json: file not found"):
        read_records(str(tmp_path / "nope.json"))
    skipped = []
    assert read_records(str(bad), skip=skipped.append) == [("line 1", {"a": 1}), ("line 3", {"a": 3})]
    assert [(s.kind, s.line) for s in skipped] == [(jsonl.MALFORMED, 2)]


def test_resumable_drops_only_a_cut_last_line(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": 1}\n{"id": 2}\n{"id": ')
    assert read_resumable_jsonl(str(out)) == [{"id": 1}, {"id": 2}]
    assert out.read_text() == '{"id": 1}\n{"id": 2}\n'
    out.write_text('{"id": 1}\n{"id": \n{"id": 3}\n')
    with pytest.raises(JsonFileError, match=r"out.jsonl, line 2: malformed line \(not a cut last line\)"):
        read_resumable_jsonl(str(out))

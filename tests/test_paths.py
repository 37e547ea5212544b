"""The one output-clash rule (rgpt_llava.paths): files and folders, flags derived from the parser."""
import argparse

import pytest

from rgpt_llava.paths import output_clash, parse_args_checked


def test_file_and_folder_wording(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    assert output_clash({"--out": str(tmp_path / "o.json")}, {"--input": str(src)}) is None
    assert output_clash({"--output": str(src) + "/."}, {"--llava-path": str(src)}, folder="the new checkpoint") == (
        f"--output {src}/. is the --llava-path folder: writing the new checkpoint there would replace it; "
        "choose another folder")
    assert output_clash({"--output": str(tmp_path / "a"), "--vision-tower-out": str(tmp_path / "a")}, {},
                        folder="the new checkpoint") == (
        f"--vision-tower-out {tmp_path / 'a'} is also --output: two outputs in one folder; choose another folder")


def test_inputs_derived_from_the_parser_and_its_subcommands(tmp_path, capsys):
    read = tmp_path / "in.json"
    read.write_text("[]")
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    one = sub.add_parser("one")
    one.add_argument("--data-file")
    one.add_argument("--out")
    many = sub.add_parser("many")
    many.add_argument("inputs", nargs="+")
    many.add_argument("--out")
    for argv, name in ((["one", "--data-file", str(read), "--out", str(read)], "--data-file"),
                       (["many", str(tmp_path / "none.json"), str(read), "--out", str(read)], "an input")):
        with pytest.raises(SystemExit):
            parse_args_checked(ap, argv)
        assert f"--out {read} is also {name}: writing there would replace it" in capsys.readouterr().err
    assert parse_args_checked(ap, ["one", "--data-file", str(read), "--out", str(tmp_path / "o.json")]).cmd == "one"

"""The flags every entry point shares (rgpt_llava.serve.options): declared once, so each entry reads, defaults and
checks them alike; and the serving modules' layering (the entries are thin: protocol, backends and page logic are
modules of their own, importable without the HTTP or page frameworks' app objects)."""
import argparse
import importlib

import pytest

from rgpt_llava.serve import options as O

MODEL_FLAGS = ["--model-path", "--model-base", "--device", "--load-8bit", "--load-4bit", "--sam-model"]
SERVER_FLAGS = ["--model-name", "--host", "--port", "--max-regions"]


def parser_of(entry: str) -> argparse.ArgumentParser:
    """The entry's parser, caught as its main builds it (main exits at --help)."""
    made = []
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        made.append(self)
        raise SystemExit(0)
    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            importlib.import_module(entry).main([])
    finally:
        argparse.ArgumentParser.parse_args = original
    return made[0]


def flags(parser: argparse.ArgumentParser) -> dict:
    return {a.option_strings[0]: a for a in parser._actions if a.option_strings}


@pytest.mark.parametrize("entry, port", [("rgpt_llava.serve.openai_api", 8000),
                                         ("rgpt_llava.serve.model_worker", 21002),
                                         ("rgpt_llava.serve.gradio_web_server", 7860),
                                         ("rgpt_llava.serve.cli", None), ("rgpt_llava.serve.describe", None)])
def test_every_entry_takes_the_model_flags_one_way(entry, port, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)              # LLaVA's worker module writes its log file where it is imported
    got = flags(parser_of(entry))
    for flag in MODEL_FLAGS + (SERVER_FLAGS if port else []):
        assert flag in got, (entry, flag)
    assert got["--device"].default is None and got["--device"].type.__name__ == "device_arg"
    assert got["--sam-model"].metavar == "PATH"
    if port:
        assert got["--port"].default == port and got["--host"].default == "127.0.0.1"
        assert got["--max-regions"].default == 64


def test_a_server_in_front_of_a_controller_takes_one_of_the_two():
    p = argparse.ArgumentParser()
    O.add_model_flags(p, "SAM", controller="--controller-url", controller_help="the controller")
    assert p.parse_args(["--controller-url", "http://x"]).model_path is None
    with pytest.raises(SystemExit):
        p.parse_args(["--controller-url", "http://x", "--model-path", "m"])
    with pytest.raises(SystemExit):
        p.parse_args([])


def test_counts_below_one_are_the_parsers_error(capsys):
    p = argparse.ArgumentParser()
    O.add_server_flags(p, port=1)
    with pytest.raises(SystemExit):
        O.check_at_least_one(p, p.parse_args(["--max-regions", "0"]), "max_regions")
    assert "--max-regions must be at least 1, got 0" in capsys.readouterr().err


def test_the_served_name_is_the_flag_or_the_folder():
    assert O.served_name(argparse.Namespace(model_name=None, model_path="/ckpt/rgpt-7b/checkpoint-5")) == \
        "rgpt-7b_checkpoint-5"
    assert O.served_name(argparse.Namespace(model_name="mine", model_path="/ckpt/rgpt-7b")) == "mine"


def test_the_page_logic_needs_no_gradio():
    import subprocess
    import sys
    code = ("import sys, rgpt_llava.serve.page, rgpt_llava.serve.backends, rgpt_llava.serve.chat; "
            "print(sorted(m for m in ('gradio', 'fastapi', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

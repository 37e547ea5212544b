"""The README's Python quick start, run as written (checkpoint, photo and device swapped for the tiny ones), agrees
with the CLI command the README gives for the same regions and question."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_python_block():
    text = (ROOT / "README.md").read_text()
    start = text.index("**Python**")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def substitute(code, replacements):
    for old, new in replacements.items():
        assert code.count(old) == 1, f"the README's Python quick start no longer has {old!r} once; update this test"
        code = code.replace(old, new)
    return code


def test_the_readme_python_quick_start_answers_as_the_cli_does(tmp_path, real_tok_rgpt_dir, images_dir, capsys):
    photo = str(images_dir / "chelsea.jpg")
    code = substitute(readme_python_block(), {'"checkpoints/rgpt-7b"': repr(real_tok_rgpt_dir),
                                              '"photo.jpg"': repr(photo), 'device="cuda"': 'device="cpu"'})
    script = tmp_path / "quickstart.py"
    script.write_text(code)
    ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    answer = ran.stdout.strip()
    assert answer

    # The same regions and question through the CLI (greedy, 64 new tokens): the one generation core, same tokens.
    from rgpt_llava.serve.cli import main as cli_main
    assert cli_main(["--model-path", real_tok_rgpt_dir, "--image-file", photo, "--device", "cpu",
                     "--region", "box:10,20,200,180", "--region", "polygon:30,40,120,40,90,160",
                     "--query", "What is <region1> doing next to <region2>?", "--temperature", "0",
                     "--max-new-tokens", "64"]) == 0
    assert capsys.readouterr().out.split("ASSISTANT:", 1)[1].strip() == answer

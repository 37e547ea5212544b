"""The README's first command, and the tiny-checkpoint entry."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_demo_script_end_to_end(tmp_path):
    venv = Path(sys.prefix)
    if not (venv / ".rgpt-installed").exists():
        pytest.skip(f"{venv} was not set up by scripts/install.sh; run the tests through scripts/test.sh")
    env = dict(os.environ, RGPT_VENV=str(venv), RGPT_DEMO_DIR=str(tmp_path / "demo"))
    proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "weights below are RANDOM" in out
    assert "2 region(s):" in out and "region 2: polygon, box [250, 80, 400, 260]" in out
    assert "ASSISTANT:" in out
    assert (tmp_path / "demo" / "rgpt" / "config.json").exists()


def test_tiny_entry_rejects_missing_tokenizer(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rgpt_llava.tiny", "--out", str(tmp_path / "t"), "--tokenizer",
                           str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no such folder" in proc.stderr

"""``python -m rgpt_llava.serve.batch --engine vllm``: the same records as ``--engine hf`` on the same requests file
(greedy answers token for token, finish reasons, the refusals' messages), chunks prepared while vLLM generates. Needs
the vllm stack (RGPT_STACK=vllm)."""
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vllm stack (RGPT_STACK=vllm) runs these tests")

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from rgpt_llava.serve.batch import main  # noqa: E402
from test_serve_batch import BAD, ROOT, folder, read_output, requests_of, write_requests  # noqa: E402,F401
from test_vllm import tiny_rgpt_for_vllm  # noqa: E402

NEW_TOKENS = 12


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer_dir, tiny_clip_dir):
    """2 heads of 32 (vLLM's CPU attention has no head size 16), a random refiner: test_vllm's checkpoint."""
    return tiny_rgpt_for_vllm(tmp_path_factory.mktemp("vllm_batch"), tiny_tokenizer_dir, tiny_clip_dir)


def test_vllm_records_equal_the_hf_engines(capsys, folder, checkpoint, tmp_path):  # noqa: F811
    requests = requests_of(folder)
    path = write_requests(folder / "requests_vllm.jsonl", requests)
    common = ["--model-path", checkpoint, "--requests", path, "--device", "cpu", "--max-new-tokens", NEW_TOKENS,
              "--chunk-size", 3]     # several chunks: the next is prepared while vLLM generates the current one
    code = main([str(a) for a in common + ["--output", tmp_path / "hf.jsonl"]])
    assert code == 0, capsys.readouterr().err
    # as a user runs it: vLLM spawns its engine process, which imports the module again (the __main__ guard)
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    proc = subprocess.run([sys.executable, "-m", "rgpt_llava.serve.batch", *map(str, common), "--output",
                           str(tmp_path / "vllm.jsonl"), "--engine", "vllm"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hf, served = read_output(tmp_path / "hf.jsonl"), read_output(tmp_path / "vllm.jsonl")
    assert served == hf
    assert sum("error" in r for r in hf) == len(BAD) and sum("text" in r for r in hf) == len(requests) - len(BAD)
    assert any(r.get("finish_reason") == "length" for r in hf)
    assert "refused (field \"error\")" in proc.stderr

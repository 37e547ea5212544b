#!/usr/bin/env bash
# The README's first command: the main job end to end on an embedded default, no GPU, no downloads.
# Until a trained demo exists it builds a tiny LLaVA-1.5-style checkpoint with RANDOM weights, converts it to RGPT
# and asks a region question about a real photo through the region-aware CLI. The answer is noise by construction:
# what the demo shows is the pipeline (regions parsed in every format, mapped into LLaVA's geometry, pooled,
# spliced into the prompt, generated from), not knowledge.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/install.sh
OUT=${RGPT_DEMO_DIR:-outputs/demo}
ASSETS=../shared/assets
mkdir -p "$OUT"

echo "== rgpt_llava demo: the weights below are RANDOM (no pretrained model is available offline) =="
tok_args=()
if [ -d "$ASSETS/llama-tokenizer" ]; then tok_args=(--tokenizer "$ASSETS/llama-tokenizer"); fi
python -m rgpt_llava.tiny --out "$OUT/tiny" --image-size 112 "${tok_args[@]}"
python -m rgpt_llava.convert --llava-path "$OUT/tiny/llava" --output "$OUT/rgpt" 2>/dev/null

IMAGE="$ASSETS/images/chelsea.jpg"
if [ ! -f "$IMAGE" ]; then
  IMAGE="$OUT/shapes.png"
  python - "$IMAGE" <<'PY'
import sys
from PIL import Image, ImageDraw
img = Image.new("RGB", (451, 300), "white")
d = ImageDraw.Draw(img)
d.ellipse((40, 60, 180, 200), fill="red")
d.rectangle((250, 80, 400, 260), fill="blue")
img.save(sys.argv[1])
PY
fi
python -m rgpt_llava.serve.cli --model-path "$OUT/rgpt" --image-file "$IMAGE" --device cpu \
  --region box:40,60,180,200 --region polygon:250,80,400,80,400,260,250,260 \
  --query "What is the relationship between <region1> and <region2>?" \
  --temperature 0 --max-new-tokens 16 2> >(grep -v "kernels\|gemm_4bit" >&2)
echo "== done: the answer above comes from random weights; see README 'What the demo shows' =="

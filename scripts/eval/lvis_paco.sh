#!/usr/bin/env bash
# Open-vocabulary region classification, Osprey's protocol (SS / S-IoU). DATASET=lvis|paco (default lvis).
# Data: $EVAL_ROOT/lvis_paco/{lvis_val_1k_category.json,paco_val_1k_category.json} (Osprey's files, as published)
# and $EVAL_ROOT/lvis_paco/images/ (COCO 2017 train + val images in one folder; IMAGE_FOLDER overrides).
# SBERT_MODEL: a local sentence-transformers folder (default: the bundled all-MiniLM-L6-v2).
# TEMPERATURE=0.2: Osprey's sampling (default: greedy), SEED (0). See _common.sh for the rest.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
DATASET="${DATASET:-lvis}"
case "$DATASET" in lvis|paco) ;; *) echo "error: DATASET must be lvis or paco, got '$DATASET'" >&2; exit 2 ;; esac
D="$EVAL_ROOT/lvis_paco"
ANN="${ANN:-$D/${DATASET}_val_1k_category.json}"
[ -f "$ANN" ] || { echo "error: $ANN not found (Osprey's ${DATASET}_val_1k_category.json; docs/EVAL.md)" >&2; exit 2; }
OUT="$D/answers/$DATASET/$CKPT"
EXTRA=()
[ -n "${TEMPERATURE:-}" ] && EXTRA+=(--temperature "$TEMPERATURE" --seed "${SEED:-0}")
run_chunks rgpt_llava.eval.model_lvis_paco "$OUT" --question-file "$ANN" --image-folder "${IMAGE_FOLDER:-$D/images}" \
    ${EXTRA[@]+"${EXTRA[@]}"}
SCORE=()
[ -n "${SBERT_MODEL:-}" ] && SCORE+=(--sbert-model "$SBERT_MODEL")
"$PYTHON" -m rgpt_llava.eval.lvis_paco --annotation-file "$ANN" --result-file "$OUT/merge.jsonl" \
    --out "$OUT/metrics.json" --details-out "$OUT/details.jsonl" ${SCORE[@]+"${SCORE[@]}"}

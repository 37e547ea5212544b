#!/usr/bin/env bash
# Region classification on COCO-2017 val GT boxes. Data: $EVAL_ROOT/coco_cls/{instances_val2017.json,val2017/}.
# MODE (one_turn_each|multi_turn|one_turn_all), RANK=1 adds --rank-scores (ranking mAP). See _common.sh for the rest.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
D="$EVAL_ROOT/coco_cls"
ANN="${ANN:-$D/instances_val2017.json}"
EXTRA=(--mode "${MODE:-one_turn_each}")
[ "${RANK:-0}" = 1 ] && EXTRA+=(--rank-scores)
run_chunks rgpt_llava.eval.model_coco_cls "$D/answers/$CKPT" --annotation-file "$ANN" \
    --image-folder "${IMAGE_FOLDER:-$D/val2017}" "${EXTRA[@]}"
"$PYTHON" -m rgpt_llava.eval.coco_cls --annotation-file "$ANN" --result-file "$D/answers/$CKPT/merge.jsonl" \
    --out "$D/answers/$CKPT/metrics.json" --embedder "${EMBEDDER:-auto}"

#!/usr/bin/env bash
# POPE (as LLaVA's scripts/v1_5/eval/pope.sh). Data: $EVAL_ROOT/pope/{llava_pope_test.jsonl,coco/coco_pope_*.json,
# val2014/}.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
D="$EVAL_ROOT/pope"
run_chunks rgpt_llava.eval.model_pope "$D/answers/$CKPT" --question-file "$D/llava_pope_test.jsonl" \
    --image-folder "${IMAGE_FOLDER:-$D/val2014}"
"$PYTHON" -m rgpt_llava.eval.pope --annotation-dir "$D/coco" --question-file "$D/llava_pope_test.jsonl" \
    --result-file "$D/answers/$CKPT/merge.jsonl" --out "$D/answers/$CKPT/metrics.json"

#!/usr/bin/env bash
# Visual Genome region captioning. Data: $EVAL_ROOT/vg_cap/{vg_${SPLIT}_questions.jsonl (question_id, image, bbox),
# vg_${SPLIT}_refs.json ({question_id: [phrase]}), images/}.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
D="$EVAL_ROOT/vg_cap"; SPLIT="${SPLIT:-test}"
run_chunks rgpt_llava.eval.model_caption "$D/answers/$SPLIT/$CKPT" --question-file "$D/vg_${SPLIT}_questions.jsonl" \
    --image-folder "${IMAGE_FOLDER:-$D/images}"
"$PYTHON" -m rgpt_llava.eval.caption --annotation-file "$D/vg_${SPLIT}_refs.json" \
    --result-file "$D/answers/$SPLIT/$CKPT/merge.jsonl" --out "$D/answers/$SPLIT/$CKPT/metrics.json"

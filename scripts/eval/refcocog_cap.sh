#!/usr/bin/env bash
# RefCOCOg (umd) region captioning. Data: $EVAL_ROOT/refcocog_cap/{refcocog_${SPLIT}_refs.json,
# refcocog_${SPLIT}_cap_questions.jsonl,images/}; built from refs(umd).p + instances.json when missing.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
D="$EVAL_ROOT/refcocog_cap"; SPLIT="${SPLIT:-val}"
REFS="$D/refcocog_${SPLIT}_refs.json"; QS="$D/refcocog_${SPLIT}_cap_questions.jsonl"
if [ ! -f "$QS" ] && [ -f "$D/refs(umd).p" ]; then
    "$PYTHON" -m rgpt_llava.eval.caption build-refs --refs "$D/refs(umd).p" --split "$SPLIT" --out "$REFS" \
        --instances "$D/instances.json" --questions-out "$QS"
fi
run_chunks rgpt_llava.eval.model_caption "$D/answers/$SPLIT/$CKPT" --question-file "$QS" \
    --image-folder "${IMAGE_FOLDER:-$D/images}"
"$PYTHON" -m rgpt_llava.eval.caption --annotation-file "$REFS" --result-file "$D/answers/$SPLIT/$CKPT/merge.jsonl" \
    --out "$D/answers/$SPLIT/$CKPT/metrics.json"

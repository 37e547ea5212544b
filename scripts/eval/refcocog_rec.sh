#!/usr/bin/env bash
# RefCOCOg (umd) REC among proposals. Data: $EVAL_ROOT/refcocog_rec/{refcocog_${SPLIT}_rec.jsonl,images/}; built
# from refs(umd).p + instances.json + proposals.json when missing.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
D="$EVAL_ROOT/refcocog_rec"; SPLIT="${SPLIT:-val}"
QS="$D/refcocog_${SPLIT}_rec.jsonl"
if [ ! -f "$QS" ] && [ -f "$D/refs(umd).p" ]; then
    "$PYTHON" -m rgpt_llava.eval.rec build --refs "$D/refs(umd).p" --instances "$D/instances.json" --split "$SPLIT" \
        --proposals "$D/proposals.json" --out "$QS"
fi
run_chunks rgpt_llava.eval.model_rec "$D/answers/$SPLIT/$CKPT" --question-file "$QS" \
    --image-folder "${IMAGE_FOLDER:-$D/images}"
"$PYTHON" -m rgpt_llava.eval.rec --annotation-file "$QS" --result-file "$D/answers/$SPLIT/$CKPT/merge.jsonl" \
    --out "$D/answers/$SPLIT/$CKPT/metrics.json"

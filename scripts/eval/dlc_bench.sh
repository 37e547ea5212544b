#!/usr/bin/env bash
# DLC-Bench (Describe Anything): detailed region descriptions judged by an LLM. Data: $EVAL_ROOT/dlc_bench/DLC-bench/
# {annotations.json,qa.json,class_names.json,images/} (the benchmark's files as published). The judge: JUDGE_URL (an
# OpenAI-compatible base URL, e.g. http://127.0.0.1:9000/v1) and JUDGE_MODEL (DAM: meta-llama/Meta-Llama-3.1-8B-
# Instruct); JUDGE_API_KEY from the environment if the server needs one; JUDGE_ARGS (extra scorer flags).
# The judge is checked first: an unreachable one stops the script before anything is generated.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
: "${JUDGE_URL:?set JUDGE_URL to the judge's OpenAI-compatible base URL (e.g. http://127.0.0.1:9000/v1)}"
: "${JUDGE_MODEL:?set JUDGE_MODEL to the judge's model name}"
D="$EVAL_ROOT/dlc_bench"; DATA="${DLC_DATA:-$D/DLC-bench}"; OUT="$D/answers/$CKPT"
JUDGE=(--judge-url "$JUDGE_URL" --judge-model "$JUDGE_MODEL")
"$PYTHON" -m rgpt_llava.eval.dlc_bench check-judge "${JUDGE[@]}"
run_chunks rgpt_llava.eval.model_dlc_bench "$OUT" --annotation-file "$DATA/annotations.json" \
    --image-folder "${IMAGE_FOLDER:-$DATA/images}"
"$PYTHON" -m rgpt_llava.eval.dlc_bench --qa-file "$DATA/qa.json" --class-names "$DATA/class_names.json" \
    --result-file "$OUT/merge.jsonl" "${JUDGE[@]}" --judgments-file "$OUT/judgments.jsonl" \
    --out "$OUT/metrics.json" ${JUDGE_ARGS:-}

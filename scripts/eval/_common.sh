#!/usr/bin/env bash
# Shared by scripts/eval/*.sh (sourced). Environment:
#   MODEL_PATH (required), MODEL_BASE, CKPT (answers sub-folder; default: basename of MODEL_PATH),
#   GPUS (number of chunks, default: the ids in CUDA_VISIBLE_DEVICES, else 1), DEVICE (cuda|cpu, default cuda
#   when torch finds one, else cpu),
#   CONV_MODE (vicuna_v1), BATCH_SIZE (16), EVAL_ROOT (./playground/data/eval), PYTHON (python), GEN_ARGS (extra).
set -euo pipefail
: "${MODEL_PATH:?set MODEL_PATH to an RGPT checkpoint folder}"
CKPT="${CKPT:-$(basename "$MODEL_PATH")}"
EVAL_ROOT="${EVAL_ROOT:-./playground/data/eval}"
DEVICE="${DEVICE:-}"
CONV_MODE="${CONV_MODE:-vicuna_v1}"
BATCH_SIZE="${BATCH_SIZE:-16}"
PYTHON="${PYTHON:-python}"
GEN_ARGS="${GEN_ARGS:-}"
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then IFS=',' read -ra GPULIST <<< "$CUDA_VISIBLE_DEVICES"; else GPULIST=(); fi
GPUS="${GPUS:-${#GPULIST[@]}}"
[ "$GPUS" -ge 1 ] 2>/dev/null || GPUS=1
if [ "${#GPULIST[@]}" -lt "$GPUS" ]; then GPULIST=(); for ((i = 0; i < GPUS; i++)); do GPULIST+=("$i"); done; fi
BASE_ARGS=(--model-path "$MODEL_PATH" --conv-mode "$CONV_MODE" --batch-size "$BATCH_SIZE")
[ -n "$DEVICE" ] && BASE_ARGS+=(--device "$DEVICE")
[ -n "${MODEL_BASE:-}" ] && BASE_ARGS+=(--model-base "$MODEL_BASE")

# run_chunks MODULE ANSWERS_DIR ARGS... : one process per chunk (CUDA_VISIBLE_DEVICES per chunk, as LLaVA's
# multi-GPU scripts), then merge the chunk files into ANSWERS_DIR/merge.jsonl. Chunk files are resumable.
run_chunks() {
    local module="$1" dir="$2"; shift 2
    mkdir -p "$dir"
    local pids=() idx
    for ((idx = 0; idx < GPUS; idx++)); do
        CUDA_VISIBLE_DEVICES="${GPULIST[$idx]}" "$PYTHON" -m "$module" "$@" "${BASE_ARGS[@]}" \
            --answers-file "$dir/${GPUS}_${idx}.jsonl" --num-chunks "$GPUS" --chunk-idx "$idx" $GEN_ARGS &
        pids+=($!)
    done
    local status=0
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
    [ "$status" -eq 0 ] || { echo "error: a chunk of $module failed" >&2; exit 1; }
    : > "$dir/merge.jsonl"
    for ((idx = 0; idx < GPUS; idx++)); do cat "$dir/${GPUS}_${idx}.jsonl" >> "$dir/merge.jsonl"; done
}

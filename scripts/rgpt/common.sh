#!/usr/bin/env bash
# Shared by the RGPT training scripts (sourced). Paths and sizes come from the environment, with LLaVA-1.5's defaults.
#   GPUS (8)  PER_DEVICE_BATCH  MODEL_BASE (Vicuna-7B v1.5 folder)  VISION_TOWER (CLIP ViT-L/14-336 folder)
#   DATA_PATH  IMAGE_FOLDER  OUTPUT_DIR  LAUNCHER (deepspeed | python)  DRY_RUN=1 prints the command only
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
GPUS=${GPUS:-8}
MODEL_BASE=${MODEL_BASE:-./checkpoints/vicuna-7b-v1.5}
VISION_TOWER=${VISION_TOWER:-./checkpoints/clip-vit-large-patch14-336}
REFINER=${REFINER:-deconv}

# Keep the paper's global batch whatever the number of GPUs: GLOBAL = GPUS x PER_DEVICE x ACCUMULATION.
accumulation() {
  local global=$1 per_device=$2
  local denom=$((GPUS * per_device))
  if (( global % denom != 0 )); then
    echo "error: global batch $global is not a multiple of GPUS ($GPUS) x PER_DEVICE_BATCH ($per_device)" >&2
    exit 2
  fi
  echo $((global / denom))
}

launch() {
  local cmd
  if [ "${LAUNCHER:-deepspeed}" = deepspeed ]; then
    cmd=(deepspeed --num_gpus "$GPUS" rgpt_llava/train/train_mem.py "$@")
  else
    cmd=(python -m rgpt_llava.train.train "$@")
  fi
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; else "${cmd[@]}"; fi
}

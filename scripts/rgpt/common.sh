#!/usr/bin/env bash
# Shared by the RGPT training scripts (sourced). Paths and sizes come from the environment, with LLaVA-1.5's defaults.
#   GPUS (8)  PER_DEVICE_BATCH  MODEL_BASE (Vicuna-7B v1.5 folder)  VISION_TOWER (CLIP ViT-L/14-336 folder)
#   DATA_PATH  IMAGE_FOLDER  OUTPUT_DIR  LAUNCHER (deepspeed | python)  MASTER_PORT (deepspeed's rendezvous port)
#   RGPT_ATTN (flash_attention_2 | sdpa | eager; default: FlashAttention-2 where it can run, else SDPA)
#   DRY_RUN=1 prints the command only
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
GPUS=${GPUS:-8}
LAUNCHER=${LAUNCHER:-deepspeed}
case "$LAUNCHER" in
  deepspeed | python) ;;
  *) echo "error: LAUNCHER=$LAUNCHER is not a launcher; use deepspeed or python" >&2; exit 2 ;;
esac
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

# Flags every RGPT run shares (LLaVA-1.5's, plus the refiner): the paper pads to square at 336 px in both stages.
model_flags() {
  echo --model_name_or_path "$MODEL_BASE" --version v1 \
    --data_path "${DATA_PATH:-$1}" --image_folder "${IMAGE_FOLDER:-./playground/data}" \
    --vision_tower "$VISION_TOWER" --mm_projector_type mlp2x_gelu --mm_refiner_type "$REFINER" \
    --mm_vision_select_layer -2 --mm_use_im_start_end False --mm_use_im_patch_token False --image_aspect_ratio pad
}
# No evaluation flag: evaluation is off by default, and transformers renamed the flag (--evaluation_strategy up to
# 4.4x, --eval_strategy after), so naming it would stop the scripts on one stack or the other.
schedule_flags() {
  echo --bf16 True --num_train_epochs 1 --save_strategy steps \
    --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine --logging_steps 1 --model_max_length 2048 \
    --gradient_checkpointing True --dataloader_num_workers 4 --lazy_preprocess True --report_to "${REPORT_TO:-none}"
}

# The script's ZeRO config (zero2.json / zero3.json), for the DeepSpeed launcher only. LAUNCHER=python is one plain
# process, as LLaVA's `python llava/train/train.py`: plain PyTorch training, DeepSpeed not needed. (Given --deepspeed
# in one process, transformers turns DeepSpeed half on: its Trainer expects a DeepSpeed engine that accelerate never
# builds without a launcher's rank variables, and the first checkpoint save fails. An explicit --deepspeed among the
# extra arguments still works: rgpt_llava.train.train then starts DeepSpeed as a one-process group itself.)
zero_config() {
  if [ "$LAUNCHER" = deepspeed ]; then echo --deepspeed "$1"; fi
}

launch() {
  local cmd
  if [ "$LAUNCHER" = deepspeed ]; then
    cmd=(deepspeed --num_gpus "$GPUS" ${MASTER_PORT:+--master_port "$MASTER_PORT"} rgpt_llava/train/train_mem.py "$@")
  else
    cmd=(python -m rgpt_llava.train.train "$@")
  fi
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; else "${cmd[@]}"; fi
}

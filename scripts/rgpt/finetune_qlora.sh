#!/usr/bin/env bash
# Stage 2 with QLoRA on ONE GPU (NF4 + double quantisation; refiner and projector unquantised and trained), batch 4 x
# 32 accumulation = 128 (the paper's global batch), gradient checkpointing. Peak memory of the 7B model: docs/MEMORY.md
# (measured 8.4 GiB at batch 1, 14.7 GiB at batch 4: fits a 24 GB card).
LAUNCHER=${LAUNCHER:-python}  # before common.sh, whose default is deepspeed
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
GPUS=1
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-4}
ACC=$(accumulation 128 "$PER_DEVICE_BATCH")
# shellcheck disable=SC2046
launch $(model_flags ./playground/data/rgpt/stage2.json) $(schedule_flags) \
  --pretrain_mm_mlp_adapter "${PRETRAIN_ADAPTER:-./checkpoints/rgpt-vicuna-7b-pretrain/mm_projector.bin}" \
  --group_by_modality_length True \
  --bits 4 --double_quant True --quant_type nf4 \
  --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \
  --output_dir "${OUTPUT_DIR:-./checkpoints/rgpt-vicuna-7b-qlora}" \
  --per_device_train_batch_size "$PER_DEVICE_BATCH" --gradient_accumulation_steps "$ACC" \
  --save_steps 500 --save_total_limit 2 --learning_rate 2e-4 "$@"

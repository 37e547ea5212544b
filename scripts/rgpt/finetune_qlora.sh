#!/usr/bin/env bash
# Stage 2 with QLoRA on ONE GPU (NF4 + double quantisation; refiner and projector unquantised and trained), batch 4 x
# 32 accumulation = 128 (the paper's global batch), gradient checkpointing. Peak memory of the 7B model: docs/MEMORY.md
# (measured 8.4 GiB at batch 1, 14.7 GiB at batch 4: fits a 24 GB card).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
GPUS=1
LAUNCHER=${LAUNCHER:-python}
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-4}
ACC=$(accumulation 128 "$PER_DEVICE_BATCH")
launch \
  --model_name_or_path "$MODEL_BASE" \
  --version v1 \
  --data_path "${DATA_PATH:-./playground/data/rgpt/stage2.json}" \
  --image_folder "${IMAGE_FOLDER:-./playground/data}" \
  --vision_tower "$VISION_TOWER" \
  --pretrain_mm_mlp_adapter "${PRETRAIN_ADAPTER:-./checkpoints/rgpt-vicuna-7b-pretrain/mm_projector.bin}" \
  --mm_projector_type mlp2x_gelu \
  --mm_refiner_type "$REFINER" \
  --mm_vision_select_layer -2 \
  --mm_use_im_start_end False \
  --mm_use_im_patch_token False \
  --image_aspect_ratio pad \
  --group_by_modality_length True \
  --bits 4 --double_quant True --quant_type nf4 \
  --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \
  --bf16 True \
  --output_dir "${OUTPUT_DIR:-./checkpoints/rgpt-vicuna-7b-qlora}" \
  --num_train_epochs 1 \
  --per_device_train_batch_size "$PER_DEVICE_BATCH" \
  --gradient_accumulation_steps "$ACC" \
  --evaluation_strategy no \
  --save_strategy steps \
  --save_steps 500 \
  --save_total_limit 2 \
  --learning_rate 2e-4 \
  --weight_decay 0. \
  --warmup_ratio 0.03 \
  --lr_scheduler_type cosine \
  --logging_steps 1 \
  --model_max_length 2048 \
  --gradient_checkpointing True \
  --dataloader_num_workers 4 \
  --lazy_preprocess True \
  --report_to "${REPORT_TO:-none}" "$@"

#!/usr/bin/env bash
# Stage 2 (paper Sec. 3.2 / 4.1): refiner + projector + LLM trained, CLIP frozen; region data (V3Det 10/class, COCO and
# LVIS 20/class, VG, RefCOCOg, RecapD) + LLaVA-665K; lr 2e-5, global batch 128, 1 epoch; other settings as stage 1.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-16}
ACC=$(accumulation 128 "$PER_DEVICE_BATCH")
launch \
  --deepspeed ./scripts/zero3.json \
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
  --bf16 True \
  --output_dir "${OUTPUT_DIR:-./checkpoints/rgpt-vicuna-7b}" \
  --num_train_epochs 1 \
  --per_device_train_batch_size "$PER_DEVICE_BATCH" \
  --gradient_accumulation_steps "$ACC" \
  --evaluation_strategy no \
  --save_strategy steps \
  --save_steps 50000 \
  --save_total_limit 1 \
  --learning_rate 2e-5 \
  --weight_decay 0. \
  --warmup_ratio 0.03 \
  --lr_scheduler_type cosine \
  --logging_steps 1 \
  --model_max_length 2048 \
  --gradient_checkpointing True \
  --dataloader_num_workers 4 \
  --lazy_preprocess True \
  --report_to "${REPORT_TO:-none}" "$@"

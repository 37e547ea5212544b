#!/usr/bin/env bash
# Stage 1 (paper Sec. 3.2 / 4.1): refiner + projector trained, CLIP and the LLM frozen; LCS-558K + region data
# (V3Det 100/class, VG, RefCOCOg); lr 1e-3, global batch 256, 1 epoch, cosine, warmup 0.03, weight decay 0; 336 px,
# padded to square. --version v1 (not LLaVA's 'plain'): region data are conversations, which 'plain' would cut to the
# first answer. Writes OUTPUT_DIR/mm_projector.bin (projector + refiner) for stage 2.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-32}
ACC=$(accumulation 256 "$PER_DEVICE_BATCH")
launch \
  --deepspeed ./scripts/zero2.json \
  --model_name_or_path "$MODEL_BASE" \
  --version v1 \
  --data_path "${DATA_PATH:-./playground/data/rgpt/stage1.json}" \
  --image_folder "${IMAGE_FOLDER:-./playground/data}" \
  --vision_tower "$VISION_TOWER" \
  --mm_projector_type mlp2x_gelu \
  --mm_refiner_type "$REFINER" \
  --tune_mm_mlp_adapter True \
  --mm_vision_select_layer -2 \
  --mm_use_im_start_end False \
  --mm_use_im_patch_token False \
  --image_aspect_ratio pad \
  --bf16 True \
  --output_dir "${OUTPUT_DIR:-./checkpoints/rgpt-vicuna-7b-pretrain}" \
  --num_train_epochs 1 \
  --per_device_train_batch_size "$PER_DEVICE_BATCH" \
  --gradient_accumulation_steps "$ACC" \
  --evaluation_strategy no \
  --save_strategy steps \
  --save_steps 24000 \
  --save_total_limit 1 \
  --learning_rate 1e-3 \
  --weight_decay 0. \
  --warmup_ratio 0.03 \
  --lr_scheduler_type cosine \
  --logging_steps 1 \
  --model_max_length 2048 \
  --gradient_checkpointing True \
  --dataloader_num_workers 4 \
  --lazy_preprocess True \
  --report_to "${REPORT_TO:-none}" "$@"

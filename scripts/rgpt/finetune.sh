#!/usr/bin/env bash
# Stage 2 (paper Sec. 3.2 / 4.1): refiner + projector + LLM trained, CLIP frozen; region data (V3Det 10/class, COCO and
# LVIS 20/class, VG, RefCOCOg, RecapD) + LLaVA-665K; lr 2e-5, global batch 128, 1 epoch; other settings as stage 1.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-16}
ACC=$(accumulation 128 "$PER_DEVICE_BATCH")
# shellcheck disable=SC2046
launch $(zero_config ./scripts/zero3.json) $(model_flags ./playground/data/rgpt/stage2.json) $(schedule_flags) \
  --pretrain_mm_mlp_adapter "${PRETRAIN_ADAPTER:-./checkpoints/rgpt-vicuna-7b-pretrain/mm_projector.bin}" \
  --group_by_modality_length True \
  --output_dir "${OUTPUT_DIR:-./checkpoints/rgpt-vicuna-7b}" \
  --per_device_train_batch_size "$PER_DEVICE_BATCH" --gradient_accumulation_steps "$ACC" \
  --save_steps 50000 --save_total_limit 1 --learning_rate 2e-5 "$@"

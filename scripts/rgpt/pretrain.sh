#!/usr/bin/env bash
# Stage 1 (paper Sec. 3.2 / 4.1): refiner + projector trained, CLIP and the LLM frozen; LCS-558K + region data
# (V3Det 100/class, VG, RefCOCOg); lr 1e-3, global batch 256, 1 epoch, cosine, warmup 0.03, weight decay 0; 336 px,
# padded to square. --version v1 (not LLaVA's 'plain'): region data are conversations, which 'plain' would cut to the
# first answer. Writes OUTPUT_DIR/mm_projector.bin (projector + refiner) for stage 2.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-32}
ACC=$(accumulation 256 "$PER_DEVICE_BATCH")
# shellcheck disable=SC2046  # word splitting of the shared flags is intended (paths without spaces)
launch $(zero_config ./scripts/zero2.json) $(model_flags ./playground/data/rgpt/stage1.json) $(schedule_flags) \
  --tune_mm_mlp_adapter True \
  --output_dir "${OUTPUT_DIR:-./checkpoints/rgpt-vicuna-7b-pretrain}" \
  --per_device_train_batch_size "$PER_DEVICE_BATCH" --gradient_accumulation_steps "$ACC" \
  --save_steps 24000 --save_total_limit 1 --learning_rate 1e-3 "$@"

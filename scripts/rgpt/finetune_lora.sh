#!/usr/bin/env bash
# Stage 2 with LoRA (LLaVA-1.5's finetune_lora.sh settings: r 128, alpha 256, projector lr 2e-5); the refiner and
# projector are trained fully and saved as non_lora_trainables.bin. Load with --model-base MODEL_BASE, or merge with
# scripts/rgpt/merge_lora_weights.py.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
exec bash "$(dirname "${BASH_SOURCE[0]}")/finetune.sh" \
  --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \
  --learning_rate 2e-4 --output_dir "${OUTPUT_DIR:-./checkpoints/rgpt-vicuna-7b-lora}" "$@"

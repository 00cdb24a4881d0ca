#!/usr/bin/env bash
# LAMB (layer-wise trust ratio clipped to [--min_coeff, --max_coeff], DeepSpeed FusedLamb's rule):
# tolerates a higher LR than AdamW at this batch size.
# Usage: [NUM_GPUS=8 PRECISION=fp16 DATA=... OUT=...] shell/lamb.sh [run_pretraining.py flags]
source "$(dirname "$0")/common.sh"
pretrain lamb --lr 4e-3 --adam_beta1 0.9 --adam_beta2 0.999 --adam_eps 1e-6 --weight_decay 0.01 \
  --min_coeff 0.01 --max_coeff 0.3 --warmup_proportion 0.06 "$@"

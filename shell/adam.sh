#!/usr/bin/env bash
# Adam with L2 weight decay folded into the gradient (not AdamW), otherwise adamw.sh's recipe.
# Usage: [NUM_GPUS=8 PRECISION=fp16 DATA=... OUT=...] shell/adam.sh [run_pretraining.py flags]
source "$(dirname "$0")/common.sh"
pretrain adam --lr 1e-3 --adam_beta1 0.9 --adam_beta2 0.98 --adam_eps 1e-6 --weight_decay 0.01 \
  --warmup_proportion 0.06 "$@"

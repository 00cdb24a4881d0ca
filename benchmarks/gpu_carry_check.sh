#!/usr/bin/env bash
# Proves the GPU check's carried set on this CPU machine (issue #21): a fresh venv holding only torch and packages
# of the GPU image's list (benchmarks/gpu_image.txt, at its versions where known: transformers 5.17, hub 1.33, ...),
# plus the wheels `gpu_check.sh --prepare --wheels` carries, installed the way the GPU run installs them
# (--no-deps --target, on PYTHONPATH). Passes when, offline, `import transformers, deepspeed` works and pytest
# collects every test the check selects on a GPU (GPU_CHECK_COLLECT=1). Fails if anything outside the image's list
# got into the venv. A few minutes (downloads); needs the project's venv (make setup) for the wheels it builds.
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
"$V" - benchmarks/gpu_image.txt <<'PY'
import importlib.metadata as metadata
import re
import sys

def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()

image = {norm(line.split("==")[0]) for line in open(sys.argv[1]) if line.strip() and not line.startswith("#")}
installed = {norm(d.metadata["Name"]) for d in metadata.distributions()}
outside = sorted(installed - image)
print(f"venv: {len(installed)} distributions, all in the image's list" if not outside else "")
if outside:
    sys.exit(f"error: installed but not on the GPU image: {', '.join(outside)}")
PY
# the carried wheels, for this Python, installed as on the GPU
CARRY_PYTHON=$("$V" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")') WHEELS=$WORK/whl \
    bash benchmarks/gpu_check.sh --prepare --wheels > "$WORK/prepare.log" 2>&1 || { tail -20 "$WORK/prepare.log"; exit 1; }
ls "$WORK/whl"
"$V" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WORK"/whl/*.whl
PYTHONPATH=$WORK/site HF_HUB_OFFLINE=1 "$V" -c \
    "import transformers, deepspeed, pytorch_optimizer; print('import ok: transformers', transformers.__version__,
    'deepspeed', deepspeed.__version__)"
PYTHONPATH=$WORK/site PYTHON=$V GPU_CHECK_COLLECT=1 GPU_CHECK_NO_INSTALL=1 OUT=$WORK/out bash benchmarks/gpu_check.sh
for part in numerics deepspeed; do
    grep -qE "^[0-9]+/[0-9]+ tests collected|^[0-9]+ tests? collected" "$WORK/out/$part.log" \
        || { echo "error: $part: collection failed:"; tail -20 "$WORK/out/$part.log"; exit 1; }
    if grep -qE "error|Error" "$WORK/out/$part.log"; then echo "error: $part:"; tail -20 "$WORK/out/$part.log"; exit 1; fi
done
echo "carry check passed (work folder $WORK)"

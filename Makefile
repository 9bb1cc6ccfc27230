# sfhq-factory: every command creates .venv first when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl))

.PHONY: setup run test test-fast bench protos lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the CPU wheel, so that nothing later pulls a CUDA build or torchvision
	$(PY) -m pip install -q $(if $(TORCH_WHEEL),$(TORCH_WHEEL),torch==2.13.0)
	$(PY) -m pip install -q -e '.[services,dev]'
	$(PY) -c "import torch, grpc, redis, faiss, dlib, transformers, onnxruntime; print('setup ok: torch', torch.__version__)"
	touch $(STAMP)

protos: setup
	$(PY) -m sfhq.protos_build

run: setup
	$(VENV)/bin/sfhq run examples/inspiration out/example --random-weights

test: setup
	$(PY) -m sfhq.protos_build --check
	$(PY) -m pytest -q -x --durations=15 tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not integration" tests/unit

bench: setup
	$(PY) bench/run_all.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check . || true
	$(VENV)/bin/pip-audit --skip-editable --progress-spinner off || echo "pip-audit could not reach its advisory database"

clean:
	rm -rf $(VENV) out var .pytest_cache

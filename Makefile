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
	$(PY) -c "import torch, grpc, redis, faiss, dlib, transformers, diffusers, onnxruntime; print('setup ok: torch', torch.__version__)"
	touch $(STAMP)

protos: setup
	$(PY) -m sfhq.protos_build

run: setup
	$(VENV)/bin/sfhq run examples/inspiration out/example --random-weights --overwrite

test: setup
	$(PY) -m sfhq.protos_build --check
	$(PY) -m pytest -q -x --durations=15 tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not integration" tests/unit

bench: setup
	$(PY) bench/run_all.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	@if git grep -n '``' -- '*.py' ':!sfhq/v1' ; then \
		echo "docstrings and comments use Markdown backticks (docs/contributing.md), not reST double ones"; exit 1; fi
	@# pip-audit cannot reach an advisory database from every mirror: its result is printed, never fatal.
	@timeout 180 $(VENV)/bin/pip-audit --skip-editable --progress-spinner off --timeout 20 > .pip-audit.log 2>&1; \
		grep -v "could not be audited" .pip-audit.log; \
		echo "pip-audit (printed, not fatal): $$(grep -c 'could not be audited' .pip-audit.log) packages not auditable here"

clean:
	rm -rf $(VENV) out var .pytest_cache

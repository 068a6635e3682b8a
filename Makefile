# Two commands on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Extra pip arguments for torch, e.g. TORCH="torch==2.14.1 torchvision==0.29.1" to pin a local build.
TORCH ?= torch torchvision

.PHONY: install train test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# `accelerate launch`, through its module: the `accelerate` command also imports its other subcommands
# (timm and torchvision for estimate-memory): 2-3 s more before the run starts.
train: install
	$(PY) -m accelerate.commands.launch --config_file accelerate.yaml --num_cpu_threads_per_process $$(nproc) tools/train.py $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install  # the import contracts in setup.cfg: imports point down the layers of docs/architecture.md
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info

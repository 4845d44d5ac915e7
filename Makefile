# Two commands on a fresh clone (README): `make run` (the main job) and `make test` (lint + the whole test suite).
# Both create .venv on first use from pyproject.toml, pinned by constraints.txt (torch 2.13.0: the CPU wheel this
# machine kind provides; any other torch pulls GBs of CUDA).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PYTEST_WORKERS ?= 2

.PHONY: setup run test lint format lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/setup-system.sh
	bash scripts/setup-system.sh dataset-fashion-mnist chromium libgl1
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(FIND_LINKS) -c constraints.txt -e ".[train,runtime,dev,deploy,formats,peers,serve,video,track,ray]"
	rm -f $(VENV)/.installed-*
	touch $@

# The main job: train the embedded default (Fashion-MNIST, < 10 min on 2 cores), then evaluate its best checkpoint.
RUN_DIR ?= runs/default
run: $(STAMP)
	$(BIN)/mnv2 train --out $(RUN_DIR) || { test -f $(RUN_DIR)/train_state.pt && $(BIN)/mnv2 train --resume $(RUN_DIR); }
	$(BIN)/mnv2 eval $(RUN_DIR)/best.safetensors --data fashion-mnist

lint: $(STAMP)
	$(BIN)/ruff format --check src tests scripts benchmarks
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -m isolated
	$(BIN)/pytest -n $(PYTEST_WORKERS) -m "not isolated" --durations=15

format: $(STAMP)
	$(BIN)/ruff format src tests scripts benchmarks
	$(BIN)/ruff check --fix src tests scripts benchmarks

# Re-pin constraints.txt after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | grep -v '^mnv2' > constraints.txt

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

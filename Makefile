# robustbench_bn: `make demo` runs the main job on the embedded default, `make test` the tests.
# Each target sets itself up (virtual environment, package, Fashion-MNIST) on a fresh machine.

VENV ?= .venv
PYTHON_SYSTEM ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
DEMO_DIR ?= outputs/demo
# The source model weights behind the README's tables; `make demo DEMO_MODEL=` trains anew
# (training numerics, and so the numbers, differ a little between CPUs).
DEMO_MODEL ?= results/fashion_mnist_c/demo_model.pt

.DEFAULT_GOAL := help
.PHONY: help install data demo test test-slow lint format sweep clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) data ## create .venv, install the package with dev extras, fetch Fashion-MNIST

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

data: ## install Fashion-MNIST from Debian when running as root and it is missing
	@if [ ! -f $(FASHION_MNIST) ] && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y dataset-fashion-mnist || \
		(apt-get update && apt-get install -y dataset-fashion-mnist); \
	fi
	@test -f $(FASHION_MNIST) || echo "Fashion-MNIST not in /usr/share/datasets: run 'sudo apt-get install -y dataset-fashion-mnist' or add dataset.download=true"

demo: install ## source vs bn on Fashion-MNIST-C (15 corruptions x 5 severities), side by side
	@if [ -n "$(DEMO_MODEL)" ]; then $(BIN)/rbn-train-source --install $(DEMO_MODEL); fi
	$(BIN)/rbn-run --multirun method=source,bn hydra.sweep.dir=$(DEMO_DIR)
	$(BIN)/rbn-report $(DEMO_DIR) --out $(DEMO_DIR)/report

sweep: install ## the whole embedded-default grid (8 methods x 2 fine-tunes), resumable
	@if [ -n "$(DEMO_MODEL)" ]; then $(BIN)/rbn-train-source --install $(DEMO_MODEL); fi
	$(BIN)/rbn-run --multirun experiment=fashion_grid

test: install ## the tests (offline, CPU; about 3 minutes on 2 idle cores)
	$(BIN)/pytest -q -m "not slow"

test-slow: install ## the slow end-to-end tests
	$(BIN)/pytest -q -m slow || [ $$? -eq 5 ]  # 5: no slow test selected

lint: install ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## ruff format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## remove outputs and caches (keeps .venv)
	rm -rf outputs multirun .cache .pytest_cache .ruff_cache

# discbench: the two set-up commands of the README.
#   make demo   sets everything up, runs MUSE self-distillation against the baselines on Fashion-MNIST (3 seeds)
#               and prints the leaderboard (about 12 minutes on 2 CPU cores).
#   make test   sets everything up and runs the test suite.
# Both work on a fresh Debian/Ubuntu machine with python3 (>= 3.11); the dataset comes from Debian's
# dataset-fashion-mnist package, torch and torchvision from pip.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup demo test lint clean-demo

$(FASHION):
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y dataset-fashion-mnist

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e ".[dev]"
	touch $@

setup: $(FASHION) $(BIN)/.installed

demo: setup
	$(BIN)/discbench sweep --suite demo --results-dir results/demo --out results/demo/LEADERBOARD.md

test: setup
	$(BIN)/python -m pytest -q
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -m triton tests/triton

lint: setup
	$(BIN)/ruff check .

clean-demo:
	rm -rf results/demo

# discbench: the two set-up commands of the README.
#   make demo   sets everything up, runs MUSE self-distillation against the baselines on Fashion-MNIST (TinyNet,
#               3 seeds, two jobs of one thread each: the published records' layout) and prints the leaderboard
#               (1.5 minutes measured on 2 CPU cores; see the README).
#   make test   sets everything up and runs the test suite (the browser test included: chromium from apt).
#   make check  fails with a diff when results/LEADERBOARD.md is stale (the published suites: bench.toml's
#               [publish]); make leaderboard re-renders it and its figures; make publish writes the static site into
#               site/; make summary appends the tables to
#               $GITHUB_STEP_SUMMARY (stdout elsewhere). .ci/run and .github/workflows/ci.yml run the same targets.
# Both work on a fresh Debian/Ubuntu machine with python3 (>= 3.11); the dataset comes from Debian's
# dataset-fashion-mnist package, torch and torchvision from pip.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CHROMIUM := /usr/bin/chromium
SITE ?= site
# make test: one pytest worker per usable CPU (each test runs torch on one thread; a file's tests share a worker)
TEST_WORKERS ?= $(shell nproc)

.PHONY: setup demo test lint clean-demo check leaderboard publish summary

$(FASHION):
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y dataset-fashion-mnist

$(CHROMIUM):
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y chromium

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e ".[dev]"
	touch $@

setup: $(FASHION) $(CHROMIUM) $(BIN)/.installed

demo: setup
	$(BIN)/discbench sweep --suite demo --launcher local --workers 2 --results-dir results/demo --out results/demo/LEADERBOARD.md

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -m triton tests/triton

lint: setup
	$(BIN)/ruff check .

check: setup
	$(BIN)/discbench leaderboard --check

leaderboard: setup
	$(BIN)/discbench leaderboard --published

publish: setup
	$(BIN)/discbench publish --published --out $(SITE)

summary:
	cat $(SITE)/LEADERBOARD.md >> "$${GITHUB_STEP_SUMMARY:-/dev/stdout}"

clean-demo:
	rm -rf results/demo

# Two commands set everything up on a fresh machine: `make repro` and `make test`.
VENV := .venv
PYTHON ?= python3.11
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv repro test lint format bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

repro: venv  ## run the whole pipeline on the embedded default (tiny models, demo data)
	dvc repro

test: venv lint  ## lint, then every test
	pytest

lint: venv
	ruff check .
	ruff format --check .

format: venv
	ruff check --fix .
	ruff format .

bench: venv  ## seed-style loop vs the engine, same samples and model
	dvc repro sample build-tiny
	halp bench --model qwen2_5_vl --n 32 --batch-size 8

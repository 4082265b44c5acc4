# Two commands set everything up on a fresh machine: `make repro` and `make test`.
VENV := .venv
PYTHON ?= python3.11
LOCK := requirements.lock
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv lock repro test lint format bench docs

# Exactly the locked set (hash-checked, nothing resolved again), then halp itself on top of it.
$(VENV)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	$(VENV)/bin/pip check
	touch $@

venv: $(VENV)/.installed

# Re-resolve pyproject.toml's ranges into the lock (every package, pinned and hashed; Python 3.11, Linux
# x86_64). Keeps existing pins that still fit; LOCK_ARGS=--upgrade takes the newest releases,
# LOCK_ARGS='--upgrade-package transformers' one package.
# Only the locked tools, not halp itself: after pyproject.toml gains a dependency, the old lock cannot
# install halp (pip check would fail), yet it holds pip-compile.
$(VENV)/bin/pip-compile:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --require-hashes --no-deps -r $(LOCK)

lock: $(VENV)/bin/pip-compile
	CUSTOM_COMPILE_COMMAND="make lock" pip-compile --quiet --extra dev --allow-unsafe --generate-hashes \
		--strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_ARGS) -o $(LOCK) pyproject.toml

repro: venv  ## run the whole pipeline on the embedded default (tiny models, demo data)
	dvc repro

test: venv lint  ## lint, then every test
	pytest

lint: venv
	ruff check .
	ruff format --check .

docs: venv  ## the manual (docs/, mkdocs.yml) into site/; --strict: a broken link or reference fails
	NO_MKDOCS_2_WARNING=1 mkdocs build --strict

format: venv
	ruff check --fix .
	ruff format .

bench: venv  ## seed-style loop vs the engine, same samples and model
	dvc repro sample build-tiny
	halp bench --model qwen2_5_vl --n 32 --batch-size 8

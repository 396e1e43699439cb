# Shorthands for dev.py, which holds the README's two commands and needs only Python:
#   make run    = python3 dev.py run    the sidecar on the example policies (mock provider)
#   make test   = python3 dev.py test   lint and the whole test suite (what CI runs)
#   make docs   = python3 dev.py docs   the docs site into site/ (offline; fails on a warning)
#   make docs-serve                     preview it at http://localhost:8000
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench check clean docs docs-serve docs-gen

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

run:
	$(PYTHON) dev.py run

check: $(STAMP)
	$(VENV)/bin/llm-sidecar check policies

test:
	$(PYTHON) dev.py test

docs:
	$(PYTHON) dev.py docs

docs-serve:
	$(PYTHON) dev.py docs-serve

docs-gen:
	$(PYTHON) dev.py docs-gen

bench: $(STAMP)
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site .cache

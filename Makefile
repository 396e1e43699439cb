# The two commands of the README, each working on a fresh clone.
#   make run    the sidecar on the example policies (mock provider: no keys, no servers)
#   make test   lint and the whole test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/llm-sidecar serve --policies policies

check: $(STAMP)
	$(VENV)/bin/llm-sidecar check policies

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/llm-sidecar check policies
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

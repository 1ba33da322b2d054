# Two entry points (see README): `make demo` runs the main job, `make test` runs the test suite.
# Both create the virtual environment first if needed.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

.PHONY: setup demo test lint bench
setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/medsyn demo

test: $(VENV)/.installed
	$(VENV)/bin/pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks

# Everything a fresh clone needs, with only Python >= 3.10 and make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SOURCES := otel_json_exporter tests examples $(wildcard benchmarks)

.PHONY: demo test lint unit test-versions test-lowest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py ./metrics

lint: $(STAMP)
	$(PY) -m ruff check $(SOURCES)
	$(PY) -m ruff format --check $(SOURCES)
	$(PY) -m mypy --strict $(SOURCES)

unit: $(STAMP)
	$(PY) -m pytest

test: lint unit

# The suite on Python 3.10, 3.12 and 3.13 too, where this machine has them (CI runs it).
test-versions:
	bash .ci/other-pythons

# The suite against the lowest dependency versions pyproject.toml declares (CI runs it).
test-lowest:
	bash .ci/lowest

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .venvs .pytest_cache .mypy_cache .ruff_cache build *.egg-info metrics

# Two entry points: `make demo` runs the pipeline on a built-in synthetic corpus, `make test` runs the tests.
# Both create .venv and install avl into it first (torch, zarr, PyAV, ... from the package registry).

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/avl demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs .pytest_cache

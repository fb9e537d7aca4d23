# learnae: `make demo` and `make test` install what is missing, then run.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test test-fast demo lint bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

install: $(STAMP)

## test: the whole suite, slow integration tests included (what CI runs): scripts/run-tests
test: install
	PYTHON=$(BIN)/python bash scripts/run-tests $(PYTEST_ARGS)

## test-fast: unit tests only, for the edit-test loop
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

## demo: the main job (a local private swarm on real data)
demo: install
	$(BIN)/learnae demo

## lint: ruff (style, docstrings of public names), mypy (types) and import-linter (layers)
lint: install
	$(BIN)/ruff check learnae tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache --no-logo setup.cfg

## bench: every benchmark in bench/, printing its figures
bench: install
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis *.egg-info

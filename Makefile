# Two entry points for a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# benchmarks/ may not exist on every branch
CODE := $(wildcard src tests benchmarks monitoring)

.PHONY: demo test lint typecheck unit test-pythons bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/exitstack-otel demo

lint: $(BIN)/.installed
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

typecheck: $(BIN)/.installed
	$(BIN)/mypy $(CODE)

unit: $(BIN)/.installed
	$(BIN)/pytest

# the stack's contextlib-equivalence tests on every supported Python, one .venv-3.X each
test-pythons:
	scripts/test-pythons

test: lint typecheck unit test-pythons

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .venv-3.* .mypy_cache .ruff_cache .pytest_cache .hypothesis

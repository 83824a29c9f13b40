# Two entry points for a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CODE := src tests benchmarks monitoring

.PHONY: demo test lint typecheck unit test-pythons test-fastapi-oldest bench clean

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

# The oldest FastAPI with all three request stacks (pyproject's fastapi extra has the same bound);
# the FastAPI tests run against it in a venv of their own, the newest release runs in .venv.
OLDEST_FASTAPI := 0.121.0
OLDEST_VENV := .venv-fastapi-oldest
FASTAPI_TESTS := tests/test_fastapi.py tests/test_traces.py tests/test_instrumentor.py tests/test_instrumentor_otlp.py

$(OLDEST_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install --quiet -e '.[dev]' 'fastapi==$(OLDEST_FASTAPI)'
	touch $@

test-fastapi-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/python -c 'import fastapi; assert fastapi.__version__ == "$(OLDEST_FASTAPI)", fastapi.__version__'
	$(OLDEST_VENV)/bin/pytest $(FASTAPI_TESTS)

test: lint typecheck unit test-pythons test-fastapi-oldest

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .venv-3.* .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Two entry points for a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CODE := src tests benchmarks monitoring scripts
# what the tests exercise; the dev tools come from pyproject's [dependency-groups]
EXTRAS := demo,fastapi,instrumentation

.PHONY: demo test test-fast lint typecheck unit test-pythons test-lowest bench clean

# pip 25.1 is the first to install PEP 735 dependency groups (--group)
$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "exitstack-otel needs Python 3.10 or newer; run: make PYTHON=python3.X" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=25.1'
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]' --group dev
	touch $@

demo: $(BIN)/.installed
	$(BIN)/exitstack-otel demo

lint: $(BIN)/.installed
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

typecheck: $(BIN)/.installed
	$(BIN)/mypy $(CODE)

# the newest versions pyproject allows
unit: $(BIN)/.installed
	$(BIN)/pytest

# the edit loop: every test that starts no server and no other program (all but tests/integration/
# and the few marked integration beside the code they share), with 40 random stacks per
# contextlib-equivalence test instead of 300; well under a minute
test-fast: $(BIN)/.installed
	EXITSTACK_EQUIVALENCE_EXAMPLES=40 $(BIN)/pytest -q -m "not integration"

# the stack's contextlib-equivalence tests on every supported Python, one .venv-3.X each
test-pythons:
	scripts/test-pythons

# the lowest versions pyproject allows (.venv-lowest, Python 3.10), and the API without the SDK
# (.venv-api-only); both are built with uv from .venv
test-lowest: $(BIN)/.installed
	UV=$(BIN)/uv scripts/test-lowest

test: lint typecheck unit test-pythons test-lowest

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf build src/*.egg-info src/exitstack_otel/_*.so
	rm -rf $(VENV) .venv-lowest .venv-api-only .venv-fastapi-oldest .venv-3.* .mypy_cache .ruff_cache .pytest_cache .hypothesis

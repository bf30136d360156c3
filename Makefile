# paygate — `make run` to try it, `make test` to check it. `make help` lists the rest.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help run test lint fmt bench bench-quick clean

help:  ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "paygate needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)  ## Serve with demo data (embedded PostgreSQL/Redis unless DATABASE_URL/REDIS_URL)
	$(BIN)/paygate serve --demo

test: $(STAMP) lint  ## Lint, type-check and run every test against real PostgreSQL and Redis
	$(BIN)/python -m pytest

lint: $(STAMP)  ## ruff, mypy (strict) and the import-linter contracts (the rooms' layering)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: $(STAMP)  ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)  ## Run every benchmark scenario and print the table
	$(BIN)/paygate bench

bench-quick: $(STAMP)  ## A short smoke run of the benchmarks
	$(BIN)/paygate bench --quick

clean:  ## Remove the virtualenv and the embedded servers' data
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache

# Each target does its own setup: a virtual environment in .venv, rebuilt when pyproject.toml changes.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; \
	done)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean

$(INSTALLED): pyproject.toml
	@test -n "$(PYTHON)" || { echo "labvault needs Python >= 3.11 (python3.11 or newer on the PATH)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

demo: $(INSTALLED)
	$(BIN)/labvault demo

lint: $(INSTALLED)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(INSTALLED)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -n auto --dist loadfile --durations=25

bench: $(INSTALLED)
	$(BIN)/python -m bench.import_patients
	$(BIN)/python -m bench.sqlite_floor
	$(BIN)/python -m bench.find_patient
	$(BIN)/python -m bench.audit_log
	$(BIN)/python -m bench.ratelimit
	$(BIN)/python -m bench.passwords
	$(BIN)/python -m bench.booking
	$(BIN)/python -m bench.keys
	$(BIN)/python -m bench.results
	$(BIN)/python -m bench.fhir
	$(BIN)/python -m bench.guard
	$(BIN)/python -m bench.scraper

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

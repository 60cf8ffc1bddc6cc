# The two commands of the README: `make reproduce` and `make test`.
# Both build the virtual environment in .venv when it is missing or older than pyproject.toml.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.biovita-installed
PRESET ?= demo
RUN ?=

.PHONY: env reproduce test test-notebooks test-python check-export export readme clean-runs

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)
	@echo "Environment ready in $(VENV)."

reproduce: $(STAMP)
	$(BIN)/biovita reproduce --preset $(PRESET) $(if $(RUN),--run $(RUN))

test: $(STAMP) check-export test-notebooks test-python

check-export: $(STAMP)
	$(BIN)/python tools/check_export.py
	$(BIN)/python tools/readme.py --check

# Cells flagged `slow` or `gpu` are skipped; run them with `make test-notebooks FLAGS="slow gpu"`.
test-notebooks: $(STAMP)
	$(BIN)/nbdev-test --n-workers 2 --timing $(if $(FLAGS),--flags "$(FLAGS)")

# pytest exits with 5 when no test ran; make treats every non-zero status as a failure.
test-python: $(STAMP)
	$(BIN)/python -m pytest

export: $(STAMP)
	$(BIN)/nbdev-export
	$(BIN)/python tools/readme.py

readme: $(STAMP)
	$(BIN)/python tools/readme.py

clean-runs:
	rm -rf runs

# Two commands: `make demo` (set up, then run the main job) and `make test` (set up, then the tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

# Re-installs only when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# A real search: synthetic data (generated on first use), SQLite in data/nas.db, a local Ray.
demo: setup
	$(BIN)/nas search start --config configs/search/demo.yaml
	$(BIN)/nas arch show nasfpn --output out/nasfpn.svg
	$(BIN)/nas arch show fpn --output out/fpn.svg

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m bench.controller
	$(BIN)/python -m bench.proxy
	$(BIN)/python -m bench.search

clean:
	rm -rf $(VENV) out data .pytest_cache .hypothesis *.egg-info

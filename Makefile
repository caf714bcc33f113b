# Two commands: `make demo` (set up, then run the main job) and `make test` (set up, then the tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test bench clean

# Re-installs only when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# The dashboard's browser test drives Debian's Chromium with Playwright (no browser download).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell test "$$(id -u)" -eq 0 || echo sudo)
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium

browser: $(CHROMIUM)

# A real search: synthetic data and the proxy base (built on first use), SQLite in data/nas.db, a
# local Ray. First the proxy's noise and FPN's reward (3 cells x 2 seeds), then the search carrying them.
demo: setup
	$(BIN)/nas arch show nasfpn --output out/nasfpn.svg
	$(BIN)/nas arch show fpn --output out/fpn.svg
	$(BIN)/nas proxy fidelity -c configs/proxy/demo.yaml --cells fpn,nasfpn --random 1 --seeds 2 --metric AP50 \
		--json out/demo-fidelity.json
	$(BIN)/nas search start --config configs/search/demo.yaml --fidelity out/demo-fidelity.json

test: setup browser
	$(BIN)/python -m pytest

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: setup browser $(BENCH_STAMP)
	$(BIN)/python -m bench.controller
	$(BIN)/python -m bench.proxy
	$(BIN)/python -m bench.search
	$(BIN)/python -m bench.api
	$(BIN)/python -m bench.train

clean:
	rm -rf $(VENV) out data .pytest_cache .hypothesis *.egg-info

# Two commands: `make run` starts the dashboard on the demo, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8501

.PHONY: run test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $@

# Debian's Chromium for the browser tests (never a browser download).
/usr/bin/chromium:
	if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium

run: $(VENV)/.installed
	$(BIN)/python -m cnnlens.ui.serve --server.port $(PORT)

test: $(VENV)/.installed-test /usr/bin/chromium
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(VENV)/.installed-test
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: $(VENV)/.installed-test /usr/bin/chromium
	$(BIN)/python benchmarks/bench_extract.py
	$(BIN)/python benchmarks/bench_batch.py
	$(BIN)/python benchmarks/bench_dashboard.py
	$(BIN)/python benchmarks/bench_insights.py

clean:
	rm -rf $(VENV) test-artifacts .pytest_cache .ruff_cache

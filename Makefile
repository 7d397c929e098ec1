# Two commands: `make run` starts the dashboard on the demo, `make test` runs every test.
# Both install the exact versions of requirements.lock; `make lock` refreshes it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8501
LOCK_VENV := .lock-venv

.PHONY: run test lint format bench lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The lock holds the build backend (hatchling) too, so the editable install needs no download.
$(VENV)/.installed: requirements.lock pyproject.toml hatch_build.py | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Debian's Chromium for the browser tests (never a browser download).
/usr/bin/chromium:
	if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium

run: $(VENV)/.installed
	$(BIN)/cnnlens serve --server.port $(PORT)

test: $(VENV)/.installed /usr/bin/chromium
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: $(VENV)/.installed /usr/bin/chromium
	$(BIN)/python benchmarks/bench_extract.py
	$(BIN)/python benchmarks/bench_memory.py
	$(BIN)/python benchmarks/bench_batch.py
	$(BIN)/python benchmarks/bench_dashboard.py
	$(BIN)/python benchmarks/bench_insights.py
	$(BIN)/python benchmarks/bench_scale.py
	$(BIN)/python benchmarks/bench_load.py

# The newest versions requirements.txt and requirements-test.txt allow, from a fresh
# virtualenv; run `make test` on the new lock before committing it.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/pip install --quiet -r requirements-test.txt
	{ printf '%s\n' \
	  "# The exact versions the tests passed with; make run and make test install them." \
	  "# Lower bounds live in requirements.txt and requirements-test.txt. To refresh:" \
	  "# make lock (a fresh virtualenv from both files, then pip freeze), then make test." \
	  "# Made on $$(uname -sm) with $$($(LOCK_VENV)/bin/python -V)."; \
	  $(LOCK_VENV)/bin/pip freeze --exclude cnnlens; } > requirements.lock
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) $(LOCK_VENV) test-artifacts .pytest_cache .ruff_cache build dist

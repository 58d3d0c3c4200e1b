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

# Debian tools the tests use as real peers: libcoap's client, mosquitto, Chromium and its
# driver (the console's browser tests), systemd-analyze (the unit), Debian's python3-venv (the
# documented install). Installed only when missing and when we may (root); otherwise say what.
DEBS := libcoap3-bin mosquitto chromium chromium-driver systemd python3-venv
system-deps:
	@if ! command -v coap-client-notls >/dev/null || ! command -v mosquitto >/dev/null \
	  || ! command -v chromedriver >/dev/null || ! command -v systemd-analyze >/dev/null \
	  || { command -v dpkg >/dev/null && ! dpkg -s python3-venv >/dev/null 2>&1; }; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $(DEBS) >/dev/null; \
	  else echo "please install: sudo apt-get install $(DEBS)" >&2; exit 1; fi; fi

demo: $(BIN)/reverbere
	$(BIN)/reverbere demo

test: $(BIN)/reverbere system-deps
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(BIN)/reverbere
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The README's two commands are `make up` and `make test`; the rest are their steps.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up test setup kit-deps services build system-deps test-python test-frontend bench clean

# The kit: two instances and a worker, and JupyterLab on notebooks/ beside them
# (the React client in a tab next to the notebook). It prints the URL to open,
# with its token; JupyterLab listens on 127.0.0.1 only. Ctrl-C stops it all.
up: setup kit-deps services  ## set up, then run the cluster and JupyterLab (Ctrl-C stops them)
	$(BIN)/notifylab kit

test: setup kit-deps services system-deps  ## set up, then run every test
	$(MAKE) test-frontend test-python

setup: $(VENV)/.installed build

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The kit's extras (JupyterLab, ipywidgets, jupyter-server-proxy, nbval, ...).
kit-deps: $(VENV)/.kit-installed

$(VENV)/.kit-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,kit]'
	touch $@

build: frontend/dist/index.html

frontend/dist/index.html: frontend/package.json frontend/package-lock.json $(shell find frontend/src -type f 2>/dev/null) frontend/index.html frontend/vite.config.js
	cd frontend && npm ci --no-audit --no-fund && npm run build

services:
	bash scripts/services.sh

# Debian's Chromium for the browser tests (Playwright must not download its
# own) and nginx for the load-balancer config tests.
system-deps:
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx >/dev/null)

test-python:
	$(BIN)/python -m pytest

test-frontend:
	cd frontend && npm test

bench: setup services  ## topic routing against fanout, in figures
	$(BIN)/python benchmarks/routing.py

clean:
	rm -rf $(VENV) frontend/node_modules frontend/dist

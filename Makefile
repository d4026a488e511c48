# The README's two commands are `make up` and `make test`; the rest are their steps.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up test check setup kit-deps services build system-deps test-python test-frontend test-notebooks \
	chaos bench bench-targets lock clean

# The kit: two instances and a worker, and JupyterLab on notebooks/ beside them
# (the React client in a tab next to the notebook). It prints the URL to open,
# with its token; JupyterLab listens on 127.0.0.1 only. Ctrl-C stops it all.
up: setup kit-deps services  ## set up, then run the cluster and JupyterLab (Ctrl-C stops them)
	$(BIN)/notifylab kit

# Every test: the React client's, then pytest (real RabbitMQ, Redis, server
# processes and Chromium), then every lesson under nbval.
test: setup kit-deps services system-deps  ## set up, then run every test
	$(MAKE) test-frontend test-python test-notebooks

# Lint, format and types (CI runs it before the tests).
check: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

setup: $(VENV)/.installed build

# constraints.txt holds the versions CI last passed with (make lock), so a
# fresh machine next month installs those, not whatever is newest then.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,memory]'
	touch $@

# The kit's extras (JupyterLab, ipywidgets, jupyter-server-proxy, nbval, ...).
kit-deps: $(VENV)/.kit-installed

$(VENV)/.kit-installed: $(VENV)/.installed pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,memory,kit]'
	touch $@

# Write constraints.txt from the environment the tests just passed in.
lock: kit-deps
	$(BIN)/pip freeze --exclude-editable | grep -v '^notifylab' > constraints.txt

build: frontend/dist/index.html

frontend/dist/index.html: frontend/package.json frontend/package-lock.json $(shell find frontend/src -type f 2>/dev/null) frontend/index.html frontend/vite.config.js
	cd frontend && npm ci --no-audit --no-fund && npm run build

services:
	bash scripts/services.sh

# Debian's Chromium for the browser tests (Playwright must not download its
# own), nginx for the load-balancer config tests, and iproute2's ss (the
# storm test reads an instance's listen backlog).
system-deps:
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx >/dev/null)
	@command -v ss >/dev/null || (apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null)

test-python:
	$(BIN)/python -m pytest

# The chaos suite at full size: faults under load (RabbitMQ, Redis, an
# instance, the worker; its table is printed at the end), then the other
# fault tests: a client that stops reading, bad input and floods, restarts
# when idle, the publish API's limits. `make test` runs all of it at CI's size.
# It restarts the machine's RabbitMQ: run nothing else against it meanwhile.
chaos: setup services
	NOTIFYLAB_CHAOS_SIZE=full $(BIN)/python -m pytest tests/test_chaos.py tests/test_restarts.py \
		tests/test_slow_client.py tests/test_abuse.py tests/test_publish_limits.py

test-frontend:
	cd frontend && npm test

# Each lesson runs top to bottom in a fresh kernel, two at a time (2 cores), each
# notebook kept whole on one worker (--dist loadfile). NOTIFYLAB_KIT_ISOLATE
# gives every lesson a private cluster so parallel lessons never clash, and
# NOTIFYLAB_LESSON_SESSIONS keeps lesson 08's load small.
test-notebooks:
	NOTIFYLAB_KIT_ISOLATE=1 NOTIFYLAB_LESSON_SESSIONS=20 $(BIN)/python -m pytest -o addopts= \
		-p no:cacheprovider --nbval-lax --nbval-current-env --nbval-cell-timeout=180 \
		--nbval-kernel-startup-timeout=180 \
		-n 2 --dist loadfile notebooks/

# Figures, never pass/fail (but for lost, duplicated or reordered notifications):
# see benchmarks/README.md. `bench` takes about 20 minutes here, `bench-targets`
# (issue 9's sizes: 10,000 sockets, 500 users, up to 3,000 notifications/s) an hour.
bench: setup services  ## every benchmark at a modest size, in figures
	cd benchmarks && npm ci --no-audit --no-fund  # the Node floor's socket.io and amqplib
	$(BIN)/python benchmarks/routing.py
	$(BIN)/python benchmarks/cost.py --floor --floor-node
	$(BIN)/python benchmarks/scale.py all --storm-sizes 500,1000 --memory-sizes 1000 --servers bare,notifylab,notifylab+lb --trace 0
	$(BIN)/python benchmarks/ladder.py --users 200 --rates 250,500,1000

bench-targets: setup services  ## the storm, idle memory and throughput at the sizes of the targets
	$(BIN)/python benchmarks/scale.py all --storm-sizes 1000,10000 --memory-sizes 1000,10000 --retry --timeout 120
	$(BIN)/python benchmarks/ladder.py --users 500 --rates 250,500,1000,2000,3000

clean:
	rm -rf $(VENV) frontend/node_modules frontend/dist

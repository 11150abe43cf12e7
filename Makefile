# Quick start:  make run   (gateway + offline mock upstream, embedded store)
#               make test  (installs what it needs, starts its own redis-server)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: `make run` needs only the runtime dependencies; test, lint and bench the dev extras.
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
CONFIG ?= config/gateway.yaml

# A stable per-checkout development secret, so tokens minted by `make token` keep working.
DEV_SECRET_FILE := .dev-jwt-secret
export GATEWAY_JWT_SECRET ?= $(shell test -s $(DEV_SECRET_FILE) || $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(48))' > $(DEV_SECRET_FILE); cat $(DEV_SECRET_FILE))

.PHONY: run test lint token install test-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# The dev extras include the runtime dependencies, so this satisfies both stamps.
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(RUNTIME_STAMP)

install: $(DEV_STAMP)

run: $(RUNTIME_STAMP)
	$(BIN)/gateway serve --config $(CONFIG) $(if $(OPENAI_API_KEY),,--mock-upstream)

# The suite starts its own redis-server on a free port; install it if the machine lacks it.
# It also starts its own prometheus (tests/test_grafana.py) and runs promtool: Debian's
# prometheus package brings both. policy-rc.d (exit 101) keeps the package from starting its
# daemon; it is removed afterwards only if this recipe created it.
test-deps:
	@command -v redis-server >/dev/null || { \
	  echo "redis-server not found: installing it from Debian's packages"; \
	  (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null; }
	@{ command -v prometheus && command -v promtool; } >/dev/null || { \
	  echo "prometheus/promtool not found: installing Debian's prometheus package (no daemon)"; \
	  created=; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && created=1; \
	  fi; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends prometheus) >/dev/null; \
	  status=$$?; \
	  if [ -n "$$created" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	  { systemctl stop prometheus || service prometheus stop; } >/dev/null 2>&1; \
	  exit $$status; }

test: $(DEV_STAMP) test-deps
	$(BIN)/python -m pytest

LINT_PATHS := gateway tests $(wildcard bench grafana)

lint: $(DEV_STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy gateway

token: $(RUNTIME_STAMP)
	@$(BIN)/gateway token --config $(CONFIG) --team $${TEAM:-research} --ttl $${TTL:-24h}

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Benchmark: nginx upstream + wrk, side-by-side ratios (bench/README.md). Installs nginx and wrk
# from Debian if missing. `make bench BENCH_ARGS=--quick` for a smoke run.
.PHONY: bench
bench: $(DEV_STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

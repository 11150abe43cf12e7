# Quick start:  make run   (gateway + offline mock upstream, embedded store)
#               make test  (installs what it needs, starts its own redis-server)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/gateway.yaml

# A stable per-checkout development secret, so tokens minted by `make token` keep working.
DEV_SECRET_FILE := .dev-jwt-secret
export GATEWAY_JWT_SECRET ?= $(shell test -s $(DEV_SECRET_FILE) || $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(48))' > $(DEV_SECRET_FILE); cat $(DEV_SECRET_FILE))

.PHONY: run test lint token install redis-server clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/gateway serve --config $(CONFIG) $(if $(OPENAI_API_KEY),,--mock-upstream)

# The suite starts its own redis-server on a free port; install it if the machine lacks it.
redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "redis-server not found: installing it from Debian's packages"; \
	  (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null; }

test: $(STAMP) redis-server
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/mypy gateway

token: $(STAMP)
	@$(BIN)/gateway token --config $(CONFIG) --team $${TEAM:-research} --ttl $${TTL:-24h}

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

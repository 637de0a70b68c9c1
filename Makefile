# mailqueue: `make run` starts the whole pipeline locally, `make test` runs every test.
SHELL := /bin/bash
PYTHON := $(shell .ci/find-python)
VENV := .venv
BIN := $(VENV)/bin
LOCAL_REDIS_PORT ?= 6399
# The oldest Python pyproject.toml declares (requires-python = ">=X.Y,<..."), in a venv of its own: `make pytest`
# runs on the newest one found (3.13 preferred), `make pytest-oldest` runs the byte-identity test on this one.
OLDEST := $(shell sed -n 's/^requires-python = ">=\([0-9.]*\)[,"].*$$/\1/p' pyproject.toml)
PYTHON_OLDEST := $(shell .ci/find-python $(OLDEST) 2>/dev/null)
VENV_OLDEST := .venv-$(OLDEST)

.PHONY: run test lint typecheck pytest pytest-oldest bench clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

$(VENV_OLDEST)/bin/.installed: requirements.txt requirements-dev.txt
	test -x $(VENV_OLDEST)/bin/python || $(PYTHON_OLDEST) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/pip install --quiet --upgrade pip
	$(VENV_OLDEST)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

# The demo site, a worker pool per queue, the outbox relay, a local SMTP catcher
# as the provider, and (when REDIS_URL is not set) a private Redis. Open http://127.0.0.1:$(WEB_PORT)/
# While it runs, the Redis URL is in var/redis-url, which project/settings.py reads when REDIS_URL is unset:
# so `manage.py mailqueue status` in a second terminal reads the Redis this demo uses. Removed on exit.
WEB_PORT ?= 8000
run: $(BIN)/.installed
	mkdir -p var/mailbox var/redis
	$(BIN)/python manage.py migrate --verbosity 0
	$(BIN)/python manage.py check
	@# A staff login for the admin, new password each run; refused (and skipped) unless on the demo's settings and SQLite.
	-@WEB_PORT="$(WEB_PORT)" $(BIN)/python manage.py demo_admin
	@export DJANGO_SETTINGS_MODULE="$${DJANGO_SETTINGS_MODULE:-project.settings}" WEB_PORT="$(WEB_PORT)"; \
	if [ -z "$${REDIS_URL:-}" ]; then \
	  export REDIS_SERVER="$$(.ci/redis-server-path)" REDIS_URL="redis://127.0.0.1:$(LOCAL_REDIS_PORT)/0" LOCAL_REDIS_PORT=$(LOCAL_REDIS_PORT); \
	  where="a private Redis on port $(LOCAL_REDIS_PORT)"; processes=""; \
	else \
	  where="the Redis at REDIS_URL"; processes="web worker_critical worker_default worker_bulk relay log smtp"; \
	fi; \
	(umask 077; printf '%s\n' "$$REDIS_URL" > var/redis-url); trap 'rm -f var/redis-url' EXIT; \
	echo "Open http://127.0.0.1:$$WEB_PORT/  (queues in $$where)"; \
	echo "In another terminal: $(BIN)/python manage.py mailqueue status  (reads the same Redis, from var/redis-url)"; \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start $$processes

lint: $(BIN)/.installed
	$(BIN)/ruff check mailqueue workers project tests
	$(BIN)/ruff format --check mailqueue workers

typecheck: $(BIN)/.installed
	$(BIN)/mypy mailqueue workers

pytest: $(BIN)/.installed
	.ci/with-test-redis $(BIN)/pytest

# workers.rendering promises Django's exact bytes, which come from the standard library's email package:
# check that promise on the oldest declared Python too, not only on the one `make pytest` uses.
ifeq ($(PYTHON_OLDEST),)
pytest-oldest:
	@echo "SKIPPED tests/test_rendering.py on Python $(OLDEST): no python$(OLDEST) on PATH or in ~/.pyenv/versions;" \
	  "install it (e.g. 'pyenv install $(OLDEST)') to check byte-identity on every declared Python" >&2
else
pytest-oldest: $(VENV_OLDEST)/bin/.installed
	TEST_VENV=$(VENV_OLDEST) .ci/with-test-redis $(VENV_OLDEST)/bin/pytest tests/test_rendering.py
endif

test: lint typecheck pytest pytest-oldest

# mailqueue beside the other Django mail queues and the floors, on a private Redis and a local sink;
# the first run installs the peers into .bench/ from PyPI. BENCH_ARGS=--smoke for a tiny run.
bench: $(BIN)/.installed
	REDIS_SERVER="$$(.ci/redis-server-path)" $(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(VENV_OLDEST) var .mypy_cache .ruff_cache .pytest_cache

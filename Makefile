# mailportal: `make run` (try it locally) and `make test` (the whole suite) do all set-up.
# Only Python 3.11+ is needed: no root, no apt, no Redis, no PostgreSQL.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
STAMP := $(VENV)/.installed

.PHONY: run test lint install bench clean messages

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when the dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py import_providers deploy/demo-providers.json
	$(BIN)/python manage.py ensure_admin
	$(BIN)/python manage.py runserver --noreload $(HOST):$(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python manage.py makemigrations --check --dry-run --verbosity 1
	$(BIN)/python manage.py check --fail-level WARNING
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/autoconfig.py
	$(BIN)/python bench/register.py
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/sheets.py
	$(BIN)/python bench/push_sessions.py
	$(BIN)/python bench/push_fleet.py --sessions 1000 3000 --injections 100 --window 20
	$(BIN)/python bench/load.py

clean:
	rm -rf $(VENV) var/static

# Refresh the German catalog from the sources and compile it (needs GNU gettext). The .mo
# is committed, so `make run` and deployments need no gettext (tests/test_translations.py).
messages: $(STAMP)
	$(BIN)/python manage.py makemessages -l de --ignore var --ignore bench --ignore tests \
	  --add-location file --no-obsolete
	$(BIN)/python manage.py compilemessages -l de --ignore .venv --ignore var

# A private Dovecot reading the current DATABASE_URL, for logging in with a real mail client
# next to `make run` (deploy/dovecot/README.md). Needs dovecot-imapd and dovecot-sqlite (or
# dovecot-pgsql); state under var/dovecot/.
DOVECOT_PORT ?= 10143
.PHONY: dovecot dovecot-stop

dovecot: $(STAMP)
	$(BIN)/python manage.py migrate --noinput --verbosity 0
	$(BIN)/python manage.py run_dovecot start --port $(DOVECOT_PORT)

dovecot-stop: $(STAMP)
	$(BIN)/python manage.py run_dovecot stop

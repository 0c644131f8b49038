# news-ingest: `make demo` shows it working, `make test` runs every test. `make help` lists the rest.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
NP_VENV := .venv-newsplease
export PYTHONPATH := $(CURDIR)

.PHONY: help install demo test lint bench psql airflow constraints stop clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(INSTALLED): requirements.txt requirements-dev.txt constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11 or newer is needed (PYTHON=$(PYTHON))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25"
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	@touch $@

install: $(INSTALLED)  ## create .venv and install the pinned dependencies

demo: $(INSTALLED)  ## embedded Postgres + demo site + one news_ingest DAG run through Airflow, then a summary
	$(BIN)/python scripts/demo.py

test: $(INSTALLED)  ## the whole test suite (real Postgres, loopback HTTP, real Airflow runs)
	$(BIN)/python -m pytest

lint: $(INSTALLED)  ## ruff
	$(BIN)/ruff check .

$(NP_VENV)/.installed: requirements-bench.txt
	@test -x $(NP_VENV)/bin/python || $(PYTHON) -m venv $(NP_VENV)
	$(NP_VENV)/bin/python -m pip install --quiet --upgrade "pip>=25"
	$(NP_VENV)/bin/python -m pip install --quiet -r requirements-bench.txt
	@touch $@

bench: $(INSTALLED) $(NP_VENV)/.installed  ## throughput, per-stage times, AEB extraction F1, news-please side by side
	$(BIN)/python bench/run.py

psql: $(INSTALLED)  ## a psql shell on the configured news database
	$(BIN)/python -m pipeline db psql

airflow: $(INSTALLED)  ## full local Airflow (standalone: UI + scheduler) on the embedded Postgres
	$(BIN)/python scripts/airflow_local.py

constraints: $(INSTALLED)  ## rewrite constraints.txt from the working environment
	{ echo "# The full tested pin set: \`pip install -r requirements-dev.txt -c constraints.txt\` resolves exactly these."; \
	  echo "# Made from a working environment with \`make constraints\`; regenerate it after changing requirements*.txt."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e '; } > constraints.txt

stop:  ## stop the embedded PostgreSQL server
	-$(BIN)/python -m pipeline db stop

clean: stop  ## remove the virtualenvs and local data
	rm -rf $(VENV) $(NP_VENV) .data

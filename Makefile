# Cairn: common tasks.  `make test` is what CI runs (through .ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test unit integration lint bench serve

install:
	bash scripts/install.sh

test:
	bash scripts/test.sh

unit:
	$(PY) -m pytest engine/tests -m "not integration" -q

integration:
	$(PY) -m pytest engine/tests -m integration -q

lint:
	$(VENV)/bin/ruff check engine bench
	$(VENV)/bin/ruff format --check engine bench
	$(VENV)/bin/mypy engine/src/cairn

bench:
	$(PY) bench/run.py

serve:
	bash scripts/serve.sh

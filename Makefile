# CityOS set-up. Two commands: `make demo` (build and serve the demo city) and `make test`.
# Stamps keep reruns fast: pip reruns when pyproject.toml changes, npm ci when package-lock.json does.

VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?= -q -n 2 --dist loadgroup

.PHONY: demo test install dev assets shapes lint audit bench soak clean

demo: install assets
	$(VENV)/bin/cityos demo

test: dev assets shapes
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(VENV)/.install.stamp

dev: $(VENV)/.dev.stamp

assets: node_modules/.stamp $(VENV)/.install.stamp
	$(PY) -m cityos.core.assets

shapes: $(VENV)/.install.stamp  # official DCAT-AP 3 SHACL shapes from PyPI into cityos/opendata/vendor/
	$(PY) -m cityos.opendata.shapes

lint: dev  # generated migrations are not linted
	$(VENV)/bin/ruff check . --extend-exclude cityos/migrations/versions

audit: dev  # pip-audit over .venv: fails on a known vulnerability, BLOCKED when no service answers
	bash .ci/audit

bench: install
	$(PY) bench/auth.py
	$(PY) bench/hub_parse.py
	$(PY) bench/hub.py
	$(PY) bench/hub_read.py
	$(PY) bench/opendata.py
	$(PY) bench/spatial.py
	$(PY) bench/ingest.py
	$(PY) bench/cases_classify.py
	$(PY) bench/cases.py
	$(PY) bench/ops.py

soak: install  # issue 9: a 10-minute mixed load on a seeded city; make soak SOAK_ARGS="--minutes 2"
	$(PY) bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf node_modules cityos/core/static/vendor cityos/opendata/vendor build dist *.egg-info .pytest_cache .ruff_cache test-results
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.install.stamp: pyproject.toml | $(PY)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev.stamp: pyproject.toml | $(PY)
	$(PIP) install -q -e '.[dev]'
	touch $(VENV)/.install.stamp $@

node_modules/.stamp: package-lock.json
	npm ci --no-audit --no-fund
	touch $@

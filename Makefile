# Two commands for a new user:  `make demo` (set up, run wsgate on the shipped
# example) and `make test` (set up, run the tests). Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NPM_DIR := tests/node

.PHONY: venv demo test test-fast lint bench bench-bigrtt clean

# A regular install (twistd finds the plugin the way users' installs do),
# redone whenever the package's sources change.
SOURCES := $(shell find wsgate twisted -name '*.py' -o -name '*.c' -o -name '*.h')

$(VENV)/.installed: setup.cfg setup.py pyproject.toml $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '.[test]'
	# The compiled frame path beside the sources too, for tests run from the tree.
	$(PY) setup.py -q build_ext --inplace
	touch $@

venv: $(VENV)/.installed

$(NPM_DIR)/node_modules/.installed: $(NPM_DIR)/package.json $(NPM_DIR)/package-lock.json
	cd $(NPM_DIR) && npm ci --no-audit --no-fund
	touch $@

demo: venv
	$(PY) etc/demo.py

test: venv $(NPM_DIR)/node_modules/.installed
	$(PY) -m pytest

# The quick loop: everything but the tests marked slow (CONTRIBUTING.rst).
test-fast: venv $(NPM_DIR)/node_modules/.installed
	$(PY) -m pytest -m "not slow"

# The benchmarks (benchmarks/README.md): about 15 minutes; needs Debian's nginx.
# BENCH_ARGS passes options, e.g. make bench BENCH_ARGS=--quick
bench: venv
	$(PY) -m pip install -q -r benchmarks/requirements.txt
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# Big messages one round trip at a time, Autobahn echo server (about a minute).
bench-bigrtt: venv
	$(PY) benchmarks/bigrtt.py $(BENCH_ARGS)

lint: venv
	$(VENV)/bin/ruff check wsgate twisted tests benchmarks
	$(VENV)/bin/ruff format --check wsgate twisted tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(NPM_DIR)/node_modules

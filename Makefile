# Thin wrappers: each target bootstraps .venv (apt build deps, venv, editable install) first.
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.markd-installed

.PHONY: demo test bench lint venv clean

demo: $(STAMP)
	$(VENV)/bin/markd demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

BENCH_ENTRIES ?= 10000000

bench: $(STAMP)
	$(PY) tools/bench/parse.py
	$(PY) tools/bench/store.py --entries $(BENCH_ENTRIES)

lint: $(STAMP)
	$(VENV)/bin/ruff check daemon tests tools

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml tools/bootstrap.sh
	tools/bootstrap.sh $(VENV)
	touch $@

clean:
	rm -rf $(VENV) build dist daemon/*.egg-info .pytest_cache .hypothesis

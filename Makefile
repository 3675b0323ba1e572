# Two entry points (README): `make all` sets up and runs the pipeline, `make test` sets up and runs the tests.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
CORES ?= 8
SNAKEMAKE_ARGS ?=

.PHONY: setup all test quick clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

all: setup
	$(VENV)/bin/snakemake --cores $(CORES) --workflow-profile profiles/default $(SNAKEMAKE_ARGS) all

test: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python -m pytest -q -ra $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

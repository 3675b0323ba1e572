# Two entry points (README): `make all` sets up and runs the pipeline, `make test` sets up and runs the tests.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
CORES ?= 8
SCALE ?= paper
SNAKEMAKE_ARGS ?=
CONFIG_paper := config.yaml
CONFIG_quick := config.quick.yaml
CONFIG_smoke := .test/config.yaml
# Where the committed quick-scale figures live: figures.dir of config.quick.yaml (a test checks they agree).
QUICK_FIGURES := paper_figures/quick

.PHONY: setup all test bench docs slurm-test release-quick fidelity clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# SCALE=paper (config.yaml, default), quick (config.quick.yaml) or smoke (.test/config.yaml).
# Jobs call `python -m sharpgaps.cli`: the venv's bin/ goes first on PATH.
all: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/snakemake all --cores $(CORES) --workflow-profile profiles/default \
		--configfile $(CONFIG_$(SCALE)) $(SNAKEMAKE_ARGS)

test: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python -m pytest -q -ra $(PYTEST_ARGS)

# Rebuild the committed quick-scale figures from scratch and record how (MANIFEST.json beside them).
release-quick: setup
	git clean -fdqX results/ && rm -f $(QUICK_FIGURES)/*
	commit=$$(git rev-parse HEAD); start=$$(date +%s); PATH=$(CURDIR)/$(VENV)/bin:$$PATH \
		$(VENV)/bin/snakemake all --cores $(CORES) --configfile config.quick.yaml && end=$$(date +%s) && \
	$(VENV)/bin/python -m sharpgaps.cli manifest --config config.quick.yaml --wall-s $$((end - start)) \
		--cores $(CORES) --commit $$commit --benchmarks results/benchmarks --out $(QUICK_FIGURES)/MANIFEST.json

# Regenerate the quick scale's RESULTS.md and the measured block of docs/FIDELITY.md from the quick tables.
fidelity: setup
	$(VENV)/bin/python -m sharpgaps.cli summary --title "quick scale" --out $(QUICK_FIGURES)/RESULTS.md \
		--splice docs/FIDELITY.md --readme README.md $(foreach e,main tau_ablation k_sweep batch_sweep,--table $(e)=results/tables/$(e)_geometry.parquet) \
		--table restricted=results/tables/restricted.parquet \
		--table theory=$$(ls -t results/tables/theory_*.parquet | head -1)

bench: setup
	$(VENV)/bin/python benchmarks/run.py

# Regenerate the Scales tables of docs/FIDELITY.md from the three configs (tests/test_docs.py checks them).
docs: setup
	$(VENV)/bin/python -m sharpgaps.scales --splice docs/FIDELITY.md

# A real single-node SLURM (installed with apt-get if missing) runs the smoke DAG through sbatch.
slurm-test: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH tests/cluster/run_slurm_test.sh . .test/config.yaml all

clean-venv:
	rm -rf $(VENV)

# Two entry points (README): `make all` sets up and runs the pipeline, `make test` sets up and runs the tests.
PY ?= python3
VENV := .venv
# The full lock (README, "The environment"): ACCEL=cpu (committed) or cuda (`make lock ACCEL=cuda` makes it).
ACCEL ?= cpu
LOCK := envs/requirements-$(ACCEL).txt
# uv resolves the lock (`make lock`); it lives in its own venv, not in the project's.
UV_VERSION := 0.13.8
LOCK_VENV := .venv-lock
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) 2>/dev/null | sha256sum | cut -c1-16)
# the machine's cores (Snakemake's --cores); CONFIRM=1 runs the paper scale on a machine without a GPU
CORES ?= $(shell env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1)
CONFIRM ?=
SCALE ?= paper
SNAKEMAKE_ARGS ?=
CONFIG_paper := config.yaml
CONFIG_quick := config.quick.yaml
CONFIG_smoke := .test/config.yaml
# Where the committed figures live: figures.dir of config.quick.yaml and config.yaml (a test checks they agree).
QUICK_FIGURES := paper_figures/quick
PAPER_FIGURES := paper_figures
# Where each scale's jobs write: results_dir of its config, read from it.
QUICK_RESULTS := $(shell sed -n 's/^results_dir: *\([^ #]*\).*/\1/p' $(CONFIG_quick))
PAPER_RESULTS := $(shell sed -n 's/^results_dir: *\([^ #]*\).*/\1/p' $(CONFIG_paper))

.PHONY: setup check-lock lock lock-upgrade all unlock test bench gpu-check docs slurm-test release-quick release-paper fidelity results-paper clean-venv

setup: $(STAMP)

# Everything from the lock, every file checked against its hash; then the project itself, without deps.
# The check (order-only: it runs every time but forces no reinstall) stops with "relock with `make lock`"
# when pyproject.toml's pins changed since the lock was made.
$(STAMP): pyproject.toml $(LOCK) | check-lock
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --require-hashes -r $(LOCK)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

check-lock:
	@$(PY) envs/lock.py check --accel $(ACCEL)

# Relock after editing pyproject.toml: the other pins stay where they are. lock-upgrade moves every
# transitive pin to its newest version that pyproject.toml allows. Both rewrite envs/sharpgaps.yaml too.
lock: $(LOCK_VENV)/bin/uv
	$(PY) envs/lock.py compile --accel $(ACCEL) --uv $(LOCK_VENV)/bin/uv

lock-upgrade: $(LOCK_VENV)/bin/uv
	$(PY) envs/lock.py compile --accel $(ACCEL) --uv $(LOCK_VENV)/bin/uv --upgrade

$(LOCK_VENV)/bin/uv:
	$(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# SCALE=paper (config.yaml, default), quick (config.quick.yaml) or smoke (.test/config.yaml).
# Jobs call `python -m sharpgaps`: the venv's bin/ goes first on PATH.
# cost-note: on the paper config without a GPU, the projected cost; it stops there (never prompts) unless CONFIRM=1.
# check-config first: a YAML error in a --configfile gets Snakemake's generic message, with no file or line.
all: setup
	@$(VENV)/bin/python -m sharpgaps check-config $(CONFIG_$(SCALE))
	@$(VENV)/bin/python -m sharpgaps cost-note $(CONFIG_$(SCALE)) $(if $(CONFIRM),,--stop)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/snakemake all --cores $(CORES) --workflow-profile profiles/default \
		--configfile $(CONFIG_$(SCALE)) $(SNAKEMAKE_ARGS)

# After a kill: release Snakemake's lock (the venv's snakemake, no activation needed), then rerun
# `make all` (it passes --rerun-incomplete through the default profile).
unlock: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/snakemake --unlock --cores 1 --configfile $(CONFIG_$(SCALE))

test: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python -m pytest -q -ra $(PYTEST_ARGS)

# FIDELITY's quick-against-paper table (Scales), from both releases' committed tables: either release changes it.
COMPARE_SCALES = $(VENV)/bin/python -m sharpgaps compare-scales --quick $(QUICK_FIGURES) --paper $(PAPER_FIGURES) \
	--setting mnist_fc --splice docs/FIDELITY.md >/dev/null

# One release part (PART, a key of the config's `parts`) alone from an empty <results dir>/<part>: its figures
# replace theirs in <figures dir>, its entry of MANIFEST.json there records it (commit, config hash, the part's
# selection, wall time, peak RSS, the files it drew) and its tables are copied to <figures dir>/tables/<part>/.
# $(call release_part,<config>,<results dir>,<figures dir>)
define release_part
	rm -rf $(2)/$(PART)
	commit=$$(git rev-parse HEAD); start=$$(date +%s); PATH=$(CURDIR)/$(VENV)/bin:$$PATH \
		$(VENV)/bin/snakemake all --cores $(CORES) --configfile $(1) --config part=$(PART) && \
	end=$$(date +%s) && $(VENV)/bin/python -m sharpgaps manifest --config $(1) --part $(PART) \
		--since $$start --wall-s $$((end - start)) --cores $(CORES) --commit $$commit \
		--benchmarks $(2)/$(PART)/benchmarks --out $(3)/MANIFEST.json && \
	rm -rf $(3)/tables/$(PART) && mkdir -p $(3)/tables/$(PART) && \
	cp $(2)/$(PART)/tables/*.parquet $(3)/tables/$(PART)/
endef

# Rebuild the committed quick-scale release, part by part (config.quick.yaml `parts`): PART=main, sweeps or
# heterogeneity runs that part alone (release_part). Without PART: every part, then `make fidelity` (RESULTS.md and
# the docs from the parts' tables).
PART ?=
release-quick: setup
ifeq ($(PART),)
	$(MAKE) release-quick PART=main
	$(MAKE) release-quick PART=sweeps
	$(MAKE) release-quick PART=heterogeneity
	$(MAKE) fidelity
else
	$(call release_part,$(CONFIG_quick),$(QUICK_RESULTS),$(QUICK_FIGURES))
endif

# The paper scale's CPU-sized parts (config.yaml `parts`: mnist_main, then mnist_sweeps, each mnist_fc only), into
# $(PAPER_FIGURES) with their MANIFEST entries; without PART both, then `make results-paper`. The whole paper scale
# is `make all` (a GPU, or CONFIRM=1).
release-paper: setup
ifeq ($(PART),)
	$(MAKE) release-paper PART=mnist_main
	$(MAKE) release-paper PART=mnist_sweeps
	$(MAKE) results-paper
else
	$(call release_part,$(CONFIG_paper),$(PAPER_RESULTS),$(PAPER_FIGURES))
endif

# The paper scale's RESULTS.md from the tables its parts committed (a claim whose table no part made says "not run").
results-paper: setup
	$(VENV)/bin/python -m sharpgaps summary --title "paper scale" --release $(PAPER_FIGURES) \
		--out $(PAPER_FIGURES)/RESULTS.md
	$(COMPARE_SCALES)

# Regenerate the quick scale's RESULTS.md, the measured block of docs/FIDELITY.md and the README's headline block
# from the tables the release's parts committed ($(QUICK_FIGURES)/tables/<part>/; a test checks RESULTS.md is
# what this prints). A claim whose table no part made says "not run".
fidelity: setup
	$(VENV)/bin/python -m sharpgaps summary --title "quick scale" --release $(QUICK_FIGURES) \
		--out $(QUICK_FIGURES)/RESULTS.md --splice docs/FIDELITY.md --readme README.md
	$(COMPARE_SCALES)

bench: setup
	$(VENV)/bin/python benchmarks/run.py

# Run whenever a GPU is at hand (README, "Checking a GPU"; under 8 min on one GPU): the smoke DAG's tables with
# device: cuda against a CPU run of the same config, and the paper-scale unit costs per model timed on the GPU,
# written to docs/gpu_check/$(DEVICE).json and .md (commit them). DEVICE=cpu checks the check: both runs on the CPU,
# tables bitwise equal. REFERENCE=<a finished CPU smoke run> replaces the CPU run; EXAMPLES=<n> sizes the
# gradient/HVP timings. No `setup` prerequisite: on a GPU machine the venv comes from `make setup ACCEL=cuda`,
# which a plain setup would replace with the CPU lock's torch.
DEVICE ?= cuda
REFERENCE ?=
EXAMPLES ?=
CONFIG ?=
gpu-check:
	@test -x $(VENV)/bin/python || { echo "gpu-check: no $(VENV): run make setup first" \
		"(make lock ACCEL=cuda && make setup ACCEL=cuda on a GPU machine)" >&2; exit 2; }
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python benchmarks/gpu_check.py --device $(DEVICE) \
		--cores $(CORES) --out docs/gpu_check/$(DEVICE).json \
		$(if $(REFERENCE),--reference $(REFERENCE)) $(if $(EXAMPLES),--examples $(EXAMPLES)) $(if $(CONFIG),--config $(CONFIG))

# Regenerate the Scales tables of docs/FIDELITY.md from the three configs (tests/test_docs.py checks them).
docs: setup
	$(VENV)/bin/python -m sharpgaps.pipeline.scales --splice docs/FIDELITY.md

# A real single-node SLURM (installed with apt-get if missing) runs the smoke DAG through sbatch.
slurm-test: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH tests/cluster/run_slurm_test.sh . .test/config.yaml all

clean-venv:
	rm -rf $(VENV) $(LOCK_VENV)

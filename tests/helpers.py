"""Helpers shared by the workflow tests: run Snakemake in a workdir, read dry-run job counts."""

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = REPO / ".test/config.yaml"
FIGURE_DIR = yaml.safe_load(SMOKE_CONFIG.read_text())["figures"]["dir"]  # where the smoke scale's figures go
# figure stem -> (swept run parameter, its values in the sweep config below)
SWEEPS = {"fig10_tau_ablation_mnist_fc": ("tau", [2, 4]), "fig13_k_sweep_mnist_fc": ("K", [2, 8]),
          "fig16_batch_sweep_mnist_fc": ("b", [16, 50])}


def snakemake(workdir, *args, config=SMOKE_CONFIG, snakefile=REPO / "Snakefile", check=True, env=None) -> str:
    """stdout + stderr of `snakemake -d workdir ARGS --configfile CONFIG` (targets and flags go first:
    --configfile takes several values)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir), *args]
    if config:
        cmd += ["--configfile", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=None if env is None else {**os.environ, **env})
    if check:
        assert proc.returncode == 0, f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def job_counts(text):
    """The 'job count' table of a dry run as {rule: count}."""
    rows = [line.split() for line in text.splitlines()]
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[1].isdigit()}


def workflow_copy(dst):
    """The workflow source tree (mtimes kept), with src/ linked: a place to edit a notebook safely."""
    dst.mkdir()
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(REPO / name, dst / name)
    for name in ("workflow", "notebooks", "profiles", "envs", ".test"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, dst / name)
    (dst / "src").symlink_to(REPO / "src")
    return dst


def figure_files(workdir, name):
    """A figure a run made: PDF, PNG and CSV in the figure directory, the executed notebook (no error; every
    parameter the rule passed is one the notebook declares; no text of the figure overlapping other text and no
    empty panel, which plotting.save reports; no run configuration left out, which plotting.load reports) and its
    log. Returns (its CSV, the parameters)."""
    import nbformat
    import pandas as pd
    import papermill

    for ext in ("pdf", "png", "csv"):
        path = workdir / FIGURE_DIR / f"{name}.{ext}"
        assert path.is_file() and path.stat().st_size > 0, path
    assert (workdir / FIGURE_DIR / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    assert (workdir / FIGURE_DIR / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    executed = nbformat.read(workdir / f"results/notebooks/{name}.ipynb", as_version=4)
    run = executed.metadata.papermill
    assert run.exception is None
    printed = "".join(out.get("text", "") for cell in executed.cells for out in cell.get("outputs", []))
    for warning in ("WARNING: overlapping text", "WARNING: empty panel", "run configurations; drawing"):
        assert warning not in printed, f"{name}: " + printed[printed.find(warning):][:500]
    assert set(run.parameters) <= set(papermill.inspect_notebook(str(workdir / run.input_path)))
    assert (workdir / f"results/logs/figures/{name}.log").is_file()
    return pd.read_csv(workdir / FIGURE_DIR / f"{name}.csv"), run.parameters


def run_notebook_inline(name, out_dir, **parameters):
    """Run notebooks/<name>.ipynb's code in this process, as papermill would with ``parameters`` (outputs written to
    ``out_dir``), and return its namespace: a test can then look at the figure it drew (``fig``), which papermill
    cannot hand back."""
    import nbformat

    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    out = {f"out_{ext}": str(Path(out_dir) / f"{name}.{ext}") for ext in ("pdf", "png", "csv")}
    namespace = {}
    exec(code[0], namespace)  # the parameters cell, then what papermill would inject
    namespace.update(caption=str(REPO / "workflow/report" / f"{name}.rst"), **out, **parameters)
    for source in code[1:]:
        exec(source, namespace)
    return namespace


def check_notebook(path):
    """A committed figure notebook: valid nbformat 4, no outputs, a one-line title, one `parameters` code cell
    whose assignments are exactly what papermill declares, and the caption shown from workflow/report (never
    written in the notebook). Returns (notebook, declared parameter names)."""
    import nbformat
    import papermill

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    assert nb.cells[0].cell_type == "markdown" and re.fullmatch(r"# [^\n]+", nb.cells[0].source)  # a title only
    assert [c.cell_type for c in nb.cells].count("markdown") == 1
    assert "plotting.show_caption(caption, globals())" in nb.cells[2].source  # the first cell after the parameters
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    declared = set(papermill.inspect_notebook(str(path)))
    assigned = {t.id for node in ast.parse(tagged[0].source).body if isinstance(node, ast.Assign) for t in node.targets}
    assert declared == assigned  # papermill parses every line (it skips some it cannot read, e.g. '=' in comments)
    return nb, declared


def sweep_config(path):
    """The smoke config with tiny mnist_fc sweeps instead of `main` (values shared with the main run's defaults
    are reused runs); the K sweep matches gap vectors as the real configs do, so its W varies with K."""
    cfg = yaml.safe_load(SMOKE_CONFIG.read_text())
    cfg["experiments"] = {
        "tau_ablation": {"settings": ["mnist_fc"], "tau": SWEEPS["fig10_tau_ablation_mnist_fc"][1]},
        "k_sweep": {"settings": ["mnist_fc"], "K": SWEEPS["fig13_k_sweep_mnist_fc"][1], "match": "gap_vectors"},
        "batch_sweep": {"settings": ["mnist_fc"], "b": SWEEPS["fig16_batch_sweep_mnist_fc"][1]},
    }
    cfg["figures"]["title"] = "sweep test"
    path.write_text(yaml.safe_dump(cfg))
    return path


def mini_config(path):
    """The minimal DAG's config: the smoke config with one setting (mnist_fc), one seed and three restricted modes
    (plain, Hessian, gap: each kind of subspace refresh)."""
    cfg = yaml.safe_load(SMOKE_CONFIG.read_text())
    cfg["settings"] = {"mnist_fc": {**cfg["settings"]["mnist_fc"], "train": {"seeds": [0]}}}
    cfg["experiments"]["main"]["settings"] = ["mnist_fc"]
    cfg["restricted"]["modes"] = ["none", "dom", "gapdom"]
    cfg["figures"]["title"] = "minimal DAG"
    path.write_text(yaml.safe_dump(cfg))
    return path


# The minimal DAG: one run through every per-run stage (acquire, subset, train, geometry, three restricted modes,
# estimators, mechanism, the collects) and one figure, 14 jobs. The fault-injection tests and the --cores 1
# comparison work on it; the smoke DAG covers every rule and figure.
MINI_TARGETS = ["results/tables/main_geometry.parquet", "results/tables/restricted.parquet",
                "results/tables/main_estimators.parquet", "results/tables/mechanism.parquet",
                f"{FIGURE_DIR}/fig02_removal.pdf"]


def run_dag(work, config, targets=("all",), cores: int = 8):
    """``targets`` of ``config`` built in ``work`` with ``cores`` (more jobs than cores by default); fails the
    test with the tail of Snakemake's output if it fails."""
    snakemake(work, "--cores", str(cores), *targets, config=config)
    return work

"""The pipeline through Snakemake itself: dry runs, the smoke DAG, lint and format."""

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

from sharpgaps.core import grid
from sharpgaps.pipeline.config import validate
from tests.helpers import FIGURE_DIR

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
pytestmark = pytest.mark.workflow


def snakemake(workdir, *args, config=None, check=True):
    cmd = [*SNAKEMAKE, "-d", str(workdir), *args]
    if config:
        cmd += ["--configfile", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc




def dry_run_jobs(text):
    """(rule, its output line) for every job a dry run lists (`rule all` has no output line)."""
    jobs, rule = [], None
    for line in text.splitlines():
        m = re.fullmatch(r"(?:local)?rule (\w+):", line.strip())
        if m:
            rule = m.group(1)
        elif rule and line.strip().startswith("output:"):
            jobs.append((rule, line.split(":", 1)[1]))
            rule = None
    return jobs


def test_dry_run_paper_config_is_fast(tmp_path):
    t0 = time.perf_counter()
    proc = snakemake(tmp_path, "-n", "--quiet", "rules", "all", config=REPO / "config.yaml")
    elapsed = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    assert "train" in out and "subset" in out
    assert elapsed < 60, f"dry run took {elapsed:.1f}s"  # generous: the README quotes the measured time


# `smoke` (the whole smoke DAG, built once per session) comes from conftest.py.


def test_smoke_run_trains_all_three_settings(smoke):
    runs = sorted((smoke / "results/runs").glob("*/*/run.json"))
    assert {p.parent.parent.name for p in runs} == {"mnist_fc", "cifar_cnn", "sst2_transformer"}
    for info in runs:
        metrics = pd.read_csv(info.parent / "metrics.csv")
        ckpts = sorted((info.parent / "ckpt").glob("r*.pt"))
        assert len(ckpts) == len(metrics) >= 2
        ck = torch.load(ckpts[-1], weights_only=False)
        assert ck["gaps"].shape[0] == ck["run"]["window"] and ck["gaps"].shape[1] == ck["run"]["K"]
        assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]  # it learns
    assert list((smoke / "results/logs/train").rglob("*.log")) and list((smoke / "results/benchmarks").rglob("*.tsv"))


def test_smoke_rerun_is_a_noop(smoke):
    proc = snakemake(smoke, "-n", "all", config=REPO / ".test/config.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_changing_one_run_parameter_reruns_only_that_run(smoke, tmp_path):
    import yaml

    cfg = yaml.safe_load((REPO / ".test/config.yaml").read_text())
    cfg["settings"]["mnist_fc"]["lr"] = 0.04
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = snakemake(smoke, "all", "-n", config=path).stdout
    jobs = dry_run_jobs(out)
    # that setting's runs (the smoke config's mnist_fc: two main seeds, and three more heterogeneity runs) and what
    # reads them: their geometry, estimators, mechanism and restricted branches (one per mode and main seed), the
    # tables (main and heterogeneity) ...
    compute = Counter(rule for rule, outputs in jobs if f"{FIGURE_DIR}/" not in outputs)
    assert compute == {"train": 5, "geometry": 5, "restricted": 10, "collect_geometry": 2, "collect_restricted": 1,
                       "estimators": 5, "collect_estimators": 2, "mechanism": 5, "collect_mechanism": 1,
                       "heterogeneity_table": 1}
    # ... and the figures drawn from those tables (the per-setting figures among them)
    figures = Counter(rule for rule, outputs in jobs if f"{FIGURE_DIR}/" in outputs)
    assert {"fig01_cosines", "fig02_removal", "fig03_spectrum", "fig04_alignment", "fig09_removal_raw"} <= set(figures)


def test_adding_a_seed_reruns_only_that_seeds_jobs(smoke, tmp_path):
    import yaml

    cfg = yaml.safe_load((REPO / ".test/config.yaml").read_text())
    seeds = cfg["settings"]["mnist_fc"]["train"]["seeds"]
    cfg["settings"]["mnist_fc"]["train"]["seeds"] = [*seeds, max(seeds) + 1]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    jobs = dry_run_jobs(snakemake(smoke, "all", "-n", config=path).stdout)
    compute = [(rule, outputs) for rule, outputs in jobs if f"{FIGURE_DIR}/" not in outputs]
    # the new seed's run and its stages; every seed's restricted runs, since all branch at the seeds' mean chi_k;
    # the tables, and the heterogeneity cells, which read the mechanism table
    assert Counter(rule for rule, _ in compute) == {"train": 1, "geometry": 1, "restricted": 15, "collect_geometry": 1,
                                                     "collect_restricted": 1, "estimators": 1, "collect_estimators": 1,
                                                     "mechanism": 1, "collect_mechanism": 1, "heterogeneity_table": 1}
    new = f"_s{max(seeds) + 1}"  # every other run-level job belongs to the new seed's run
    assert all(new in outputs for rule, outputs in compute
               if not rule.startswith("collect") and rule not in ("restricted", "heterogeneity_table"))
    parents = {grid.run_id(r) for r in grid.main_runs(validate(cfg, SCHEMA), "mnist_fc")}
    assert len(parents) == len(seeds) + 1
    assert {o.split("/runs/mnist_fc/")[1].split("/")[0] for rule, o in compute if rule == "restricted"} == parents


def test_jobs_receive_exact_floats(tmp_path):
    """An lr or tol with more digits than %g keeps survives path -> parse -> job arguments exactly."""
    import shlex

    import yaml

    lr, tol = 0.0123456789, 1.23456789e-4
    cfg = yaml.safe_load((REPO / ".test/config.yaml").read_text())
    cfg["settings"]["mnist_fc"]["lr"] = lr
    cfg["geometry"]["tol"] = tol
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = snakemake(tmp_path, "-n", "-p", "all", config=path).stdout
    steps = [dict(zip(c[4::2], c[5::2])) | {"step": c[3]} for c in (shlex.split(line.split(":", 1)[1])
             for line in out.splitlines() if line.startswith("Shell command: python -m sharpgaps "))]
    train = [s for s in steps if s["step"] == "train" and "/mnist_fc/" in s["--out-dir"]]
    runs = grid.expand_runs(validate(cfg, SCHEMA))
    assert len(train) == len({grid.run_id(r) for r in runs if r["setting"] == "mnist_fc"})
    assert all("_lr0.0123456789_" in t["--out-dir"] for t in train)
    assert json.loads(train[0]["--run"])["lr"] == lr
    geometry = [s for s in steps if s["step"] == "geometry"]
    assert geometry and all("_tol0.000123456789_" in s["--out"] for s in geometry)
    assert all(json.loads(s["--geometry"])["tol"] == tol for s in geometry)


def test_lint_clean():
    proc = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt_clean():
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_manifest_records_start_commit_peak_memory_and_job_times(tmp_path):
    """`make release-quick`'s record: the start commit as given, the largest job's peak RSS and each job's seconds
    from the benchmark: files, and the run's own outputs (paper_figures/) not counted as a dirty tree."""
    bench = tmp_path / "benchmarks" / "train"
    bench.mkdir(parents=True)
    for i, (sec, rss) in enumerate(((1.04, 812.5), (61.0, 2048.25))):
        (bench / f"job{i}.tsv").write_text(f"s\th:m:s\tmax_rss\n{sec}\t0:00:01\t{rss}\n")
    out, config = tmp_path / "MANIFEST.json", REPO / ".test/config.yaml"
    subprocess.run([sys.executable, "-m", "sharpgaps", "manifest", "--config", str(config),
                    "--wall-s", "12", "--cores", "2", "--commit", "abc123", "--benchmarks", str(tmp_path / "benchmarks"),
                    "--out", str(out)], cwd=REPO, check=True)
    m = json.loads(out.read_text())
    assert (m["commit"], m["wall_s"], m["max_rss_mb"], m["cores"]) == ("abc123", 12.0, 2048.25, 2)
    assert m["config"] == config.read_text() and isinstance(m["dirty"], bool)
    assert m["job_s"] == {"train/job0": 1.0, "train/job1": 61.0}  # each job's seconds, for checking projections


def test_manifest_keeps_one_entry_per_release_part(tmp_path):
    """`make release-quick PART=...`: a part rewrites its own entry only, and lists the figure files it drew."""
    config = REPO / ".test/config.yaml"
    out = tmp_path / "MANIFEST.json"

    def part(name, commit):
        start = time.time()
        (tmp_path / f"fig_{name}.png").write_text(name)
        subprocess.run([sys.executable, "-m", "sharpgaps", "manifest", "--config", str(config), "--wall-s", "5",
                        "--part", name, "--since", str(start - 1), "--commit", commit, "--out", str(out)],
                       cwd=REPO, check=True)
        return json.loads(out.read_text())["parts"]

    part("main", "aaa")
    old = tmp_path / "fig_main.png"
    os.utime(old, (old.stat().st_atime - 3600, old.stat().st_mtime - 3600))  # drawn an hour before the next part
    parts = part("sweeps", "bbb")
    assert {p: (e["commit"], e["figures"]) for p, e in parts.items()} == {
        "main": ("aaa", ["fig_main.png"]), "sweeps": ("bbb", ["fig_sweeps.png"])}
    assert part("main", "ccc")["sweeps"]["commit"] == "bbb"  # rerunning one part leaves the other's record
    from sharpgaps.pipeline.manifest import read_parts

    assert sorted(read_parts(out)) == ["main", "sweeps"]
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"commit": "x", "wall_s": 1.0}))
    assert read_parts(flat) == {"": {"commit": "x", "wall_s": 1.0}}  # a record of a whole run
    # a part that keeps some settings records what it selected and the override that ran it
    subprocess.run([sys.executable, "-m", "sharpgaps", "manifest", "--config", str(REPO / "config.yaml"), "--wall-s",
                    "5", "--part", "mnist_main", "--since", str(time.time()), "--commit", "ddd", "--out", str(out)],
                   cwd=REPO, check=True)
    entry = read_parts(out)["mnist_main"]
    assert entry["override"] == "--config part=mnist_main"
    assert entry["selection"] == {"experiments": ["main"], "settings": ["mnist_fc"]}

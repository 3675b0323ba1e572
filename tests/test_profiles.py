"""Execution profiles (profiles/*, tests/cluster/profile) and the SLURM test machinery.

Fast tests need no SLURM: the profiles parse, use only options the installed
Snakemake knows, and a dry run with the SLURM profile plans the toy workflow
without calling sbatch. The `cluster` test starts a real single-node SLURM and
runs the toy workflow through it; it runs only with SHARPGAPS_SLURM_TEST=1
(it needs root or sudo for apt-get the first time, and about a minute).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "tests" / "cluster"
TOY = CLUSTER / "toy"
PROFILES = {
    "default": REPO / "profiles" / "default" / "config.yaml",
    "slurm": REPO / "profiles" / "slurm" / "config.yaml",
    "cluster-test": CLUSTER / "profile" / "config.yaml",
}
GPU_RULES = ("train", "train_distributed", "geometry", "restricted")
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def load(name: str) -> dict:
    with open(PROFILES[name]) as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict), f"{PROFILES[name]} is not a YAML mapping"
    return data


@lru_cache(maxsize=1)
def snakemake_options() -> frozenset[str]:
    out = subprocess.run(
        [*SNAKEMAKE, "--help"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    return frozenset(re.findall(r"--([a-z0-9][a-z0-9-]*)", out))


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_keys_are_snakemake_options(name):
    data = load(name)
    unknown = [
        k for k in data if not k.startswith("x-") and k not in snakemake_options()
    ]
    assert not unknown, f"{PROFILES[name]}: not options of this Snakemake: {unknown}"


def test_default_profile():
    p = load("default")
    assert "executor" not in p  # local
    assert isinstance(p["cores"], int) and p["cores"] >= 1
    assert p["printshellcmds"] is True
    assert p["show-failed-logs"] is True
    assert p["rerun-incomplete"] is True
    assert p["keep-going"] is False
    assert {"mem_mb", "runtime"} <= set(p["default-resources"])


def test_slurm_profile():
    p = load("slurm")
    assert p["executor"] == "slurm"
    assert isinstance(p["jobs"], int) and p["jobs"] >= 1
    assert p["latency-wait"] >= 5
    assert p["show-failed-logs"] is True
    res = p["default-resources"]
    assert {"mem_mb", "runtime"} <= set(res)
    # cluster-generic: no site's partition/account, no test-only polling tweaks
    assert "slurm_partition" not in res and "slurm_account" not in res
    assert not any(k.startswith("slurm-status") or k.startswith("slurm-init") for k in p)
    for rule in GPU_RULES:
        r = p["set-resources"][rule]
        assert r["gpu"] == 1, rule
        assert isinstance(r["cpus_per_gpu"], int) and r["cpus_per_gpu"] >= 1, rule


def test_cluster_test_profile():
    p = load("cluster-test")
    # no accounting on the test cluster: sacct cannot report job states
    assert p["slurm-status-command"] == "squeue"
    assert p["slurm-keep-successful-logs"] is True  # the test reads the job logs
    # squeue only works while MinJobAge (300 s on the test cluster) >= 3x this
    assert 3 * p["slurm-init-seconds-before-status-checks"] <= 300
    assert {"slurm_partition", "slurm_account", "constraint", "gpu_model"} <= set(
        p["x-strip-resources"]
    )


def test_scripts_are_valid_bash():
    for script in ("slurm_up.sh", "slurm_down.sh", "run_slurm_test.sh"):
        path = CLUSTER / script
        assert path.stat().st_mode & stat.S_IXUSR, f"{path} is not executable"
        subprocess.run(["bash", "-n", str(path)], check=True)
    r = subprocess.run(
        ["bash", str(CLUSTER / "run_slurm_test.sh")], capture_output=True, text=True
    )
    assert r.returncode == 2 and "Usage" in r.stderr


def _stub_slurm(bindir: Path) -> Path:
    """Put failing stand-ins for the SLURM commands first on PATH; each records its call."""
    calls = bindir / "calls.txt"
    bindir.mkdir()
    for tool in ("sbatch", "srun", "scancel", "squeue", "sacct", "sinfo", "scontrol", "sacctmgr", "sshare"):
        stub = bindir / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\nexit 1\n')
        stub.chmod(0o755)
    return calls


def _toy_copy(tmp_path: Path) -> Path:
    wd = tmp_path / "toy"
    shutil.copytree(TOY, wd, ignore=shutil.ignore_patterns(".snakemake", "results"))
    return wd


def test_slurm_profile_dry_run_needs_no_slurm(tmp_path):
    wd = _toy_copy(tmp_path)
    calls = _stub_slurm(tmp_path / "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    r = subprocess.run(
        [*SNAKEMAKE, "-n", "--workflow-profile", str(PROFILES["slurm"].parent), "all"],
        cwd=wd, env=env, capture_output=True, text=True, timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    called = calls.read_text().splitlines() if calls.exists() else []
    # The plugin reads `scontrol show config` (MinJobAge) while building its
    # options; anything else (sinfo, sacct, sbatch, ...) means it tried to submit.
    assert all(c == "scontrol show config" for c in called), called
    # the profile's per-rule GPU request reaches the toy's `train` rule
    train = re.search(r"rule train:\n(?:    .*\n)*?    resources: (.*)", out)
    assert train and "gpu=1" in train.group(1) and "cpus_per_gpu=4" in train.group(1), out
    assert re.search(r"^total\s+5$", out, re.M), out  # prepare, train, geometry, summarize, all


def test_default_profile_runs_toy_locally(tmp_path):
    wd = _toy_copy(tmp_path)
    r = subprocess.run(
        [*SNAKEMAKE, "--workflow-profile", str(PROFILES["default"].parent), "--cores", "2", "all"],
        cwd=wd, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    summary = (wd / "results" / "toy" / "summary.txt").read_text().split("\n")
    assert summary[:3] == ["weight 14850", "sharpness 121.860576", "100"]


def _slurm_enabled(kind):
    """SHARPGAPS_SLURM_TEST=1 runs both cluster tests; =toy or =pipeline only that one (CI: pipeline)."""
    return os.environ.get("SHARPGAPS_SLURM_TEST") in ("1", kind)


@pytest.mark.cluster
@pytest.mark.skipif(not _slurm_enabled("toy"), reason="set SHARPGAPS_SLURM_TEST=1 or =toy to start a real SLURM")
def test_toy_workflow_runs_through_slurm():
    r = subprocess.run(
        ["bash", str(CLUSTER / "run_slurm_test.sh"), "--compare", "results/**/*.txt",
         str(TOY), str(TOY / "config.yaml"), "all"],
        cwd=REPO, capture_output=True, text=True, timeout=1200,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "SLURM evidence: OK" in out, out
    assert re.search(r"submitted with sbatch: [1-9]", out), out
    assert "PASSED" in out, out


SMOKE_RUN = "results/runs/mnist_fc/K8_tau4_b50_lr0.05_mse_T96_W2_s0"


@pytest.mark.cluster
@pytest.mark.skipif(not _slurm_enabled("pipeline"),
                    reason="set SHARPGAPS_SLURM_TEST=1 or =pipeline to start a real SLURM")
def test_pipeline_runs_through_slurm_and_matches_a_local_run():
    """acquire -> subset -> train -> geometry of the smoke config through sbatch; outputs byte-equal to local."""
    target = f"{SMOKE_RUN}/geometry_H300_tol0.001_x2.parquet"
    r = subprocess.run(
        ["bash", str(CLUSTER / "run_slurm_test.sh"),
         "--compare", f"{SMOKE_RUN}/ckpt/*.pt", "--compare", f"{SMOKE_RUN}/metrics.csv",
         "--compare", target, str(REPO), str(REPO / ".test/config.yaml"), target],
        cwd=REPO, capture_output=True, text=True, timeout=1500,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    assert "SLURM evidence: OK" in out and "PASSED" in out, out[-5000:]
    for rule in ("acquire", "subset", "train", "geometry"):
        assert re.search(rf"rule {rule}: snakemake job \d+ -> SLURM job \d+", out), f"{rule} not via sbatch"

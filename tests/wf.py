"""Helpers shared by the workflow tests: run Snakemake in a workdir, read dry-run job counts."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = REPO / ".test/config.yaml"


def snakemake(workdir, *args, config=SMOKE_CONFIG, snakefile=REPO / "Snakefile", check=True) -> str:
    """stdout + stderr of `snakemake -d workdir ARGS --configfile CONFIG` (targets and flags go first:
    --configfile takes several values)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir), *args]
    if config:
        cmd += ["--configfile", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
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

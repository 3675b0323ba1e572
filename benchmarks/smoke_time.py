"""The smoke scale's wall time, measured, with the machine's load beside it; the README's cost row is written from it.

Runs `snakemake all --cores CORES --configfile .test/config.yaml` (what `make all SCALE=smoke` runs) in an empty
temporary working directory, samples the 1-minute load average every 5 s while it runs, and records the wall
time, the load, the largest job's peak RSS and the commit in docs/smoke_time.json. Nothing else is timed.

    python benchmarks/smoke_time.py --cores 2          # measure (a few minutes), then write the README row
    python benchmarks/smoke_time.py --readme-only      # rewrite the README row from the committed JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from sharpgaps.data.sources import ENV_DATA_DIR
from sharpgaps.pipeline.jobcosts import read_job_costs

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "docs" / "smoke_time.json"  # names the commit measured: history, so under docs/
ROW_START = "| smoke | `make all SCALE=smoke CORES=2` |"


def measure(cores: int) -> dict:
    loads, done = [], threading.Event()

    def sample():
        while not done.wait(5.0):
            loads.append(os.getloadavg()[0])

    with tempfile.TemporaryDirectory() as work:
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", work, "all", "--cores",
               str(cores), "--configfile", str(REPO / ".test/config.yaml")]
        before = os.getloadavg()[0]
        sampler = threading.Thread(target=sample, daemon=True)
        t0 = time.monotonic()
        sampler.start()
        # jobs run `python -m sharpgaps`: this interpreter's bin/ first on PATH, as `make all` puts the venv's
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        # the config's data_dir is relative to the checkout, not to the temporary working directory
        config_dir = yaml.safe_load((REPO / ".test/config.yaml").read_text())["data_dir"]
        env.setdefault(ENV_DATA_DIR, str((REPO / config_dir).resolve()))
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
        wall = time.monotonic() - t0
        done.set()
        if proc.returncode != 0:
            raise SystemExit(f"the smoke run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        jobs = read_job_costs(Path(work) / "results" / "benchmarks")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return {"wall_s": round(wall, 1), "cores": cores, "cpus": os.cpu_count(), "load_before": round(before, 2),
            "load_median": round(statistics.median(loads), 2) if loads else round(before, 2),
            "peak_rss_mb": round(float(jobs["max_rss_mb"].max())), "jobs": len(jobs),
            "commit": commit.stdout.strip(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": platform.machine()}


def readme_row(r: dict) -> str:
    """The README's smoke row of the Cost table, from one measurement."""
    return (f"{ROW_START} {r['wall_s']:.0f} s ({r['wall_s'] / 60:.1f} min; {r['jobs']} jobs with a benchmark file) "
            f"measured at {r['commit']} on {r['date']} with {r['cores']} cores of a {r['cpus']}-CPU machine whose "
            f"1-minute load average was {r['load_before']} at the start and {r['load_median']} (median) during the run "
            f"(`python benchmarks/smoke_time.py`; a busier machine takes longer) | {r['peak_rss_mb'] / 1000:.1f} GB | "
            "dominated by start-up |")


def write_readme(r: dict, readme: Path = REPO / "README.md") -> None:
    lines = readme.read_text().splitlines(keepends=True)
    i = next(n for n, line in enumerate(lines) if line.startswith(ROW_START))
    lines[i] = readme_row(r) + "\n"
    readme.write_text("".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--readme-only", action="store_true")
    a = ap.parse_args()
    if not a.readme_only:
        RECORD.write_text(json.dumps(measure(a.cores), indent=1) + "\n")
    write_readme(json.loads(RECORD.read_text()))
    print(readme_row(json.loads(RECORD.read_text())))


if __name__ == "__main__":
    main()

"""MANIFEST.json: what produced the committed figures (config, commit, machine, wall time, peak memory)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch
import yaml

from ..core.atomic import save_json
from .jobcosts import read_job_costs


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor())


def read_parts(path) -> dict[str, dict]:
    """part -> its record, from a MANIFEST.json written part by part ({"": record} for one of a whole run)."""
    m = json.loads(Path(path).read_text())
    return m["parts"] if "parts" in m else {"": m}


def drawn_since(figures_dir, since: float) -> list[str]:
    """The files of ``figures_dir`` written at or after ``since`` (epoch seconds): what one release part drew."""
    return sorted(p.name for p in Path(figures_dir).iterdir()
                  if p.is_file() and p.name != "MANIFEST.json" and p.stat().st_mtime >= since)


def write_manifest(config, out, *, wall_s: float, max_rss_mb: float | None = None, benchmarks=None,
                   commit: str = "", cores: int | None = None, note: str = "", part: str | None = None,
                   since: float | None = None) -> None:
    """Write ``out``; with ``part``, only that part's entry under "parts" changes (the other parts' stay), and it
    lists the figure files the part drew (those of out's directory written since ``since``)."""
    cfg = Path(config).read_text()
    jobs = read_job_costs(benchmarks) if benchmarks else None
    if max_rss_mb is None and jobs is not None and len(jobs):
        max_rss_mb = float(jobs.max_rss_mb.max())
    entry = {
        "config_file": str(config), "config_sha256": hashlib.sha256(cfg.encode()).hexdigest(), "config": cfg,
        # the commit the run started from; "dirty": tracked files other than the run's own outputs changed
        "commit": commit or git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!paper_figures")),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores", "python": platform.python_version(),
        "torch": torch.__version__, "wall_s": wall_s, "max_rss_mb": max_rss_mb,
        "cores": os.cpu_count() if cores is None else cores, "note": note,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    if jobs is not None:  # each job's own seconds, so a projection can be checked against them (BENCHMARKS)
        entry["job_s"] = {job.job: round(job.s, 1) for job in jobs.itertuples()}
    if part is None:
        save_json(entry, out)
        return
    entry["part"] = part
    # what `--config part=<part>` selects: its experiments, and its settings where it keeps only some
    entry["override"] = f"--config part={part}"
    entry["selection"] = (yaml.safe_load(cfg) or {}).get("parts", {}).get(part)
    if since is not None:
        entry["figures"] = drawn_since(Path(out).parent, since)
    previous = json.loads(Path(out).read_text()) if Path(out).is_file() else {}
    save_json({"parts": {**previous.get("parts", {}), part: entry}}, out)

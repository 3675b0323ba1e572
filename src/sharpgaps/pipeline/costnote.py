"""Before `make all` starts the paper-scale DAG on a machine without a GPU: what it will cost there.

Reads the committed projection (docs/BENCHMARKS.json, `paper_scale`: benchmarks/bench_scale.py's model of
config.yaml's DAG from unit costs measured on a 2-core CPU machine); measures nothing, imports no torch, never
prompts or blocks, and says nothing for another config or where a GPU is visible.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

QUICK_COMMAND = "make all SCALE=quick"


def gpu_visible() -> bool:
    """An NVIDIA GPU on this machine, without importing torch (fast): its device node or its driver's tool."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def runs_on_cpu(device: str) -> bool:
    return device == "cpu" or (device == "auto" and not gpu_visible())


CONFIRM_COMMAND = "make all CONFIRM=1"


def note(config_file: Path, repo: Path, stop: bool = False) -> str | None:
    """The note for ``config_file``, or None (not the paper config, or a GPU is there or asked for). ``stop``: the
    note ends by saying the run stops here and names the two ways forward (`make all` without CONFIRM=1)."""
    if Path(config_file).resolve() != (repo / "config.yaml").resolve():
        return None
    device = (yaml.safe_load(Path(config_file).read_text()) or {}).get("device", "auto")
    if not runs_on_cpu(str(device)):
        return None
    record = repo / "docs/BENCHMARKS.json"
    summ = next((r for r in json.loads(record.read_text()).get("paper_scale", []) if r.get("rule") == "summary"),
                None) if record.exists() else None
    ending = (f"Stopped before any job: run `{QUICK_COMMAND}` for the quick scale, or `{CONFIRM_COMMAND}` to run the "
              "paper scale here anyway." if stop else "Continuing.")
    if summ is None:
        return (f"note: this is the paper-scale config on a machine without a GPU (device: {device}); no cost "
                f"projection is recorded ({record.name} lacks `paper_scale`). `{QUICK_COMMAND}` runs the quick scale. "
                + ending)
    return (f"note: paper scale (config.yaml) on a machine without a GPU (device: {device}). Projected from unit "
            f"costs measured on a 2-core CPU machine (docs/BENCHMARKS.md, \"Scale on paper\"): {summ['jobs']} jobs, "
            f"{summ['cpu_h']:.0f} CPU job-hours, about {summ['cpu_h'] / 24:.0f} days one job at a time; "
            f"{summ['gpu_h_estimate']:.1f} h on one GPU (an estimate). The quick scale instead: `{QUICK_COMMAND}` "
            "(its measured wall time: README.md#cost). " + ending)

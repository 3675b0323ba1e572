"""Regenerate docs/BENCHMARKS.md: `python benchmarks/run.py [--quick] [--out docs/BENCHMARKS.md]`.

Every table is measured side by side in this one process; figures are medians with min-max.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    return (f"- machine: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads); python {platform.python_version()}\n"
            f"- commit: {commit}; date: {time.strftime('%Y-%m-%d %H:%M %Z')}")


def engine_section(subset, quick: bool) -> str:
    from bench_engine import bench_engine

    rows = bench_engine(subset, Ks=(2, 4) if quick else (2, 4, 8, 16), steps=3 if quick else 20,
                        repeats=2 if quick else 5)
    lines = ["## Simulated Local SGD step (FC-tanh, MNIST-5k, b=50 per worker)", "",
             "One local step of all K workers. `floor` = one model taking one step at batch K*b; "
             "`loop` = K separate models, one autograd call each (the reference implementation). "
             "Target (K=8): simulated <= 1.5x floor and >= 1.7x faster than the loop.", "",
             "| K | simulated ms | loop ms | floor ms | simulated / floor | loop / simulated |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rng = lambda k: f"{r[k + '_ms']:.2f} ({r[k + '_range_ms'][0]:.2f}-{r[k + '_range_ms'][1]:.2f})"  # noqa: E731
        lines.append(f"| {r['K']} | {rng('simulated')} | {rng('loop')} | {rng('floor')} | "
                     f"{r['simulated_over_floor']:.2f} | {r['loop_over_simulated']:.2f} |")
    return "\n".join(lines), rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test of this script)")
    ap.add_argument("--out", default=str(REPO / "docs/BENCHMARKS.md"))
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from sharpgaps.sources import resolve_data_dir
    from sharpgaps.subsets import make_subset

    data_dir = resolve_data_dir(str(REPO.parent / "shared" / "data"))
    mnist = make_subset("mnist", data_dir, n_train=1000 if a.quick else 5000, seed=0, test_cap=100)
    sections = ["# Benchmarks", "", "Regenerate with `make bench` (`python benchmarks/run.py`). "
                "Medians over repeats, min-max in parentheses, all measured side by side in one process.", "",
                machine(), ""]
    text, _ = engine_section(mnist, a.quick)
    sections += [text, ""]
    from sharpgaps.atomic import save_text

    save_text("\n".join(sections), a.out)
    print("\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())

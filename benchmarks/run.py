"""Regenerate docs/BENCHMARKS.md: `python benchmarks/run.py [--quick] [--out docs/BENCHMARKS.md]`.

Each table is measured side by side in this one process (interleaved repeats), so its ratios hold on
a noisy machine; figures are medians with min-max. The DAG tables read Snakemake's `benchmark:` files
of a finished run (default: this checkout's results/ from `make all SCALE=quick`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    load = os.getloadavg()[0]
    return (f"- machine: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads); python {platform.python_version()}\n"
            f"- commit: {commit}; date: {time.strftime('%Y-%m-%d %H:%M %Z')}; load average at start: {load:.1f}")


def _rng(r: dict, key: str) -> str:
    return f"{r[key + '_ms']:.2f} ({r[key + '_range_ms'][0]:.2f}-{r[key + '_range_ms'][1]:.2f})"


def engine_section(subset, quick: bool) -> tuple[str, list[dict]]:
    from bench_engine import bench_engine

    rows = bench_engine(subset, Ks=(2, 4) if quick else (2, 4, 8, 16), steps=3 if quick else 20,
                        repeats=2 if quick else 5)
    lines = ["## Simulated Local SGD step (FC-tanh, MNIST, b=50 per worker)", "",
             "One local step of all K workers. `floor` = one model taking one step at batch K*b; "
             "`loop` = K separate models, one autograd call each (the reference implementation). "
             "Target (K=8): simulated <= 1.5x floor and >= 1.7x faster than the loop.", "",
             "| K | simulated ms | loop ms | floor ms | simulated / floor | loop / simulated |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['K']} | {_rng(r, 'simulated')} | {_rng(r, 'loop')} | {_rng(r, 'floor')} | "
                     f"{r['simulated_over_floor']:.2f} | {r['loop_over_simulated']:.2f} |")
    return "\n".join(lines), rows


def hvp_section(subsets: dict, quick: bool) -> tuple[str, list[dict]]:
    from bench_hessian import bench_hvp_cost

    from sharpgaps import losses, models

    sizes = {"fc_tanh": 300 if quick else 5000, "cnn_relu": 100 if quick else 1000,
             "transformer": 32 if quick else 256}
    rows = []
    for name, sub in subsets.items():
        n = min(sizes[name], len(sub["x_train"]))
        model = models.build_model(name, sub["meta"], seed=0)
        for r in bench_hvp_cost(model, losses.mse_onehot, sub["x_train"][:n], sub["y_train"][:n],
                                repeats=2 if quick else 5):
            rows.append({"model": name, **r})
    lines = ["## Full-batch HVP vs full-batch gradient (target: cached HVP <= 1.5x gradient)", "",
             "| model | examples | d | op | median s | min-max s | / gradient |", "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['n']} | {r['dim']} | {r['op']} | {r['median_s']:.4f} | "
                     f"{r['min_s']:.4f}-{r['max_s']:.4f} | {r['ratio_to_gradient']:.2f} |")
    return "\n".join(lines), rows


def eig_section(subset, quick: bool) -> tuple[str, list[dict]]:
    from bench_hessian import bench_eigensolvers

    from sharpgaps import losses, models
    from sharpgaps.localsgd import RunSpec, SimulatedLocalSGD

    n = 300 if quick else 1000
    x, y = subset["x_train"][:n], subset["y_train"][:n]
    model = models.build_model("fc_tanh", subset["meta"], seed=0)
    # a trained point: 30 rounds of Local SGD (K=8, tau=8), where the spectrum has separated
    spec = RunSpec(K=8, tau=8, b=50, lr=0.05, rounds=30, window=1, seed=0, checkpoints=())
    eng = SimulatedLocalSGD(model, losses.mse_onehot, subset["x_train"], subset["y_train"], spec)
    for r in range(3 if quick else 30):
        for s in range(8):
            eng.local_step(r * 8 + s)
        theta, _ = eng.end_round()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(theta[name])
    rows = bench_eigensolvers(model, losses.mse_onehot, x, y, k=4 if quick else 10,
                              power_maxiter=20 if quick else 200)
    lines = ["## Top-k eigensolver: Lanczos (eigsh) vs deflated power iteration (PyHessian style)", "",
             f"FC-tanh on {n} MNIST examples after {3 if quick else 30} Local SGD rounds, float64 HVPs; "
             "'warm' starts from the eigenvectors at a point 10 GD steps earlier. Target: >= 6x fewer HVPs "
             "at equal accuracy (power_oracle rows stop at eigsh's own eigenvalue error; a capped run "
             "(converged False) is a lower bound).", "",
             "| solver | start | stop | HVPs | max rel err | sin angle | converged | s |",
             "|---|---|---|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['solver']} | {r['start']} | {r['stop']} | {r['n_hvp']} | {r['max_rel_err']:.1e} | "
                     f"{r['sin_angle']:.1e} | {r['converged']} | {r['seconds']:.2f} |")
    return "\n".join(lines), rows


def dag_section(workdir: Path) -> tuple[str, list[dict]]:
    """Per-rule cost of a finished run, aggregated from Snakemake's benchmark files."""
    files = sorted((workdir / "results/benchmarks").rglob("*.tsv"))
    rows = []
    for f in files:
        df = pd.read_csv(f, sep="\t")
        rule = f.relative_to(workdir / "results/benchmarks").parts[0]
        rows.append({"rule": rule, "job": str(f.relative_to(workdir / "results/benchmarks").with_suffix("")),
                     "s": float(df["s"].iloc[0]), "max_rss_mb": float(df["max_rss"].iloc[0])})
    if not rows:
        return "## Whole DAG\n\nNo benchmark files found under " + str(workdir / "results/benchmarks"), []
    jobs = pd.DataFrame(rows)
    per_rule = jobs.groupby("rule").agg(jobs=("s", "size"), total_s=("s", "sum"), max_s=("s", "max"),
                                        max_rss_mb=("max_rss_mb", "max")).sort_values("total_s", ascending=False)
    lines = [f"## Whole DAG: per-rule cost ({workdir / 'results'})", "",
             "Aggregates every `benchmark:` file under that results/ (all runs made in that checkout, "
             "e.g. smoke and quick runs together); job times include waiting for a shared CPU.", "",
             "| rule | jobs | total s | slowest job s | peak RSS MB |", "|---|---:|---:|---:|---:|"]
    for rule, r in per_rule.iterrows():
        lines.append(f"| {rule} | {int(r.jobs)} | {r.total_s:.0f} | {r.max_s:.0f} | {r.max_rss_mb:.0f} |")
    lines += ["", "Ten most expensive jobs:", "", "| job | s | peak RSS MB |", "|---|---:|---:|"]
    for _, r in jobs.sort_values("s", ascending=False).head(10).iterrows():
        lines.append(f"| {r.job} | {r.s:.0f} | {r.max_rss_mb:.0f} |")
    manifest = workdir / "paper_figures/MANIFEST.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        lines += ["", f"Wall time of that run: {m.get('wall_s', float('nan')):.0f} s on {m.get('machine', '?')} "
                  f"(peak RSS of the largest job {m.get('max_rss_mb', float('nan')):.0f} MB), sum of job times "
                  f"{jobs.s.sum():.0f} s."]
    return "\n".join(lines), rows


def snakemake_section(quick: bool) -> tuple[str, list[dict]]:
    """Dry-run time of the paper config and a one-figure rebuild (exactly one job) on a finished run."""
    def timed(args, cwd=REPO):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "snakemake", *args], capture_output=True, text=True, cwd=cwd)
        return time.perf_counter() - t0, out

    repeats = 1 if quick else 3
    rows = []
    dry = [timed(["-n", "--quiet", "rules", "all", "--configfile", "config.yaml"])[0] for _ in range(repeats)]
    rows.append({"what": "dry run, paper config (`snakemake -n all`)", "median_s": statistics.median(dry),
                 "min_s": min(dry), "max_s": max(dry)})
    fig = REPO / "paper_figures/fig02_removal.pdf"
    if fig.exists() and not quick:
        # -f reruns exactly that figure's job (a bare `touch` is not an edit: Snakemake compares contents)
        secs, out = timed(["--cores", "1", "-f", "paper_figures/fig02_removal.pdf", "--configfile", "config.quick.yaml"])
        jobs = len(re.findall(r"^(?:local)?rule \w+:", out.stdout + out.stderr, re.M))
        rows.append({"what": f"one-figure rebuild, `-f paper_figures/fig02_removal.pdf` ({jobs} job)",
                     "median_s": secs, "min_s": secs, "max_s": secs})
    lines = ["## Snakemake overhead (targets: dry run <= 5 s, one-figure rebuild <= 30 s)", "",
             "| what | median s | min-max s |", "|---|---:|---:|"]
    lines += [f"| {r['what']} | {r['median_s']:.1f} | {r['min_s']:.1f}-{r['max_s']:.1f} |" for r in rows]
    return "\n".join(lines), rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test of this script)")
    ap.add_argument("--out", default=str(REPO / "docs/BENCHMARKS.md"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=str(REPO), help="a finished run whose results/benchmarks to aggregate")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from sharpgaps.atomic import save_text
    from sharpgaps.sources import resolve_data_dir
    from sharpgaps.subsets import make_subset

    data_dir = resolve_data_dir(str(REPO.parent / "shared" / "data"))
    n = 600 if a.quick else 5000
    subsets = {
        "fc_tanh": make_subset("mnist", data_dir, n_train=n, seed=0, test_cap=100),
        "cnn_relu": make_subset("cifar10", data_dir, n_train=n, seed=0, test_cap=100),
        "transformer": make_subset("sst2", data_dir, n_train=n, seed=0, test_cap=100, max_len=50),
    }
    sections = ["# Benchmarks", "",
                "Regenerate with `make bench` (`python benchmarks/run.py`). Medians over interleaved repeats, "
                "min-max in parentheses, measured side by side in one process. This machine is shared: "
                "compare ratios within a table, not absolute times across tables.", "", machine(), ""]
    results = {}
    for name, fn in [("engine", lambda: engine_section(subsets["fc_tanh"], a.quick)),
                     ("hvp", lambda: hvp_section(subsets, a.quick)),
                     ("eigensolver", lambda: eig_section(subsets["fc_tanh"], a.quick)),
                     ("dag", lambda: dag_section(Path(a.workdir))),
                     ("snakemake", lambda: snakemake_section(a.quick))]:
        text, rows = fn()
        results[name] = rows
        sections += [text, ""]
        print(text, flush=True)
    save_text("\n".join(sections), a.out)
    save_text(json.dumps(results, indent=1, default=str), Path(a.out).with_suffix(".json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

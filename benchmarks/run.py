"""Regenerate docs/BENCHMARKS.md: `python benchmarks/run.py [--quick] [--out docs/BENCHMARKS.md]`.

Each table is measured side by side in this one process (interleaved repeats), so its ratios hold on
a noisy machine; figures are medians with min-max. The DAG tables read Snakemake's `benchmark:` files
of a finished run (default: this checkout's results/quick/ from `make all SCALE=quick`). Sections of the previous
file that this script does not write (by-hand measurements) are kept in place (keep_by_hand).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from sharpgaps.pipeline.manifest import read_parts

REPO = Path(__file__).resolve().parents[1]
BENCH_MD = REPO / "docs/BENCHMARKS.md"
# Paths inside a finished run (--workdir): the docs print them relative to it, never this machine's own paths.
# The quick scale's tree (config.quick.yaml: results_dir), one subtree per release part; the restricted runs are
# part `main`'s.
RESULTS = Path("results/quick")
RESTRICTED_TABLE = RESULTS / "main/tables/restricted.parquet"
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

    from sharpgaps.engine import losses, models

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

    from sharpgaps.core.specs import RunSpec
    from sharpgaps.engine import losses, models
    from sharpgaps.engine.localsgd import SimulatedLocalSGD

    n, rounds = (100, 3) if quick else (1000, 30)
    x, y = subset["x_train"][:n], subset["y_train"][:n]
    model = models.build_model("fc_tanh", subset["meta"], seed=0)
    # MSE on C=10 classes: the top 10 eigenvalues are class outliers well above the bulk at every
    # checkpoint (measured rel gap 0.6-0.8), while lambda_12 / lambda_13 sit inside the bulk (~1-2%)
    ks = {"gapped": 10, "ungapped": 12}
    rows = []
    for point in ("init", "trained"):
        if point == "trained":  # Local SGD (K=8, tau=8) from the same init
            spec = RunSpec(K=8, tau=8, b=50, lr=0.05, rounds=rounds, window=1, seed=0, checkpoints=())
            eng = SimulatedLocalSGD(model, losses.mse_onehot, subset["x_train"], subset["y_train"], spec)
            for r in range(rounds):
                for s in range(8):
                    eng.local_step(r * 8 + s)
                theta, _ = eng.end_round()
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(theta[name])
        for kind, k in ks.items():
            for r in bench_eigensolvers(model, losses.mse_onehot, x, y, k=k, power_maxiter=5 if quick else 200):
                rows.append({"checkpoint": point, "spectrum": kind, **r})
    lines = ["## Top-k eigensolver: Lanczos (eigsh) vs deflated power iteration (PyHessian style)", "",
             f"FC-tanh on {n} MNIST examples, float64 HVPs, at two checkpoints: `init` (round 0) and `trained` "
             f"({rounds} Local SGD rounds, K=8, tau=8). Each is solved at a gapped k (k=10: the edge of the "
             "10 class outliers) and an ungapped k (k=12: inside the bulk); `gap` is the measured "
             "(lambda_k - lambda_k+1) / lambda_k. The solve is at a point 10 GD steps after the checkpoint; "
             "'warm' starts from the checkpoint's own top-k eigenvectors. Target: >= 6x fewer HVPs at equal "
             "accuracy (power_oracle rows stop at eigsh's own eigenvalue error; a capped run (converged "
             "False) is a lower bound). Without a gap the top-k subspace is ill-determined, so the sin angle "
             "to the reference subspace is large for every solver; the eigenvalues are what is compared. "
             "At the gapped k a warm start cannot cut eigsh's HVPs: ARPACK's first Lanczos pass alone takes "
             "ncv = 2k+1 products and already reaches tol, so the warm start buys accuracy instead.", "",
             "| checkpoint | k | gap | solver | start | stop | HVPs | max rel err | sin angle | converged | s |",
             "|---|---:|---:|---|---|---|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['checkpoint']} | {r['k']} ({r['spectrum']}) | {r['rel_gap']:.3f} | {r['solver']} | "
                     f"{r['start']} | {r['stop']} | {r['n_hvp']} | {r['max_rel_err']:.1e} | "
                     f"{r['sin_angle']:.1e} | {r['converged']} | {r['seconds']:.2f} |")
    lines += ["", "HVPs at equal accuracy (power_oracle at eigsh's error / eigsh), and eigsh's time beyond its "
              "HVPs (ARPACK's own work plus the numpy <-> torch round trip of every Lanczos step: the most that "
              "fusing the solver loop into torch could save; 1 HVP = median of 5 bare products):", "",
              "| checkpoint | k | start | eigsh HVPs | power HVPs | ratio | eigsh s | 1 HVP s | beyond HVPs |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["solver"] != "eigsh":
            continue
        p = next(q for q in rows if q["solver"] == "power_oracle" and q.get("equal_accuracy")
                 and all(q[c] == r[c] for c in ("checkpoint", "k", "start")))
        bound = "" if p["converged"] else " (lower bound)"
        lines.append(f"| {r['checkpoint']} | {r['k']} ({r['spectrum']}) | {r['start']} | {r['n_hvp']} | "
                     f"{p['n_hvp']}{bound} | {p['n_hvp'] / r['n_hvp']:.0f}x | {r['seconds']:.2f} | "
                     f"{r['hvp_s']:.4f} | {max(0.0, 1 - r['n_hvp'] * r['hvp_s'] / r['seconds']):.0%} |")
    return "\n".join(lines), rows


def dag_section(workdir: Path, results: Path = RESULTS) -> tuple[str, list[dict]]:
    """Per-rule cost of a finished run (its results_dir under ``workdir``, every release part's subtree too), from
    Snakemake's benchmark files."""
    from sharpgaps.pipeline.jobcosts import read_tree_job_costs

    jobs = read_tree_job_costs(workdir / results)
    if jobs.empty:
        return f"## Whole DAG\n\nNo benchmark files found under {results}", []
    rows = jobs.to_dict("records")
    per_rule = jobs.groupby("rule").agg(jobs=("s", "size"), total_s=("s", "sum"), max_s=("s", "max"),
                                        max_rss_mb=("max_rss_mb", "max")).sort_values("total_s", ascending=False)
    lines = [f"## Whole DAG: per-rule cost ({results}/)", "",
             "Aggregates every `benchmark:` file under that results/ and its release parts' subtrees "
             "(<part>/benchmarks); job times include waiting for a shared CPU.", "",
             "| rule | jobs | total s | slowest job s | peak RSS MB |", "|---|---:|---:|---:|---:|"]
    for rule, r in per_rule.iterrows():
        lines.append(f"| {rule} | {int(r.jobs)} | {r.total_s:.0f} | {r.max_s:.0f} | {r.max_rss_mb:.0f} |")
    lines += ["", "Ten most expensive jobs:", "", "| job | s | peak RSS MB |", "|---|---:|---:|"]
    for _, r in jobs.sort_values("s", ascending=False).head(10).iterrows():
        lines.append(f"| {f'{r.part}: ' if r.part else ''}{r.job} | {r.s:.0f} | {r.max_rss_mb:.0f} |")
    manifest = workdir / "paper_figures/quick/MANIFEST.json"
    if manifest.exists():
        for part, m in read_parts(manifest).items():
            lines += ["", f"Wall time of {f'its part {part}' if part else 'that run'}: "
                      f"{m.get('wall_s', float('nan')):.0f} s on {m.get('machine', '?')} (peak RSS of the largest job "
                      f"{m.get('max_rss_mb', float('nan')):.0f} MB)."]
        lines += ["", f"Sum of job times under that results/: {jobs.s.sum():.0f} s."]
    return "\n".join(lines), rows


def _venv_env(**extra) -> dict:
    """The environment jobs need: they call `python -m sharpgaps`, so this interpreter's bin/ goes first
    on PATH (as `make all` does)."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def snakemake_section(quick: bool, workdir: Path) -> tuple[str, list[dict]]:
    """Dry-run time of the paper config and a one-figure rebuild (exactly one job) on a finished run (``workdir``'s
    quick part `main`); a rebuild that would run more than that one job is not timed (nothing upstream is built)."""
    def timed(args, cwd=REPO):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "snakemake", *args], capture_output=True, text=True, cwd=cwd,
                             env=_venv_env())
        if out.returncode != 0:  # a failed job's outputs are deleted by Snakemake: never time a failure
            raise RuntimeError(f"snakemake {' '.join(args)} failed:\n{out.stderr[-3000:]}")
        return time.perf_counter() - t0, out

    repeats = 1 if quick else 3
    rows = []
    dry = [timed(["-n", "--quiet", "rules", "all", "--configfile", "config.yaml"])[0] for _ in range(repeats)]
    rows.append({"what": "dry run, paper config (`snakemake -n all`)", "median_s": statistics.median(dry),
                 "min_s": min(dry), "max_s": max(dry)})
    fig = "paper_figures/quick/fig02_removal.pdf"
    # -f reruns exactly that figure's job (a bare `touch` is not an edit: Snakemake compares contents)
    run = ["-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", str(REPO / "config.quick.yaml"),
           "--config", "part=main", "-f", fig]
    if not quick:
        plan = timed([*run, "-n", "--quiet", "rules"])[1]
        planned = re.search(r"^total\s+(\d+)", plan.stdout + plan.stderr, re.M)
        if planned and int(planned[1]) == 1:
            secs = timed(["--cores", "1", *run])[0]
            rows.append({"what": f"one-figure rebuild, `-f {fig}` (1 job)", "median_s": secs, "min_s": secs,
                         "max_s": secs})
        else:
            print(f"one-figure rebuild not timed: {workdir} has no finished quick part `main` "
                  f"({planned[1] if planned else '?'} jobs would run)", file=sys.stderr)
    lines = ["## Snakemake overhead (targets: dry run <= 5 s, one-figure rebuild <= 30 s)", "",
             "| what | median s | min-max s |", "|---|---:|---:|"]
    lines += [f"| {r['what']} | {r['median_s']:.1f} | {r['min_s']:.1f}-{r['max_s']:.1f} |" for r in rows]
    return "\n".join(lines), rows


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _med(r: dict, unit: str) -> str:
    fmt = ".0f" if unit == "MB" else (".3f" if r["median"] < 10 else ".1f")
    rng = "" if r["min"] == r["max"] else f" ({r['min']:{fmt}}-{r['max']:{fmt}})"
    return f"{r['median']:{fmt}}{rng} {unit}"


def cuts_section(subsets: dict, quick: bool) -> tuple[str, list[dict]]:
    """Before/after pairs of every performance cut (benchmarks/bench_cuts.py), side by side."""
    from bench_cuts import (
        bench_channels_last,
        bench_evaluation,
        bench_grad_chunk,
        bench_hvp_forward_over_reverse,
        bench_lanczos_dtype,
        bench_orthonormalise,
        bench_removal,
        bench_train_step,
    )

    from sharpgaps.engine import models

    reps = 1 if quick else 3
    b = {name: 4 if quick else 50 for name in subsets}  # paper: b=50 per worker, K=8
    rows = []
    for threads in sorted({1, torch.get_num_threads()}):  # the quick config runs 1 thread per job, the paper 2
        with _threads(threads):
            rows += bench_train_step(subsets, K=8, b=b, steps=1 if quick else 3, repeats=reps)
    big = {k: v for k, v in subsets.items() if k != "fc_tanh"}
    rows += bench_grad_chunk(big, chunk=64 if quick else 256, n=200 if quick else None, repeats=reps)
    dims = {name: sum(p.numel() for p in models.build_model(name, sub["meta"], seed=0).parameters())
            for name, sub in subsets.items()}
    rows += bench_removal(dims, ms=(1, 2, 4) if quick else (1, 2, 4, 8, 16, 28), draws=2 if quick else 8,
                          repeats=reps)
    # the quick-scale geometry solves: Hessian examples and k + extra eigenpairs per setting
    rows += bench_lanczos_dtype(subsets, n={"fc_tanh": 100, "cnn_relu": 16, "transformer": 8} if quick else
                                {"fc_tanh": 5000, "cnn_relu": 256, "transformer": 128},
                                k={"fc_tanh": 8, "cnn_relu": 4, "transformer": 4} if quick else
                                {"fc_tanh": 20, "cnn_relu": 12, "transformer": 12}, repeats=reps)
    rows += bench_hvp_forward_over_reverse(big, n={"cnn_relu": 8 if quick else 256,
                                                   "transformer": 4 if quick else 128}, repeats=reps)
    rows += bench_channels_last(subsets["cnn_relu"], n=16 if quick else 1000, b=2 if quick else 50, repeats=reps)
    rows += bench_orthonormalise({k: v for k, v in dims.items() if k != "cnn_relu"} if not quick else
                                 {"fc_tanh": 2000}, r=8 if quick else 32, repeats=reps)
    rows += bench_evaluation(subsets, repeats=reps)
    lines = ["## Cuts: before / after", "",
             "Each pair measured side by side in this process (interleaved repeats; peak RSS from one fresh "
             "process per variant). `before` is the previous code path, still selectable: "
             "`SimulatedLocalSGD(vectorize=True)`, `geometry.grad_chunk_size: null`, "
             "`bench_cuts.random_removal_draws_dense` (kept in benchmarks/), `geometry.lanczos_dtype: float64`. Speedup = before / after (medians). Results change only "
             "at float rounding (docs/FIDELITY.md), except the random-subspace baseline, whose draws are new draws of the "
             "same law (max_z: the largest difference of the means over m, in standard errors); the per-worker "
             "engine is the loop reference bit for bit.", "",
             "| cut | case | before | after | speedup | note |", "|---|---|---:|---:|---:|---|"]
    for i in range(0, len(rows), 2):
        bef, aft = rows[i], rows[i + 1]
        note = ", ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k} {v}" for k, v in bef.items()
                         if k in ("max_abs_diff", "max_z", "max_rel_diff", "rel_diff", "default", "baseline_mb", "hvps", "arpack_ms_per_step",
                                                   "f32_err_before", "f32_err_after"))
        lines.append(f"| {bef['cut']} | {bef['case']} | {_med(bef, bef['unit'])} | {_med(aft, aft['unit'])} | "
                     f"{bef['speedup']:.2f}x | {note} |")
    steps = [r for r in rows if r["cut"].startswith("training step")]
    counts = sorted({r["threads"] for r in steps})
    if len(counts) == 2:  # thread scaling of the default engine path, from the rows above
        t1, t2 = counts
        lines += ["", f"Thread scaling of a training step (each model's default engine path, rows above): "
                  f"a job's `threads` sets torch's thread count, so Snakemake's core accounting is exact and "
                  f"`--cores N` never oversubscribes. Efficiency = speedup / {t2 // t1}; below ~0.75, "
                  f"more jobs at `threads: {t1}` finish a sweep sooner than fewer at `threads: {t2}`.", "",
                  f"| model | {t1} thread s | {t2} threads s | speedup | efficiency |", "|---|---:|---:|---:|---:|"]
        med = {}  # (model, default path) -> {threads: median of the default variant}
        for r in steps:
            if r["variant"] == ("before" if r["default"] == "vmap" else "after"):
                med.setdefault((r["case"].split(",")[0], r["default"]), {})[r["threads"]] = r["median"]
        for (name, path), m in med.items():
            sp = m[t1] / m[t2]
            lines.append(f"| {name} ({path}) | {m[t1]:.3f} | {m[t2]:.3f} | {sp:.2f}x | {sp / (t2 / t1):.2f} |")
    lines += ["", "Why these: before the cuts, at quick scale `train` was 42% of all job time (the CNN's runs the slowest jobs) and "
              "`geometry` 38% with the largest peak RSS (6.2 GB, transformer). A cProfile of one quick-scale "
              "transformer geometry checkpoint before the cuts (1 thread, 2026-11-22): 93 s = Lanczos 36 s "
              "(48 HVPs) + random-subspace removal 26 s (of which QR 17 s) + the training-set gradient g 25 s "
              "(one 5,000-example graph: the 6.4 GB peak). The per-worker engine is the default for the CNN and "
              "transformer only (`vmap_workers = False`); FC-tanh keeps vmap, which wins there. "
              "The Lanczos rows come from profiling eigsh with a near-free operator: ARPACK's own work per step "
              "(reorthogonalising against its d x ncv basis, memory-bound; arpack_ms_per_step = float64 / float32, "
              "measured that way) is comparable to the MLP's 5,000-example HVP itself; a float32 basis halves the "
              "bytes and adopts the HVPs' own precision (`lanczos_dtype`, docs/FIDELITY.md). "
              "Forward-over-reverse HVP (last rows) is slower than the cached double backward, so it was not "
              "adopted: a measured negative result. The CNN's channels-last forward (`CNN forward` rows; f32_err = "
              "relative error of the float32 full-batch gradient against float64, NCHW / channels-last) was "
              "measured earlier without the pool-first order and left out, because on one 1,000-example CIFAR "
              "subset its float32 error was 1.2e-4 against NCHW's 8.6e-6. A cProfile of a quick-scale CIFAR "
              "restricted run (2026-11-29) then showed NCHW max-pooling at 29 s of its 68 s; the channels-last "
              "CNN ran it in 32 s, and at the final quick-scale checkpoint its float32 gradient error over the "
              "5,000 examples was 4.7e-5 against NCHW's 8.1e-5, so it was adopted. Pooling before the ReLU is "
              "exact (both monotone). The loop reference runs the same model, so it still matches the engine "
              "bit for bit."]
    return "\n".join(lines), rows


def restricted_section(subset, workdir: Path, quick: bool) -> tuple[str, list[dict]]:
    from bench_restricted import bench_restricted, restricted_lines, restricted_table_costs

    n, rounds, refresh, reps = (300, 4, 2, 1) if quick else (2000, 20, 10, 3)
    sub = {**subset, "x_train": subset["x_train"][:n], "y_train": subset["y_train"][:n]}
    rows = bench_restricted(sub, rounds=rounds, refresh=refresh, branch_rounds=2 if quick else 10, repeats=reps)
    table = workdir / RESTRICTED_TABLE
    if table.exists():
        rows += restricted_table_costs(table, source=str(RESTRICTED_TABLE))
    lines = ["## Restricted-update runs: HVPs and wall time per round", "",
             "Hessian Dom/Bulk refresh their subspace by warm-started Lanczos (HVPs); gap Dom/Bulk by "
             f"`gap_window` probe rounds of plain Local SGD (no HVP). 'measured here': FC-tanh, MNIST-{n}, "
             f"K=8, tau=8, b=50, {rounds} rounds, refresh every {refresh}, {reps} repeat(s) with the modes "
             "interleaved (median, min-max); includes the train/test evaluations. 'quick run': the "
             f"last row per mode of {RESTRICTED_TABLE} (cumulative; SST-2 refreshes every 3 rounds). "
             "'refresh share' = share of the wall time spent refreshing; '/ none' = wall time per round over "
             "plain Local SGD's.", ""]
    lines += restricted_lines(rows)
    return "\n".join(lines), rows


def smoke_dag_section(quick: bool, data_dir: Path, manifest: Path) -> tuple[str, list[dict]]:
    """Whole DAG at smoke scale, run here from scratch in a temp dir (quick: one cheap target only),
    next to the committed quick run's MANIFEST.json."""
    import tempfile

    target = "results/data/mnist/subset_n1000_s0_test500.pt" if quick else "all"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = _venv_env(SHARPGAPS_DATA_DIR=str(data_dir))
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", tmp,
                              "--cores", "2", target, "--configfile", str(REPO / ".test/config.yaml")],
                             capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"smoke DAG failed:\n{out.stderr[-3000:]}")
        _, jobs = dag_section(Path(tmp), Path("results"))  # the smoke config's results_dir (the default)
    top = max(jobs, key=lambda r: r["max_rss_mb"]) if jobs else {"job": "-", "max_rss_mb": float("nan")}
    rows.append({"scale": "smoke (.test/config.yaml)" + (", subset target only (--quick)" if quick else ""),
                 "source": "measured here, --cores 2", "wall_s": wall, "jobs": len(jobs),
                 "job_s": sum(r["s"] for r in jobs), "max_rss_mb": top["max_rss_mb"], "largest_job": top["job"]})
    if manifest.exists():
        for part, m in read_parts(manifest).items():
            rows.append({"scale": "quick (config.quick.yaml)" + (f", part {part}" if part else ""),
                         "source": f"{manifest.name} of the committed run, --cores {m.get('cores', '?')}",
                         "wall_s": m.get("wall_s", float("nan")), "jobs": m.get("jobs", "-"), "job_s": None,
                         "max_rss_mb": m.get("max_rss_mb", float("nan")), "largest_job": m.get("max_rss_job", "-")})
    lines = ["## Whole DAG: wall time and peak memory by scale", "",
             "Peak memory = the largest single job's peak RSS (Snakemake `benchmark:` files); jobs run two at "
             "a time on this 2-core machine.", "",
             "| scale | source | wall s | jobs | sum of job s | peak RSS MB (largest job) | job |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        job_s = "-" if r["job_s"] is None else f"{r['job_s']:.0f}"
        lines.append(f"| {r['scale']} | {r['source']} | {r['wall_s']:.0f} | {r['jobs']} | {job_s} | "
                     f"{r['max_rss_mb']:.0f} | {r['largest_job']} |")
    return "\n".join(lines), rows


def scale_section(subsets: dict, results: dict, workdir: Path, quick: bool) -> tuple[str, list[dict]]:
    """Paper-scale cost projected from this run's unit costs (benchmarks/bench_scale.py)."""
    import yaml
    from bench_hessian import arpack_step_seconds
    from bench_scale import measured_paper_jobs, paper_job_counts, paper_scale, section, unit_gpu_costs

    from sharpgaps.engine import models
    from sharpgaps.pipeline.config import validate

    cfg = validate(yaml.safe_load((REPO / "config.yaml").read_text()), REPO / "workflow/schemas/config.schema.yaml")
    arpack_k = 4 if quick else 20  # the paper's k + extra (10 classes + 10); paper_scale rescales by ncv
    unit = {}
    for name, sub in subsets.items():
        hvp = {r["op"]: r for r in results["hvp"] if r["model"] == name}
        step = next(r for r in results["cuts"] if r["cut"].startswith("training step") and r["case"].startswith(name)
                    and r["threads"] == torch.get_num_threads()
                    and r["variant"] == ("after" if r["default"] == "per-worker" else "before"))
        b = step["b"]
        removal = [r for r in results["cuts"] if r["cut"].startswith("random removal") and r["case"].startswith(name)
                   and r["variant"] == "after"][0]
        n = hvp["gradient"]["n"]
        unit[name] = {"step_s": step["median"] * 400 / (8 * b), "hvp_s_per_ex": hvp["hvp_cached_graph"]["median_s"] / n,
                      "grad_s_per_ex": hvp["gradient"]["median_s"] / n,
                      "build_s_per_ex": hvp["cached_graph_build"]["median_s"] / n,
                      "removal_s": removal["median"], "classes": sub["meta"]["n_classes"], "n_measured": n}
        d = sum(p.numel() for p in models.build_model(name, sub["meta"], seed=0).parameters())
        unit[name].update(arpack_k=arpack_k, arpack_step_s=arpack_step_seconds(
            d, arpack_k, cfg["geometry"].get("lanczos_dtype", "float32"),
            repeats=1 if quick else 3))
    gpu = unit_gpu_costs(subsets, b=4 if quick else 50, n_hvp=8 if quick else 64)
    counts = paper_job_counts(REPO / "config.yaml", REPO)
    measured = measured_paper_jobs(REPO / cfg["figures"]["dir"] / "MANIFEST.json")  # the paper-scale parts that ran
    rows, summ = paper_scale(cfg, counts, unit, gpu, workdir, measured)
    return section(rows, summ, unit), rows + [{"rule": "summary", **summ, "unit": unit}]


CURVLINOPS_JSON = REPO / "docs/BENCHMARKS.curvlinops.json"


def curvlinops_section() -> tuple[str, list[dict]]:
    """curvlinops is no dependency: its table is rendered from the recorded run of benchmarks/bench_curvlinops.py
    (rerun that script, with curvlinops installed, to refresh docs/BENCHMARKS.curvlinops.json)."""
    from bench_curvlinops import section

    if not CURVLINOPS_JSON.exists():
        return section([], ""), []
    record = json.loads(CURVLINOPS_JSON.read_text())
    return section(record["rows"], record["measured"], record.get("notes", "")), record["rows"]


HEADING = re.compile(r"^#{2,3} ", re.M)


def _blocks(text: str) -> list[tuple[str | None, str]]:
    """(heading line or None for the preamble, block text) for each `##`/`###` section, in order."""
    starts = [0, *(m.start() for m in HEADING.finditer(text) if m.start())]
    out = []
    for a, b in zip(starts, [*starts[1:], len(text)]):
        block = text[a:b]
        head = block.splitlines()[0] if HEADING.match(block) else None
        out.append((head, block))
    return out


def keep_by_hand(generated: str, previous: str | None) -> tuple[str, list[str]]:
    """The regenerated file plus every section of the previous one that this script does not write (by-hand
    measurements, e.g. "Mechanism stage vs geometry"), each placed after the generated section it followed there.
    A section this script no longer writes counts as by-hand: kept, and named in what is returned (text, the kept
    headings)."""
    gen = _blocks(generated)
    names = {head for head, _ in gen}
    attached: dict[str | None, list[str]] = {}
    kept, anchor = [], None
    for head, block in _blocks(previous or ""):
        if head is None or head in names:
            anchor = head
        else:
            attached.setdefault(anchor, []).append(block if block.endswith("\n") else block + "\n")
            kept.append(head)
    out = []
    for head, block in gen:
        extra = attached.get(head, [])
        out += [block + ("\n" if extra and not block.endswith("\n") else ""), *extra]
    return "".join(out), kept


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test of this script)")
    ap.add_argument("--out", default=str(BENCH_MD), help="the report; the repo's own also rewrites the README's "
                    "paper row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=str(REPO), help="a finished run whose results/benchmarks to aggregate")
    ap.add_argument("--resume", action="store_true",
                    help="keep the sections an interrupted run finished (<out>.partial.json) and measure the rest")
    ap.add_argument("--no-smoke-dag", action="store_true",
                    help="skip running the whole smoke DAG (minutes; --quick runs one cheap target of it)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from sharpgaps.core.atomic import save_text
    from sharpgaps.data.sources import resolve_data_dir
    from sharpgaps.data.subsets import make_subset

    data_dir = resolve_data_dir(str(REPO.parent / "shared" / "data"))
    n = 600 if a.quick else 5000
    subsets = {
        "fc_tanh": make_subset("mnist", data_dir, n_train=n, seed=0, test_cap=100),
        "cnn_relu": make_subset("cifar10", data_dir, n_train=n, seed=0, test_cap=100),
        "transformer": make_subset("sst2", data_dir, n_train=n, seed=0, test_cap=100, max_len=50),
    }
    machine_line = machine()
    sections = ["# Benchmarks", "",
                "Regenerate with `make bench` (`python benchmarks/run.py`). Medians over interleaved repeats, "
                "min-max in parentheses, measured side by side in one process. This machine is shared: "
                "compare ratios within a table, not absolute times across tables.", "", machine_line, ""]
    results = {}
    workdir = Path(a.workdir)
    # each finished section is kept at once: an interrupted run (the whole takes most of an hour) resumes with --resume
    partial = Path(a.out).with_suffix(".partial.json")
    done = json.loads(partial.read_text()) if a.resume and partial.exists() else {}
    started = time.strftime("%Y-%m-%d %H:%M %Z")  # the date this run's own sections carry
    for name, fn in [("engine", lambda: engine_section(subsets["fc_tanh"], a.quick)),
                     ("hvp", lambda: hvp_section(subsets, a.quick)),
                     ("eigensolver", lambda: eig_section(subsets["fc_tanh"], a.quick)),
                     ("cuts", lambda: cuts_section(subsets, a.quick)),
                     ("restricted", lambda: restricted_section(subsets["fc_tanh"], workdir, a.quick)),
                     ("dag", lambda: dag_section(workdir)),
                     ("scales", lambda: smoke_dag_section(a.quick, data_dir, workdir / "paper_figures/quick/MANIFEST.json")),
                     ("paper_scale", lambda: scale_section(subsets, results, workdir, a.quick)),
                     ("snakemake", lambda: snakemake_section(a.quick, workdir)),
                     ("curvlinops", curvlinops_section)]:
        if name == "scales" and a.no_smoke_dag:
            continue
        t0 = time.perf_counter()
        if name in done:
            text, rows = done[name]["text"], done[name]["rows"]
            print(f"[{name}: kept from {partial.name}, measured {done[name]['date']}]", file=sys.stderr, flush=True)
        else:
            text, rows = fn()
            print(f"[{name}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
            done[name] = {"text": text, "rows": rows, "date": started}
            save_text(json.dumps(done, indent=1, default=str), partial)
        results[name] = rows
        sections += [text, ""]
        print(text, flush=True)
    kept = [f"{name} ({done[name]['date']})" for name in results if done[name]["date"] != started]
    if kept:  # the header's machine and date are this run's: say which sections an earlier run measured
        sections.insert(sections.index(machine_line) + 1, "- sections kept from an interrupted run (--resume), "
                        "measured at: " + ", ".join(kept))
    previous = Path(a.out).read_text() if Path(a.out).exists() else None
    text, by_hand = keep_by_hand("\n".join(sections), previous)
    if by_hand:
        print(f"kept {len(by_hand)} by-hand sections of {a.out}: {'; '.join(h.lstrip('# ') for h in by_hand)}",
              file=sys.stderr)
    save_text(text, a.out)
    save_text(json.dumps(results, indent=1, default=str), Path(a.out).with_suffix(".json"))
    if Path(a.out).resolve() == BENCH_MD and results.get("paper_scale"):
        from bench_scale import write_readme_row

        *rows, summ = results["paper_scale"]
        write_readme_row(rows, summ, REPO / "README.md")
    partial.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

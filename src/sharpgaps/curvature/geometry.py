"""Per-checkpoint geometry of a run: Hessian top-k, gap subspaces and every metric of docs/DEFINITIONS.md#geometry-metrics.

Output is one tidy table per run (columns: round, step, metric, m, i, j, value plus the run's
parameters). Checkpoints are processed in order so each Lanczos solve can warm-start from the
previous checkpoint's eigenvectors; finished checkpoints are cached in a work dir, so a killed
job resumes where it stopped and produces the same numbers.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core import seeds
from ..core.grid import run_columns
from ..core.atomic import load_recomputable, load_torch, object_digest, save_torch
from ..core.specs import GeometrySpec
from ..engine.objective import Objective
from .gaps import gap_covariance_spectrum, gap_subspace
from .hessian import top_eigenpairs
from .metrics import (
    aligned_control_all,
    capture_fraction,
    gradient_alignment,
    oracle_removal,
    random_removal_all,
    random_removal_expected,
    removal_fraction,
    removal_total,
    squared_cosines,
    subspace_overlap,
)

# Wall-clock rows go to the job log, not the table, so equal inputs give byte-identical tables.
TIMING_METRICS = ("eig_seconds", "geometry_seconds")
GRAD_COS_TOP = 4  # gap directions whose squared cosine with g is recorded


def _rows(base: dict, metric: str, values, m=np.nan, index_name="i") -> list[dict]:
    if np.ndim(values) == 0:
        return [{**base, "metric": metric, "m": m, "value": float(values)}]
    return [{**base, "metric": metric, "m": m, index_name: i, "value": float(v)} for i, v in enumerate(values)]


def checkpoint_geometry(objective: Objective, spec: GeometrySpec, ckpt: dict, v0=None, progress=None):
    """All metrics of one checkpoint; returns (rows, eigenvectors (d, k + extra) float64 numpy, the full-batch
    gradient g (d,) on the job's device). progress: passed to top_eigenpairs (called after every HVP)."""
    theta = objective.params(ckpt["theta"])
    hvp = objective.hessian(theta)
    # g is the full-batch gradient on the whole training subset even when the Hessian uses fewer examples
    g = objective.gradient(theta, hessian=hvp)
    n_eig = spec.k + spec.extra
    # A cold start is a seeded random vector (ARPACK's own changes between calls in one process).
    eig = top_eigenpairs(hvp, k=n_eig, tol=spec.tol, v0=v0 if spec.warm_start else None,
                         dtype=spec.lanczos_dtype, seed=seeds.linear(spec.seed, seeds.LANCZOS, ckpt["round"]), progress=progress)
    hvp.release()
    dev = g.device
    V = torch.from_numpy(eig.vectors[:, : spec.k]).to(dev)
    d = g.numel()
    # Re-centre each round's K gaps in float64: they sum to zero exactly in real arithmetic, but the
    # float32 mean leaves ~eps*|theta| per entry, which would add spurious directions beyond (K-1) W.
    gaps64 = ckpt["gaps"].to(dev, torch.float64)
    G = (gaps64 - gaps64.mean(dim=1, keepdim=True)).reshape(-1, d)
    U_all, s = gap_subspace(G)
    rank = U_all.shape[1]
    base = {"round": ckpt["round"], "step": ckpt["step"]}
    rows = []
    rows += _rows(base, "lambda", eig.values)
    rows += _rows(base, "residual", eig.residuals)
    rows += _rows(base, "n_hvp", eig.n_hvp)
    rows += _rows(base, "eig_seconds", eig.seconds)
    rows += _rows(base, "eig_converged", float(eig.converged))
    rows += _rows(base, "chi_k", gradient_alignment(g, V))
    rows += _rows(base, "grad_norm", float(g.norm()))
    rows += _rows(base, "hessian_loss", hvp.loss())
    rows += _rows(base, "gap_rank", rank)
    rows += _rows(base, "gap_cov_eig", gap_covariance_spectrum(G, k=min(rank, 2 * spec.k)).cpu().numpy())
    rows += _rows(base, "worker_gap_norm", np.asarray(ckpt["worker_gap_norms"]))
    for key, value in ckpt["metrics"].items():
        if key not in ("round", "step"):
            rows += _rows(base, key, value)
    gen = torch.Generator(device="cpu").manual_seed(seeds.linear(spec.seed, seeds.RANDOM_REMOVAL, ckpt["round"]))
    # m = k always: the sweeps compare their runs at that fixed dimension (and at the grid's smallest rank)
    ms = sorted({m for m in (*spec.m_list, spec.k) if m <= rank} | ({rank} if spec.m_rank and rank else set()))
    chi2 = gradient_alignment(g, V) ** 2
    rand = random_removal_all(g.cpu(), V.cpu(), ms, gen, spec.random_draws)
    # the control removal cannot pass by alignment with g alone: U_m's alignment, random otherwise
    aligned = aligned_control_all(g.cpu(), V.cpu(), U_all.cpu(), ms, torch.Generator().manual_seed(
        seeds.mixed(spec.seed, seeds.ALIGNED_CONTROL, ckpt["round"])), spec.random_draws)
    for m in ms:
        U = U_all[:, :m]
        rows += _rows(base, "removal", removal_fraction(g, V, U), m=m)
        rows += _rows(base, "removal_total", removal_total(g, V, U), m=m)
        rows += _rows(base, "capture", capture_fraction(g, V, U), m=m)
        rows += _rows(base, "overlap", subspace_overlap(V, U), m=m)
        rows += _rows(base, "oracle_removal", oracle_removal(g, V, m), m=m)
        rows += _rows(base, "random_removal", float(rand[m].mean()), m=m)
        rows += _rows(base, "random_removal_expected", random_removal_expected(m, d, spec.k, chi2), m=m)
        for name, draws in aligned.get(m, {}).items():
            rows += _rows(base, f"aligned_{name}", float(draws.mean()), m=m)
    # cos^2(u_i, g) of the top gap directions: a u_1 close to g itself removes g's dominant part at m = 1
    lead = min(GRAD_COS_TOP, rank)
    if lead:
        rows += _rows(base, "gap_grad_sqcos", squared_cosines(U_all[:, :lead], (g / g.norm())[:, None])[:, 0]
                      .cpu().numpy())
    top = min(spec.cos_top, rank)
    if top:
        cos = squared_cosines(U_all[:, :top], V).cpu().numpy()
        rows += [{**base, "metric": "sqcos", "m": np.nan, "i": i, "j": j, "value": float(cos[i, j])}
                 for i in range(top) for j in range(spec.k)]
    return rows, eig.vectors, g


# The rows a cache entry holds: bumped when checkpoint_rows writes other metrics, so older entries are recomputed.
ROWS_VERSION = 2


def _cache_key(theta) -> str:
    """A cache entry's key: the checkpoint's parameters (stale if training changed) and the rows' version."""
    return f"{object_digest(theta)[:16]}-rows{ROWS_VERSION}"


def _cached(work_dir: Path, ckpt_path: Path, key: str) -> dict | None:
    done = load_recomputable(Path(work_dir) / f"{Path(ckpt_path).stem}.geom.pt", "geometry cache")
    # an entry without the gradient was written before it was cached: stale like a changed checkpoint
    return done if done is not None and done.get("key") == key and "gradient" in done else None


def checkpoint_cache(objective: Objective, spec: GeometrySpec, ckpt_paths: list[Path], work_dir: Path,
                     log=sys.stderr) -> dict[int, dict]:
    """Per checkpoint round, the geometry job's Hessian eigenvectors ("vectors", (d, k + extra) float64 numpy)
    and full-batch gradient ("gradient", (d,) CPU tensor), for stages that follow the geometry job.

    Read from the geometry job's per-checkpoint cache in ``work_dir`` (so no Hessian or gradient work is done
    twice); where a checkpoint's entry is missing or stale, the geometry chain is rerun into the cache first.
    That chain is deterministic, so cached and recomputed values are the same numbers."""
    keys = {Path(p): _cache_key(load_torch(p)["theta"]) for p in sorted(ckpt_paths)}
    entries = {p: _cached(work_dir, p, k) for p, k in keys.items()}  # each entry read once (tens of MB each)
    if any(done is None for done in entries.values()):
        print(f"geometry cache incomplete in {work_dir}: recomputing the eigenpairs", file=log, flush=True)
        run_geometry(objective, spec, list(keys), work_dir, log=log)
        entries = {p: _cached(work_dir, p, k) for p, k in keys.items()}
    return {int(done["rows"][0]["round"]): {"vectors": done["vectors"], "gradient": done["gradient"]}
            for done in entries.values()}


def checkpoint_eigenvectors(objective: Objective, spec: GeometrySpec, ckpt_paths: list[Path], work_dir: Path,
                            log=sys.stderr) -> dict[int, np.ndarray]:
    """The eigenvectors of :func:`checkpoint_cache` alone."""
    cache = checkpoint_cache(objective, spec, ckpt_paths, work_dir, log=log)
    return {r: c["vectors"] for r, c in cache.items()}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


class Progress:
    """A geometry job's log: a line when each checkpoint starts and ends (with the rate over the checkpoints
    computed so far and the ETA of the rest), and one every ``every_s`` seconds inside the eigensolver."""

    def __init__(self, total: int, log=sys.stderr, every_s: float = 30.0, clock=time.monotonic):
        self.total, self.log, self.every_s, self.clock = total, log, every_s, clock
        self.computed_s, self.computed, self.last = 0.0, 0, clock()

    def _print(self, text: str) -> None:
        print(text, file=self.log, flush=True)
        self.last = self.clock()

    def start(self, i: int, round_: int) -> None:
        self._print(f"checkpoint {i}/{self.total} (round {round_}): gradient and Hessian top-k ...")

    def hvp(self, count: int, seconds: float) -> None:
        if self.clock() - self.last >= self.every_s:
            self._print(f"  eigensolver: {count} HVPs in {_duration(seconds)} ({seconds / count:.2f} s/HVP)")

    def done(self, i: int, round_: int, rows: list[dict], cached: bool) -> None:
        value = {r["metric"]: r["value"] for r in rows if r["metric"] in ("eig_seconds", "geometry_seconds", "n_hvp")}
        lam = next(r["value"] for r in rows if r["metric"] == "lambda")
        left = self.total - i
        if cached:
            what = "cached"
        else:
            self.computed += 1
            self.computed_s += value.get("geometry_seconds", 0.0)
            what = (f"{_duration(value.get('geometry_seconds', 0.0))} (eigensolver {_duration(value.get('eig_seconds', 0.0))}, "
                    f"{int(value.get('n_hvp', 0))} HVPs)")
        rate = self.computed_s / self.computed if self.computed else None
        eta = "done" if not left else f"ETA {_duration(rate * left)}" if rate else "ETA after the first computed checkpoint"
        per = f", {_duration(rate)}/checkpoint" if rate else ""
        self._print(f"checkpoint {i}/{self.total} (round {round_}): lambda_1={lam:.4g}, {what}{per}; {eta}")


def run_geometry(objective: Objective, spec: GeometrySpec, ckpt_paths: list[Path], work_dir: Path,
                 log=sys.stderr) -> pd.DataFrame:
    """Process checkpoints in round order with warm starts; cache each finished one in ``work_dir``."""
    work_dir = Path(work_dir)
    all_rows, v0, run = [], None, None
    paths = sorted(ckpt_paths)
    progress = Progress(len(paths), log)
    for i, path in enumerate(paths, 1):
        cache = work_dir / f"{Path(path).stem}.geom.pt"
        ckpt = load_torch(path)
        key = _cache_key(ckpt["theta"])
        done = _cached(work_dir, path, key)
        if done is not None:
            rows, vecs, run = done["rows"], done["vectors"], done["run"]
            progress.done(i, ckpt["round"], rows, cached=True)
        else:
            run = ckpt["run"]
            progress.start(i, ckpt["round"])
            t0 = time.perf_counter()
            rows, vecs, g = checkpoint_geometry(objective, spec, ckpt, v0=v0, progress=progress.hvp)
            rows += _rows({"round": ckpt["round"], "step": ckpt["step"]}, "geometry_seconds",
                          time.perf_counter() - t0)
            # g is kept for the estimator stage (d floats per checkpoint: its full-batch gradient is not redone)
            save_torch({"rows": rows, "vectors": vecs, "gradient": g.detach().cpu(), "run": run, "key": key}, cache)
            progress.done(i, ckpt["round"], rows, cached=False)
        all_rows += [r for r in rows if r["metric"] not in TIMING_METRICS]
        v0 = vecs
    df = pd.DataFrame(all_rows)
    for col in ("i", "j"):
        if col not in df:
            df[col] = np.nan
    columns = run_columns(run)
    for key, value in columns.items():
        df[key] = value
    df["d"] = len(v0) if v0 is not None else np.nan
    return df[[*columns, "d", "round", "step", "metric", "m", "i", "j", "value"]]

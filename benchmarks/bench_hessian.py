"""Hessian benchmarks: HVP cost, and HVPs needed by eigsh vs PyHessian-style power iteration.

Importable (functions return lists of dicts, one per table row) and runnable:
    python benchmarks/bench_hessian.py [--n 5000 --hidden 200 --k 10]
Uses a small tanh MLP on random data only.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from sharpgaps.curvature.hessian import top_eigenpairs
from sharpgaps.engine.objective import FullBatchHVP

# ----------------------------------------------------------------------------- problem

def mse_loss(out: Tensor, y: Tensor) -> Tensor:
    return 0.5 * (out - y).square().sum(1).mean()


def make_mlp_problem(n: int = 5000, d_in: int = 784, hidden: int = 200, n_out: int = 10,
                     train_steps: int = 200, lr: float = 0.05, batch: int = 50, seed: int = 0):
    """FC-tanh MLP on random inputs/one-hot labels, briefly trained by SGD so the Hessian
    has the usual few outliers rather than a random-init spectrum."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                          nn.Linear(hidden, n_out))
    x = torch.randn(n, d_in, generator=g)
    y = nn.functional.one_hot(torch.randint(0, n_out, (n,), generator=g), n_out).float()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(train_steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        opt.zero_grad()
        mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
    return model, mse_loss, x, y


def nearby_params(model: nn.Module, loss_fn, x: Tensor, y: Tensor, steps: int = 10,
                  lr: float = 0.05) -> dict[str, Tensor]:
    """Parameters a few full-batch GD steps away (stands in for the next checkpoint)."""
    m = copy.deepcopy(model)
    opt = torch.optim.SGD(m.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(m(x), y).backward()
        opt.step()
    return {n: p.detach().clone() for n, p in m.named_parameters()}


# ----------------------------------------------------------------------------- (a) timings

def _sync() -> None:
    if torch.cuda.is_available():  # CUDA work is asynchronous: time it to completion
        torch.cuda.synchronize()


def interleaved_times(ops: dict[str, Callable[[], object]], repeats: int
                      ) -> dict[str, list[float]]:
    """Round-robin timing (op1, op2, op3, op1, ...) so background load hits every op alike."""
    for f in ops.values():
        f()  # warm-up (allocator, first-call overhead)
    ts = {name: [] for name in ops}
    for _ in range(repeats):
        for name, f in ops.items():
            _sync()
            t = time.perf_counter()
            f()
            _sync()
            ts[name].append(time.perf_counter() - t)
    return ts


def bench_hvp_cost(model, loss_fn, x, y, repeats: int = 7, chunk_size: int | None = None
                   ) -> list[dict]:
    """Median/min seconds (interleaved repeats): full-batch gradient, cached-graph HVP,
    graph-rebuilding HVP, and the one-off cost of building the cached create_graph graph."""
    v = torch.randn(sum(p.numel() for p in model.parameters()),
                    generator=torch.Generator().manual_seed(0))
    cached = FullBatchHVP(model, loss_fn, x, y, chunk_size=chunk_size, cache_graph=True)
    _sync()
    t0 = time.perf_counter()
    cached.gradient()  # builds the graph
    _sync()
    build = time.perf_counter() - t0
    rebuild = FullBatchHVP(model, loss_fn, x, y, chunk_size=chunk_size, cache_graph=False)
    ops = {
        "gradient": lambda: FullBatchHVP(model, loss_fn, x, y, chunk_size=chunk_size,
                                         cache_graph=False).gradient(),
        "hvp_cached_graph": lambda: cached.hvp(v),
        "hvp_rebuild_graph": lambda: rebuild.hvp(v),
    }
    common = dict(n=x.shape[0], dim=cached.dim, chunk_size=chunk_size, repeats=repeats,
                  threads=torch.get_num_threads(), device=str(x.device))
    rows = [dict(op="cached_graph_build", median_s=build, min_s=build, max_s=build, **common)]
    for name, ts in interleaved_times(ops, repeats).items():
        rows.append(dict(op=name, median_s=statistics.median(ts), min_s=min(ts), max_s=max(ts),
                         **common))
    g = rows[1]["median_s"]
    for r in rows:
        r["ratio_to_gradient"] = r["median_s"] / g
    return rows


# ----------------------------------------------------------------------------- (b) HVP counts

def arpack_step_seconds(d: int, k: int, dtype=np.float32, repeats: int = 3, seed: int = 0) -> float:
    """ARPACK's own seconds per Lanczos step at dimension d (its work on the d x ncv basis, ncv = 2k+1):
    eigsh with a nearly free operator, a diagonal whose top k+5 entries stand well apart, so it converges
    in about one pass. Median over repeats; the diagonal product (~1 ms at d=1M) is included."""
    g = np.random.default_rng(seed)
    diag = torch.from_numpy(np.concatenate([10 + g.random(k + 5), g.random(d - k - 5)]))
    per_step = []
    for _ in range(repeats):
        ep = top_eigenpairs(lambda v: diag * v, dim=d, k=k, tol=1e-3, dtype=dtype, compute_residuals=False)
        per_step.append(ep.seconds / ep.n_hvp)
    return statistics.median(per_step)


def deflated_power_iteration(hvp: Callable[[Tensor], Tensor], dim: int, k: int, tol: float = 1e-3,
                             maxiter: int = 100, v0: Tensor | None = None,
                             ref: np.ndarray | None = None, target: float | None = None,
                             generator: torch.Generator | None = None, dtype=torch.float64):
    """Top-k eigenpairs by power iteration with deflation, as in PyHessian's `eigenvalues`:
    eigenvalue j from a start vector kept orthogonal to the j-1 found vectors, stopped when the
    Rayleigh quotient changes by < tol relatively (PyHessian's rule, maxIter 100), or - when
    ref/target are given - as soon as |rq - ref_j| / |ref_j| <= target (an oracle stop: the
    cheapest power iteration can possibly be at that accuracy). v0: (d, k) warm-start vectors.
    Note: power iteration finds the largest |lambda|, PyHessian's behaviour too.
    Returns (values (k,), vectors (d, k), n_hvp, reached: bool)."""
    vals, vecs, n, reached = [], [], 0, True

    def orth(v):
        for u in vecs:  # Gram-Schmidt against the found vectors (PyHessian's orthnormal)
            v = v - (u @ v) * u
        return v / v.norm()

    for j in range(k):
        v = (v0[:, j].to(dtype) if v0 is not None
             else torch.randn(dim, generator=generator, dtype=dtype))
        lam, ok = None, False
        for _ in range(maxiter):
            v = orth(v)
            hv = hvp(v).to(dtype)
            n += 1
            rq = float(v @ hv)
            if ref is not None:
                if abs(rq - ref[j]) / abs(ref[j]) <= target:
                    lam, ok = rq, True
                    break
            elif lam is not None and abs(lam - rq) / (abs(lam) + 1e-6) < tol:
                ok = True
                break  # PyHessian keeps the previous value on convergence
            lam = rq
            v = hv
        reached &= ok
        vals.append(lam)
        vecs.append(orth(v))
    return np.array(vals), torch.stack(vecs, 1), n, reached


def _relerr(vals: np.ndarray, ref: np.ndarray) -> float:
    vals = np.sort(np.asarray(vals))[::-1][: len(ref)]
    return float(np.max(np.abs(vals - ref) / np.abs(ref)))


def _sin_angle(V: np.ndarray | Tensor, ref: np.ndarray) -> float:
    """sin of the largest principal angle between span(V) and span(ref) (ref orthonormal)."""
    V = V.detach().cpu().double().numpy() if isinstance(V, Tensor) else np.asarray(V, np.float64)
    Q = np.linalg.qr(V)[0]
    return float(np.linalg.norm(Q - ref @ (ref.T @ Q), 2))


def bench_eigensolvers(model, loss_fn, x, y, k: int = 10, tol: float = 1e-3, ref_tol: float = 1e-10,
                       near_params: dict[str, Tensor] | None = None, power_maxiter: int = 300,
                       extra_targets: tuple[float, ...] = (1e-3,),
                       ncv: int | None = None, dtype=torch.float64, seed: int = 0) -> list[dict]:
    """HVPs for top-k: eigsh (tol) vs deflated power iteration at equal accuracy, cold vs warm.

    Point A = the model's parameters, point B = near_params (default: 10 full-batch GD steps on).
    Warm = start from A's eigenvectors when solving at B. The accuracy measure is the max
    relative eigenvalue error against an eigsh solve at ref_tol; sin_angle (largest principal
    angle to the reference top-k subspace) is reported too, since P_dom needs the vectors.
    Counting runs in float64 (dtype) so that errors far below float32's ~1e-7 are meaningful.
    """
    m = copy.deepcopy(model).to(dtype)
    x, y = x.to(dtype), y.to(dtype)
    if near_params is None:
        near_params = nearby_params(m, loss_fn, x, y)
    near_params = {n: p.to(dtype) for n, p in near_params.items()}
    gen = torch.Generator().manual_seed(seed)
    rows = []
    HA = FullBatchHVP(m, loss_fn, x, y)
    prevA = top_eigenpairs(HA, k=k, tol=tol, ncv=ncv)  # the "previous checkpoint" solve
    HB = FullBatchHVP(m, loss_fn, x, y, params=near_params)
    # own start seed: sharing the cold run's start vector would make its error look ~0.
    # k+1 pairs: the spectral gap after lambda_k is what sets Lanczos' and power iteration's rate
    ref = top_eigenpairs(HB, k=k + 1, tol=ref_tol, ncv=ncv, seed=seed + 1)
    lam_k, lam_k1 = float(ref.values[k - 1]), float(ref.values[k])
    ref_vals, ref_vecs = ref.values[:k], ref.vectors[:, :k]
    base = dict(k=k, tol=tol, ref_tol=ref_tol, dim=HB.dim, n=x.shape[0], ref_n_hvp=ref.n_hvp,
                lambda_1=float(ref.values[0]), lambda_k=lam_k, lambda_k1=lam_k1,
                rel_gap=(lam_k - lam_k1) / abs(lam_k))
    Vprev = torch.from_numpy(prevA.vectors).to(dtype)
    # one bare HVP (median of 5): eigsh's time beyond n_hvp of these is ARPACK + the per-step
    # numpy <-> torch round trip, i.e. what fusing the Lanczos loop into torch could save at most
    v = torch.randn(HB.dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    base["hvp_s"] = statistics.median(interleaved_times({"hvp": lambda: HB.hvp(v)}, 5)["hvp"])

    for start, v0 in [("cold", None), ("warm", prevA.vectors)]:
        ep = top_eigenpairs(HB, k=k, tol=tol, v0=v0, ncv=ncv)
        err = _relerr(ep.values, ref_vals)
        rows.append(dict(solver="eigsh", start=start, stop=f"tol={tol}", n_hvp=ep.n_hvp,
                         max_rel_err=err, sin_angle=_sin_angle(ep.vectors, ref_vecs),
                         max_residual=float(ep.residuals.max()),
                         converged=ep.converged, seconds=ep.seconds, **base))
        pv0 = None if start == "cold" else Vprev
        # PyHessian's own stopping rule at the same tol
        t = time.perf_counter()
        pv, pV, n, ok = deflated_power_iteration(HB.hvp, HB.dim, k, tol=tol, maxiter=100, v0=pv0,
                                                 generator=gen, dtype=dtype)
        rows.append(dict(solver="power_pyhessian", start=start, stop=f"rq change<{tol}, maxiter 100",
                         n_hvp=n, max_rel_err=_relerr(pv, ref_vals),
                         sin_angle=_sin_angle(pV, ref_vecs), converged=ok,
                         seconds=time.perf_counter() - t, **base))
        # oracle-stopped: at eigsh's accuracy (the equal-accuracy comparison), and at the looser
        # extra_targets; a lower bound on power iteration's cost. converged=False: capped at
        # power_maxiter HVPs per eigenvalue, so n_hvp is itself a lower bound.
        for target in [max(err, 1e-12), *extra_targets]:
            t = time.perf_counter()
            pv, pV, n, ok = deflated_power_iteration(HB.hvp, HB.dim, k, maxiter=power_maxiter,
                                                    v0=pv0, ref=ref_vals, target=target,
                                                    generator=gen, dtype=dtype)
            rows.append(dict(solver="power_oracle", start=start, stop=f"rel err<={target:.2e}",
                             target=target, equal_accuracy=target == max(err, 1e-12), n_hvp=n,
                             max_rel_err=_relerr(pv, ref_vals),
                             sin_angle=_sin_angle(pV, ref_vecs), converged=ok,
                             seconds=time.perf_counter() - t, **base))
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--power-maxiter", type=int, default=300)
    a = ap.parse_args(argv)
    model, loss_fn, x, y = make_mlp_problem(n=a.n, hidden=a.hidden)
    rows = bench_hvp_cost(model, loss_fn, x, y, repeats=a.repeats)
    rows += bench_eigensolvers(model, loss_fn, x, y, k=a.k, power_maxiter=a.power_maxiter)
    for r in rows:
        print(json.dumps(r))
    return rows


if __name__ == "__main__":
    main()

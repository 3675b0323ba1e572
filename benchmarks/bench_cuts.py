"""Before/after timings of the performance cuts, each pair measured side by side.

Every "before" is the previous code path, still callable through a flag or kept here:
  - training step: SimulatedLocalSGD(vectorize=True) (vmap over workers) vs the per-worker default;
  - geometry gradient g: FullBatchHVP(chunk_size=None) (one chunk) vs geometry.grad_chunk_size;
  - random-subspace removal: random_removal_draws_dense below (a (d, m) Gaussian per m and draw, the
    superseded library path) vs metrics.random_removal_all (one Haar frame of span(V, g) per draw);
  - Lanczos working precision: top_eigenpairs(dtype=float64) vs float32 (geometry.lanczos_dtype);
  - the CNN's forward: _NCHWCNN below (NCHW, conv -> ReLU -> pool) vs channels-last with the pool first;
  - the gap subspace's re-orthonormalisation: Householder QR vs CholeskyQR2 (gaps.orthonormalise);
  - and a measured negative result: forward-over-reverse HVP (torch.func.jvp of grad) vs the cached
    double-backward HVP the project uses.
Peak memory needs a fresh process per variant (ru_maxrss only grows): `python bench_cuts.py
peak-grad FILE CHUNK` is that child.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_hessian import (  # benchmarks/ is on sys.path (run.py, or run as a script)
    arpack_step_seconds,
    interleaved_times,
)
from torch.func import functional_call, grad, jvp

from sharpgaps.core.specs import RunSpec
from sharpgaps.curvature.hessian import top_eigenpairs
from sharpgaps.curvature.metrics import random_removal_all
from sharpgaps.engine import losses, models
from sharpgaps.engine.localsgd import SimulatedLocalSGD, unflatten, vmap_pays
from sharpgaps.engine.objective import FullBatchHVP


def _pair(cut: str, case: str, before: list[float], after: list[float], unit: str = "s", **extra) -> list[dict]:
    """Two table rows (before, after) with medians, ranges and the before/after ratio."""
    ratio = statistics.median(before) / statistics.median(after)
    return [{"cut": cut, "case": case, "variant": v, "median": statistics.median(t), "min": min(t), "max": max(t),
             "unit": unit, "speedup": ratio, **extra} for v, t in (("before", before), ("after", after))]


def bench_train_step(subsets: dict, K: int = 8, b: dict | None = None, steps: int = 3, repeats: int = 3) -> list[dict]:
    """One local step of all K workers: vmap (before) vs one autograd call per worker (after)."""
    rows = []
    for name, sub in subsets.items():
        bb = (b or {}).get(name, 50)
        spec = RunSpec(K=K, tau=1, b=bb, lr=0.05, rounds=1, window=1, seed=0, checkpoints=(1,))
        model = models.build_model(name, sub["meta"], seed=0)
        engines = {v: SimulatedLocalSGD(model, losses.mse_onehot, sub["x_train"], sub["y_train"], spec, vectorize=v)
                   for v in (True, False)}
        ts = interleaved_times({v: (lambda e=e: [e.local_step(s) for s in range(steps)]) for v, e in engines.items()},
                         repeats)
        default = "vmap" if vmap_pays(model) else "per-worker"
        before, after = [t / steps for t in ts[True]], [t / steps for t in ts[False]]
        rows += _pair("training step: vmap -> per-worker autograd",
                      f"{name}, K={K}, b={bb}, {torch.get_num_threads()} thread(s)", before, after,
                      default=default, threads=torch.get_num_threads(), b=bb, K=K)
    return rows


def random_removal_draws_dense(g: torch.Tensor, V: torch.Tensor, m: int, generator: torch.Generator | None = None,
                               n_draws: int = 20, max_batch_bytes: int = 256 * 2**20) -> torch.Tensor:
    """The superseded path of metrics.random_removal_all, one m per call: each draw a (d, m) Gaussian Z
    and the projection through its Gram matrix, P = Z (Z^T Z)^-1 Z^T (m >= 1, g with a dominant part).
    Same law as the library's, different numbers (tests/test_benchmarks.py compares the two in law)."""
    d = g.shape[0]
    g, V = g.to(torch.float64), V.to(torch.float64)
    vg = V.T @ g
    den = float(vg @ vg)
    per = max(1, max_batch_bytes // (8 * d * m))
    out = []
    for i in range(0, n_draws, per):
        Z = torch.randn(min(per, n_draws - i), d, m, generator=generator, dtype=torch.float64)
        Zt = Z.mT
        c = torch.cholesky_solve((Zt @ g).unsqueeze(-1), torch.linalg.cholesky(Zt @ Z))  # (B, m, 1)
        out.append(1.0 - (vg - (V.T @ Z @ c).squeeze(-1)).square().sum(-1) / den)
    return torch.cat(out)


def bench_removal(dims: dict[str, int], ms=(1, 2, 4, 8, 16, 28), k: int = 10, draws: int = 8,
                  repeats: int = 3) -> list[dict]:
    """Random-subspace removal of one checkpoint (every m of the geometry job): a (d, m) Gaussian per m
    and draw (before) vs one Haar frame of span(V, g) per draw for all m (after). Different draws of the
    same law: the note is the largest |difference of the means| over m in standard errors (z)."""
    rows = []
    for name, d in dims.items():
        gen = torch.Generator().manual_seed(0)
        V = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))[0]
        g = torch.randn(d, generator=gen, dtype=torch.float64) + 30 * V[:, 0]
        before = lambda: [random_removal_draws_dense(g, V, m, torch.Generator().manual_seed(1), draws) for m in ms]
        after = lambda: random_removal_all(g, V, ms, torch.Generator().manual_seed(1), draws)
        a, b_ = before(), after()
        z = max(abs(float(x.mean() - b_[m].mean())) / math.sqrt(float(x.var() + b_[m].var()) / draws + 1e-300)
                for x, m in zip(a, ms))
        ts = interleaved_times({"dense": before, "frame": after}, repeats)
        rows += _pair("random removal: (d, m) Gaussian per m -> Haar frame of span(V, g)",
                      f"{name}, d={d}, m={list(ms)}, {draws} draws", ts["dense"], ts["frame"], max_z=z)
    return rows


def bench_lanczos_dtype(subsets: dict, n: dict, k: dict, repeats: int = 3) -> list[dict]:
    """One top-k solve (the geometry job's, same seeded start): ARPACK in float64 (before) vs float32."""
    rows = []
    for name, sub in subsets.items():
        x, y = sub["x_train"][: n[name]], sub["y_train"][: n[name]]
        H = FullBatchHVP(models.build_model(name, sub["meta"], seed=0), losses.mse_onehot, x, y)
        H.gradient()  # build the cached graph outside the timing
        ts, out = {np.float64: [], np.float32: []}, {}
        for _ in range(repeats):  # interleaved; eigsh's own clock, so the residual HVPs are not counted
            for dt in ts:
                out[dt] = top_eigenpairs(H, k=k[name], tol=1e-3, dtype=dt, compute_residuals=False)
                ts[dt].append(out[dt].seconds)
        a, b = out[np.float64], out[np.float32]
        m = min(len(a.values), len(b.values))
        step_ms = " / ".join(f"{arpack_step_seconds(H.dim, k[name], dt, repeats=repeats) * 1e3:.1f}" for dt in ts)
        rows += _pair("Lanczos working precision: float64 -> float32", f"{name}, {len(x)} examples, k={k[name]}",
                      ts[np.float64], ts[np.float32], hvps=f"{a.n_hvp} / {b.n_hvp}", arpack_ms_per_step=step_ms,
                      max_rel_diff=float(np.max(np.abs(a.values[:m] - b.values[:m]) / np.abs(a.values[:m]))))
    return rows


def _peak_grad_rss(path: Path, chunk: int | None) -> tuple[float, float]:
    """(baseline, peak) RSS in MB of a fresh process computing the chunked gradient of the saved problem."""
    out = subprocess.run([sys.executable, __file__, "peak-grad", str(path), str(chunk)], capture_output=True,
                         text=True, check=True).stdout.split()
    return float(out[-2]), float(out[-1])


def bench_grad_chunk(subsets: dict, chunk: int = 256, n: int | None = None, repeats: int = 3) -> list[dict]:
    """Full training-set gradient g: one chunk (before) vs chunks of `chunk` examples (after); time in
    this process, peak RSS of a child process per variant."""
    rows = []
    for name, sub in subsets.items():
        x, y = sub["x_train"][:n], sub["y_train"][:n]
        model = models.build_model(name, sub["meta"], seed=0)
        grads = {c: (lambda c=c: FullBatchHVP(model, losses.mse_onehot, x, y, chunk_size=c, cache_graph=False)
                     .gradient()) for c in (None, chunk)}
        diff = float((grads[None]() - grads[chunk]()).norm() / grads[None]().norm())
        ts = interleaved_times({str(c): f for c, f in grads.items()}, repeats)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "problem.pt"
            torch.save({"name": name, "meta": sub["meta"], "x": x.clone(), "y": y.clone()}, path)  # no parent storage
            rss = {c: _peak_grad_rss(path, c) for c in (None, chunk)}
        case = f"{name}, {len(x)} examples, chunk {chunk}"
        rows += _pair("geometry gradient: one chunk -> chunked (time)", case, ts["None"], ts[str(chunk)],
                      rel_diff=diff)
        rows += _pair("geometry gradient: one chunk -> chunked (peak RSS)", case, [rss[None][1]], [rss[chunk][1]],
                      unit="MB", baseline_mb=rss[None][0])
    return rows


def bench_hvp_forward_over_reverse(subsets: dict, n: dict, repeats: int = 3) -> list[dict]:
    """Measured negative result: jvp(grad) (no stored second-order graph) vs the cached double backward."""
    rows = []
    for name, sub in subsets.items():
        x, y = sub["x_train"][: n[name]], sub["y_train"][: n[name]]
        model = models.build_model(name, sub["meta"], seed=0)
        H = FullBatchHVP(model, losses.mse_onehot, x, y)
        params = {k: p.detach() for k, p in model.named_parameters()}
        v = torch.randn(H.dim, generator=torch.Generator().manual_seed(0))
        tangent = unflatten(v, params)
        grad_fn = grad(lambda p: losses.mse_onehot(functional_call(model, p, (x,)), y))
        ts = interleaved_times({"cached": lambda: H.hvp(v),
                          "fwdrev": lambda: jvp(grad_fn, (params,), (tangent,))[1]}, repeats)
        rows += _pair("HVP: cached double backward -> forward-over-reverse (not adopted)",
                      f"{name}, {len(x)} examples", ts["cached"], ts["fwdrev"])
    return rows


class _NCHWCNN(torch.nn.Module):
    """The CNN's previous forward: contiguous NCHW, conv -> ReLU -> max-pool (same parameters)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        import torch.nn.functional as F

        m = self.inner
        x = F.max_pool2d(F.relu(m.conv1(x)), 2)
        x = F.max_pool2d(F.relu(m.conv2(x)), 2)
        return m.out(x.flatten(start_dim=1))


def bench_channels_last(sub: dict, n: int, b: int = 50, K: int = 8, repeats: int = 3) -> list[dict]:
    """The CNN's channels-last forward (models.CNNReLU, pool before ReLU) against the NCHW one it replaced, for a
    local step of K workers (one autograd call each, the engine's CNN path), the full-batch gradient, a
    cached-graph HVP and the evaluation of n examples. f32_err: relative error of the float32 full-batch
    gradient against float64 (NCHW / channels-last)."""
    x, y = sub["x_train"][:n], sub["y_train"][:n]
    variants = {"nchw": lambda m: _NCHWCNN(m), "cl": lambda m: m}

    def build(name, dtype=torch.float32):
        return variants[name](models.build_model("cnn_relu", sub["meta"], seed=0).to(dtype))

    def full_grad(name, dtype=torch.float32):
        return FullBatchHVP(build(name, dtype), losses.mse_onehot, x.to(dtype), y, chunk_size=256,
                            cache_graph=False).gradient().double()

    exact = full_grad("nchw", torch.float64)
    err = {v: float((full_grad(v) - exact).norm() / exact.norm()) for v in variants}
    ops, v = {}, None
    for name in variants:
        m = build(name)
        H = FullBatchHVP(m, losses.mse_onehot, x[:256], y[:256])
        v = torch.randn(H.dim, generator=torch.Generator().manual_seed(0)) if v is None else v
        H.gradient()  # build the cached graph outside the timing
        params = list(m.parameters())
        ops[name, "step"] = lambda m=m, p=params: [torch.autograd.grad(
            losses.mse_onehot(m(x[w * b:(w + 1) * b]), y[w * b:(w + 1) * b]), p) for w in range(K)]
        ops[name, "grad"] = lambda m=m: FullBatchHVP(m, losses.mse_onehot, x, y, chunk_size=256,
                                                     cache_graph=False).gradient()
        ops[name, "hvp"] = lambda H=H: H.hvp(v)
        ops[name, "eval"] = lambda m=m: torch.no_grad()(lambda: [m(x[i:i + 256]) for i in range(0, n, 256)])()
    ts = interleaved_times(ops, repeats)
    rows = []
    for op, case in (("step", f"local step, K={K} workers, b={b}"), ("grad", f"full-batch gradient, {n} examples"),
                     ("hvp", "cached-graph HVP, 256 examples"), ("eval", f"evaluation, {n} examples")):
        rows += _pair("CNN forward: NCHW -> channels-last, pool before ReLU", f"cnn_relu, {case}",
                      ts["nchw", op], ts["cl", op], f32_err_before=err["nchw"], f32_err_after=err["cl"])
    return rows


def bench_orthonormalise(dims: dict[str, int], r: int = 32, repeats: int = 3) -> list[dict]:
    """The gap subspace's re-orthonormalisation of a (d, r) block: Householder QR (sign-fixed) against
    CholeskyQR2 (gaps.orthonormalise), on a block as gap_subspace makes it (nearly orthonormal)."""
    from sharpgaps.curvature.gaps import orthonormalise

    rows = []
    for name, d in dims.items():
        gen = torch.Generator().manual_seed(0)
        U = torch.linalg.qr(torch.randn(d, r, generator=gen, dtype=torch.float64))[0]
        U = U + 1e-6 * torch.randn(d, r, generator=gen, dtype=torch.float64)  # the Gram route's loss of orthogonality

        def householder(U=U):
            Q, R = torch.linalg.qr(U)
            return Q * torch.where(torch.diagonal(R) < 0, -1.0, 1.0)

        ts = interleaved_times({"qr": householder, "chol": lambda U=U: orthonormalise(U)}, repeats)
        diff = float((householder() - orthonormalise(U)).abs().max())
        rows += _pair("gap-subspace orthonormalisation: Householder QR -> CholeskyQR2", f"{name}, d={d}, r={r}",
                      ts["qr"], ts["chol"], max_abs_diff=diff)
    return rows


class _Untrimmed(torch.nn.Module):
    """A model seen without its padding hooks (models.length_order / trim_padding): the path before the cut."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def bench_evaluation(subsets: dict, repeats: int = 3) -> list[dict]:
    """Training-set loss and accuracy (localsgd.evaluate; restricted runs call it at every evaluation): chunks of
    1,000 examples in data order (before) vs chunks of 256, length-sorted and trimmed of all-padding columns for
    text (after); and the transformer's full training-set gradient (chunks of 256) without / with the sorting."""
    from sharpgaps.engine.localsgd import evaluate

    rows = []
    for name, sub in subsets.items():
        x, y = sub["x_train"], sub["y_train"]
        model = models.build_model(name, sub["meta"], seed=0)
        plain = _Untrimmed(model)
        theta = dict(model.named_parameters())
        wrapped = {f"inner.{n}": p for n, p in theta.items()}
        runs = {"before": lambda: evaluate(plain, wrapped, losses.mse_onehot, x, y, chunk=1000),
                "after": lambda: evaluate(model, theta, losses.mse_onehot, x, y)}
        with torch.no_grad():
            diff = abs(runs["before"]()[0] - runs["after"]()[0]) / abs(runs["before"]()[0])
            ts = interleaved_times(runs, repeats)
        rows += _pair("evaluation: chunks of 1000 -> 256, length-sorted and trimmed (text)",
                      f"{name}, {len(x)} examples", ts["before"], ts["after"], rel_diff=diff)
        if models.length_order(model, x) is not None:
            grads = {"before": lambda: FullBatchHVP(plain, losses.mse_onehot, x, y, params=wrapped, chunk_size=256,
                                                    cache_graph=False).gradient(),
                     "after": lambda: FullBatchHVP(model, losses.mse_onehot, x, y, params=theta, chunk_size=256,
                                                   cache_graph=False).gradient()}
            a, b = grads["before"](), grads["after"]()
            ts = interleaved_times(grads, repeats)
            rows += _pair("training-set gradient: chunks length-sorted and trimmed", f"{name}, {len(x)} examples, "
                          f"chunk 256, max_len {x.shape[1]}", ts["before"], ts["after"],
                          rel_diff=float((a - b).norm() / a.norm()))
    return rows


def _hwm_mb() -> float:
    """This process's peak RSS (VmHWM; unlike ru_maxrss it starts afresh at exec, not at the parent's peak)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return float(line.split()[1]) / 1024


def _peak_grad_main(path: str, chunk: str) -> None:
    torch.set_num_threads(1)
    p = torch.load(path, weights_only=False)
    model = models.build_model(p["name"], p["meta"], seed=0)
    base = _hwm_mb()
    FullBatchHVP(model, losses.mse_onehot, p["x"], p["y"], chunk_size=None if chunk == "None" else int(chunk),
                 cache_graph=False).gradient()
    print(base, _hwm_mb())


if __name__ == "__main__" and sys.argv[1:2] == ["peak-grad"]:
    _peak_grad_main(*sys.argv[2:4])

"""Cheap estimators of the dominant Hessian subspace V_k, compared at equal vector count and by extra cost.

Every estimator returns an orthonormal basis (d, r) in float64, columns in decreasing importance, so its
m-dimensional estimate is the first m columns (r is its rank: m > r is not evaluated). All use the same
number n of input vectors (``EstimatorSpec.n``, default K*W = the gap matrix's vector count):

  gap        the worker-average gap subspace U (gaps.gap_subspace of the checkpoint's window, as geometry.py)
  update     update history: centred PCA of the last n round-to-round changes of the average
  gradhist   gradient history: top left singular vectors (uncentred) of the last n minibatch gradients
             the workers computed
  noise      noise PCA: centred PCA of n fresh minibatch gradients (size b) at the checkpoint's average
  krylov     budgeted block Krylov (Rayleigh-Ritz) with j Hessian-vector products, from a seeded random block
  krylovgap  the same Krylov started from the gap subspace
  random     a seeded Haar-random subspace (the floor)
  oracle     the top Hessian eigenvectors (the ceiling; the geometry job's cached Lanczos vectors)

Extra cost is in full-batch-gradient equivalents on the N training examples: a minibatch gradient = b/N, an HVP
on the Hessian's N_H examples = (N_H/N) x rho, rho = HVP time / gradient time on those examples, measured in
the job (:func:`cost`). gap, update and gradhist are by-products of Local SGD (extra cost 0); their memory is
what they keep. The update and gradient histories are not in format-1 checkpoints: a checkpoint keeps the
K*W averages before it (training.history_rounds) and :func:`replay` recomputes the workers' gradients of the
last rounds exactly (docs/FIDELITY.md, "Estimator history").
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call

from ..core import seeds
from ..core.grid import run_columns
from ..core.atomic import load_recomputable, load_torch, object_digest, save_torch
from ..core.flat import flatten
from ..core.specs import EstimatorSpec, RunSpec
from ..curvature.gaps import gap_subspace, orthonormalise
from ..curvature.metrics import capture_fraction, prefix_metrics, removal_fraction, subspace_overlap
from ..engine.localsgd import SimulatedLocalSGD
from ..engine.objective import Objective

ESTIMATORS = ("gap", "update", "gradhist", "noise", "krylov", "krylovgap", "random", "oracle")
FREE = ("gap", "update", "gradhist")  # by-products of Local SGD: no extra gradient or HVP
# Rows that depend on wall-clock timing (rho): everything else is bitwise reproducible on CPU.
TIMING_METRICS = ("extra_cost", "hvp_grad_ratio")
GRAD_TIMINGS = 3  # timed full-batch gradients on the Hessian's examples (median) for rho
BYTES = 4  # the model's float32: memory is counted in stored float32 vectors


# ----------------------------------------------------------------------------- bases from vectors


def pca_basis(X: torch.Tensor, centred: bool) -> torch.Tensor:
    """Orthonormal top principal directions (d, r) float64 of the rows of X (n, d); r = numerical rank."""
    X = X.to(torch.float64)
    if X.shape[0] == 0:
        return torch.zeros(X.shape[1], 0, dtype=torch.float64, device=X.device)
    if centred:
        X = X - X.mean(dim=0, keepdim=True)
    U, _ = gap_subspace(X)
    return U


def gap_estimate(gaps: torch.Tensor) -> torch.Tensor:
    """The gap subspace exactly as geometry.py forms it: each round's K gaps re-centred in float64."""
    gaps64 = gaps.to(torch.float64)
    G = (gaps64 - gaps64.mean(dim=1, keepdim=True)).reshape(-1, gaps.shape[-1])
    return gap_subspace(G)[0]


def update_estimate(averages: torch.Tensor) -> torch.Tensor:
    """Centred PCA of the round-to-round changes of consecutive averages (rows, oldest first)."""
    a = averages.to(torch.float64)
    return pca_basis(a[1:] - a[:-1], centred=True)


def gradient_estimate(grads: torch.Tensor) -> torch.Tensor:
    """Top left singular vectors of the minibatch gradients (rows), uncentred."""
    return pca_basis(grads, centred=False)


def noise_estimate(grads: torch.Tensor) -> torch.Tensor:
    """Centred PCA of fresh minibatch gradients at one point."""
    return pca_basis(grads, centred=True)


def random_basis(d: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random m-dim subspace of R^d: the Q factor (R's diagonal positive) of a seeded Gaussian."""
    return orthonormalise(torch.randn(d, m, generator=generator, dtype=torch.float64))


def _orth_against(W: torch.Tensor, Q: torch.Tensor | None) -> torch.Tensor:
    """W with span(Q) removed (classical Gram-Schmidt twice), then orthonormalised; null columns dropped."""
    for _ in range(2 if Q is not None and Q.shape[1] else 0):
        W = W - Q @ (Q.T @ W)
    if W.shape[1] == 0:
        return W
    Qw, R = torch.linalg.qr(W)
    keep = torch.diagonal(R).abs() > 1e-10 * max(float(torch.diagonal(R).abs().max()), 1e-300)
    return Qw[:, keep]


def block_krylov(hvp, start: torch.Tensor, budgets: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Budgeted block Krylov: {j: (Ritz vectors (d, r) float64, Ritz values (r,))} for each HVP budget j.

    The Krylov basis Q = orth[S, H S, H^2 S, ...] of the start block S (d, p) grows p HVPs at a time; the HVP
    images kept alongside give the Rayleigh-Ritz matrix Q^T H Q with no further product. A budget j uses the
    first floor(j/p) blocks (exactly p*floor(j/p) HVPs) of one shared Krylov sequence, so the bases for the
    smaller budgets are the prefixes of the largest one's. ``hvp``: flat (d,) -> (d,) (any dtype)."""
    j_max = max(budgets) if budgets else 0
    Q = _orth_against(start.to(torch.float64), None)
    blocks, images, used = [Q], [], 0
    basis = Q
    while used + blocks[-1].shape[1] <= j_max and blocks[-1].shape[1]:
        B = blocks[-1]
        HB = torch.stack([hvp(B[:, c]).to(torch.float64).reshape(-1) for c in range(B.shape[1])], dim=1)
        used += B.shape[1]
        images.append(HB)
        nxt = _orth_against(HB, basis)
        blocks.append(nxt)
        basis = torch.cat([basis, nxt], dim=1)
    out = {}
    for j in budgets:
        cols, hv, spent = [], [], 0
        for B, HB in zip(blocks, images):
            if spent + B.shape[1] > j:
                break
            cols.append(B), hv.append(HB)
            spent += B.shape[1]
        if not cols:
            out[j] = (torch.zeros(start.shape[0], 0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64))
            continue
        Qj, HQj = torch.cat(cols, 1), torch.cat(hv, 1)
        T = Qj.T @ HQj
        vals, vecs = torch.linalg.eigh((T + T.T) / 2)
        vals, vecs = vals.flip(0), vecs.flip(1)
        out[j] = (Qj @ vecs, vals)
    return out


# ----------------------------------------------------------------------------- metrics and cost


def max_principal_angle(V: torch.Tensor, U: torch.Tensor) -> float:
    """Largest principal angle (degrees) between span(V) and span(U), over min(k, m) angles."""
    s = torch.linalg.svdvals(V.to(torch.float64).T @ U.to(torch.float64))[: min(V.shape[1], U.shape[1])]
    return float(torch.rad2deg(torch.arccos(s.min().clamp(-1.0, 1.0))))


def quality(g: torch.Tensor, Vk: torch.Tensor, U: torch.Tensor) -> dict[str, float]:
    """overlap, capture, removal (sharpgaps.curvature.metrics) and the largest principal angle of U against V_k."""
    return {"overlap": subspace_overlap(Vk, U), "capture": capture_fraction(g, Vk, U),
            "removal": removal_fraction(g, Vk, U), "max_angle_deg": max_principal_angle(Vk, U)}


def cost(minibatch_grads: int = 0, b: int = 0, n_hvp: int = 0, n_hessian: int = 0, n_train: int = 1,
         hvp_grad_ratio: float = 0.0) -> float:
    """Extra cost in full-batch-gradient equivalents on ``n_train`` examples: each minibatch gradient is
    b/N, each HVP on ``n_hessian`` examples is (N_H/N) x rho."""
    return minibatch_grads * b / n_train + n_hvp * (n_hessian / n_train) * hvp_grad_ratio


# ----------------------------------------------------------------------------- what Local SGD had at a checkpoint


def _grad_fn(objective: Objective):
    @torch.enable_grad()
    def grad(theta_flat, xb, yb):
        params = {n: t.detach().requires_grad_(True) for n, t in objective.params(theta_flat).items()}
        loss = objective.loss_fn(functional_call(objective.model, params, (xb,)), yb)
        return flatten(torch.autograd.grad(loss, list(params.values())))
    return grad


def noise_gradients(objective: Objective, theta: torch.Tensor, n: int, b: int, seed: int) -> torch.Tensor:
    """n minibatch gradients (n, d) at ``theta``, each on b examples drawn without replacement by a seeded
    generator (stream seeds.NOISE)."""
    grad = _grad_fn(objective)
    x, y = objective.x, objective.y
    gen = torch.Generator().manual_seed(seeds.mixed(seed, seeds.NOISE))
    return torch.stack([grad(theta, x[idx], y[idx]) for idx in (torch.randperm(len(x), generator=gen)[:b]
                                                                   for _ in range(n))])


class GradientRecorder:
    """An identity update transform that keeps the last ``keep`` steps' (K, d) gradients (training's arithmetic:
    the engine's identity transform reproduces the plain update bit for bit)."""

    def __init__(self, keep: int):
        self.keep, self.steps = keep, []

    def __call__(self, grads: torch.Tensor) -> torch.Tensor:
        if self.keep:
            self.steps = (self.steps + [grads.detach().clone()])[-self.keep:]
        return grads


def replay(objective: Objective, spec: RunSpec, theta0: torch.Tensor, start_round: int, end_round: int,
           grad_steps: int) -> dict:
    """Replay rounds start_round+1 .. end_round of a run from its average ``theta0`` (flat, at start_round):
    the averages after every replayed round (rows, oldest first), the workers' minibatch gradients of the last
    ``grad_steps`` local steps (rows step-major, worker-minor), and the last round's gaps (K, d)."""
    rec = GradientRecorder(grad_steps)
    eng = SimulatedLocalSGD(objective.model, objective.loss_fn, objective.x, objective.y, spec,
                            theta=objective.params(theta0), update_transform=rec)
    averages, gaps = [], None
    with torch.no_grad():
        for rnd in range(start_round + 1, end_round + 1):
            for s in range(spec.tau):
                eng.local_step((rnd - 1) * spec.tau + s)
            avg, gaps = eng.end_round()
            averages.append(flatten(avg).clone())
    grads = torch.cat(rec.steps) if rec.steps else torch.zeros(0, len(theta0))
    return {"averages": torch.stack(averages) if averages else torch.zeros(0, len(theta0)), "grads": grads,
            "gaps": gaps}


def history_inputs(objective: Objective, spec: RunSpec, ckpt: dict, n: int, earlier=None) -> dict:
    """The last n+1 averages (n round-to-round changes) and the last n minibatch gradients of the workers at
    checkpoint ``ckpt``, reproduced exactly.

    A format-2 checkpoint keeps the K*W averages before it: the changes need no compute, and the gradients are
    replayed from the average ceil(n/K/tau) rounds back. A format-1 checkpoint (no history) replays from
    ``earlier`` = (round, flat average) of the latest exact average before it (the previous checkpoint, or the
    initial point at round 0). Returns averages, grads, replayed_rounds, and exact: whether the replay ended on
    the checkpoint's own average and last gaps bit for bit."""
    r = int(ckpt["round"])
    dev = objective.device
    theta = ckpt["theta"].to(dev)
    steps = math.ceil(n / spec.K)  # local steps whose K gradients make the last n
    back = min(r, math.ceil(steps / spec.tau))  # rounds to replay for them
    hist_rounds = list(ckpt.get("history_rounds", []))
    if hist_rounds and r - back in hist_rounds:
        hist = ckpt["theta_history"].to(dev)
        start = hist[hist_rounds.index(r - back)]
        out = replay(objective, spec, start, r - back, r, steps)
        averages = torch.cat([hist, theta[None]])[-(n + 1):]
        replayed = back
    else:
        if earlier is None:
            raise ValueError(f"checkpoint round {r} keeps no average history (format 1): pass an earlier average")
        r0, start = earlier
        out = replay(objective, spec, start.to(dev), r0, r, steps)
        prior = [start.to(dev)[None]] if r0 >= r - n else []
        averages = torch.cat([*prior, out["averages"]])[-(n + 1):]
        replayed = r - r0
    exact = bool(len(out["averages"]) and torch.equal(out["averages"][-1], theta)
                 and torch.equal(out["gaps"], ckpt["gaps"][-1].to(dev)))
    return {"averages": averages, "grads": out["grads"][-n:], "replayed_rounds": replayed, "exact": exact}


# ----------------------------------------------------------------------------- one checkpoint, one run


def _rows(base, estimator, metric, value, m=np.nan, j=np.nan):
    return {**base, "estimator": estimator, "metric": metric, "m": m, "j": j, "value": float(value)}


def checkpoint_estimators(objective: Objective, spec: EstimatorSpec, ckpt: dict, vectors: np.ndarray, run: RunSpec,
                          k: int, earlier=None, oracle_hvps=None, gradient: torch.Tensor | None = None) -> list[dict]:
    """Every estimator's basis at one checkpoint and its quality, rank, cost and memory rows, against the top ``k``
    of the Hessian eigenvectors ``vectors`` (d, k + extra). ``oracle_hvps``: the HVPs the geometry job's Lanczos
    spent on these eigenvectors (its `n_hvp` row), to price the oracle alike. ``gradient``: the full-batch
    gradient at the checkpoint if the geometry job cached it (else computed here)."""
    dev = objective.device
    theta_flat = ckpt["theta"].to(dev)
    theta = objective.params(theta_flat)
    N, n_h = objective.n_train, objective.n_hessian
    n = spec.n or run.K * run.window
    d = theta_flat.numel()
    base = {"round": int(ckpt["round"]), "step": int(ckpt["step"])}
    clock = {"start": time.perf_counter()}

    def lap(name):  # wall seconds per part, for the job log (not the table: it stays bitwise reproducible)
        now = time.perf_counter()
        clock[name] = now - clock.pop("last", clock["start"])
        clock["last"] = now

    if gradient is None:
        gradient = objective.gradient(theta)
    g = gradient.to(dev, torch.float64)
    V_all = torch.from_numpy(np.asarray(vectors, np.float64)).to(dev)
    Vk = V_all[:, :k]
    lap("gradient")

    bases, rows = {}, []
    bases["gap"] = gap_estimate(ckpt["gaps"].to(dev))
    format1_replay = None if ckpt.get("history_rounds") or earlier is None else base["round"] - earlier[0]
    if spec.max_replay_rounds is not None and format1_replay is not None and format1_replay > spec.max_replay_rounds:
        print(f"round {base['round']}: no average history (format-1 checkpoint) and a {format1_replay}-round replay "
              f"exceeds estimators.max_replay_rounds={spec.max_replay_rounds}: update and gradient history skipped",
              file=sys.stderr, flush=True)
        d0 = torch.zeros(0, d, dtype=torch.float32, device=dev)
        hist = {"averages": torch.zeros(1, d, device=dev), "grads": d0, "replayed_rounds": 0, "exact": float("nan")}
    else:
        hist = history_inputs(objective, run, ckpt, n, earlier=earlier)
    lap(f"replay_{hist['replayed_rounds']}_rounds")
    bases["update"] = update_estimate(hist["averages"])
    bases["gradhist"] = gradient_estimate(hist["grads"])
    b_noise = spec.noise_b or run.b
    noise = noise_gradients(objective, theta_flat, n, b_noise, seeds.linear(run.seed, seeds.ROUND, base["round"]))
    bases["noise"] = noise_estimate(noise)
    lap("noise")
    rows += [_rows(base, "oracle", "k", k),
             _rows(base, "update", "n_used", len(hist["averages"]) - 1),
             _rows(base, "gradhist", "n_used", len(hist["grads"])),
             _rows(base, "gradhist", "replayed_rounds", hist["replayed_rounds"]),
             _rows(base, "gradhist", "replay_exact", float(hist["exact"])),
             _rows(base, "noise", "n_used", len(noise)),
             _rows(base, "gap", "n_used", ckpt["gaps"].shape[0] * ckpt["gaps"].shape[1])]

    # Krylov: one HVP operator on the Hessian's examples; rho = HVP time / gradient time on them
    hvp = objective.hessian(theta)
    t_grad = []
    for _ in range(1 + GRAD_TIMINGS):  # the first call warms up (allocations, kernels): not timed
        t0 = time.perf_counter()
        objective.hessian(theta, cache_graph=False).gradient()
        t_grad.append(time.perf_counter() - t0)
    t_grad = float(np.median(t_grad[1:]))
    hvp.gradient()  # builds the cached graph: the HVP timings below are the products alone
    times = []

    def timed_hvp(v):
        t = time.perf_counter()
        out = hvp.hvp(v)
        times.append(time.perf_counter() - t)
        return out

    p = spec.krylov_block(k)
    gen = torch.Generator().manual_seed(seeds.mixed(run.seed, seeds.KRYLOV_START, base["round"]))
    budgets = sorted(set(spec.krylov_hvps))
    kry = block_krylov(timed_hvp, torch.randn(d, p, generator=gen, dtype=torch.float64).to(dev), budgets)
    gap_start = bases["gap"][:, :p]
    kgap = block_krylov(timed_hvp, gap_start, budgets) if gap_start.shape[1] else {j: (gap_start, None)
                                                                                  for j in budgets}
    hvp.release()
    lap(f"krylov_{len(times)}_hvps")
    rho = float(np.median(times[1:] or times)) / t_grad if times else float("nan")  # the first HVP: warm-up
    rows.append(_rows(base, "krylov", "hvp_grad_ratio", rho))

    def emit(name, U, extra_cost, memory_vectors, j=np.nan, vector_bytes=BYTES):
        out = [_rows(base, name, "rank", U.shape[1], j=j), _rows(base, name, "extra_cost", extra_cost, j=j),
               _rows(base, name, "memory_bytes", memory_vectors * d * vector_bytes, j=j)]
        for m, q in prefix_metrics(g, Vk, U, {*spec.m_list, k}).items():
            out += [_rows(base, name, metric, v, m=m, j=j) for metric, v in q.items()]
        return out

    W, K = ckpt["gaps"].shape[0], ckpt["gaps"].shape[1]
    rows += emit("gap", bases["gap"], 0.0, W * K)
    rows += emit("update", bases["update"], 0.0, len(hist["averages"]))
    rows += emit("gradhist", bases["gradhist"], 0.0, len(hist["grads"]))
    rows += emit("noise", bases["noise"], cost(minibatch_grads=len(noise), b=b_noise, n_train=N), len(noise))
    for j in budgets:
        for name, res in (("krylov", kry), ("krylovgap", kgap)):
            U, _ = res[j]
            spent = U.shape[1] if name == "krylov" or gap_start.shape[1] else 0
            rows += emit(name, U, cost(n_hvp=spent, n_hessian=n_h, n_train=N, hvp_grad_ratio=rho), 2 * spent, j=j,
                         vector_bytes=8)
    m_max = max({*spec.m_list, k})
    rgen = torch.Generator().manual_seed(seeds.mixed(run.seed, seeds.HAAR_BASIS, base["round"]))
    rows += emit("random", random_basis(d, min(m_max, d), rgen).to(dev), 0.0, m_max, vector_bytes=8)
    # the oracle's cost: the geometry job's Lanczos HVPs (k + extra pairs to tol; NaN if not given)
    oracle_cost = (float("nan") if oracle_hvps is None else
                   cost(n_hvp=oracle_hvps, n_hessian=n_h, n_train=N, hvp_grad_ratio=rho))
    rows += emit("oracle", V_all, oracle_cost, V_all.shape[1], vector_bytes=8)
    lap("bases_and_metrics")
    del clock["start"], clock["last"]
    print(f"round {base['round']} seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in clock.items()),
          file=sys.stderr, flush=True)
    return rows


def _cache_key(objective: Objective, spec: EstimatorSpec, ckpt: dict, vectors: np.ndarray, k: int,
               oracle_hvps=None) -> str:
    options = (objective.hessian_examples, objective.chunk_size, objective.grad_chunk_size, k)
    return object_digest({"theta": ckpt["theta"], "v": torch.from_numpy(np.ascontiguousarray(vectors)),
                          "spec": repr(spec), "objective": repr(options), "oracle_hvps": repr(oracle_hvps)})[:16]


def selected(ckpt_paths: list[Path], spec: EstimatorSpec) -> list[Path]:
    """The checkpoints the stage evaluates: all, or the last ``spec.last_checkpoints``."""
    paths = sorted(ckpt_paths)
    return paths if spec.last_checkpoints is None else paths[-spec.last_checkpoints:]


def run_estimators(objective: Objective, spec: EstimatorSpec, ckpt_paths: list[Path], vectors: dict[int, np.ndarray],
                   run: RunSpec, work_dir: Path, *, k: int, log=sys.stderr, oracle_hvps: dict[int, int] | None = None,
                   gradients: dict[int, torch.Tensor] | None = None) -> pd.DataFrame:
    """Every selected checkpoint in round order against the top ``k`` Hessian eigenvectors of ``vectors``; each
    finished one is cached in ``work_dir`` (resume). ``gradients``: full-batch gradients per round from the
    geometry job's cache (computed here where absent)."""
    work_dir = Path(work_dir)
    all_rows, info = [], None
    paths = sorted(ckpt_paths)
    chosen = selected(paths, spec)
    model = objective.model
    earlier = (0, flatten({n: p.detach() for n, p in model.named_parameters()}).to(objective.device))  # round 0
    for path in paths:
        ckpt = load_torch(path)
        if path in chosen:
            info = ckpt["run"]
            vecs = vectors[int(ckpt["round"])]
            key = _cache_key(objective, spec, ckpt, vecs, k, (oracle_hvps or {}).get(int(ckpt["round"])))
            cache = work_dir / f"{Path(path).stem}.est.pt"
            done = load_recomputable(cache, "estimator cache")
            t0 = time.perf_counter()
            if done is not None and done.get("key") == key:
                rows, how = done["rows"], "cached"
            else:
                rows = checkpoint_estimators(objective, spec, ckpt, vecs, run, k, earlier=earlier,
                                             oracle_hvps=(oracle_hvps or {}).get(int(ckpt["round"])),
                                             gradient=(gradients or {}).get(int(ckpt["round"])))
                save_torch({"rows": rows, "key": key}, cache)
                how = f"{time.perf_counter() - t0:.1f} s"
            ov = {r["estimator"]: r["value"] for r in rows if r["metric"] == "overlap" and r["m"] == k
                  and (r["estimator"] not in ("krylov", "krylovgap") or r["j"] == max(spec.krylov_hvps))}
            shown = ", ".join(f"{e} {v:.3f}" for e, v in ov.items())
            print(f"round {ckpt['round']} ({how}): overlap at m=k={k}: {shown}", file=log, flush=True)
            all_rows += rows
        earlier = (int(ckpt["round"]), ckpt["theta"].to(objective.device))
    df = pd.DataFrame(all_rows)
    columns = run_columns(info)
    for col, value in columns.items():
        df[col] = value
    df["d"] = sum(p.numel() for p in model.parameters())
    return df[[*columns, "d", "round", "step", "estimator", "metric", "m", "j", "value"]]

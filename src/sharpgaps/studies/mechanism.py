"""The noise x curvature mechanism, direction by direction (docs/DEFINITIONS.md#per-direction-gap-variance).

For a unit direction v at a checkpoint, the quadratic model of a Local SGD round predicts the gap variance

    E[(1/K) sum_i (v^T delta_i)^2] = eta^2 (1 - 1/K) (c_v / b) F(a),   a = 1 - eta lambda_v,
    F(a) = sum_t w_t^2 - (b/N) sum_epochs (sum_{t in epoch} w_t)^2,   w_t = a^(tau-1-t),

with c_v = v^T S v, S the per-example gradient covariance over the N training examples (normalised by
N - 1), and the second term of F the without-replacement correlation of one worker's minibatches within
an epoch (sharpgaps.engine.localsgd.WorkerBatches). It is exact for Hessian eigenvectors (lambda_v = lambda_j);
for other directions lambda_v is their Rayleigh quotient and the formula is an approximation.

Per checkpoint: c_v from per-example gradients (vmap(grad), chunked, projected on the directions; no d x d
matrix), the measured variance from the checkpoint's window of gaps, the prediction and their ratio.
Finished checkpoints are cached in a work dir, so a killed job resumes.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call, grad, vmap

from ..core import seeds
from ..core.grid import run_columns, run_keys
from ..core.atomic import load_recomputable, load_torch, object_digest, save_torch
from ..core.flat import flatten
from ..core.specs import MechanismSpec
from ..engine.objective import Objective
from ..engine.partitions import dirichlet_shards

KINDS = ("eigen", "random", "total")


# ----------------------------------------------------------------------------- the prediction

def step_weights(a, tau: int, momentum: float = 0.0) -> np.ndarray:
    """w_t (..., tau): the weight of a gradient perturbation at local step t of a round in the gap at its end,
    per direction, in units of -eta (quadratic model; ``a`` = 1 - eta lambda). Plain SGD: w_t = a^(tau-1-t).

    Heavy ball (v <- mu v + u, theta <- theta - eta v): in scaled units p = eta v a direction's deviation x
    follows p' = mu p + (1 - a) x + e, x' = x - p'; w_t is -x_tau after a unit e at step t, from x = p = 0. A
    buffer common to every worker at the round's start (averaged or reset at averaging) moves them alike and
    cancels in the gaps; buffers kept per worker carry earlier rounds' differences, which this leaves out."""
    a = np.asarray(a, dtype=np.float64)[..., None]
    t = np.arange(tau)
    if momentum == 0.0:
        return a ** (tau - 1 - t)
    response = np.zeros(a.shape[:-1] + (tau,))  # response[..., n - 1] = -x after n steps from the impulse
    x, p = np.zeros(a.shape[:-1]), np.zeros(a.shape[:-1])
    for n in range(tau):
        p = momentum * p + (1.0 - a[..., 0]) * x + (1.0 if n == 0 else 0.0)
        x = x - p
        response[..., n] = -x
    return response[..., ::-1]  # step t is tau - t steps before the round's end


def noise_weight(a, tau: int, b: int, N: int, first_step: int, momentum: float = 0.0) -> np.ndarray:
    """F(a) of one round whose local steps are first_step .. first_step + tau - 1 (module docstring).

    ``a`` (array) = 1 - eta lambda per direction. Worker i's batch at step t is slice t mod (N // b) of
    its epoch's permutation: batches of one epoch are disjoint (covariance -S/N between their means),
    batches of different epochs independent. N = inf gives sampling with replacement; N a worker's shard
    size gives its F when it draws only from its shard."""
    t = np.arange(tau)
    w = step_weights(a, tau, momentum)  # weight of step t in the gap: A^(tau-1-t) for plain SGD
    F = (w**2).sum(-1)
    if math.isfinite(N):
        epochs = (first_step + t) // (N // b)
        for e in np.unique(epochs):
            F = F - (b / N) * w[..., epochs == e].sum(-1) ** 2
    return F


def predicted_variance(lam, c, *, lr: float, K: int, b: int, tau: int, N: int, rounds) -> np.ndarray:
    """eta^2 (1 - 1/K) (c / b) F(1 - eta lam), F averaged over the window's ``rounds`` (1-based round numbers:
    round r runs local steps (r-1) tau .. r tau - 1), the rounds the measured variance averages over."""
    a = 1.0 - lr * np.asarray(lam, dtype=np.float64)
    F = np.mean([noise_weight(a, tau, b, N, (r - 1) * tau) for r in rounds], axis=0)
    return lr**2 * (1.0 - 1.0 / K) * np.asarray(c, dtype=np.float64) / b * F


def predicted_components(lam, c, drift, shard_sizes, *, lr: float, b: int, tau: int, rounds,
                         momentum: float = 0.0) -> dict[str, np.ndarray]:
    """Noise and drift parts of the gap variance per direction when worker i draws only from its own shard.

    ``c`` (K, m): v^T S_i v, the per-example gradient variance within shard i; ``drift`` (K, m): v^T (g_i -
    mean_j g_j), shard i's full gradient against the workers' mean; ``shard_sizes`` (K,). In the quadratic model
    worker i's gap along v is -eta sum_t w_t (d_i + noise_(i,t) - mean_j noise_(j,t)) (step_weights), so

        E[(1/K) sum_i (v^T delta_i)^2] = eta^2 (1 - 1/K) (1/K) sum_i (c_i / b) F_i  +  eta^2 (sum_t w_t)^2 (1/K) sum_i d_i^2,

    F_i the noise weight with shard i's size. Equal shards of the whole set (IID: c_i = c, d_i = 0, n_i = N)
    give predicted_variance. Returns {"noise", "drift"}: (m,) each."""
    c, drift = np.atleast_2d(np.asarray(c, np.float64)), np.atleast_2d(np.asarray(drift, np.float64))
    K = c.shape[0]
    a = 1.0 - lr * np.asarray(lam, dtype=np.float64)
    F = np.stack([np.mean([noise_weight(a, tau, b, n, (r - 1) * tau, momentum) for r in rounds], axis=0)
                  for n in shard_sizes])  # (K, m)
    noise = lr**2 * (1.0 - 1.0 / K) * (c * F).mean(0) / b
    carried = step_weights(a, tau, momentum).sum(-1)  # sum_t w_t: a constant pull over one round
    return {"noise": noise, "drift": lr**2 * carried**2 * (drift**2).mean(0)}


def shard_statistics(P: torch.Tensor, shard_of: np.ndarray, shard_sizes) -> tuple[np.ndarray, np.ndarray]:
    """(c (K, m), drift (K, m)) from per-example projections P (n, m) of a simple random sample of the training
    set and the shard of each sampled example. c_i: the sample variance within shard i; drift_i: shard i's mean
    projection minus the mean over shards, its square corrected for the sampling noise of the shard mean
    (c_i / n_i (1 - n_i / N_i), finite-population), so a sample of an IID split gives drift ~ 0, not c / n."""
    P = P.cpu().numpy()
    K = len(shard_sizes)
    c, means, noise = np.zeros((K, P.shape[1])), np.zeros((K, P.shape[1])), np.zeros((K, P.shape[1]))
    for i in range(K):
        rows = P[shard_of == i]
        if len(rows) < 2:
            raise ValueError(f"shard {i} has {len(rows)} sampled examples; raise mechanism.examples")
        c[i], means[i] = rows.var(0, ddof=1), rows.mean(0)
        noise[i] = c[i] / len(rows) * (1.0 - len(rows) / shard_sizes[i])
    d2 = np.clip((means - means.mean(0)) ** 2 - noise, 0.0, None)
    return c, np.sqrt(d2)


# ----------------------------------------------------------------------------- the measurements

# Below this many examples the per-example gradients are taken one plain autograd call each: vmap's one-off
# set-up (measured ~20 s for the transformer, ~4 s for the MLP, on a loaded CPU) costs more than the loop saves.
VMAP_MIN_EXAMPLES = 256


def per_example_projections(model, loss_fn, theta: dict[str, torch.Tensor], x, y, D: torch.Tensor,
                            chunk_size: int = 256, vectorize: bool | None = None) -> torch.Tensor:
    """P (n, m) float64: P[i, j] = D[:, j]^T grad l_i(theta), l_i the loss of example i alone.

    torch.func vmap(grad) over a chunk of examples gives its (chunk, d) per-example gradients, which are
    projected at once and dropped: memory ~ chunk x d, never d x d. ``vectorize=False`` takes one autograd
    call per example instead (same numbers to float rounding); None: vmap from VMAP_MIN_EXAMPLES examples on,
    unless the model says otherwise (``vmap_examples``: the CNN, whose vmapped convolutions are slow on CPU)."""
    params = {n: t.detach() for n, t in theta.items()}
    Dm = D.to(device=x.device, dtype=next(iter(params.values())).dtype)
    if vectorize is None:
        vectorize = len(x) >= VMAP_MIN_EXAMPLES and getattr(model, "vmap_examples", True)
    if not vectorize:
        leaves = {n: p.requires_grad_(True) for n, p in params.items()}
        rows = []
        with torch.enable_grad():
            for i in range(len(x)):
                loss = loss_fn(functional_call(model, leaves, (x[i : i + 1],)), y[i : i + 1])
                rows.append(flatten(torch.autograd.grad(loss, list(leaves.values()))) @ Dm)
        return torch.stack(rows).to(torch.float64)

    def loss_one(p, xi, yi):
        return loss_fn(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
    out = []
    for i in range(0, len(x), chunk_size):
        G = flatten(per_example(params, x[i : i + chunk_size], y[i : i + chunk_size]), batch_dims=1)
        out.append((G @ Dm).to(torch.float64))
    return torch.cat(out)


def gradient_noise(P: torch.Tensor) -> np.ndarray:
    """c_j = v_j^T S v_j from per-example projections P (n, m): their sample variance (ddof 1).

    With all N examples it is S exactly (S normalised by N - 1); with n < N examples drawn without
    replacement it is unbiased for it (the sample variance is unbiased under simple random sampling)."""
    if P.shape[0] < 2:
        raise ValueError("need at least 2 examples for a gradient variance")
    return P.var(0, unbiased=True).cpu().numpy()


def gap_variance(gaps: torch.Tensor, D: torch.Tensor) -> dict[str, np.ndarray]:
    """Measured gap variance along each column of D from a window of gaps (W, K, d).

    q_r = (1/K) sum_i (v^T delta_(r,i))^2 per round; measured = mean_r q_r; stderr = std_r(q_r) / sqrt(W)
    (rounds as replicates; NaN for W = 1); stderr_gauss = measured sqrt(2 / ((K-1) W)), the Gaussian
    value (each round's K centred gaps carry K - 1 degrees of freedom). Also the total energy
    (1/K) sum_i ||delta_i||^2, averaged over rounds. The gaps are re-centred in float64 per round."""
    g = gaps.to(torch.float64)
    g = g - g.mean(dim=1, keepdim=True)
    W, K, _ = g.shape
    q = ((g @ D.to(g)) ** 2).mean(1)  # (W, m)
    measured = q.mean(0)
    stderr = q.std(0, unbiased=True) / W**0.5 if W > 1 else torch.full_like(measured, math.nan)
    return {"measured": measured.cpu().numpy(), "stderr": stderr.cpu().numpy(),
            "stderr_gauss": (measured * (2.0 / ((K - 1) * W)) ** 0.5).cpu().numpy(),
            "total": float((g**2).sum(-1).mean(1).mean())}


def random_bulk_directions(V: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n seeded random unit directions orthogonal to span(V) (d, r), float64 (d, n)."""
    d = V.shape[0]
    R = np.random.default_rng(seed).standard_normal((d, n))
    Q, _ = np.linalg.qr(V)
    R = R - Q @ (Q.T @ R)
    Q2, Rr = np.linalg.qr(R)
    return Q2 * np.sign(np.diagonal(Rr))


# ----------------------------------------------------------------------------- one checkpoint

def checkpoint_mechanism(objective: Objective, spec: MechanismSpec, ckpt: dict, V: np.ndarray,
                         eigenvalues: np.ndarray) -> pd.DataFrame:
    """The per-direction table of one checkpoint: the columns of V (Hessian eigenvectors with their
    ``eigenvalues``) and ``spec.random_directions`` random directions orthogonal to them (lambda = Rayleigh
    quotient on the Hessian's examples), plus one 'total' row (the whole gap energy, measured and predicted).

    c_j from the first ``spec.examples`` training examples (None: all; the subset is stored in random order);
    the minibatches were drawn from all N training examples."""
    run = ckpt["run"]
    x, y, N = objective.x, objective.y, objective.n_train
    n_random = spec.random_directions
    theta = objective.params(ckpt["theta"])
    d = ckpt["theta"].numel()
    r = int(ckpt["round"])
    U = random_bulk_directions(V, n_random, seeds.linear(spec.seed, seeds.ROUND, r)) if n_random else np.zeros((d, 0))
    lam_r = np.zeros(n_random)
    if n_random:
        hvp = objective.hessian(theta)
        for j in range(n_random):
            u = torch.from_numpy(U[:, j])
            lam_r[j] = float(u @ hvp.hvp(u).to(torch.float64).cpu())
        hvp.release()
    D = torch.from_numpy(np.concatenate([V, U], axis=1))
    n_c = N if spec.examples is None else min(spec.examples, N)
    t0 = time.perf_counter()
    P = per_example_projections(objective.model, objective.loss_fn, theta, x[:n_c], y[:n_c], D, spec.chunk_size)
    c = gradient_noise(P)
    seconds_c = time.perf_counter() - t0
    meas = gap_variance(ckpt["gaps"], D.to(x.device))
    lam = np.concatenate([np.asarray(eigenvalues, dtype=np.float64), lam_r])
    kw = dict(lr=run["lr"], b=run["b"], tau=run["tau"], rounds=ckpt["gap_rounds"])
    momentum = float(run.get("momentum") or 0.0)
    parts = None
    if run.get("partition", "iid") == "dirichlet":  # workers on their own shards: noise within them + drift
        shards, _ = dirichlet_shards(y, run["K"], run["alpha"], run["seed"], run["b"])
        shard_of = np.empty(N, dtype=np.int64)
        for i, members in enumerate(shards):
            shard_of[members.numpy()] = i
        sizes = [len(members) for members in shards]
        c_w, drift = shard_statistics(P, shard_of[:n_c], sizes)
        parts = predicted_components(lam, c_w, drift, sizes, momentum=momentum, **kw)
    elif momentum:
        K = run["K"]
        parts = predicted_components(lam, np.tile(c, (K, 1)), np.zeros((K, len(c))), [N] * K, momentum=momentum, **kw)
    pred = predicted_variance(lam, c, K=run["K"], N=N, **kw) if parts is None else parts["noise"] + parts["drift"]
    m = D.shape[1]
    kind = ["eigen"] * V.shape[1] + ["random"] * n_random
    df = pd.DataFrame({"round": r, "step": int(ckpt["step"]), "kind": kind,
                       "direction": list(range(V.shape[1])) + list(range(n_random)),
                       "lambda": lam, "c": c, "measured": meas["measured"], "stderr": meas["stderr"],
                       "stderr_gauss": meas["stderr_gauss"], "predicted": pred})
    if parts is not None:  # IID plain-SGD tables keep their columns
        df["predicted_noise"], df["predicted_drift"] = parts["noise"], parts["drift"]
    # the whole gap energy: eigen rows + the rest of the space at the random directions' mean prediction
    rest = (d - V.shape[1]) * (pred[V.shape[1]:].mean() if n_random else math.nan)
    total = {"round": r, "step": int(ckpt["step"]), "kind": "total", "direction": -1, "lambda": math.nan,
             "c": math.nan, "measured": meas["total"], "stderr": math.nan, "stderr_gauss": math.nan,
             "predicted": float(pred[: V.shape[1]].sum() + rest)}
    if parts is not None:
        for name in ("noise", "drift"):
            part = parts[name]
            total[f"predicted_{name}"] = float(part[: V.shape[1]].sum() + (d - V.shape[1]) * (
                part[V.shape[1]:].mean() if n_random else math.nan))
    df = pd.concat([df, pd.DataFrame([total])], ignore_index=True)
    df["ratio"] = df["measured"] / df["predicted"]
    df["n_examples"] = n_c
    df.attrs["seconds_c"] = seconds_c
    assert len(df) == m + 1
    return df


def run_mechanism(objective: Objective, spec: MechanismSpec, ckpt_paths, vectors: dict[int, np.ndarray],
                  eigenvalues: dict[int, np.ndarray], work_dir: Path, log=sys.stderr) -> pd.DataFrame:
    """checkpoint_mechanism for every checkpoint of a run, each cached in ``work_dir`` (resume after a kill);
    ``vectors``/``eigenvalues``: round -> the geometry job's (d, k + extra) eigenvectors and their values."""
    work_dir = Path(work_dir)
    frames, run = [], None
    k = spec.k
    settings = {"n_random": spec.random_directions, "examples": spec.examples, "seed": spec.seed,
                "hessian_examples": objective.hessian_examples}
    for path in sorted(ckpt_paths):
        ckpt = load_torch(path)
        r = int(ckpt["round"])
        run = ckpt["run"]
        key = object_digest({"theta": ckpt["theta"], "V": torch.from_numpy(vectors[r]), **settings})[:16]
        cache = work_dir / f"{Path(path).stem}.mech.pt"
        done = load_recomputable(cache, "mechanism cache")
        if done is not None and done.get("key") == key:
            df, how = done["frame"], "cached"
        else:
            t0 = time.perf_counter()
            df = checkpoint_mechanism(objective, spec, ckpt, vectors[r], eigenvalues[r])
            how = f"{time.perf_counter() - t0:.1f} s (c_j {df.attrs['seconds_c']:.1f} s)"
            df.attrs = {}
            save_torch({"frame": df, "key": key}, cache)
        top = df[(df["kind"] == "eigen") & (df["direction"] < k)]
        err = np.median(np.abs(np.log10(top["ratio"])))
        print(f"round {r}: median |log10(measured/predicted)| over the top {k} = {err:.3f}, {how}", file=log,
              flush=True)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    columns = run_columns(run)
    for col, value in columns.items():
        out[col] = value
    out["k"] = k
    out["d"] = int(load_torch(sorted(ckpt_paths)[0])["theta"].numel())
    extra = [col for col in ("predicted_noise", "predicted_drift") if col in out]  # heterogeneous or momentum runs
    return out[[*columns, "k", "d", "round", "step", "kind", "direction", "lambda", "c", "measured",
                "stderr", "stderr_gauss", "predicted", "ratio", "n_examples", *extra]]


# ----------------------------------------------------------------------------- summaries of the table

def vk_share(df: pd.DataFrame) -> pd.DataFrame:
    """Share of the gap energy in V_k per run and checkpoint, measured and predicted: the top-k eigen rows'
    sum over the 'total' row (predicted total: eigen rows + (d - k - extra) x the random directions' mean)."""
    keys = [*run_keys(df), *(c for c in ("round", "step") if c in df)]
    top = df[(df["kind"] == "eigen") & (df["direction"] < df["k"])].groupby(keys, dropna=False)[
        ["measured", "predicted"]].sum().reset_index()
    tot = df.loc[df["kind"] == "total", [*keys, "measured", "predicted"]]
    # merge, not index alignment: a plain run's optional keys (alpha, momentum, ...) are NaN in a table that also
    # holds heterogeneous runs, and NaN index labels do not align, while merge matches NaN keys
    both = top.merge(tot, on=keys, suffixes=("", "_total"))
    return both[keys].assign(share_measured=both["measured"] / both["measured_total"],
                             share_predicted=both["predicted"] / both["predicted_total"])


def fit_exponent(lam, c, n_boot: int = 1000, seed: int = 0) -> dict:
    """gamma of log10 c = gamma log10 lambda + const by least squares over directions with lambda > 0, with a
    95% bootstrap interval (directions resampled with replacement)."""
    lam, c = np.asarray(lam, float), np.asarray(c, float)
    ok = (lam > 0) & (c > 0) & np.isfinite(lam) & np.isfinite(c)
    X, Y = np.log10(lam[ok]), np.log10(c[ok])
    if len(X) < 3 or np.ptp(X) == 0:
        return {"gamma": math.nan, "lo": math.nan, "hi": math.nan, "n": int(len(X))}
    slope = np.polyfit(X, Y, 1)[0]
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(X), len(X))
        if np.ptp(X[i]) > 0:
            boots.append(np.polyfit(X[i], Y[i], 1)[0])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"gamma": float(slope), "lo": float(lo), "hi": float(hi), "n": int(len(X))}

"""Geometry metrics (docs/DEFINITIONS.md#geometry-metrics) on flat vectors.

g: (d,) gradient; V: (d, k) orthonormal top Hessian eigenvectors; U: (d, m) orthonormal
(gap subspace). Everything is computed in float64 on the inputs' device; scalars come back
as Python floats. Undefined cases (a zero denominator) return NaN with a RuntimeWarning
saying why, so a table row records NaN instead of crashing a pipeline job.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor


def _f64(*ts: Tensor) -> list[Tensor]:
    return [t.to(torch.float64) for t in ts]


def _check(g: Tensor, V: Tensor, U: Tensor | None = None) -> None:
    if g.ndim != 1 or V.ndim != 2 or V.shape[0] != g.shape[0]:
        raise ValueError(f"need g (d,), V (d,k); got {tuple(g.shape)}, {tuple(V.shape)}")
    if U is not None and (U.ndim != 2 or U.shape[0] != g.shape[0]):
        raise ValueError(f"need U (d,m) with d={g.shape[0]}; got {tuple(U.shape)}")


def _nan(reason: str) -> float:
    warnings.warn(reason, RuntimeWarning, stacklevel=3)
    return math.nan


_NO_DOM = "{}: V^T g = 0 (zero gradient or no dominant component)"


def _tiny(g: Tensor) -> float:
    """||V^T g||^2 at or below this is rounding noise: float64 dot products of length d
    carry an error ~ sqrt(d) eps ||g||; a real chi_k is many orders above."""
    noise = 10 * g.shape[0] ** 0.5 * torch.finfo(torch.float64).eps
    return noise**2 * float(g.to(torch.float64).square().sum())


def _dominant_energies(g: Tensor, V: Tensor, U: Tensor) -> tuple[float, float]:
    """(||V^T g||^2, ||V^T (I - U U^T) g||^2)."""
    g, V, U = _f64(g, V, U)
    vg = V.T @ g
    r = g - U @ (U.T @ g)  # m = 0: U.T @ g is empty, r = g
    return float(vg @ vg), float((V.T @ r).square().sum())


def removal_fraction(g: Tensor, V: Tensor, U: Tensor) -> float:
    """1 - ||V^T (I - U U^T) g||^2 / ||V^T g||^2: share of g's dominant energy gone after
    projecting span(U) out of g. 0 for m = 0; NaN if V^T g is (numerically) 0."""
    _check(g, V, U)
    den, num = _dominant_energies(g, V, U)
    if den <= _tiny(g):
        return _nan(_NO_DOM.format("removal_fraction"))
    return 1.0 - num / den


def removal_total(g: Tensor, V: Tensor, U: Tensor) -> float:
    """removal_fraction * chi_k(g)^2 = (||V^T g||^2 - ||V^T (I-UU^T) g||^2) / ||g||^2: dominant
    energy removed as a share of the whole gradient's energy. Computed directly so a gradient
    with no dominant part gives 0 (the limit) rather than NaN * 0; NaN only if g = 0."""
    _check(g, V, U)
    gg = float(g.to(torch.float64).square().sum())
    if gg == 0.0:
        return _nan("removal_total: zero gradient")
    den, num = _dominant_energies(g, V, U)
    return 0.0 if den <= _tiny(g) else (den - num) / gg


def random_removal_draws(g: Tensor, V: Tensor, m: int, generator: torch.Generator | None = None,
                         n_draws: int = 20, max_batch_bytes: int = 256 * 2**20) -> Tensor:
    """removal_fraction for n_draws independent Haar-random m-dim subspaces (float64, (n_draws,)).

    Each subspace is span(Z), Z a (d, m) Gaussian drawn from ``generator``, in batches of at most
    max_batch_bytes (d=200k, m=28: 5 per batch). The projection goes through Z's m x m Gram matrix,
    P = Z (Z^T Z)^-1 Z^T, never through an orthonormal basis: Householder QR of a tall Z was 2/3 of
    this function's time (d=1M), a Cholesky solve of Z^T Z is O(m^3). Z^T Z of a Gaussian with
    m << d has condition ~ (1 + sqrt(m/d))^2 / (1 - sqrt(m/d))^2 ~ 1, so the result agrees with a
    QR basis of the same draws to float64 rounding (benchmarks/bench_cuts.py keeps that path)."""
    _check(g, V)
    d = g.shape[0]
    g, V = _f64(g, V)
    vg = V.T @ g
    den = float(vg @ vg)
    if den <= _tiny(g):
        return torch.full((n_draws,), _nan(_NO_DOM.format("random_removal")), dtype=torch.float64)
    if m <= 0:
        return torch.zeros(n_draws, dtype=torch.float64)
    per = max(1, max_batch_bytes // (8 * d * m))
    gdev = generator.device if generator is not None else "cpu"
    out = []
    for i in range(0, n_draws, per):
        B = min(per, n_draws - i)
        Z = torch.randn(B, d, m, generator=generator, dtype=torch.float64, device=gdev).to(g.device)
        Zt = Z.mT
        c = torch.cholesky_solve((Zt @ g).unsqueeze(-1), torch.linalg.cholesky(Zt @ Z))  # (B, m, 1)
        vr = vg - (V.T @ Z @ c).squeeze(-1)  # V^T (I - P) g, (B, k)
        out.append(1.0 - vr.square().sum(-1) / den)
    return torch.cat(out).cpu()


def random_removal(g: Tensor, V: Tensor, m: int, generator: torch.Generator | None = None,
                   n_draws: int = 20) -> float:
    """Mean removal_fraction over n_draws random m-dim subspaces (the 'random' reference)."""
    return float(random_removal_draws(g, V, m, generator, n_draws).mean())


def random_removal_expected(m: int, d: int, k: int = 1, chi2: float = 1.0) -> float:
    """Exact E[removal_fraction] for a Haar-random m-dim subspace, k eigenvectors, chi_k(g)^2 = chi2.

    removal = (2 h^T P g - ||V^T P g||^2) / ||h||^2 with h = V V^T g and P = U U^T. With
    E[P] = (m/d) I and E[P B P] = a B + b tr(B) I (a + b d = m/d, a + b = m(m+2)/(d(d+2))):
        E = 2m/d - a - b k / chi2  ~= 2m/d  for m << d.
    NB: ~2m/d, not m/d (removing a fraction x of g_dom's length removes 2x - x^2 of its energy);
    the random CAPTURE fraction is exactly m/d.
    """
    if m <= 0:
        return 0.0
    if m >= d:
        return 1.0
    b = m * (d - m) / (d * (d + 2) * (d - 1))
    a = m * (m + 2) / (d * (d + 2)) - b
    return 2 * m / d - a - b * k / chi2


def oracle_removal(g: Tensor, V: Tensor, m: int) -> float:
    """removal_fraction with U = the top-min(m, k) Hessian eigenvectors (columns of V, in order)."""
    _check(g, V)
    return removal_fraction(g, V, V[:, : max(0, min(m, V.shape[1]))])


def capture_fraction(g: Tensor, V: Tensor, U: Tensor) -> float:
    """||U^T P_dom g||^2 / ||P_dom g||^2, P_dom = V V^T. NaN if P_dom g = 0."""
    _check(g, V, U)
    g, V, U = _f64(g, V, U)
    h = V @ (V.T @ g)
    hh = float(h @ h)
    if hh <= _tiny(g):
        return _nan(_NO_DOM.format("capture_fraction"))
    return float((U.T @ h).square().sum()) / hh


def subspace_overlap(V: Tensor, U: Tensor) -> float:
    """||V^T U||_F^2 / min(k, m) in [0, 1]; NaN if k or m is 0."""
    k, m = V.shape[1], U.shape[1]
    if min(k, m) == 0:
        return _nan(f"subspace_overlap: empty subspace (k={k}, m={m})")
    V, U = _f64(V, U)
    return float((V.T @ U).square().sum()) / min(k, m)


def squared_cosines(U: Tensor, V: Tensor) -> Tensor:
    """(m, k) float64 matrix (U^T V)^2: squared cosines between gap and Hessian directions."""
    U, V = _f64(U, V)
    return (U.T @ V).square()


def gradient_alignment(g: Tensor, V: Tensor) -> float:
    """chi_k(g) = ||V V^T g|| / ||g|| (= ||V^T g|| / ||g|| for orthonormal V). NaN if g = 0."""
    _check(g, V)
    g, V = _f64(g, V)
    gn = float(g.norm())
    if gn == 0.0:
        return _nan("gradient_alignment: zero gradient")
    return float((V.T @ g).norm()) / gn

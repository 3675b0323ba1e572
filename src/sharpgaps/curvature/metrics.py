"""Geometry metrics (docs/DEFINITIONS.md#geometry-metrics) on flat vectors.

g: (d,) gradient; V: (d, k) orthonormal top Hessian eigenvectors; U: (d, m) orthonormal
(gap subspace). Everything is computed in float64 on the inputs' device; scalars come back
as Python floats. Undefined cases (a zero denominator) return NaN with a RuntimeWarning
saying why, so a table row records NaN instead of crashing a pipeline job.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
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


def random_removal_all(g: Tensor, V: Tensor, ms, generator: torch.Generator | None = None,
                       n_draws: int = 20) -> dict[int, Tensor]:
    """removal_fraction of n_draws Haar-random m-dim subspaces, for every m in ``ms`` at once:
    {m: float64 (n_draws,)}. Exact in law, at a cost independent of d per draw.

    removal sees a subspace U only through P = U U^T on span(V, g). With Q (d, r) an orthonormal basis
    of that span (r = k + 1) and [V, g] = Q T, it needs Q^T P Q, which by rotation invariance has the
    law of W[:m]^T W[:m] for W a Haar-random r-frame of R^d. W = Z L^-T with Z a (d, r) Gaussian and
    L L^T = Z^T Z; only Z's first max(ms) rows are drawn, and the Gram of the other d - max(ms) rows
    is an independent Wishart(d - max(ms), I_r), drawn by Bartlett's decomposition. A draw costs
    O(max(ms) r^2) instead of a (d, m) Gaussian per m (1.8 s per MNIST checkpoint, 10 s for the
    transformer's d = 1M; docs/BENCHMARKS.md, "Cuts"). One draw serves every m (nested subspaces):
    each m's draws are exact, the m's are not independent of each other. Draws come from a numpy
    generator seeded by ``generator`` (same generator state -> same numbers)."""
    _check(g, V)
    d, k = V.shape
    g, V = _f64(g, V)
    vg = V.T @ g
    den = float(vg @ vg)
    ms = sorted({int(m) for m in ms})
    if den <= _tiny(g):
        nan = _nan(_NO_DOM.format("random_removal"))
        return {m: torch.full((n_draws,), nan, dtype=torch.float64) for m in ms}
    T = torch.linalg.qr(torch.cat([V, g[:, None]], 1))[1].cpu()  # (r, k + 1): [V, g] in the basis Q
    r, Tv, tg, vg = k + 1, T[:, :k], T[:, k], vg.cpu()
    top = max([m for m in ms if m < d], default=0)  # draws cover the largest m < d; m >= d removes all
    rng = _numpy_rng(generator)
    Z = torch.from_numpy(rng.standard_normal((n_draws, top, r)))  # the first `top` rows of each draw's Z
    L = torch.linalg.cholesky(Z.mT @ Z + _wishart_gram(rng, n_draws, d - top, r))  # (n_draws, r, r)
    out = {}
    for m in ms:
        if m <= 0 or m >= d:
            out[m] = torch.full((n_draws,), 0.0 if m <= 0 else 1.0, dtype=torch.float64)
            continue
        Wm = torch.linalg.solve_triangular(L, Z[:, :m].mT, upper=False).mT  # W[:m] = Z[:m] L^-T, (n, m, r)
        pg = (Wm.mT @ (Wm @ tg)[..., None])[..., 0]  # Q^T P g = W[:m]^T W[:m] t_g, (n, r)
        out[m] = 1.0 - (vg - pg @ Tv).square().sum(-1) / den  # V^T (I - P) g = V^T g - Tv^T Q^T P g
    return out


def _numpy_rng(generator: torch.Generator | None):
    """A numpy generator seeded by one draw of ``generator`` (same generator state -> same numbers)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device if generator else "cpu"))
    return np.random.default_rng(seed)


def _wishart_gram(rng, n_draws: int, dof: int, m: int) -> Tensor:
    """n_draws Wishart(dof, I_m) matrices (n_draws, m, m): Bartlett's decomposition (L_ii^2 ~ chi2(dof - i),
    L_ij ~ N(0, 1) below the diagonal), or the Gram of dof Gaussian rows where dof < m."""
    if dof >= m:
        B = np.zeros((n_draws, m, m))
        B[:, np.arange(m), np.arange(m)] = np.sqrt(rng.chisquare(dof - np.arange(m), size=(n_draws, m)))
        low = np.tril_indices(m, -1)
        B[:, low[0], low[1]] = rng.standard_normal((n_draws, len(low[0])))
        B = torch.from_numpy(B)
        return B @ B.mT
    Zr = torch.from_numpy(rng.standard_normal((n_draws, dof, m)))
    return Zr.mT @ Zr


def aligned_control_all(g: Tensor, V: Tensor, U: Tensor, ms, generator: torch.Generator | None = None,
                        n_draws: int = 20) -> dict[int, dict[str, Tensor]]:
    """The g-aligned control of the prefixes U[:, :m]: per m, n_draws m-dim subspaces R with exactly U_m's
    alignment with g, a = ||U_m^T g||^2 / ||g||^2, and otherwise Haar-random (R = [sqrt(a) g/|g| + sqrt(1-a) z_1,
    z_2, ..., z_m], the z an orthonormal Haar frame of g's orthogonal complement). Returns {m: {"removal",
    "overlap", "capture"}: float64 (n_draws,)}, the three metrics of each draw.

    Removal is 1 for any subspace that holds g, so alignment with g alone passes it; this control has that
    alignment and nothing else, so a subspace beats it only through what it shares with V beyond g's direction.
    Exact in law at a cost independent of d: every metric sees R only through its coordinates in an orthonormal
    basis Q of span(g, V) (q_0 = g/|g|), where the z's block is the top k rows of a Haar frame of the d - 1
    dimensions orthogonal to g (drawn as in random_removal_all: Z L^-T, with the rest's Gram from Bartlett)."""
    _check(g, V, U)
    d, k = V.shape
    g, V, U = _f64(g, V, U)
    vg = V.T @ g
    den = float(vg @ vg)
    ms = sorted({int(m) for m in ms if 0 < int(m) <= U.shape[1]})
    if den <= _tiny(g) or not ms:
        nan = torch.full((n_draws,), _nan(_NO_DOM.format("aligned_control")), dtype=torch.float64)
        return {m: {"removal": nan, "overlap": nan, "capture": nan} for m in ms}
    Q, T = torch.linalg.qr(torch.cat([g[:, None], V], 1))  # [g, V] = Q T, q_0 = +-g/|g|
    Q, T = Q.cpu(), T.cpu()
    tg, Tv, r = T[:, 0], T[:, 1:], T.shape[0]  # tg = (+-|g|, 0, ...): g in the basis Q
    align = ((U.T @ Q[:, 0].to(U.device)).cpu() ** 2).cumsum(0)  # a_m for every prefix m
    top = max(ms)
    rng = _numpy_rng(generator)
    Z = torch.from_numpy(rng.standard_normal((n_draws, r - 1, top)))  # the z frame's rows along q_1..q_{r-1}
    L = torch.linalg.cholesky(Z.mT @ Z + _wishart_gram(rng, n_draws, d - r, top))  # (n, top, top)
    Wz = torch.linalg.solve_triangular(L, Z.mT, upper=False).mT  # Z L^-T: (n, r - 1, top), the z's coordinates
    h = Tv @ vg.cpu()  # V V^T g in the basis Q
    out = {}
    for m in ms:
        a = float(align[m - 1].clamp(0.0, 1.0))
        C = torch.zeros(n_draws, r, m, dtype=torch.float64)  # R in the basis Q
        C[:, 0, 0] = a ** 0.5 * torch.sign(tg[0])
        C[:, 1:, 0] = (1.0 - a) ** 0.5 * Wz[:, :, 0]
        C[:, 1:, 1:] = Wz[:, :, 1:m]
        pg = (C @ (C.mT @ tg)[..., None])[..., 0]  # Q^T R R^T g
        out[m] = {"removal": 1.0 - (vg.cpu() - pg @ Tv).square().sum(-1) / den,
                  "overlap": (Tv.T @ C).square().sum((-2, -1)) / min(k, m),
                  "capture": (C.mT @ h[:, None])[..., 0].square().sum(-1) / float(h @ h)}
    return out


def random_removal_draws(g: Tensor, V: Tensor, m: int, generator: torch.Generator | None = None,
                         n_draws: int = 20) -> Tensor:
    """removal_fraction for n_draws Haar-random m-dim subspaces (float64, (n_draws,)); random_removal_all."""
    return random_removal_all(g, V, [m], generator, n_draws)[m]


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


def prefix_metrics(g: Tensor, V: Tensor, U: Tensor, ms) -> dict[int, dict[str, float]]:
    """overlap, capture, removal and the largest principal angle (degrees) of every prefix U[:, :m] against V
    (m in ``ms``, m <= U's columns), from two products over d.

    Each metric sees U only through A = V^T U and c = U^T g: overlap = ||A_m||_F^2 / min(k, m) (as
    :func:`subspace_overlap`), capture = ||A_m^T V^T g||^2 / ||V^T g||^2 (:func:`capture_fraction`), removal =
    1 - ||V^T g - A_m c_m||^2 / ||V^T g||^2 (:func:`removal_fraction`), the angle from A_m's singular values. One
    pass serves every m (per-m calls cost ~0.06 s each at d = 1.06M); equal to the per-m functions to rounding
    (tests/test_estimators.py)."""
    g, V, U = _f64(g, V, U)
    A, c, vg = V.T @ U, U.T @ g, V.T @ g
    den = float(vg @ vg)  # = ||P_dom g||^2 for orthonormal V
    no_dom, k, out = den <= _tiny(g), V.shape[1], {}
    for m in sorted(int(m) for m in ms):
        if m > U.shape[1]:
            continue
        Am = A[:, :m]
        if no_dom:
            capture = removal = _nan(_NO_DOM.format("prefix_metrics"))
        else:
            capture = float((Am.T @ vg).square().sum()) / den
            removal = 1.0 - float((vg - Am @ c[:m]).square().sum()) / den
        s = torch.linalg.svdvals(Am)[: min(k, m)]
        out[m] = {"overlap": float(Am.square().sum()) / min(k, m) if min(k, m) else math.nan,
                  "capture": capture, "removal": removal,
                  "max_angle_deg": float(torch.rad2deg(torch.arccos(s.min().clamp(-1.0, 1.0)))) if len(s) else math.nan}
    return out


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

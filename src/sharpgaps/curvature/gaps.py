"""Gap subspace and gap covariance spectrum, via the small n x n Gram matrix.

G holds the gap vectors as ROWS: (n, d) with n = K*W gaps (docs/DEFINITIONS.md#gap-matrix stacks them as columns
of a d x n matrix; this is its transpose). No d x d matrix is ever formed: memory O(n d).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _default_rtol(G: Tensor) -> float:
    """Relative singular-value floor below which a direction counts as numerically null.

    Two error sources: the input's own rounding (the K gaps of a round sum to zero only up to
    ~eps(dtype), leaving a spurious singular value ~ sqrt(n)*eps*s_max), and squaring in the
    float64 Gram matrix (singular values below ~sqrt(n*eps64)*s_max are noise).
    """
    n = G.shape[0]
    eps_in = torch.finfo(G.dtype).eps
    eps64 = torch.finfo(torch.float64).eps
    return max(n * eps_in, 10.0 * (n * eps64) ** 0.5)


def _gram_eigh(G: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    G64 = G.to(torch.float64)
    gram = G64 @ G64.T  # (n, n)
    evals, W = torch.linalg.eigh(gram)
    evals, W = evals.flip(0), W.flip(1)  # descending
    return G64, evals.clamp_min(0.0), W


def gap_subspace(G: Tensor, m_max: int | None = None, rtol: float | None = None
                 ) -> tuple[Tensor, Tensor]:
    """Top left singular vectors of G^T (= top eigenvectors of G^T G) from the n x n Gram matrix.

    Returns U (d, r) with orthonormal columns ordered by decreasing singular value, in G's dtype,
    and s (r,) float64, r = min(m_max, numerical rank). Directions with s <= rtol * s_max are
    dropped (the K gaps of one round sum to zero, so rank(G) <= (K-1) W).
    """
    if G.ndim != 2:
        raise ValueError(f"G must be (n, d), got shape {tuple(G.shape)}")
    n, d = G.shape
    G64, evals, W = _gram_eigh(G)
    s = evals.sqrt()
    tol = (_default_rtol(G) if rtol is None else rtol) * (s[0] if n else 0.0)
    r = int((s > tol).sum()) if n and s[0] > 0 else 0
    if m_max is not None:
        r = min(r, int(m_max))
    s, W = s[:r], W[:, :r]
    U = (G64.T @ W) / s  # (d, r): u_j = G^T w_j / s_j
    # One thin QR re-orthonormalises what squaring in the Gram matrix lost (error ~ eps*(s_1/s_j)^2);
    # it keeps span(u_1..u_j) for each j, so the order and the top directions are unchanged.
    if r:
        U = orthonormalise(U)
    return U.to(G.dtype), s


def orthonormalise(U: Tensor) -> Tensor:
    """Q of U's thin QR with R's diagonal positive (so span(q_1..q_j) = span(u_1..u_j) and no column flips).

    CholeskyQR2 (two passes of Q <- Q L^-T, L L^T = Q^T Q): matrix products only, 2.1-2.7x faster than
    Householder QR for d >> r (1.50 s -> 0.56 s at d = 1.06M, r = 32; docs/BENCHMARKS.md), and the same Q when U is well
    conditioned, as it is here (U^T U = I up to ~eps*(s_1/s_j)^2 <= 3e-4 above the rtol floor). Householder
    takes over if a Cholesky factor fails or the result is not orthonormal to 1e-12."""
    Q = U
    for _ in range(2):
        L, info = torch.linalg.cholesky_ex(Q.T @ Q)
        if int(info) != 0:
            break
        Q = torch.linalg.solve_triangular(L, Q.T, upper=False).T
    else:
        eye = torch.eye(Q.shape[1], dtype=Q.dtype, device=Q.device)
        if float((Q.T @ Q - eye).abs().max()) <= 1e-12:
            return Q.contiguous()
    Q, R = torch.linalg.qr(U)
    return Q * torch.where(torch.diagonal(R) < 0, -1.0, 1.0).to(R)  # undo QR's sign flips


def gap_covariance_spectrum(G: Tensor, k: int | None = None) -> Tensor:
    """Top eigenvalues (descending, float64) of Sigma = (1/n) G^T G (d x d, never formed):
    they equal the nonzero eigenvalues of the Gram matrix (1/n) G G^T."""
    n = G.shape[0]
    _, evals, _ = _gram_eigh(G)
    evals = evals / n
    return evals if k is None else evals[:k]

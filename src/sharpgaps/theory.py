"""Closed-form gap covariance for Local SGD on a quadratic (DESIGN §1, theory check).

L = 0.5 theta^T H theta, stochastic gradient H theta + xi with Cov(xi) = C/b, K workers,
tau local steps from a common start. Each worker: theta_i <- A theta_i - eta xi_i, A = I - eta H,
so delta_i = theta_i - mean_j theta_j = -eta sum_s A^s (xi_i - xi_bar)(step tau-1-s) and
    E[(1/K) sum_i delta_i delta_i^T] = eta^2 (1 - 1/K) sum_{s=0}^{tau-1} A^s (C/b) A^s
(independent of theta_bar: the noise is additive).
"""
from __future__ import annotations

import numpy as np


def predicted_gap_covariance(H: np.ndarray, C: np.ndarray, b: int, eta: float, tau: int,
                             K: int) -> np.ndarray:
    """eta^2 (1-1/K) sum_{s=0}^{tau-1} A^s (C/b) A^s, A = I - eta H (small dense symmetric H, C).

    Uses the recursion S_{t+1} = A S_t A + C/b (S_0 = 0), tau matrix products, no powers."""
    H, C = np.asarray(H, np.float64), np.asarray(C, np.float64)
    d = H.shape[0]
    if H.shape != (d, d) or C.shape != (d, d):
        raise ValueError(f"H and C must be square and equal-sized, got {H.shape}, {C.shape}")
    if tau < 1 or K < 1 or b < 1:
        raise ValueError("need tau, K, b >= 1")
    A = np.eye(d) - eta * H
    Cb = C / b
    S = np.zeros((d, d))
    for _ in range(tau):
        S = A @ S @ A.T + Cb
    S = eta**2 * (1.0 - 1.0 / K) * S
    return 0.5 * (S + S.T)  # exact symmetry despite rounding

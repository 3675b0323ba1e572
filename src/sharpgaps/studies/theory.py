"""Closed-form gap covariance for Local SGD on a quadratic (docs/DEFINITIONS.md#quadratic-model).

L = 0.5 theta^T H theta, stochastic gradient H theta + xi with Cov(xi) = C/b, K workers,
tau local steps from a common start. Each worker: theta_i <- A theta_i - eta xi_i, A = I - eta H,
so delta_i = theta_i - mean_j theta_j = -eta sum_s A^s (xi_i - xi_bar)(step tau-1-s) and
    E[(1/K) sum_i delta_i delta_i^T] = eta^2 (1 - 1/K) sum_{s=0}^{tau-1} A^s (C/b) A^s
(independent of theta_bar: the noise is additive).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..core import seeds
from ..core.specs import RunSpec, TheorySpec
from ..engine.localsgd import SimulatedLocalSGD


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


# ----------------------------------------------------------------------------- Monte Carlo through the engine

class NoisyQuadratic(torch.nn.Module):
    """L(theta; batch) = 0.5 theta^T H theta + theta^T mean(batch): gradient H theta + (minibatch noise).

    The 'data' are noise vectors; a minibatch mean of b of them has covariance ~ C/b, so the
    project's own Local SGD engine (same sampler, same vmap step, same averaging) runs unchanged.
    """

    def __init__(self, H: torch.Tensor, theta0: torch.Tensor):
        super().__init__()
        self.register_buffer("H", H)
        self.theta = torch.nn.Parameter(theta0.clone())

    def forward(self, z):
        return 0.5 * self.theta @ (self.H @ self.theta) + self.theta @ z.mean(0)


def _identity_loss(out, _y):
    return out


def noise_pool(C: np.ndarray, n: int, seed: int) -> torch.Tensor:
    """n exactly-centred Gaussian vectors with covariance ~C (float64)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, C.shape[0])) @ np.linalg.cholesky(C).T
    return torch.from_numpy(z - z.mean(0))


def simulate_gap_covariance(H: np.ndarray, C: np.ndarray, b: int, eta: float, tau: int, K: int,
                            rounds: int, pool: int = 50_000, seed: int = 0) -> dict:
    """Measured vs predicted gap variance along each eigendirection of H, with Monte-Carlo errors.

    Runs ``rounds`` Local SGD rounds with SimulatedLocalSGD (float64). Each round's gaps are
    independent of the start (additive noise), so rounds are i.i.d. samples of
    q_j = (1/K) sum_i (u_j^T delta_i)^2; the standard error is std(q_j) / sqrt(rounds).
    The prediction uses the pool's own covariance with the without-replacement factor
    (N-b)/(N-1); correlations between batches of one epoch are O(tau b / N) and neglected.
    """
    d = H.shape[0]
    evals, U = np.linalg.eigh(H)
    z = noise_pool(C, pool, seed)
    C_pool = (z.T @ z / pool).numpy() * (pool - b) / (pool - 1)
    model = NoisyQuadratic(torch.from_numpy(np.asarray(H, np.float64)), torch.zeros(d, dtype=torch.float64))
    spec = RunSpec(K=K, tau=tau, b=b, lr=eta, rounds=rounds, window=1, seed=seed, checkpoints=(rounds,))
    engine = SimulatedLocalSGD(model, _identity_loss, z, torch.zeros(pool), spec)
    Ut = torch.from_numpy(U)
    q = torch.empty(rounds, d, dtype=torch.float64)
    for r in range(rounds):
        for s in range(tau):
            engine.local_step(r * tau + s)
        _, gaps = engine.end_round()
        q[r] = ((gaps @ Ut) ** 2).mean(0)
    pred = U.T @ predicted_gap_covariance(H, C_pool, b, eta, tau, K) @ U
    return {
        "eigenvalue": evals,
        "measured": q.mean(0).numpy(),
        "stderr": (q.std(0, unbiased=True) / rounds**0.5).numpy(),
        "predicted": np.diag(pred).copy(),
    }


# ----------------------------------------------------------------------------- the pipeline's check

def quadratic_problem(spec: TheorySpec) -> tuple[np.ndarray, np.ndarray]:
    """H = diag(eigenvalues) and a seeded noise covariance C that is generic (not diagonal in H's basis)."""
    H = np.diag(np.asarray(spec.eigenvalues, dtype=np.float64))
    d = len(H)
    A = np.random.default_rng(spec.seed).standard_normal((d, d))
    return H, A @ A.T / d + 0.1 * np.eye(d)


def gap_covariance_table(spec: TheorySpec) -> pd.DataFrame:
    """Measured vs predicted gap variance per eigendirection of H (simulate_gap_covariance), one block per tau."""
    H, C = quadratic_problem(spec)
    frames = []
    for tau in spec.taus:
        r = simulate_gap_covariance(H, C, spec.b, spec.lr, tau, spec.K, rounds=spec.rounds, pool=spec.pool,
                                    seed=seeds.offset(spec.seed, tau))
        frames.append(pd.DataFrame({"tau": tau, "direction": np.arange(len(H)), **r, "K": spec.K, "b": spec.b,
                                    "lr": spec.lr, "rounds": spec.rounds}))
    return pd.concat(frames, ignore_index=True)

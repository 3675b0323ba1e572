import numpy as np
import pytest

from sharpgaps.studies.theory import predicted_gap_covariance


def _spd(d, rng, scale=1.0):
    A = rng.standard_normal((d, d))
    return scale * (A @ A.T / d + 0.1 * np.eye(d))


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    d = 4
    H = _spd(d, rng, 2.0)
    C = _spd(d, rng)
    return H, C, 8, 0.1, 4  # H, C, b, eta, K


def test_tau1_is_scaled_noise(problem):
    H, C, b, eta, K = problem
    np.testing.assert_allclose(predicted_gap_covariance(H, C, b, eta, 1, K),
                               eta**2 * (1 - 1 / K) * C / b, rtol=1e-14)


def test_symmetric_psd_and_tau_recursion(problem):
    H, C, b, eta, K = problem
    A = np.eye(len(H)) - eta * H
    step = eta**2 * (1 - 1 / K) * C / b
    prev = predicted_gap_covariance(H, C, b, eta, 1, K)
    for tau in range(2, 9):
        S = predicted_gap_covariance(H, C, b, eta, tau, K)
        np.testing.assert_array_equal(S, S.T)
        assert np.linalg.eigvalsh(S).min() > 0
        np.testing.assert_allclose(S, A @ prev @ A + step, rtol=1e-12)  # Sigma(tau+1) = A Sigma A + ...
        prev = S
    assert np.all(predicted_gap_covariance(H, C, b, eta, 3, 1) == 0)  # K = 1: no gaps


def test_commuting_case_geometric_series():
    lam, c = np.array([5.0, 1.0, 0.1]), np.array([2.0, 1.0, 3.0])
    b, eta, tau, K = 10, 0.15, 7, 8
    S = predicted_gap_covariance(np.diag(lam), np.diag(c), b, eta, tau, K)
    a2 = (1 - eta * lam) ** 2
    np.testing.assert_allclose(np.diag(S), eta**2 * (1 - 1 / K) * c / b * (1 - a2**tau) / (1 - a2),
                               rtol=1e-12)
    np.testing.assert_allclose(S - np.diag(np.diag(S)), 0, atol=1e-18)


def test_against_direct_monte_carlo(problem):
    """Simulate K workers doing tau noisy GD steps on the quadratic; 5-sigma per entry."""
    H, C, b, eta, K = problem
    tau, R, d = 5, 20_000, len(H)
    rng = np.random.default_rng(1)
    A = np.eye(d) - eta * H
    Lc = np.linalg.cholesky(C / b)
    theta = np.tile(rng.standard_normal(d), (R, K, 1))  # common start; result is start-independent
    for _ in range(tau):
        xi = rng.standard_normal((R, K, d)) @ Lc.T
        theta = theta @ A.T - eta * xi
    delta = theta - theta.mean(1, keepdims=True)
    M = np.einsum("rki,rkj->rij", delta, delta) / K  # per-replicate (1/K) sum_i delta delta^T
    est, se = M.mean(0), M.std(0) / np.sqrt(R)
    pred = predicted_gap_covariance(H, C, b, eta, tau, K)
    assert np.all(np.abs(est - pred) < 5 * se)

"""The Local SGD engine on a noisy quadratic reproduces the closed-form gap covariance
(docs/DEFINITIONS.md#quadratic-model)."""

import numpy as np
import pytest

from sharpgaps.core.specs import TheorySpec
from sharpgaps.studies.theory import quadratic_problem, simulate_gap_covariance

H, C = quadratic_problem(TheorySpec(eigenvalues=(10.0, 5.0, 2.0, 1.0, 0.5, 0.1), seed=1))
K, B, ETA, ROUNDS = 8, 4, 0.05, 800
Z = 4.0  # |measured - predicted| <= 4 Monte-Carlo standard errors in every direction


@pytest.fixture(scope="module", params=[1, 4, 12])
def sim(request):
    return request.param, simulate_gap_covariance(H, C, B, ETA, request.param, K, rounds=ROUNDS, seed=request.param)


def test_measured_gap_variance_matches_theory(sim):
    tau, r = sim
    z = (r["measured"] - r["predicted"]) / r["stderr"]
    assert np.all(np.abs(z) < Z), f"tau={tau}: z-scores {np.round(z, 2)}"


def test_check_has_power_against_a_wrong_formula(sim):
    """Dropping the (1 - 1/K) factor (12.5% at K=8) must be detected at the same error bars."""
    tau, r = sim
    wrong = r["predicted"] / (1 - 1 / K)
    assert np.max(np.abs((r["measured"] - wrong) / r["stderr"])) > Z


def test_gap_variance_grows_with_tau_along_flat_directions():
    short = simulate_gap_covariance(H, C, B, ETA, 2, K, rounds=50, seed=0)
    long = simulate_gap_covariance(H, C, B, ETA, 12, K, rounds=50, seed=0)
    ratio = long["predicted"] / short["predicted"]
    lam = short["eigenvalue"]
    # sharp directions saturate (A^s decays), flat ones keep growing ~ linearly in tau
    assert ratio[np.argmax(lam)] < 2 < ratio[np.argmin(lam)]

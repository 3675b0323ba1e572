import math

import numpy as np
import pytest
import torch

from sharpgaps.curvature.gaps import gap_covariance_spectrum, gap_subspace, orthonormalise
from sharpgaps.curvature.metrics import (
    aligned_control_all,
    capture_fraction,
    gradient_alignment,
    oracle_removal,
    random_removal_all,
    random_removal_draws,
    random_removal_expected,
    removal_fraction,
    removal_total,
    squared_cosines,
    subspace_overlap,
)

D, K = 60, 4


@pytest.fixture
def basis():
    """Orthonormal (D, D) basis: first K columns play V, the rest are bulk directions."""
    torch.manual_seed(0)
    return torch.linalg.qr(torch.randn(D, D, dtype=torch.float64))[0]


def test_removal_hand_cases(basis):
    V, bulk = basis[:, :K], basis[:, K:]
    g = V @ torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64) + bulk[:, 0] * 5
    assert removal_fraction(g, V, V) == pytest.approx(1.0)           # U = top eigenvectors
    assert removal_fraction(g, V, bulk[:, :10]) == pytest.approx(0.0, abs=1e-14)  # U ⟂ V
    assert removal_fraction(g, V, V[:, :0]) == 0.0                     # m = 0
    # U = v_1: removes 16 of 30 dominant energy units
    assert removal_fraction(g, V, V[:, :1]) == pytest.approx(16 / 30)
    assert oracle_removal(g, V, 1) == pytest.approx(16 / 30)
    assert oracle_removal(g, V, 2) == pytest.approx(25 / 30)
    assert oracle_removal(g, V, 100) == pytest.approx(1.0)             # m > k: all of V
    chi2 = 30 / 55
    assert gradient_alignment(g, V) == pytest.approx(math.sqrt(chi2))
    assert removal_total(g, V, V[:, :1]) == pytest.approx(16 / 30 * chi2)
    # a mixed direction: U = (v1 + b1)/sqrt2 projects out half of the v1 coefficient... and more
    u = ((V[:, 0] + bulk[:, 0]) / math.sqrt(2))[:, None]
    c = float(u[:, 0] @ g)  # (4 + 5)/sqrt2
    r1 = 4 - c / math.sqrt(2)
    assert removal_fraction(g, V, u) == pytest.approx(1 - (r1**2 + 9 + 4 + 1) / 30)
    # float32 inputs are computed in float64
    assert removal_fraction(g.float(), V.float(), V.float()) == pytest.approx(1.0, abs=1e-6)


def test_capture_overlap_cosines_hand_cases(basis):
    V, bulk = basis[:, :2], basis[:, 2:]
    g = V[:, 0] + V[:, 1] + 7 * bulk[:, 0]
    assert capture_fraction(g, V, V) == pytest.approx(1.0)
    assert capture_fraction(g, V, V[:, :1]) == pytest.approx(0.5)
    assert capture_fraction(g, V, bulk[:, :5]) == pytest.approx(0.0, abs=1e-14)
    U = torch.stack([V[:, 0], bulk[:, 0]], 1)
    assert subspace_overlap(V, U) == pytest.approx(0.5)
    assert subspace_overlap(V, V[:, :1]) == pytest.approx(1.0)  # normalised by min(k, m)
    th = 0.3
    U = (math.cos(th) * V[:, 0] + math.sin(th) * bulk[:, 0])[:, None]
    np.testing.assert_allclose(squared_cosines(U, V).numpy(), [[math.cos(th) ** 2, 0.0]], atol=1e-14)
    assert squared_cosines(U, V).shape == (1, 2)


def test_edge_cases_nan_with_reason(basis):
    V = basis[:, :K]
    z = torch.zeros(D, dtype=torch.float64)
    for fn, args in [(removal_fraction, (z, V, V)), (removal_total, (z, V, V)),
                     (capture_fraction, (z, V, V)), (gradient_alignment, (z, V))]:
        with pytest.warns(RuntimeWarning, match="zero gradient"):
            assert math.isnan(fn(*args))
    with pytest.warns(RuntimeWarning, match="empty subspace"):
        assert math.isnan(subspace_overlap(V, V[:, :0]))
    # a purely bulk gradient: no dominant part -> fraction undefined, total is 0 (the limit)
    gb = basis[:, K]
    with pytest.warns(RuntimeWarning):
        assert math.isnan(removal_fraction(gb, V, V))
    assert removal_total(gb, V, V) == 0.0
    assert capture_fraction(gb + V[:, 0], V, V[:, :0]) == 0.0
    with pytest.raises(ValueError):
        removal_fraction(torch.zeros(D + 1), V, V)


def _beta_moments(a, b, n):
    out, m = [], 1.0
    for i in range(n):
        m *= (a + i) / (a + b + i)
        out.append(m)
    return out


def test_random_removal_exact_distribution(basis):
    """k = 1, g in span(V): removal = 2x - x^2 with x = ||P v||^2 ~ Beta(m/2, (d-m)/2)."""
    d, m, n = D, 5, 4000
    V, g = basis[:, :1], 2.5 * basis[:, 0]
    e1, e2, e3, e4 = _beta_moments(m / 2, (d - m) / 2, 4)
    mean = 2 * e1 - e2
    var = 4 * (e2 - e1**2) - 4 * (e3 - e1 * e2) + (e4 - e2**2)
    assert random_removal_expected(m, d, k=1, chi2=1.0) == pytest.approx(mean, rel=1e-12)
    draws = random_removal_draws(g, V, m, torch.Generator().manual_seed(1), n)
    # 5 sigma of the mean of n draws (exact variance): false-failure probability < 1e-6
    assert abs(float(draws.mean()) - mean) < 5 * math.sqrt(var / n)
    assert abs(float(draws.var()) - var) < 0.2 * var  # sanity of the spread too


def test_random_removal_general_case(basis):
    d, k, m, n = D, K, 8, 3000
    V = basis[:, :k]
    g = V @ torch.tensor([1.0, -2.0, 0.5, 1.0], dtype=torch.float64) + 0.3 * basis[:, k:].sum(1)
    chi2 = gradient_alignment(g, V) ** 2
    exp = random_removal_expected(m, d, k, chi2)
    draws = random_removal_draws(g, V, m, torch.Generator().manual_seed(2), n)
    se = float(draws.std()) / math.sqrt(n)  # CLT: n is large
    assert abs(float(draws.mean()) - exp) < 5 * se
    r1 = float(random_removal_draws(g, V, m, torch.Generator().manual_seed(7), 30).mean())
    assert r1 == float(random_removal_draws(g, V, m, torch.Generator().manual_seed(7), 30).mean())  # seeded
    assert abs(r1 - exp) < 5 * float(draws.std()) / math.sqrt(30)
    # leading order ~ 2m/d for m << d (removing x of g_dom's length removes ~2x of its energy)
    assert random_removal_expected(8, 200_000, 10, 0.5) == pytest.approx(16 / 200_000, rel=1e-3)
    assert random_removal_expected(0, d) == 0.0 and random_removal_expected(d, d) == 1.0
    assert torch.all(random_removal_draws(g, V, 0, None, 3) == 0)


def test_random_removal_all_m_share_draws_and_match_a_dense_draw(basis):
    """Every m from one call: the largest m < d fixes the draws (a single-m call with the same seed gives
    the same numbers), m >= d removes everything, and the law matches explicit Haar subspaces (QR of a (d, m)
    Gaussian, the definition) within Monte-Carlo error."""
    d, k, n = D, K, 3000
    V = basis[:, :k]
    g = V @ torch.tensor([1.0, -2.0, 0.5, 1.0], dtype=torch.float64) + 0.3 * basis[:, k:].sum(1)
    ms = [1, 5, 13, d]
    allm = random_removal_all(g, V, ms, torch.Generator().manual_seed(3), n)
    assert torch.all(allm[d] == 1.0) and set(allm) == set(ms)
    one = random_removal_all(g, V, [13], torch.Generator().manual_seed(3), n)[13]
    assert torch.equal(one, allm[13])  # the same draws: m >= d needs none, the largest m < d sets them
    gen = torch.Generator().manual_seed(4)
    for m in (1, 5, 13):
        U = torch.linalg.qr(torch.randn(n, d, m, generator=gen, dtype=torch.float64))[0]
        r = g - (U @ (U.mT @ g).unsqueeze(-1)).squeeze(-1)
        dense = 1.0 - (r @ V).square().sum(-1) / (V.T @ g).square().sum()
        se = math.sqrt(float(dense.var()) / n + float(allm[m].var()) / n)
        assert abs(float(dense.mean() - allm[m].mean())) < 5 * se
        assert abs(float(dense.std() / allm[m].std()) - 1) < 0.1


def _explicit_aligned(g, U, m, n, gen):
    """The control by its definition: z a Haar frame of g's complement (QR of projected Gaussians)."""
    d = g.shape[0]
    gh = g / g.norm()
    a = float((U[:, :m].T @ gh).square().sum())
    Z = torch.randn(n, d, m, generator=gen, dtype=torch.float64)
    Z = Z - gh[:, None] * (gh @ Z)[:, None, :]  # into g's orthogonal complement
    Z = torch.linalg.qr(Z)[0]
    R = Z.clone()
    R[:, :, 0] = a**0.5 * gh + (1 - a) ** 0.5 * Z[:, :, 0]
    return R, a


def test_aligned_control_has_the_subspaces_alignment_and_matches_an_explicit_draw_in_law(basis):
    k, n = K, 3000
    V = basis[:, :k]
    g = V @ torch.tensor([1.0, -2.0, 0.5, 1.0], dtype=torch.float64) + 0.8 * basis[:, k:].sum(1)
    # a subspace whose first direction leans on g, the rest on the bulk
    U = torch.linalg.qr(torch.cat([(g / g.norm() + 0.7 * basis[:, k])[:, None], basis[:, k + 1:k + 8]], 1))[0]
    got = aligned_control_all(g, V, U, [1, 3, 8], torch.Generator().manual_seed(5), n)
    gen = torch.Generator().manual_seed(6)
    for m in (1, 3, 8):
        R, a = _explicit_aligned(g, U, m, n, gen)
        assert torch.allclose((R.mT @ (g / g.norm())).square().sum(-1), torch.full((n,), a, dtype=torch.float64))
        h = V @ (V.T @ g)
        dense = {"removal": 1.0 - ((g - (R @ (R.mT @ g)[..., None])[..., 0]) @ V).square().sum(-1)
                 / (V.T @ g).square().sum(),
                 "overlap": (V.T @ R).square().sum((-2, -1)) / min(k, m),
                 "capture": (R.mT @ h).square().sum(-1) / (h @ h)}
        for name, x in dense.items():
            y = got[m][name]
            se = math.sqrt(float(x.var()) / n + float(y.var()) / n) + 1e-12
            assert abs(float(x.mean() - y.mean())) < 5 * se, (m, name, float(x.mean()), float(y.mean()))
    # a subspace holding g: removal 1 for it and for its control alike; the control's overlap is only what g's
    # direction carries into V_k, far below the subspace V_k itself
    Ug = torch.linalg.qr(torch.cat([g[:, None], V[:, :3]], 1))[0]
    ctl = aligned_control_all(g, V, Ug, [1, 4], torch.Generator().manual_seed(7), 200)
    assert torch.allclose(ctl[1]["removal"], torch.ones(200, dtype=torch.float64))
    assert removal_fraction(g, V, Ug) == pytest.approx(1.0)
    assert float(ctl[4]["overlap"].mean()) < 0.5 * subspace_overlap(V, Ug)


# ------------------------------------------------------------------------------- gaps

def test_gap_subspace_matches_svd():
    torch.manual_seed(3)
    n, d = 12, 500
    G = torch.randn(n, d, dtype=torch.float64) * torch.logspace(0, -2, n, dtype=torch.float64)[:, None]
    U, s = gap_subspace(G, m_max=8)
    Us, ss, _ = torch.linalg.svd(G.T, full_matrices=False)
    assert U.shape == (d, 8) and s.shape == (8,)
    torch.testing.assert_close(s, ss[:8], rtol=1e-10, atol=0)
    torch.testing.assert_close(U.T @ U, torch.eye(8, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close((U * Us[:, :8]).sum(0).abs(), torch.ones(8, dtype=torch.float64),
                               atol=1e-9, rtol=0)  # same vectors up to sign, same order
    assert torch.all(s[:-1] >= s[1:])


def test_gap_subspace_drops_null_directions_of_zero_sum_rounds():
    torch.manual_seed(4)
    K, W, d = 4, 3, 1000
    rounds = []
    for _ in range(W):
        th = torch.randn(K, d)  # float32 worker parameters, as in training
        rounds.append(th - th.mean(0))  # K gaps of a round sum to zero (up to float32 rounding)
    G = torch.cat(rounds)
    U, s = gap_subspace(G, m_max=100)
    assert U.shape == (d, (K - 1) * W) and U.dtype == torch.float32
    assert gap_subspace(G, m_max=2)[0].shape == (d, 2)
    assert gap_subspace(torch.zeros(5, d))[0].shape == (d, 0)


def test_gap_subspace_large_d_never_forms_dxd():
    # d x d in float64 would be 320 GB: this can only pass via the n x n Gram route.
    torch.manual_seed(5)
    n, d = 32, 200_000
    G = torch.randn(n, d) * torch.linspace(1.0, 0.1, n)[:, None]
    U, s = gap_subspace(G, m_max=n)
    Us, ss, _ = torch.linalg.svd(G.double(), full_matrices=False)  # thin SVD of the n x d matrix
    assert U.shape == (d, n)
    torch.testing.assert_close(s, ss, rtol=1e-6, atol=0)
    Vh = _  # rows: right singular vectors of G = left singular vectors of G^T
    cos = (U.double() * Vh.T).sum(0).abs()
    assert float(cos.min()) > 1 - 1e-5
    ev = gap_covariance_spectrum(G, k=5)
    torch.testing.assert_close(ev, ss[:5] ** 2 / n, rtol=1e-6, atol=0)


def test_orthonormalise_is_householder_qr_with_a_positive_diagonal():
    """CholeskyQR2 gives QR's Q (R's diagonal positive) on a well-conditioned block, and falls back to Householder
    where Cholesky fails (a repeated column): orthonormal either way, spans kept column by column."""
    torch.manual_seed(7)
    R0 = torch.triu(torch.randn(12, 12, dtype=torch.float64) + 8 * torch.eye(12))  # well conditioned
    U = torch.randn(2000, 12, dtype=torch.float64) @ R0
    Q, R = torch.linalg.qr(U)
    want = Q * torch.where(torch.diagonal(R) < 0, -1.0, 1.0)
    torch.testing.assert_close(orthonormalise(U), want, atol=1e-12, rtol=0)
    bad = U.clone()
    bad[:, 5] = bad[:, 4]  # singular Gram matrix: the Cholesky route cannot take it
    Qb = orthonormalise(bad)
    torch.testing.assert_close(Qb.T @ Qb, torch.eye(12, dtype=torch.float64), atol=1e-12, rtol=0)
    for j in range(1, 13):  # span(q_1..q_j) contains u_1..u_j
        P = Qb[:, :j] @ (Qb[:, :j].T @ bad[:, :j])
        assert float((P - bad[:, :j]).norm() / bad[:, :j].norm()) < 1e-12


def test_gap_covariance_spectrum_small():
    torch.manual_seed(6)
    G = torch.randn(6, 10, dtype=torch.float64)
    ev = gap_covariance_spectrum(G)
    dense = torch.linalg.eigvalsh(G.T @ G / 6).flip(0)[:6]
    torch.testing.assert_close(ev, dense, rtol=1e-10, atol=1e-12)

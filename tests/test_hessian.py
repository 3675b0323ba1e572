import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from sharpgaps.engine.devices import no_tf32, resolve_device
from sharpgaps.curvature.hessian import (
    scipy_blas_single_thread,
    start_vector,
    top_eigenpairs,
)
from sharpgaps.engine.objective import FullBatchHVP

N, K_EIG = 40, 4


def mse(out, y):
    return 0.5 * (out - y).square().sum(1).mean()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(N, 5, dtype=torch.float64)
    y = torch.randn(N, 3, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(th):  # full-batch mean loss as a function of the flat parameter vector
        ps = dict(zip(names, torch.split(th, [s.numel() for s in shapes])))
        ps = {n: t.view(s) for (n, t), s in zip(ps.items(), shapes)}
        return mse(functional_call(model, ps, (x,)), y)

    Hd = torch.autograd.functional.hessian(f, theta)
    gd = torch.autograd.functional.jacobian(f, theta)
    return model, x, y, f, theta, Hd.numpy(), gd


def test_gradient_and_loss_match_autograd(setup):
    model, x, y, f, theta, _, gd = setup
    for kw in [{}, {"chunk_size": 7}, {"cache_graph": False, "chunk_size": 7}]:
        H = FullBatchHVP(model, mse, x, y, **kw)
        assert H.dim == theta.numel()
        torch.testing.assert_close(H.gradient(), gd, rtol=1e-12, atol=1e-12)
        assert H.loss() == pytest.approx(float(f(theta)), rel=1e-12)


def test_cached_uncached_chunked_agree_with_dense(setup):
    model, x, y, _, theta, Hd, _ = setup
    v = torch.randn(theta.numel(), dtype=torch.float64)
    ref = torch.from_numpy(Hd) @ v
    for kw in [{}, {"cache_graph": False}, {"chunk_size": 7}, {"chunk_size": 7, "cache_graph": False}]:
        H = FullBatchHVP(model, mse, x, y, **kw)
        with torch.no_grad():  # works inside a caller's no_grad block
            torch.testing.assert_close(H.hvp(v), ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(H.hvp(2 * v), 2 * ref, rtol=1e-10, atol=1e-12)  # graph reused
        assert H.n_hvp == 2


def test_params_dict_sets_evaluation_point(setup):
    model, x, y, f, theta, _, _ = setup
    shifted = {n: p.detach() + 0.1 for n, p in model.named_parameters()}
    th2 = torch.cat([p.reshape(-1) for p in shifted.values()])
    H = FullBatchHVP(model, mse, x, y, params=shifted)
    v = torch.randn(theta.numel(), dtype=torch.float64)
    ref = torch.autograd.functional.hessian(f, th2) @ v
    torch.testing.assert_close(H.hvp(v), ref, rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())  # model untouched


def _sin_max_angle(A, B):
    """sin of the largest principal angle between the column spans of orthonormal A and B."""
    return np.linalg.norm(B - A @ (A.T @ B), 2)


def test_eigsh_matches_dense(setup):
    model, x, y, _, _, Hd, _ = setup
    w, Q = np.linalg.eigh(Hd)
    w, Q = w[::-1], Q[:, ::-1]
    assert (w[K_EIG - 1] - w[K_EIG]) / w[0] > 1e-2  # a gap, so the subspace is well defined
    H = FullBatchHVP(model, mse, x, y)
    ep = top_eigenpairs(H, k=K_EIG, tol=1e-10)
    assert ep.converged and ep.values.shape == (K_EIG,) and ep.vectors.shape == (H.dim, K_EIG)
    assert np.all(np.diff(ep.values) <= 0)
    np.testing.assert_allclose(ep.values, w[:K_EIG], rtol=1e-6)
    assert _sin_max_angle(Q[:, :K_EIG], ep.vectors) < 1e-4
    assert ep.residuals.max() < 1e-6 and ep.n_hvp_residual == K_EIG
    assert H.n_hvp == ep.n_hvp + ep.n_hvp_residual
    # each vector matches its own eigenvector (order matches values)
    assert np.all(np.abs(np.sum(Q[:, :K_EIG] * ep.vectors, 0)) > 1 - 1e-8)


def test_eigsh_warm_start_and_default_tol(setup):
    model, x, y, _, _, Hd, _ = setup
    w = np.linalg.eigvalsh(Hd)[::-1]
    H = FullBatchHVP(model, mse, x, y)
    cold = top_eigenpairs(H, k=K_EIG)  # tol 1e-3: Ritz values are still far more accurate
    np.testing.assert_allclose(cold.values, w[:K_EIG], rtol=1e-3)
    assert cold.residuals.max() < 1e-2
    warm = top_eigenpairs(H, k=K_EIG, v0=cold.vectors)  # (d, k) start
    np.testing.assert_allclose(warm.values, w[:K_EIG], rtol=1e-3)
    assert warm.n_hvp <= cold.n_hvp


def test_float32_working_precision_keeps_eigenpairs(setup):
    """ARPACK in float32 (the pipeline's lanczos_dtype): float64 results back, eigenvalues at float32
    precision, the same subspace."""
    model, x, y, _, _, Hd, _ = setup
    w, Q = np.linalg.eigh(Hd)
    w, Q = w[::-1], Q[:, ::-1]
    H = FullBatchHVP(model, mse, x, y)
    ep = top_eigenpairs(H, k=K_EIG, tol=1e-5, dtype=np.float32)
    assert ep.converged and ep.values.dtype == np.float64 and ep.vectors.dtype == np.float64
    np.testing.assert_allclose(ep.values, w[:K_EIG], rtol=1e-5)
    assert _sin_max_angle(Q[:, :K_EIG], ep.vectors) < 1e-3


def test_callable_hvp_known_spectrum():
    d, k = 300, 5
    rng = np.random.default_rng(0)
    Q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    lam = np.concatenate([[50, 40, 30, 20, 10], rng.uniform(-1, 1, d - 5)])
    M = torch.from_numpy((Q * lam) @ Q.T).float()  # float32 "HVP", float64 ARPACK
    ep = top_eigenpairs(lambda v: M @ v.float(), dim=d, k=k, tol=1e-6)
    np.testing.assert_allclose(ep.values, lam[:k], rtol=1e-5)
    assert _sin_max_angle(Q[:, :k], ep.vectors) < 1e-4


def test_non_convergence_is_reported():
    d = 200
    M = torch.diag(torch.linspace(1.0, 1.001, d, dtype=torch.float64))  # clustered: slow
    with pytest.warns(RuntimeWarning, match="converged"):
        ep = top_eigenpairs(lambda v: M @ v, dim=d, k=5, tol=1e-12, maxiter=1, ncv=6)
    assert not ep.converged and len(ep.values) < 5


def test_start_vector():
    V = np.linalg.qr(np.random.default_rng(1).standard_normal((50, 3)))[0]
    v = start_vector(V, 50)
    assert np.isclose(np.linalg.norm(v), 1) and np.allclose(V.T @ v, 1 / np.sqrt(3))
    assert start_vector(None, 50) is None
    with pytest.raises(ValueError):
        start_vector(np.ones(3), 50)


def test_devices_and_tf32():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            resolve_device("cuda")
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with no_tf32():
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_scipy_blas_limited_torch_untouched():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS)

    def blas():
        return {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["user_api"] == "blas" and "torch" not in i["filepath"]}

    before, tthreads = blas(), torch.get_num_threads()
    with scipy_blas_single_thread():
        assert all(n == 1 for n in blas().values())
        assert torch.get_num_threads() == tthreads
    assert blas() == before


def test_job_thread_setting_reaches_numpy_blas():
    """jobs.set_threads(n) (every heavy job's first call) caps numpy/scipy's BLAS pools too, so `--cores N`
    with `threads: 1` jobs does not oversubscribe through a numpy call."""
    code = ("import threadpoolctl, numpy, scipy.linalg, torch; from sharpgaps.pipeline.jobs import set_threads; "
            "before = max(i['num_threads'] for i in threadpoolctl.threadpool_info()); set_threads(1); "
            "print(before, max(i['num_threads'] for i in threadpoolctl.threadpool_info()), torch.get_num_threads())")
    # without the thread variables that earlier in-process jobs of this session set (jobs.set_threads)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    before, after, torch_threads = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True,
                                                           text=True, check=True, env=env).stdout.split())
    if before == 1:
        pytest.skip("one core: the pools start at 1 thread, nothing to cap")
    assert (after, torch_threads) == (1, 1)


def test_objective_chooses_the_hessian_sample_and_keeps_the_gradient_full_batch():
    """Objective: the Hessian (and hvp) on the first N_H examples, the gradient and loss on all N; a Hessian over
    all N examples hands its own gradient on."""
    from sharpgaps.engine.objective import Objective

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randint(0, 3, (40,))
    loss_fn = nn.functional.cross_entropy
    theta = dict(model.named_parameters())
    obj = Objective(model, loss_fn, x, y, hessian_examples=15)
    assert obj.n_train == 40 and obj.n_hessian == 15 and obj.dim == sum(p.numel() for p in model.parameters())
    v = torch.randn(obj.dim, dtype=torch.float64)
    assert torch.allclose(obj.hvp(theta, v), FullBatchHVP(model, loss_fn, x[:15], y[:15]).hvp(v))
    full = FullBatchHVP(model, loss_fn, x, y)
    assert torch.allclose(obj.gradient(theta), full.gradient()) and abs(obj.loss(theta) - full.loss()) < 1e-12
    whole = Objective(model, loss_fn, x, y)
    H = whole.hessian(theta)
    assert whole.n_hessian == 40 and torch.equal(whole.gradient(theta, hessian=H), H.gradient())

"""Top-k Hessian eigenpairs by Lanczos (ARPACK) over Hessian-vector products.

Vectors follow the project's flat-vector convention (sharpgaps.core.flat).
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse.linalg as spla
import torch
from threadpoolctl import ThreadpoolController
from torch import Tensor

from ..engine.objective import FullBatchHVP

# ----------------------------------------------------------------------------- eigensolver

@dataclass
class Eigenpairs:
    values: np.ndarray      # (k,) descending
    vectors: np.ndarray     # (d, k), column j <-> values[j]
    n_hvp: int              # HVPs used by the solver
    residuals: np.ndarray   # (k,) ||H v - lambda v|| / |lambda|
    n_hvp_residual: int     # extra HVPs spent on the residual check
    converged: bool         # ARPACK reported all k converged (else only the converged pairs)
    seconds: float          # wall time of the solve (without the residual check)
    seconds_residual: float = 0.0


def scipy_blas_single_thread():
    """Context manager: 1 thread for the BLAS libraries numpy/scipy loaded, leaving alone any
    BLAS bundled inside torch (pip wheels link MKL statically; some builds ship OpenBLAS under
    torch/), so the HVP's own matmuls keep their threads."""
    ctl = ThreadpoolController()
    torch_dir = os.path.dirname(os.path.realpath(torch.__file__))
    paths = [lc.filepath for lc in ctl.lib_controllers
             if lc.user_api == "blas" and not os.path.realpath(lc.filepath).startswith(torch_dir)]
    return ctl.select(filepath=paths).limit(limits=1) if paths else contextlib.nullcontext()


def start_vector(v0: np.ndarray | Tensor | None, dim: int) -> np.ndarray | None:
    """Flat float64 start vector for Lanczos.

    A (d, k) matrix (previous checkpoint's eigenvectors) is summed over columns: Lanczos
    resolves only directions present in the start vector's Krylov space, so an equal-weight
    sum gives every wanted direction a head start, whereas the top vector alone leaves
    v_2..v_k to be found from the (small) drift component. Signs of the columns do not matter.
    """
    if v0 is None:
        return None
    v = v0.detach().cpu().double().numpy() if isinstance(v0, Tensor) else np.asarray(v0, np.float64)
    if v.ndim == 2:
        v = v.sum(axis=1)
    v = v.reshape(-1)
    if v.size != dim:
        raise ValueError(f"v0 has {v.size} entries, expected {dim}")
    nrm = np.linalg.norm(v)
    return None if not np.isfinite(nrm) or nrm == 0 else v / nrm


def top_eigenpairs(hvp: FullBatchHVP | Callable[[Tensor], Tensor], dim: int | None = None,
                   k: int = 10, tol: float = 1e-3, v0=None, maxiter: int | None = None,
                   ncv: int | None = None, dtype=np.float64, limit_blas_threads: bool = True,
                   compute_residuals: bool = True, seed: int = 0,
                   progress: Callable[[int, float], None] | None = None) -> Eigenpairs:
    """Top-k (largest algebraic, 'LA') eigenpairs of the Hessian via scipy eigsh (ARPACK).

    dtype is ARPACK's working precision (its d x ncv Lanczos basis and reorthogonalisation), a numpy
    dtype or its name.
    float64 (default) keeps the Ritz values at the HVP's own precision. float32 is what the
    pipeline uses (geometry/restricted `lanczos_dtype`): ARPACK's per-step work is memory-bound
    on that basis, measured 4x cheaper in float32 (17 -> 5 ms per step at d=199k, k=10), which
    was up to half of a Lanczos step for the MLP; eigenvalues move by ~1e-6 relative, far below
    tol=1e-3 (docs/BENCHMARKS.md). The HVP itself runs in the model's dtype either way.
    v0: flat (d,) or (d, k) start (see start_vector); without it a seeded Gaussian start, so
    results do not depend on ARPACK's internal generator. If ARPACK does not converge, the
    converged pairs only (possibly fewer than k) come back with converged=False and a warning.
    progress: called after every HVP with (HVPs so far, seconds since the solve began), e.g. to log.
    """
    if dim is None:
        dim = hvp.dim
    if not 0 < k < dim:
        raise ValueError(f"need 0 < k < dim, got k={k}, dim={dim}")
    # A FullBatchHVP gets vectors in its parameters' dtype/device; a plain callable gets
    # float64 CPU tensors (or whatever .dtype/.device it declares) and casts as it needs.
    tdtype = getattr(hvp, "dtype", torch.float64)
    tdev = getattr(hvp, "device", torch.device("cpu"))
    count = [0]
    started = time.perf_counter()

    def matvec(x: np.ndarray) -> np.ndarray:
        count[0] += 1
        v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
        hv = hvp(v.to(device=tdev, dtype=tdtype))
        if progress is not None:
            progress(count[0], time.perf_counter() - started)
        return hv.detach().to("cpu", torch.float64).numpy().astype(dtype, copy=False)

    op = spla.LinearOperator((dim, dim), matvec=matvec, dtype=dtype)
    x0 = start_vector(v0, dim)
    if x0 is None:
        x0 = np.random.default_rng(seed).standard_normal(dim)
    x0 = x0.astype(dtype)
    # OpenBLAS threads spin between ARPACK's BLAS calls and steal the cores torch needs for
    # the HVP (measured, 2 cores, 784-200-200-10 MLP on 5k examples: 100 ms per HVP inside
    # eigsh vs 41 ms with this limit = the HVP alone); ARPACK's own BLAS work (d x ncv) is tiny.
    limiter = scipy_blas_single_thread() if limit_blas_threads else contextlib.nullcontext()
    converged = True
    with limiter:
        t0 = time.perf_counter()
        try:
            vals, vecs = spla.eigsh(op, k=k, which="LA", tol=tol, v0=x0, maxiter=maxiter, ncv=ncv)
        except spla.ArpackNoConvergence as e:  # keep what did converge (possibly < k pairs)
            converged = False
            vals, vecs = e.eigenvalues, e.eigenvectors
            warnings.warn(f"eigsh: only {len(vals)}/{k} eigenpairs converged", RuntimeWarning)
        seconds = time.perf_counter() - t0
        n_hvp = count[0]
        order = np.argsort(vals)[::-1]
        vals = np.asarray(vals, np.float64)[order]
        vecs = np.asarray(vecs, np.float64)[:, order]

        res = np.full(len(vals), np.nan)
        t1 = time.perf_counter()
        if compute_residuals:  # k extra HVPs: an independent check of what ARPACK claims
            for j in range(len(vals)):
                hv = matvec(vecs[:, j]).astype(np.float64)
                res[j] = (np.linalg.norm(hv - vals[j] * vecs[:, j]) / abs(vals[j])
                          if vals[j] else np.inf)
        t_res = time.perf_counter() - t1
    return Eigenpairs(vals, vecs, n_hvp, res, count[0] - n_hvp, converged, seconds, t_res)

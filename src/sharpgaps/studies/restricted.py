"""Dom/Bulk-restricted Local SGD (docs/DEFINITIONS.md#restricted-updates, Figs 5-8) and its Hessian-free variant.

Branches from a Local SGD checkpoint and projects every local step's update:
  dom      u <- V V^T u          V = top-k Hessian eigenvectors at the current average
  bulk     u <- u - V V^T u
  gapdom   u <- U U^T u          U = top-m worker-gap directions (no Hessian)
  gapbulk  u <- u - U U^T u
  randdom  u <- R R^T u          R = a seeded Haar-random k-dim subspace (the control: what any subspace of
  randbulk u <- u - R R^T u      Dom's dimension does), drawn afresh at every refresh
  graddom  u <- S S^T u          S = top-m left singular vectors (uncentred) of the probe rounds' last K*W
  gradbulk u <- u - S S^T u      minibatch gradients: the gradient-history estimator (sharpgaps.studies.estimators)
  none     plain Local SGD (the reference; continues the parent run bit for bit)
The subspace is refreshed every ``refresh`` rounds at the current average: the Hessian modes by
Lanczos warm-started from the previous eigenvectors, the gap and gradient-history modes by ``window``
probe rounds of plain Local SGD from the current average that are discarded afterwards (their gaps give U,
their workers' last minibatch gradients S, from the same batches; the restricted run's own gaps cannot,
since they already live inside or outside U).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from tqdm import tqdm

from ..core import seeds
from ..core.atomic import load_recomputable, save_frame, save_torch
from ..core.specs import RestrictSpec, RunSpec
from ..curvature.gaps import gap_subspace
from ..curvature.geometry import Progress
from ..curvature.hessian import top_eigenpairs
from ..engine.localsgd import SimulatedLocalSGD, evaluate
from ..engine.objective import Objective
from ..engine.training import check_finite
from .estimators import GradientRecorder, gradient_estimate


def project(update: torch.Tensor, basis: torch.Tensor | None, keep_inside: bool) -> torch.Tensor:
    """Project (K, d) update directions onto span(basis) (keep_inside) or its orthogonal complement.

    An empty or missing basis is the zero subspace: inside -> 0, complement -> the update itself.
    """
    if basis is None or basis.shape[1] == 0:
        return torch.zeros_like(update) if keep_inside else update
    inside = (update @ basis) @ basis.T
    return inside if keep_inside else update - inside


class Restricted:
    """Holds the current subspace of a restricted run and counts what refreshing it costs. ``objective``: the
    run's, with the restricted section's Hessian sample."""

    def __init__(self, spec: RestrictSpec, objective: Objective, run: RunSpec):
        self.spec, self.objective, self.run = spec, objective, run
        self.mode = MODE_TABLE[spec.mode]
        self.basis: torch.Tensor | None = None
        self.n_hvp = 0
        self.probe_steps = 0
        self.refresh_seconds = 0.0
        self.refreshes = 0
        self.on_hvp = None  # called after every HVP of a refresh's eigensolve (the job's log)
        self._probe: SimulatedLocalSGD | None = None
        self.recorder: GradientRecorder | None = None

    @property
    def keep_inside(self) -> bool:
        return self.mode.keep_inside

    def transform(self, update: torch.Tensor) -> torch.Tensor:
        return project(update, self.basis, self.keep_inside)

    def refresh(self, theta: dict[str, torch.Tensor]) -> None:
        if self.mode.source is None:
            return
        t0 = time.perf_counter()
        self.basis = self.mode.source(self, theta)
        self.refreshes += 1
        self.refresh_seconds += time.perf_counter() - t0

    def probe(self, theta: dict[str, torch.Tensor], record_gradients: bool) -> list[torch.Tensor]:
        """``window`` probe rounds of plain Local SGD from ``theta`` (discarded afterwards): their gaps, each
        round's (K, d) in float64; with ``record_gradients`` the last K*W minibatch gradients go to the recorder."""
        obj, run = self.objective, self.run
        if self._probe is None:  # built once: a vmapped engine's first step pays for tracing
            # gradient history: the last `window` local steps' K gradients (K*W, the gap matrix's count)
            self.recorder = GradientRecorder(self.spec.window) if record_gradients else None
            self._probe = SimulatedLocalSGD(obj.model, obj.loss_fn, obj.x, obj.y, RunSpec(
                K=run.K, tau=run.tau, b=run.b, lr=run.lr, rounds=1, window=1,
                seed=seeds.offset(run.seed, seeds.PROBE), checkpoints=()), theta=theta,
                update_transform=self.recorder)
        self._probe.set_average(theta)
        first = self.refreshes * self.spec.window * run.tau  # fresh probe batches each refresh
        gaps = []
        for r in range(self.spec.window):
            for s in range(run.tau):
                self._probe.local_step(first + r * run.tau + s)
            gaps.append(self._probe.end_round()[1].double())
            self.probe_steps += run.tau
        return gaps


def _hessian_basis(ctl: Restricted, theta) -> torch.Tensor:
    """The top-k Hessian eigenvectors at ``theta``, Lanczos warm-started from the last subspace."""
    v0 = None if ctl.basis is None else ctl.basis.double()
    eig = top_eigenpairs(ctl.objective.hessian(theta), k=ctl.spec.k, tol=ctl.spec.tol, v0=v0,
                         compute_residuals=False, dtype=ctl.spec.lanczos_dtype,
                         seed=seeds.linear(ctl.run.seed, seeds.LANCZOS, ctl.refreshes), progress=ctl.on_hvp)
    ctl.n_hvp += eig.n_hvp
    return torch.from_numpy(eig.vectors).to(ctl.objective.device, torch.float32)


def _random_basis(ctl: Restricted, theta) -> torch.Tensor:
    """A seeded Haar-random k-dim subspace, drawn afresh at every refresh."""
    d = sum(t.numel() for t in theta.values())
    gen = torch.Generator().manual_seed(seeds.mixed(ctl.run.seed, seeds.RANDOM_SUBSPACE, ctl.refreshes))
    Z = torch.randn(d, ctl.spec.k, generator=gen, dtype=torch.float64)
    return torch.linalg.qr(Z)[0].to(ctl.objective.device, torch.float32)


def _gap_basis(ctl: Restricted, theta) -> torch.Tensor:
    """The top-m directions of the probe rounds' worker-average gaps (each round re-centred)."""
    gaps = ctl.probe(theta, record_gradients=False)
    G = torch.cat(gaps)
    G = G - G.view(ctl.spec.window, ctl.run.K, -1).mean(1).repeat_interleave(ctl.run.K, 0)
    return gap_subspace(G, m_max=ctl.spec.gap_dim)[0].to(torch.float32)


def _gradient_basis(ctl: Restricted, theta) -> torch.Tensor:
    """The top-m left singular vectors of the probe rounds' last K*W minibatch gradients."""
    ctl.probe(theta, record_gradients=True)
    return gradient_estimate(torch.cat(ctl.recorder.steps))[:, : ctl.spec.gap_dim].to(torch.float32)


@dataclass(frozen=True)
class Mode:
    """A restricted mode: where its subspace comes from (None: plain Local SGD) and which side of it the local
    updates keep."""

    source: Callable[[Restricted, dict], torch.Tensor] | None
    keep_inside: bool = True

    @property
    def eigensolves(self) -> bool:
        return self.source is _hessian_basis


MODE_TABLE = {
    "none": Mode(None),
    "dom": Mode(_hessian_basis, keep_inside=True), "bulk": Mode(_hessian_basis, keep_inside=False),
    "gapdom": Mode(_gap_basis, keep_inside=True), "gapbulk": Mode(_gap_basis, keep_inside=False),
    "randdom": Mode(_random_basis, keep_inside=True), "randbulk": Mode(_random_basis, keep_inside=False),
    "graddom": Mode(_gradient_basis, keep_inside=True), "gradbulk": Mode(_gradient_basis, keep_inside=False),
}


def restricted_run(objective: Objective, spec: RestrictSpec, branch: dict, run: RunSpec, work_dir: str | Path, *,
                   name: str = "restricted", resume_every_s: float = 120.0, stop_after_round: int | None = None,
                   progress: bool = True) -> pd.DataFrame:
    """Continue the run ``run`` from checkpoint ``branch`` for ``spec.rounds`` restricted rounds; ``objective``
    carries the restricted section's Hessian sample (``spec.hessian_examples``).

    Returns (and writes to work_dir/curve.parquet) one row per evaluation: round since the branch,
    absolute local step, train/test loss and accuracy, cumulative HVPs, probe steps and wall time.
    Resumable like training: state at round boundaries in work_dir/state.pt.
    """
    work_dir = Path(work_dir)
    model, loss_fn = objective.model, objective.loss_fn
    x, y, xt, yt = objective.x, objective.y, objective.x_test, objective.y_test
    branch_round = int(branch["round"])
    step0 = branch_round * run.tau
    state_file = work_dir / "state.pt"
    ctl = Restricted(spec, objective, run)
    st = load_recomputable(state_file, f"[{name}] resume state")
    if st is not None:
        theta = st["theta"]
        ctl.basis, ctl.n_hvp, ctl.probe_steps = st["basis"], st["n_hvp"], st["probe_steps"]
        ctl.refresh_seconds, ctl.refreshes = st["refresh_seconds"], st["refreshes"]
        rows, start, elapsed = st["rows"], st["round"], st["elapsed"]
    else:
        theta = {n: t.clone() for n, t in objective.params(branch["theta"]).items()}
        rows, start, elapsed = [], 0, 0.0
    engine = SimulatedLocalSGD(model, loss_fn, x, y, run, theta=theta,
                               update_transform=None if spec.mode == "none" else ctl.transform)

    def record(r, theta):
        tr_loss, tr_acc = evaluate(model, theta, loss_fn, x, y)
        te_loss, te_acc = evaluate(model, theta, loss_fn, xt, yt)
        rows.append({"mode": spec.mode, "round": r, "step": step0 + r * run.tau, "train_loss": tr_loss,
                     "train_acc": tr_acc, "test_loss": te_loss, "test_acc": te_acc, "n_hvp": ctl.n_hvp,
                     "probe_steps": ctl.probe_steps, "refreshes": ctl.refreshes,
                     "refresh_seconds": ctl.refresh_seconds, "seconds": elapsed + time.perf_counter() - t_start})

    def save(r, theta):
        save_torch({"theta": theta, "basis": ctl.basis, "n_hvp": ctl.n_hvp, "probe_steps": ctl.probe_steps,
                    "refresh_seconds": ctl.refresh_seconds, "refreshes": ctl.refreshes, "rows": rows,
                    "round": r, "elapsed": elapsed + time.perf_counter() - t_start}, state_file)

    t_start = time.perf_counter()
    last_save = time.monotonic()
    if start == 0:
        record(0, theta)
    bar = tqdm(total=spec.rounds, initial=start, desc=name, file=sys.stderr, mininterval=10, ascii=True,
               disable=not progress)
    if progress and ctl.mode.eigensolves:  # a refresh's eigensolve can outlast tqdm's updates

        ctl.on_hvp = Progress(0, sys.stderr).hvp
    for r in range(start + 1, spec.rounds + 1):
        if (r - 1) % spec.refresh == 0:
            ctl.refresh(theta)
        losses = torch.stack([engine.local_step(step0 + (r - 1) * run.tau + s) for s in range(run.tau)])
        check_finite(losses, f"restricted run '{name}' ({spec.mode}, round counted from the branch)", r,
                     step0 + (r - 1) * run.tau, run.lr)
        theta, _ = engine.end_round()
        if r % spec.eval_every == 0 or r == spec.rounds:
            record(r, theta)
        bar.update(1)
        if stop_after_round is not None and r >= stop_after_round:
            save(r, theta)
            return pd.DataFrame(rows)
        if time.monotonic() - last_save > resume_every_s:
            save(r, theta)
            last_save = time.monotonic()
    bar.close()
    save(spec.rounds, theta)
    df = pd.DataFrame(rows)
    save_frame(df, work_dir / "curve.parquet")
    return df

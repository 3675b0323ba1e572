"""Distributed Local SGD: the workers spread over processes under torchrun (gloo on CPU, NCCL on GPU).

Launch::

    torchrun --standalone --nproc-per-node N -m sharpgaps.pipeline.distributed -- train --run JSON --subset ... \\
        --out-dir ... --work-dir ... [--name --threads --device --resume-every-s]

(the same arguments as ``python -m sharpgaps train``). The ``--`` matters: torchrun's own parser
classifies every later word and rejects ``--run`` as an ambiguous abbreviation of its ``--run-path``.
Worker ``w`` lives on rank ``w % N``; any ``K >= N`` works (ranks hold ``ceil(K/N)`` or ``floor(K/N)``
workers), ``K < N`` is refused.

Numbers: each rank steps its workers with plain autograd SGD (the op of ``LoopLocalSGD``) on the
minibatches of the stateless per-worker schedule ``WorkerBatches`` -- worker ``w``'s batch at local step
``t`` is the one the simulated engine draws -- so the run equals ``SimulatedLocalSGD`` up to float
rounding (tests hold it to 1e-6). Rank 0's initial parameters are broadcast. At the end of a round the
parameters are all-reduced (sum / K: the new average, identical bytes on every rank) and the gaps
``theta_w - average`` all-gathered, so every rank returns the full (K, d) gaps. The K minibatch losses
of each local step are all-gathered too (K floats), so the divergence check fires on every rank alike.
Momentum buffers (``train.momentum``) live with their workers: averaged buffers are all-reduced like the
parameters, kept ones all-gathered at every averaging (so rank 0's resume state holds all K without a collective at
save time, which ranks reach at different moments), reset ones zeroed. A Dirichlet partition is computed from the
labels on every rank alike (``localsgd.worker_batches``).
This is our own tau-step averaging: PyTorch's ``PeriodicModelAverager`` averages on its first call
and skips parameters without gradients, neither of which is Local SGD as docs/DEFINITIONS.md#round defines it.

Files: ``training.train_run`` runs unchanged on every rank. Rank 0 uses ``--work-dir`` and publishes
exactly what ``sharpgaps train`` publishes (same checkpoint keys, metrics.csv, rounds.csv,
run.json plus ``engine``/``world_size``/``backend``). Ranks r > 0 write into a scratch dir
``work_dir/.rank{r}`` (removed at the end unless ``SHARPGAPS_KEEP_RANK_DIRS=1``) and evaluate their
checkpoints on a 1-example test set (their metrics are never read). Resume: at start rank 0's
``state.pt`` (if any) is broadcast and installed as every rank's state, so all ranks restart from the
same round; the state format is the simulated engine's, so a run may even switch engines on resume.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..core.atomic import load_recomputable, save_torch
from ..core.flat import flatten, unflatten
from ..core.specs import RunSpec
from ..engine.localsgd import UpdateTransform, buffer_state, models_sgd_step, worker_batches
from ..engine.training import damaged_checkpoints, train_run
from . import jobs

LAUNCH_HINT = "torchrun --standalone --nproc-per-node N -m sharpgaps.pipeline.distributed -- train ..."


def worker_assignment(K: int, world_size: int, rank: int) -> list[int]:
    """The workers rank ``rank`` holds: ``w % world_size == rank`` (round robin, any K >= world_size)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    if K < world_size:
        raise ValueError(f"K={K} workers cannot be spread over {world_size} processes (every process needs at "
                         f"least one worker): launch at most K={K} processes (--nproc-per-node) or raise K")
    return list(range(rank, K, world_size))


class DistributedLocalSGD:
    """The ``SimulatedLocalSGD`` interface on every rank of an initialised default process group.

    ``local_step`` returns all K losses and ``end_round`` the average and all K gaps, on every rank.
    ``params`` holds only this rank's workers, (K_local, ...) per tensor, in ``self.workers`` order;
    after ``end_round`` every row equals the average, which is all ``training.engine_theta`` reads.
    ``update_transform`` (if any) is applied to this rank's (K_local, d) block, so it must act row by
    row (as the Dom/Bulk projections do).
    """

    def __init__(self, model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, spec: RunSpec,
                 theta: dict[str, torch.Tensor] | None = None, update_transform: UpdateTransform | None = None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(f"DistributedLocalSGD needs an initialised torch.distributed process group "
                               f"(launch with: {LAUNCH_HINT})")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.workers = worker_assignment(spec.K, self.world_size, self.rank)
        self.slots = math.ceil(spec.K / self.world_size)  # gather block per rank (padded)
        # gathered row of worker w: rank w % N's block, slot w // N
        self.device = next(model.parameters()).device
        self._order = torch.tensor([(w % self.world_size) * self.slots + w // self.world_size
                                    for w in range(spec.K)], device=self.device)
        self.spec, self.loss_fn, self.x, self.y = spec, loss_fn, x, y
        self.update_transform = update_transform
        self.batches = worker_batches(spec, y)
        start = theta if theta is not None else {n: p.detach() for n, p in model.named_parameters()}
        start = {n: t.detach().to(self.device) for n, t in start.items()}
        flat = flatten(start).contiguous().clone()
        dist.broadcast(flat, src=0)  # rank 0's parameters, whatever each rank built or loaded
        self.models = [copy.deepcopy(model) for _ in self.workers]
        self.set_average(unflatten(flat, start))
        self.buffers = ([[torch.zeros_like(p) for p in m.parameters()] for m in self.models] if spec.momentum
                        else None)
        self._all_buffers: torch.Tensor | None = None  # (K, d) kept buffers of every worker, after an averaging

    @torch.no_grad()
    def set_average(self, theta: dict[str, torch.Tensor]) -> None:
        """Reset this rank's workers to ``theta`` (the start of a round)."""
        for m in self.models:
            for n, p in m.named_parameters():
                p.copy_(theta[n])

    @property
    def params(self) -> dict[str, torch.Tensor]:
        names = [n for n, _ in self.models[0].named_parameters()]
        per_model = [dict(m.named_parameters()) for m in self.models]
        return {n: torch.stack([d[n].detach() for d in per_model]) for n in names}

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """(K_local, ...) rows of this rank's workers -> (K, ...) rows of all workers, in worker order."""
        block = local.new_zeros((self.slots, *local.shape[1:]))
        block[: len(local)] = local
        parts = [torch.empty_like(block) for _ in range(self.world_size)]
        dist.all_gather(parts, block.contiguous())
        return torch.cat(parts)[self._order]

    def local_step(self, step: int) -> torch.Tensor:
        """One SGD step of this rank's workers at local step ``step``; returns all K minibatch losses."""
        losses = models_sgd_step(self.models, self.workers, step, self.batches, self.loss_fn, self.x, self.y,
                                 self.spec.lr, self.update_transform, self.spec.momentum, self.buffers)
        return self.gather_rows(losses)

    def end_round(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """All-reduce the average; all-gather the gaps (K, d) taken before the reset."""
        params = self.params
        local = flatten(params, batch_dims=1)  # (K_local, d)
        total = local.sum(0)
        dist.all_reduce(total)  # SUM
        avg_flat = total / self.spec.K
        gaps = self.gather_rows(local - avg_flat)
        avg = {n: t.clone() for n, t in unflatten(avg_flat, params, batch_dims=1).items()}
        self.set_average(avg)
        if self.buffers is not None:
            self._buffers_at_averaging()
        return avg, gaps

    @torch.no_grad()
    def _buffers_at_averaging(self) -> None:
        policy = self.spec.momentum_buffers
        local = torch.stack([flatten(bufs) for bufs in self.buffers])  # (K_local, d)
        if policy == "keep":
            self._all_buffers = self.gather_rows(local)
            return
        if policy == "average":
            total = local.sum(0)
            dist.all_reduce(total)  # SUM, as for the parameters
            row = total / self.spec.K
        else:
            row = torch.zeros_like(local[0])
        self._set_buffers(row.expand_as(local))

    @torch.no_grad()
    def _set_buffers(self, rows: torch.Tensor) -> None:
        """This rank's buffers from (K_local, d) flat rows, in self.workers order."""
        for bufs, row in zip(self.buffers, rows):
            sizes = [v.numel() for v in bufs]
            for v, chunk in zip(bufs, row.split(sizes)):
                v.copy_(chunk.view_as(v))

    def momentum_state(self) -> torch.Tensor | None:
        """The simulated engine's momentum_state (all K workers' buffers), with no collective."""
        if self.buffers is None:
            return None
        if self.spec.momentum_buffers == "keep":
            return buffer_state(self.spec, self._all_buffers)
        return buffer_state(self.spec, torch.stack([flatten(bufs) for bufs in self.buffers]))

    def load_momentum_state(self, state: torch.Tensor | None) -> None:
        if self.buffers is None or state is None:
            return
        rows = state.to(self.device).expand(self.spec.K, -1)
        self._set_buffers(rows[self.workers])
        if self.spec.momentum_buffers == "keep":
            self._all_buffers = rows.clone()


# --------------------------------------------------------------------------------------------------
# entry point


def rank_work_dir(work_dir: Path, rank: int) -> Path:
    return Path(work_dir) if rank == 0 else Path(work_dir) / f".rank{rank}"


def _sync_resume_state(work_dir: Path, my_dir: Path, rank: int, device: torch.device) -> None:
    """Give every rank rank 0's state.pt (or none), so all ranks resume from the same round. Rank 0 first drops a
    state whose checkpoints are damaged (all ranks then start over together); the other ranks' copies vouch for
    no checkpoint, since their scratch checkpoints are not rank 0's files."""
    state_file = work_dir / "state.pt"
    if rank == 0 and state_file.exists():
        state = load_recomputable(state_file, "[rank 0] resume state")
        if state is None or damaged_checkpoints(work_dir, state):
            state_file.unlink(missing_ok=True)
    box = [state_file.read_bytes() if rank == 0 and state_file.exists() else None]
    dist.broadcast_object_list(box, src=0)
    if rank == 0:
        return
    mine = my_dir / "state.pt"
    if box[0] is None:
        mine.unlink(missing_ok=True)
    else:  # map to this rank's device (a GPU state saved on cuda:0 would otherwise load onto cuda:0)
        state = torch.load(io.BytesIO(box[0]), map_location=device, weights_only=False)
        state.pop("sha256", None)
        save_torch(state, mine)


def _setup(device_name: str) -> tuple[torch.device, str]:
    missing = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise SystemExit(f"sharpgaps.pipeline.distributed must run under torchrun (missing {', '.join(missing)}): {LAUNCH_HINT}")
    device = jobs.job_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    return device, backend


def train(a) -> None:
    """`sharpgaps train` (jobs.train) with the workers spread over the torchrun processes."""
    jobs.set_threads(a.threads)
    run = json.loads(a.run)
    device, backend = _setup(a.device)
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        worker_assignment(run["K"], world, rank)  # refuse K < N before any work
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    work_dir = Path(a.work_dir)
    my_dir = rank_work_dir(work_dir, rank)
    my_dir.mkdir(parents=True, exist_ok=True)
    _sync_resume_state(work_dir, my_dir, rank, device)

    job = jobs.load_run(run, a.subset, device)
    if rank != 0:  # their checkpoint metrics are never read: skip evaluating the test set
        job.subset["x_test"], job.subset["y_test"] = job.subset["x_test"][:1], job.subset["y_test"][:1]
    t0 = time.time()
    ckpts = train_run(job.objective(), job.spec, my_dir, run_name=a.name, run_info=job.info,
                      engine_factory=DistributedLocalSGD, resume_every_s=a.resume_every_s, progress=rank == 0)
    if rank == 0:
        jobs.publish_run(work_dir, a.out_dir, ckpts, jobs.run_record(job, device, a.threads, time.time() - t0,
                                                                     engine="distributed", world_size=world,
                                                                     backend=backend))
    dist.barrier()
    if rank != 0 and os.environ.get("SHARPGAPS_KEEP_RANK_DIRS") != "1":
        shutil.rmtree(my_dir, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sharpgaps.pipeline.distributed", description=f"Launch: {LAUNCH_HINT}")
    sub = p.add_subparsers(dest="cmd", required=True)  # only `train`, spelled as for sharpgaps.pipeline.cli
    jobs.add_train_args(sub.add_parser("train", help="one Local SGD run, the workers over the processes"))
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # some Python versions pass torchrun's "--" separator through
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    try:
        return jobs.run_step(lambda: train(args))
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())

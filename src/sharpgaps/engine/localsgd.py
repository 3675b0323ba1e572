"""Local SGD with K simulated workers, batched into one model with torch.func (vmap + functional_call).

A round: all workers start at the average, each takes ``tau`` SGD steps on its own minibatches
(IID draws from the same training subset), then the average is replaced by the workers' mean.
The worker-average gaps ``delta_i = theta_i - mean_j theta_j`` are taken before the reset.

Beyond the paper (RunSpec): ``partition: dirichlet`` gives each worker a label-skewed shard to draw from
(sharpgaps.engine.partitions, ShardBatches); ``momentum`` > 0 gives each worker a heavy-ball buffer,
``v <- mu v + u; theta <- theta - lr v`` (u: the possibly transformed gradient), which ``momentum_buffers`` averages,
keeps or zeroes at every averaging. With the defaults (iid, momentum 0) no code of either runs.

``LoopLocalSGD`` is the plain reference (K separate nn.Modules, one autograd call each); tests hold
the batched engine to it.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from ..core import seeds
from ..core.flat import flatten, unflatten
from ..core.specs import RunSpec
from .models import length_order, trim_padding
from .partitions import PartitionError, dirichlet_shards


class WorkerBatches:
    """Stateless minibatch schedule: worker i's batch at local step t depends only on (seed, i, t).

    Each worker walks through its own random permutation of the data per epoch (drop-last), seeded
    from (seed, worker, epoch). Being stateless makes resume trivial and lets a distributed rank
    draw exactly the batches the simulated worker draws.
    """

    def __init__(self, n: int, b: int, seed: int, workers: int):
        if b > n:
            raise ValueError(f"batch size {b} exceeds the {n} training examples")
        self.n, self.b, self.seed, self.workers = n, b, seed, workers
        self.steps_per_epoch = n // b
        self._perm: dict[int, tuple[int, torch.Tensor]] = {}

    def _permutation(self, worker: int, epoch: int) -> torch.Tensor:
        cached = self._perm.get(worker)
        if cached is None or cached[0] != epoch:
            g = torch.Generator().manual_seed(seeds.mixed(self.seed, seeds.BATCHES, worker, epoch))
            cached = (epoch, torch.randperm(self.n, generator=g))
            self._perm[worker] = cached
        return cached[1]

    def worker_indices(self, worker: int, step: int) -> torch.Tensor:
        epoch, j = divmod(step, self.steps_per_epoch)
        return self._permutation(worker, epoch)[j * self.b : (j + 1) * self.b]

    def indices(self, step: int) -> torch.Tensor:
        return torch.stack([self.worker_indices(w, step) for w in range(self.workers)])


class ShardBatches(WorkerBatches):
    """WorkerBatches over per-worker shards: worker w walks its own per-epoch permutation of ``shards[w]`` (drop-last),
    seeded from (seed, worker, epoch) as WorkerBatches is, so it is just as stateless."""

    def __init__(self, shards: list[torch.Tensor], b: int, seed: int):
        small = [(w, len(s)) for w, s in enumerate(shards) if len(s) < b]
        if small:
            raise PartitionError(f"train.b: worker shards {small} (worker, examples) hold fewer than b={b} examples; "
                                 "lower train.b or raise train.alpha")
        self.shards, self.b, self.seed, self.workers = shards, b, seed, len(shards)
        self.worker_steps = [len(s) // b for s in shards]  # steps per epoch, per worker
        self._perm = {}

    def _permutation(self, worker: int, epoch: int) -> torch.Tensor:
        cached = self._perm.get(worker)
        if cached is None or cached[0] != epoch:
            shard = self.shards[worker]
            g = torch.Generator().manual_seed(seeds.mixed(self.seed, seeds.BATCHES, worker, epoch))
            cached = (epoch, shard[torch.randperm(len(shard), generator=g)])
            self._perm[worker] = cached
        return cached[1]

    def worker_indices(self, worker: int, step: int) -> torch.Tensor:
        epoch, j = divmod(step, self.worker_steps[worker])
        return self._permutation(worker, epoch)[j * self.b : (j + 1) * self.b]


def worker_batches(spec: RunSpec, y: torch.Tensor) -> WorkerBatches:
    """The minibatch schedule of ``spec`` on labels ``y``: every worker over all examples (iid) or over its Dirichlet
    shard. Raises PartitionError (naming the config keys) for shards that cannot hold a minibatch."""
    if spec.partition == "dirichlet":
        return ShardBatches(dirichlet_shards(y, spec.K, spec.alpha, spec.seed, spec.b)[0], spec.b, spec.seed)
    return WorkerBatches(len(y), spec.b, spec.seed, spec.K)


# (K, d) flat gradients -> (K, d) directions; linear (a projection), so the lr is applied after it and
# an identity transform reproduces the plain update bit for bit.
UpdateTransform = Callable[[torch.Tensor], torch.Tensor]


def vmap_pays(model: nn.Module) -> bool:
    """Whether batching the K workers with vmap beats one autograd call per worker on this model
    (a model class may say so in ``vmap_workers``; default yes).

    Measured on CPU (docs/BENCHMARKS.md, "Cuts: before / after"): vmap wins for the FC-tanh MLP,
    but turns the CNN's per-worker convolutions into one grouped convolution at half the speed of K
    plain ones, and loses ~1.4x on the transformer. The per-worker path is the loop reference's
    arithmetic exactly; vmap agrees with it to float rounding. On a GPU, kernel-launch latency
    favours one batched call, so vmap stays (not measured here: no GPU)."""
    if any(p.is_cuda for p in model.parameters()):
        return True
    return bool(getattr(model, "vmap_workers", True))


class SimulatedLocalSGD:
    """K workers as one batched model: one vmapped forward/backward per local step for all workers.

    vectorize=False takes each worker's gradient by its own functional call instead (same stacked
    state, same update); None picks the faster one for the model (vmap_pays).
    """

    def __init__(self, model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, spec: RunSpec,
                 theta: dict[str, torch.Tensor] | None = None, update_transform: UpdateTransform | None = None,
                 vectorize: bool | None = None):
        self.model, self.spec, self.x, self.y = model, spec, x, y
        self.batches = worker_batches(spec, y)
        self.update_transform = update_transform
        start = theta if theta is not None else {n: p.detach() for n, p in model.named_parameters()}
        self.set_average(start)
        # (K, ...) heavy-ball buffers; None for plain SGD, whose update then is exactly the momentum-free one
        self.buffers = {n: torch.zeros_like(p) for n, p in self.params.items()} if spec.momentum else None

        def worker_loss(p, xb, yb):
            return loss_fn(functional_call(model, p, (xb,)), yb)

        self.vectorize = vmap_pays(model) if vectorize is None else vectorize
        self._grad = vmap(grad_and_value(worker_loss)) if self.vectorize else self._per_worker(worker_loss)

    @staticmethod
    def _per_worker(worker_loss):
        """vmap's calling convention (stacked params and batches in, stacked grads and losses out) by
        one plain autograd call per worker (cheaper than torch.func.grad's per-call transform setup)."""
        @torch.enable_grad()
        def grads(params, xb, yb):
            gs, losses = {n: torch.empty_like(p) for n, p in params.items()}, []
            for w in range(xb.shape[0]):
                leaves = {n: p[w].detach().requires_grad_(True) for n, p in params.items()}
                loss = worker_loss(leaves, xb[w], yb[w])
                for n, g in zip(leaves, torch.autograd.grad(loss, list(leaves.values()))):
                    gs[n][w] = g
                losses.append(loss.detach())
            return gs, torch.stack(losses)
        return grads

    def set_average(self, theta: dict[str, torch.Tensor]) -> None:
        """Reset every worker to ``theta`` (the start of a round)."""
        K = self.spec.K
        self.params = {n: p.detach().unsqueeze(0).repeat(K, *([1] * p.dim())) for n, p in theta.items()}

    def local_step(self, step: int) -> torch.Tensor:
        """One SGD step of all workers at local step index ``step``; returns the K minibatch losses."""
        idx = self.batches.indices(step)
        grads, losses = self._grad(self.params, self.x[idx], self.y[idx])
        if self.update_transform is not None:
            grads = unflatten(self.update_transform(flatten(grads, batch_dims=1)), self.params, batch_dims=1)
        if self.buffers is None:
            for n, p in self.params.items():
                p.sub_(grads[n], alpha=self.spec.lr)
        else:
            for n, p in self.params.items():
                v = self.buffers[n].mul_(self.spec.momentum).add_(grads[n])
                p.sub_(v, alpha=self.spec.lr)
        return losses

    def end_round(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Average the workers; return (new average, gaps (K, d) taken before the reset)."""
        avg = {n: p.mean(0) for n, p in self.params.items()}
        gaps = flatten({n: p - avg[n] for n, p in self.params.items()}, batch_dims=1)
        self.set_average(avg)
        if self.buffers is not None:
            if self.spec.momentum_buffers == "average":
                for v in self.buffers.values():
                    v.copy_(v.mean(0).expand_as(v))
            elif self.spec.momentum_buffers == "reset":
                for v in self.buffers.values():
                    v.zero_()
        return avg, gaps

    def momentum_state(self) -> torch.Tensor | None:
        """The buffers at a round boundary, for a resume state: (d,) when averaged (every worker's is the same),
        (K, d) when kept, None when reset or without momentum (nothing to keep)."""
        return buffer_state(self.spec, None if self.buffers is None else flatten(self.buffers, batch_dims=1))

    def load_momentum_state(self, state: torch.Tensor | None) -> None:
        """Install momentum_state's buffers (a resumed run continues them bit for bit)."""
        if self.buffers is not None and state is not None:
            rows = state.to(next(iter(self.buffers.values())).device).expand(self.spec.K, -1)
            for n, v in unflatten(rows, self.buffers, batch_dims=1).items():
                self.buffers[n].copy_(v)


def buffer_state(spec: RunSpec, rows: torch.Tensor | None) -> torch.Tensor | None:
    """A resume state's momentum buffers from all K workers' flat buffers ``rows`` (K, d) at a round boundary."""
    if rows is None or spec.momentum_buffers == "reset":
        return None
    return rows[0].clone() if spec.momentum_buffers == "average" else rows.clone()


def models_sgd_step(models, workers, step, batches, loss_fn, x, y, lr, update_transform=None, momentum=0.0,
                    buffers=None) -> torch.Tensor:
    """One plain-autograd SGD step of separate worker models (the loop reference and the distributed engine);
    ``buffers``: per model, its heavy-ball buffers (one per parameter), or None for plain SGD."""
    losses = []
    for w, m in zip(workers, models):
        idx = batches.worker_indices(w, step)
        m.zero_grad(set_to_none=True)
        loss = loss_fn(m(x[idx]), y[idx])
        loss.backward()
        losses.append(loss.detach())
    with torch.no_grad():
        if update_transform is not None:
            flat = torch.stack([flatten([p.grad for p in m.parameters()]) for m in models])
            for m, u in zip(models, update_transform(flat)):
                sizes = [p.numel() for p in m.parameters()]
                for p, chunk in zip(m.parameters(), u.split(sizes)):
                    p.grad.copy_(chunk.view_as(p))
        if buffers is None:
            for m in models:  # the same update op as the batched engine and torch.optim.SGD
                for p in m.parameters():
                    p.sub_(p.grad, alpha=lr)
        else:
            for m, bufs in zip(models, buffers):  # the batched engine's ops, one worker at a time
                for p, v in zip(m.parameters(), bufs):
                    p.sub_(v.mul_(momentum).add_(p.grad), alpha=lr)
    return torch.stack(losses)


@torch.no_grad()
def buffers_at_averaging(spec: RunSpec, buffers) -> None:
    """The loop reference's buffers (per model, per parameter) at an averaging: averaged, kept or zeroed."""
    if buffers is None or spec.momentum_buffers == "keep":
        return
    for i in range(len(buffers[0])):
        if spec.momentum_buffers == "average":
            mean = torch.stack([bufs[i] for bufs in buffers]).mean(0)
            for bufs in buffers:
                bufs[i].copy_(mean)
        else:
            for bufs in buffers:
                bufs[i].zero_()


class LoopLocalSGD:
    """Reference implementation: K independent nn.Module copies, one autograd call per worker."""

    def __init__(self, model: nn.Module, loss_fn, x, y, spec: RunSpec, update_transform=None):
        self.models = [copy.deepcopy(model) for _ in range(spec.K)]
        self.loss_fn, self.x, self.y, self.spec = loss_fn, x, y, spec
        self.batches = worker_batches(spec, y)
        self.update_transform = update_transform
        self.buffers = ([[torch.zeros_like(p) for p in m.parameters()] for m in self.models] if spec.momentum
                        else None)

    def local_step(self, step: int) -> torch.Tensor:
        return models_sgd_step(self.models, range(self.spec.K), step, self.batches, self.loss_fn, self.x, self.y,
                               self.spec.lr, self.update_transform, self.spec.momentum, self.buffers)

    @property
    def params(self) -> dict[str, torch.Tensor]:
        names = [n for n, _ in self.models[0].named_parameters()]
        return {n: torch.stack([dict(m.named_parameters())[n].detach() for m in self.models]) for n in names}

    def end_round(self):
        params = self.params
        avg = {n: p.mean(0) for n, p in params.items()}
        gaps = flatten({n: p - avg[n] for n, p in params.items()}, batch_dims=1)
        with torch.no_grad():
            for m in self.models:
                for n, p in m.named_parameters():
                    p.copy_(avg[n])
        buffers_at_averaging(self.spec, self.buffers)
        return avg, gaps


@torch.no_grad()
def evaluate(model: nn.Module, theta: dict[str, torch.Tensor], loss_fn, x, y, chunk: int = 256) -> tuple[float, float]:
    """Mean loss and accuracy of the parameters ``theta`` over (x, y), in chunks (length-sorted for padded text;
    256 examples per chunk: faster than 1,000 for all three models on one CPU thread)."""
    order = length_order(model, x)
    if order is not None:
        x, y = x[order], y[order]
    total_loss, correct = 0.0, 0.0
    for i in range(0, len(x), chunk):
        logits = functional_call(model, theta, (trim_padding(model, x[i : i + chunk]),))
        yy = y[i : i + chunk]
        total_loss += float(loss_fn(logits, yy)) * len(yy)
        correct += float((logits.argmax(-1) == yy).sum())
    return total_loss / len(x), correct / len(x)

"""Which training examples each worker draws its minibatches from (config ``train.partition``).

``iid`` (the paper's): every worker draws from the whole subset (``localsgd.WorkerBatches``). ``dirichlet``: label
skew as in the federated-learning literature. For each class c, the shares of the K workers are drawn from
Dir(alpha); the class's examples, in a seeded order, are cut by those shares (so the shares sum to the class count
and the shards are disjoint and cover the subset). Large alpha gives near-equal shares of every class, small alpha
gives each class to a few workers. Every shard must hold a minibatch: a draw with a shard under b examples is
redrawn (stream word ``draw``), at most MAX_DRAWS times; the accepted draw is recorded (``describe``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core import seeds

MAX_DRAWS = 100  # Dirichlet draws tried before a partition is refused (its shards too small for b)


class PartitionError(ValueError):
    """A partition the run cannot train on; the message names the config keys and the fix."""


def dirichlet_shards(y: torch.Tensor, K: int, alpha: float, seed: int, b: int) -> tuple[list[torch.Tensor], int]:
    """(each worker's example indices, sorted; the draw that gave them) of a Dirichlet(alpha) label partition of
    labels ``y`` over K workers, every shard at least ``b`` examples. Raises PartitionError if no draw of
    MAX_DRAWS does, or if K*b exceeds the examples."""
    labels = y.detach().cpu().numpy()
    n, classes = len(labels), int(labels.max()) + 1
    if K * b > n:
        raise PartitionError(f"train.b: K={K} Dirichlet shards of at least b={b} examples need K*b = {K * b} > the "
                             f"{n} training examples; lower train.b or K, or raise subset.n_train")
    members = [np.flatnonzero(labels == c) for c in range(classes)]
    smallest = 0
    for draw in range(MAX_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(K)]
        for c, idx in enumerate(members):
            rng = np.random.default_rng(seeds.mixed(seed, seeds.PARTITION, draw, c))
            order = rng.permutation(idx)
            shares = rng.dirichlet(np.full(K, float(alpha)))
            if not np.isfinite(shares).all():  # alpha so small that every gamma draw underflowed
                raise PartitionError(f"train.alpha: {alpha} is too small to draw Dirichlet shares in floating "
                                     "point; use alpha >= 0.01")
            cuts = np.floor(np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
            for w, part in enumerate(np.split(order, cuts)):
                parts[w].append(part)
        shards = [np.sort(np.concatenate(p)) for p in parts]
        sizes = [len(s) for s in shards]
        if min(sizes) >= b:
            return [torch.from_numpy(s) for s in shards], draw
        smallest = max(smallest, min(sizes))
    raise PartitionError(
        f"train.alpha: no Dirichlet(alpha={alpha}) partition of {n} examples over K={K} workers in {MAX_DRAWS} "
        f"draws gave every worker at least b={b} examples (best: smallest shard {smallest}); raise train.alpha "
        f"(less skew), lower train.b, or lower K")


def label_counts(shards: list[torch.Tensor], y: torch.Tensor) -> list[list[int]]:
    """Each worker's label histogram (K lists of per-class counts)."""
    classes = int(y.max()) + 1
    return [torch.bincount(y.detach().cpu()[s], minlength=classes).tolist() for s in shards]


def describe(y: torch.Tensor, K: int, alpha: float, seed: int, b: int) -> dict:
    """A Dirichlet partition as run.json records it: the draw accepted, shard sizes, label histograms."""
    shards, draw = dirichlet_shards(y, K, alpha, seed, b)
    return {"partition_draw": draw, "worker_examples": [len(s) for s in shards],
            "worker_label_counts": label_counts(shards, y)}

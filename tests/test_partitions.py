"""Dirichlet label partitions (train.partition: dirichlet): each worker's shard of the training subset."""

import numpy as np
import pytest
import torch

from sharpgaps.engine.partitions import MAX_DRAWS, PartitionError, describe, dirichlet_shards, label_counts


@pytest.fixture(scope="module")
def labels(mnist_small):
    return mnist_small["y_train"]


def test_shards_split_every_class_and_cover_the_data(labels):
    shards, draw = dirichlet_shards(labels, K=6, alpha=0.5, seed=3, b=20)
    everything = torch.cat(shards)
    assert len(everything) == len(labels) and len(set(everything.tolist())) == len(labels)  # disjoint, covering
    counts = np.array(label_counts(shards, labels))
    assert (counts.sum(0) == np.bincount(labels.numpy(), minlength=10)).all()  # the shares sum to the class counts
    assert min(len(s) for s in shards) >= 20 and 0 <= draw < MAX_DRAWS
    assert all(torch.equal(s, s.sort().values) for s in shards)


def test_shards_are_deterministic_for_a_seed(labels):
    a, da = dirichlet_shards(labels, K=4, alpha=0.3, seed=7, b=20)
    b, db = dirichlet_shards(labels, K=4, alpha=0.3, seed=7, b=20)
    c, _ = dirichlet_shards(labels, K=4, alpha=0.3, seed=8, b=20)
    assert da == db and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def _class_share_spread(alpha, K=8, n=5000, seed=0):
    """Per class, the largest worker share minus the smallest (0 = every worker holds 1/K of every class)."""
    y = torch.arange(n) % 10
    counts = np.array(label_counts(dirichlet_shards(y, K, alpha, seed, b=10)[0], y), dtype=float)
    shares = counts / counts.sum(0, keepdims=True)
    return shares.max(0) - shares.min(0)


def test_large_alpha_is_near_uniform_and_small_alpha_is_skewed():
    assert _class_share_spread(1e4).max() < 0.02  # within a few examples of 1/8 = 0.125 per worker and class
    skewed = _class_share_spread(0.1)
    assert skewed.mean() > 0.5  # most of a class sits with one or two workers
    y = torch.arange(5000) % 10
    counts = np.array(label_counts(dirichlet_shards(y, 8, 0.1, 0, b=10)[0], y))
    assert (counts == 0).mean() > 0.3  # and many workers never see some class


def test_redraws_until_every_shard_holds_a_batch_then_refuses(labels):
    # at alpha = 0.1 over 8 workers some draw leaves a worker under 40 examples: a later draw is taken
    draws = [dirichlet_shards(labels, K=8, alpha=0.1, seed=s, b=40)[1] for s in range(6)]
    assert any(d > 0 for d in draws)
    with pytest.raises(PartitionError, match=r"train.alpha: no Dirichlet\(alpha=0.01\).*at least b=70.*raise "
                                             r"train.alpha \(less skew\), lower train.b, or lower K"):
        dirichlet_shards(labels, K=8, alpha=0.01, seed=0, b=70)
    with pytest.raises(PartitionError, match=r"train.b: K=8 .*K\*b = 800 > the 600 training examples"):
        dirichlet_shards(labels, K=8, alpha=1.0, seed=0, b=100)


def test_describe_records_the_histograms(labels):
    rec = describe(labels, K=4, alpha=1.0, seed=2, b=20)
    shards, draw = dirichlet_shards(labels, 4, 1.0, 2, 20)
    assert rec == {"partition_draw": draw, "worker_examples": [len(s) for s in shards],
                   "worker_label_counts": label_counts(shards, labels)}
    assert sum(rec["worker_examples"]) == len(labels)

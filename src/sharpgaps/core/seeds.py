"""Seed streams: every derived seed of the package comes from here, so two draws never share a stream by
accident and a stream's numbers never change (the published tables depend on them bit for bit).

Two derivations:
  mixed(seed, STREAM, i, ...)   numpy's SeedSequence of the words, a 63-bit seed: independent streams
  linear(seed, STRIDE, i)       seed * STRIDE + i: one seed per (run seed, index) with a prime stride
                                (offset(seed, STREAM) = seed + STREAM is its stride-1 case)
"""

from __future__ import annotations

import numpy as np

# mixed streams
BATCHES = 0xB47C4  # a worker's minibatch permutation per epoch: (seed, BATCHES, worker, epoch)
PARTITION = 0xD1C4  # Dirichlet shards: a class's shares and example order, (seed, PARTITION, draw, class)
PROBE = 0x9B0BE  # probe rounds of the gap-restricted modes: offset of the run seed
RANDOM_SUBSPACE = 0x5A4D0  # random-Dom/Bulk subspaces, per refresh
NOISE = 0x40153  # fresh minibatches of the noise estimator
KRYLOV_START = 0x4B1  # the Krylov estimator's random start block, per checkpoint
HAAR_BASIS = 0x9A4D  # the estimators' random-subspace floor, per checkpoint
ALIGNED_CONTROL = 0xA11C  # the geometry stage's g-aligned control subspaces, per checkpoint

# linear strides
LANCZOS = 7919  # a cold Lanczos start: (seed, checkpoint round or refresh index)
ROUND = 1_000_003  # per-checkpoint draws (noise minibatches, mechanism directions); the test-set subset
RANDOM_REMOVAL = 100_003  # random-subspace removal baseline of the geometry stage, per checkpoint


def mixed(*words: int) -> int:
    """A 63-bit seed from the words (run seed, stream, indices) via numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, dtype=np.uint64)[0] >> 1)


def linear(seed: int, stride: int, index: int) -> int:
    """seed * stride + index."""
    return int(seed) * stride + int(index)


def offset(seed: int, stream: int) -> int:
    """seed + stream: a run seed moved to its own stream (e.g. probe rounds' minibatches)."""
    return int(seed) + stream

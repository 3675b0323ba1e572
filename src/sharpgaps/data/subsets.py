"""Seeded, class-stratified training subsets (MNIST-5k, CIFAR10-5k, SST2-5k) and their preprocessing.

One output file per subset holds tensors plus metadata: the chosen source indices, the seed and the
source checksums, so a subset can be traced back to the raw bytes.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..core import seeds
from ..core.atomic import CorruptFileError, load_torch, save_torch
from . import readers, sources

PAD, UNK = 0, 1  # token ids reserved in every SST-2 vocabulary


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Draw ``n`` indices without replacement, each class in proportion to its frequency.

    Largest-remainder allocation makes the per-class counts exact integers summing to ``n``;
    the result is shuffled so batches drawn in order are not class-sorted.
    """
    labels = np.asarray(labels)
    if n > labels.size:
        raise ValueError(f"asked for {n} examples but the split has only {labels.size}")
    if n == labels.size:
        return np.random.default_rng(seed).permutation(n)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / labels.size
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), size=t, replace=False) for c, t in zip(classes, take)]
    return rng.permutation(np.concatenate(chosen))


def build_vocab(sentences: list[str], min_freq: int) -> list[str]:
    """Word-level vocabulary from the training subset only, most frequent first (ties alphabetical)."""
    counts = Counter(tok for s in sentences for tok in s.split())
    words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    return ["<pad>", "<unk>", *words]


def encode(sentences: list[str], vocab: list[str], max_len: int) -> torch.Tensor:
    """Token ids, truncated to ``max_len`` and right-padded with PAD (the model masks PAD)."""
    index = {w: i for i, w in enumerate(vocab)}
    out = torch.full((len(sentences), max_len), PAD, dtype=torch.long)
    for row, s in enumerate(sentences):
        ids = [index.get(tok, UNK) for tok in s.split()[:max_len]] or [UNK]  # never an all-pad row
        out[row, : len(ids)] = torch.tensor(ids)
    return out


def make_subset(dataset: str, data_dir: Path, n_train: int, seed: int, test_cap: int | None = None,
                max_len: int = 50, min_freq: int = 1) -> dict:
    """Read the verified raw files and return the subset dict (see module docstring)."""
    layout, files = sources.verify(dataset, data_dir)
    raw = readers.READERS[(dataset, layout.name)](files)
    train_idx = stratified_indices(raw["y_train"], n_train, seed)
    n_test = len(raw["y_test"]) if test_cap is None else min(test_cap, len(raw["y_test"]))
    # The test draw gets its own stream so capping it never changes the training subset.
    test_idx = stratified_indices(raw["y_test"], n_test, seeds.offset(seed, seeds.ROUND))
    if n_test == len(raw["y_test"]):
        test_idx = np.arange(n_test)  # full split: keep the official order
    meta = {
        "dataset": dataset,
        "layout": layout.name,
        "seed": seed,
        "n_train": n_train,
        "n_test": n_test,
        "train_indices": train_idx.tolist(),
        "test_indices": test_idx.tolist(),
        "source_checksums": {f.relpath: f"{f.algo}:{f.digest}" for f in layout.files},
        "n_classes": int(np.max(raw["y_train"]) + 1),
    }
    if dataset == "sst2":
        s_train = [raw["x_train"][i] for i in train_idx]
        s_test = [raw["x_test"][i] for i in test_idx]
        vocab = build_vocab(s_train, min_freq)
        x_train, x_test = encode(s_train, vocab, max_len), encode(s_test, vocab, max_len)
        meta.update(vocab=vocab, vocab_size=len(vocab), max_len=max_len, min_freq=min_freq,
                    train_tokens_truncated=int(sum(len(s.split()) > max_len for s in s_train)))
    else:
        x_train = torch.from_numpy(raw["x_train"][train_idx]).float() / 255.0
        x_test = torch.from_numpy(raw["x_test"][test_idx]).float() / 255.0
        if dataset == "cifar10":  # per-channel standardisation with training-subset statistics
            mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
            std = x_train.std(dim=(0, 2, 3), keepdim=True)
            x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
            meta.update(channel_mean=mean.flatten().tolist(), channel_std=std.flatten().tolist())
    meta["input_shape"] = list(x_train.shape[1:])
    return {
        "x_train": x_train.contiguous(),
        "y_train": torch.from_numpy(raw["y_train"][train_idx]).long(),
        "x_test": x_test.contiguous(),
        "y_test": torch.from_numpy(raw["y_test"][test_idx]).long(),
        "meta": meta,
    }


def write_subset(path: str | Path, **kwargs) -> dict:
    subset = make_subset(**kwargs)
    save_torch(subset, path)
    return subset["meta"]


def load_subset(path: str | Path) -> dict:
    subset = load_torch(path)
    missing = {"x_train", "y_train", "x_test", "y_test", "meta"} - set(subset)
    if missing or len(subset["x_train"]) != len(subset["y_train"]) or len(subset["x_test"]) != len(subset["y_test"]):
        raise CorruptFileError(f"{path}: not a subset file (missing {sorted(missing)} or mismatched lengths); "
                               f"delete it and rerun")
    return subset

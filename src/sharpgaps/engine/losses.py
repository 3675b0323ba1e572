"""Losses on logits: MSE on one-hot targets (Song et al. / Cohen et al.) and cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mse_onehot(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """0.5 * ||f(x) - onehot(y)||^2 summed over classes, mean over examples (Cohen et al.'s SquaredLoss / n)."""
    # Comparison instead of F.one_hot: one_hot inspects values, which torch.func.vmap forbids.
    target = (y.unsqueeze(-1) == torch.arange(logits.shape[-1], device=y.device)).to(logits.dtype)
    return 0.5 * ((logits - target) ** 2).sum(-1).mean()


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


LOSSES = {"mse": mse_onehot, "ce": cross_entropy}


def get_loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}'; known: {sorted(LOSSES)}")
    return LOSSES[name]


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == y).float().mean()

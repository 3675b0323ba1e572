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


def constant_loss(loss_fn, y: torch.Tensor) -> float:
    """The loss of the best prediction that ignores the input: the class prior p as the output under one-hot MSE,
    log p as the logits under cross-entropy. A network whose training loss stays near it has learnt nothing
    beyond the class balance (a loss plateau). NaN for another loss or non-class targets (a test's quadratic)."""
    if loss_fn not in (mse_onehot, cross_entropy) or y.is_floating_point():
        return float("nan")
    prior = torch.bincount(y).to(torch.float64) / len(y)
    out = prior if loss_fn is mse_onehot else prior.log()
    return float(loss_fn(out.expand(len(y), -1), y))


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == y).float().mean()

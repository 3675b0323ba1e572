"""The flat-vector convention used everywhere in the project: parameters in ``model.named_parameters()``
order, each flattened, concatenated (optionally with leading batch dims, e.g. one row per worker)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


def flatten(params: Mapping[str, torch.Tensor] | Iterable[torch.Tensor], batch_dims: int = 0) -> torch.Tensor:
    """Concatenate tensors (a dict's values, in dict order); leading ``batch_dims`` dims are kept."""
    tensors = list(params.values() if isinstance(params, Mapping) else params)
    lead = tensors[0].shape[:batch_dims]
    return torch.cat([t.reshape(*lead, -1) for t in tensors], dim=-1)


def unflatten(vec: torch.Tensor, like: dict[str, torch.Tensor], batch_dims: int = 0) -> dict[str, torch.Tensor]:
    """Inverse of :func:`flatten`: views of ``vec`` shaped like ``like``'s tensors (without their batch dims)."""
    out, i = {}, 0
    lead = vec.shape[:-1]
    for name, p in like.items():
        shape = p.shape[batch_dims:]
        n = shape.numel()
        out[name] = vec[..., i : i + n].reshape(*lead, *shape)
        i += n
    return out

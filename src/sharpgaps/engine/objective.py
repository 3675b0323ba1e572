"""The training objective of a run, and its derivatives at a point.

``Objective`` bundles what every stage that differentiates the loss needs: the model, the loss, the training
data (and the test data, for evaluation) and the Hessian's example sample. Training, geometry, restricted
runs, estimators and the mechanism all take one, so the Hessian sample is chosen here alone
(:attr:`Objective.n_hessian`). ``FullBatchHVP`` is its Hessian operator at fixed parameters.

Vectors follow the project's flat-vector convention (sharpgaps.core.flat).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..core.flat import flatten, unflatten
from .models import length_order, trim_padding


class FullBatchHVP:
    """Hessian of the full-dataset mean loss L(theta) = (1/N) sum_i l_i at fixed parameters.

    ``loss_fn(logits, y_chunk)`` must return the MEAN over the chunk; chunks are weighted by
    len(chunk)/N so the result is the full-batch mean for any chunk_size.
    cache_graph=True keeps the create_graph first-order graph of all chunks alive and
    differentiates it again for every product (fastest; memory ~ one forward+backward graph
    over all N examples, chunked or not). cache_graph=False rebuilds it per product and chunk
    (memory ~ one chunk; ~2-3x the time of a cached product).
    The model's mode (train/eval) is left to the caller.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 x: Tensor, y: Tensor, params: dict[str, Tensor] | None = None,
                 chunk_size: int | None = None, cache_graph: bool = True):
        order = length_order(model, x)  # the mean is order-free: length-sorted chunks skip padding (text)
        if order is not None:
            x, y = x[order], y[order]
        self.model, self.loss_fn, self.x, self.y = model, loss_fn, x, y
        self.device = x.device
        names = [n for n, _ in model.named_parameters()]
        src = dict(model.named_parameters()) if params is None else params
        missing = set(names) - set(src)
        if missing:
            raise KeyError(f"params dict lacks {sorted(missing)}")
        # Fresh leaves: we differentiate w.r.t. these, never touch the model's own .grad.
        self.names = names
        self.params = {n: src[n].detach().to(self.device).requires_grad_(True) for n in names}
        self._plist = [self.params[n] for n in names]
        self.dim = sum(p.numel() for p in self._plist)
        self.dtype = self._plist[0].dtype
        self.N = x.shape[0]
        cs = self.N if chunk_size is None else int(chunk_size)
        self._chunks = [(s, min(s + cs, self.N)) for s in range(0, self.N, cs)]
        self.cache_graph = cache_graph
        self.n_hvp = 0
        self._grads: list[Tensor] | None = None  # cached first-order graph
        self._loss: float | None = None
        self._gflat: Tensor | None = None

    def _chunk_loss(self, a: int, b: int) -> Tensor:
        out = functional_call(self.model, self.params, (trim_padding(self.model, self.x[a:b]),))
        return self.loss_fn(out, self.y[a:b]) * ((b - a) / self.N)

    def _grad(self, loss: Tensor, create_graph: bool) -> list[Tensor]:
        gs = torch.autograd.grad(loss, self._plist, create_graph=create_graph, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, self._plist)]

    @torch.enable_grad()  # callers may sit inside torch.no_grad() (e.g. a training loop)
    def _build(self) -> None:
        total, grads = 0.0, None
        for a, b in self._chunks:
            loss = self._chunk_loss(a, b)
            gs = self._grad(loss, create_graph=self.cache_graph)
            total += loss.item()
            grads = gs if grads is None else [g0 + g1 for g0, g1 in zip(grads, gs)]
        self._loss = total
        self._gflat = flatten([g.detach() for g in grads])
        if self.cache_graph:
            self._grads = grads

    def loss(self) -> float:
        if self._loss is None:
            self._build()
        return self._loss

    def gradient(self) -> Tensor:
        """Flat full-batch gradient (d,), detached."""
        if self._gflat is None:
            self._build()
        return self._gflat.clone()

    def _split(self, v: Tensor) -> list[Tensor]:
        v = v.to(device=self.device, dtype=self.dtype).reshape(-1)
        if v.numel() != self.dim:
            raise ValueError(f"vector has {v.numel()} entries, expected {self.dim}")
        return [c.view_as(p) for c, p in zip(v.split([p.numel() for p in self._plist]), self._plist)]

    def _hvp_from(self, grads: list[Tensor], vs: list[Tensor], retain: bool) -> list[Tensor]:
        dot = sum((g * v).sum() for g, v in zip(grads, vs))
        if not dot.requires_grad:  # loss linear in all parameters: Hessian is 0
            return [torch.zeros_like(p) for p in self._plist]
        hs = torch.autograd.grad(dot, self._plist, retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h for h, p in zip(hs, self._plist)]

    @torch.enable_grad()
    def hvp(self, v: Tensor) -> Tensor:
        """Flat H v (d,) in the parameters' dtype, on the device of x."""
        vs = self._split(v)
        self.n_hvp += 1
        if self.cache_graph:
            if self._grads is None:
                self._build()
            return flatten(self._hvp_from(self._grads, vs, retain=True))
        acc = None
        for a, b in self._chunks:  # rebuild the first-order graph chunk by chunk: memory ~ 1 chunk
            grads = self._grad(self._chunk_loss(a, b), create_graph=True)
            hs = self._hvp_from(grads, vs, retain=False)
            acc = hs if acc is None else [s + h for s, h in zip(acc, hs)]
        return flatten(acc)

    __call__ = hvp

    def release(self) -> None:
        """Free the cached graph (the object stays usable; it is rebuilt on demand)."""
        self._grads = None


@dataclass(frozen=True)
class Objective:
    """The mean training loss as a function of the parameters, with the Hessian's example sample.

    hessian_examples: the Hessian is that of the mean loss on the first N_H training examples (the subset is
    stored in seeded random order, so they are a uniform sample); None: all N. The gradient is always the
    full-batch gradient on all N examples. chunk_size: examples per chunk of the Hessian's graph (None: all at
    once); grad_chunk_size: the same for a gradient alone (no second-order graph: chunks only bound memory).
    """

    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    x: Tensor
    y: Tensor
    x_test: Tensor | None = None
    y_test: Tensor | None = None
    hessian_examples: int | None = None
    chunk_size: int | None = None
    grad_chunk_size: int | None = None

    @classmethod
    def from_subset(cls, model: nn.Module, loss_fn, subset: dict, **options) -> "Objective":
        """The objective of a training subset (sharpgaps.data.subsets), its test split for evaluation."""
        return cls(model, loss_fn, subset["x_train"], subset["y_train"], subset.get("x_test"), subset.get("y_test"),
                   **options)

    @property
    def n_train(self) -> int:
        return len(self.x)

    @property
    def n_hessian(self) -> int:
        """N_H: the examples the Hessian is taken on."""
        return self.n_train if self.hessian_examples is None else min(self.hessian_examples, self.n_train)

    @property
    def dim(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def device(self) -> torch.device:
        return self.x.device

    def params(self, theta: Tensor | dict[str, Tensor]) -> dict[str, Tensor]:
        """Named parameters from a flat vector (moved to the data's device) or a dict (as it is)."""
        if isinstance(theta, dict):
            return theta
        return unflatten(theta.to(self.device), dict(self.model.named_parameters()))

    def hessian(self, theta, cache_graph: bool = True) -> "FullBatchHVP":
        """The Hessian operator at ``theta`` on the Hessian's sample."""
        n = self.n_hessian
        return FullBatchHVP(self.model, self.loss_fn, self.x[:n], self.y[:n], params=self.params(theta),
                            chunk_size=self.chunk_size, cache_graph=cache_graph)

    def gradient(self, theta, hessian: "FullBatchHVP | None" = None) -> Tensor:
        """The flat full-batch gradient on all N examples; a Hessian operator over all of them already holds it."""
        if hessian is not None and hessian.N == self.n_train:
            return hessian.gradient()
        return FullBatchHVP(self.model, self.loss_fn, self.x, self.y, params=self.params(theta),
                            chunk_size=self.grad_chunk_size, cache_graph=False).gradient()

    def hvp(self, theta, v: Tensor) -> Tensor:
        """One Hessian-vector product at ``theta`` (build :meth:`hessian` once for many)."""
        return self.hessian(theta, cache_graph=False).hvp(v)

    def loss(self, theta) -> float:
        """The mean loss on all N training examples."""
        return FullBatchHVP(self.model, self.loss_fn, self.x, self.y, params=self.params(theta),
                            chunk_size=self.grad_chunk_size, cache_graph=False).loss()

"""The three architectures of docs/DEFINITIONS.md#architectures, built from a config name.

Everything is written with plain tensor ops so that (a) torch.func.vmap can batch K workers and
(b) double backward works: the transformer computes attention by hand because PyTorch's fused
attention kernels have no double-backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.specs import arch_problems


class FCTanh(nn.Module):
    """784-200-200-10 with tanh (Cohen et al. / Song et al. 'fc-tanh')."""

    def __init__(self, in_features: int, n_classes: int, widths: tuple[int, ...] = (200, 200)):
        super().__init__()
        dims = [in_features, *widths]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], n_classes)

    def forward(self, x):
        h = x.flatten(start_dim=-3) if x.dim() >= 3 else x
        for layer in self.hidden:
            h = torch.tanh(layer(h))
        return self.out(h)


class CNNReLU(nn.Module):
    """[conv3x3(32), ReLU, maxpool2] x 2, linear(32*8*8, 10) ('cnn-relu')."""

    vmap_workers = False  # localsgd.vmap_pays: K plain convolutions beat vmap's grouped one 2x on CPU
    vmap_examples = False  # mechanism.per_example_projections: one autograd call per example beats vmap ~1.3-3x on CPU

    def __init__(self, in_shape: tuple[int, int, int], n_classes: int, channels: int = 32):
        super().__init__()
        c, h, w = in_shape
        self.conv1 = nn.Conv2d(c, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.out = nn.Linear(channels * (h // 4) * (w // 4), n_classes)

    def forward(self, x):
        # Channels-last: oneDNN's NHWC convolution and max-pool kernels are ~2x faster on CPU than NCHW
        # (docs/BENCHMARKS.md, "Cuts"). Pooling before the ReLU gives the same values and gradients (both are
        # monotone; a tie goes to the same first index) with the ReLU on a 4x smaller tensor.
        if x.dim() == 4:
            try:
                x = x.contiguous(memory_format=torch.channels_last)
            except RuntimeError:  # inside vmap (the opt-in vmapped engine): functorch has no channels-last copy
                pass
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.out(x.flatten(start_dim=1))


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


class EncoderLayer(nn.Module):
    """Post-norm encoder layer with the semantics of nn.TransformerEncoderLayer (ReLU, no dropout)."""

    def __init__(self, dim: int, heads: int, ff: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff1, self.ff2 = nn.Linear(dim, ff), nn.Linear(ff, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def attention(self, x, key_pad):
        n, length, dim = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // self.heads)
        scores = scores.masked_fill(key_pad[:, None, None, :], float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v  # math kernel: supports double backward
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))

    def forward(self, x, key_pad):
        x = self.norm1(x + self.attention(x, key_pad))
        return self.norm2(x + self.ff2(F.relu(self.ff1(x))))


class Transformer(nn.Module):
    """Embedding 64 + sinusoidal positions, 2 encoder layers, 8 heads, ff 2048, padding mask, mean-pool.

    ``emb_mult`` m stores the embedding as E/m and multiplies the lookup by m: the same function at initialisation
    (E ~ N(0, 1) as nn.Embedding draws it), but SGD on the stored table is an m^2 learning rate on the embedding
    alone, which is what lets plain SGD train it (docs/FIDELITY.md, "The SST-2 Transformer's embedding step").
    Gradients, Hessians and gaps are all taken in the stored coordinates, the ones SGD steps in."""

    vmap_workers = False  # localsgd.vmap_pays: one autograd call per worker is ~1.4x faster on CPU

    def __init__(self, vocab_size: int, max_len: int, n_classes: int, dim: int = 64, heads: int = 8,
                 layers: int = 2, ff: int = 2048, emb_mult: float = 1.0, pad_id: int = 0):
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, dim)
        self.emb_mult = float(emb_mult)
        if self.emb_mult != 1.0:
            with torch.no_grad():
                self.embed.weight.div_(self.emb_mult)
        self.register_buffer("positions", sinusoidal_positions(max_len, dim), persistent=False)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ff) for _ in range(layers))
        self.out = nn.Linear(dim, n_classes)

    def real_lengths(self, tokens):
        """Per sequence, the position after its last real token (0 if all padding)."""
        real = tokens != self.pad_id
        return torch.where(real.any(-1), real.shape[-1] - real.flip(-1).int().argmax(-1), 0)

    def trim_padding(self, tokens):
        """The batch without its trailing columns that are padding in every row: the same outputs (those keys are
        masked and those positions not pooled; float rounding aside) at a fraction of the cost on short text."""
        n = max(1, int(self.real_lengths(tokens).max())) if len(tokens) else tokens.shape[-1]
        return tokens[:, :n] if n < tokens.shape[-1] else tokens

    def encode(self, tokens):
        """The encoder's output per position (before pooling) and the padding mask."""
        key_pad = tokens == self.pad_id
        # An all-padding row (an empty text) would softmax over no key at all (NaN, then a "diverged" run): it attends
        # to its first position instead and still pools nothing (its logits are the output bias). Rows with a real
        # token are untouched, bit for bit.
        first = torch.arange(tokens.shape[-1], device=tokens.device) == 0
        attend_pad = key_pad & ~(key_pad.all(-1, keepdim=True) & first)
        e = self.embed(tokens)
        if self.emb_mult != 1.0:  # skipped at 1 so that the default stays bit for bit the plain embedding
            e = e * self.emb_mult
        x = e + self.positions[: tokens.shape[-1]]
        for layer in self.layers:
            x = layer(x, attend_pad)
        return x, key_pad

    def pool(self, x, key_pad):
        """Mean over the real positions, then the output layer."""
        keep = (~key_pad).unsqueeze(-1).to(x.dtype)
        return self.out((x * keep).sum(1) / keep.sum(1).clamp_min(1.0))

    def forward(self, tokens):
        return self.pool(*self.encode(tokens))


def length_order(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """A permutation sorting ``x`` by real length where the model can trim padding (the transformer), else None.
    For order-free full-set means (loss, accuracy, gradient, HVP): length-sorted chunks carry little padding
    (SST-2 at max_len 32: chunks of 256 keep 33% of the token positions)."""
    lengths = getattr(model, "real_lengths", None)
    return None if lengths is None else torch.argsort(lengths(x), stable=True)


def trim_padding(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` without the padding columns the model can skip (unchanged for models without padding)."""
    trim = getattr(model, "trim_padding", None)
    return x if trim is None else trim(x)


def build_model(name: str, meta: dict, seed: int, **arch) -> nn.Module:
    """Build ``name`` for the subset described by ``meta``; weights drawn from ``seed`` (PyTorch default init)."""
    problems = arch_problems(name, arch)
    if problems:
        raise ValueError("; ".join(problems))
    torch.manual_seed(seed)
    n_classes = meta["n_classes"]
    if name == "fc_tanh":
        return FCTanh(math.prod(meta["input_shape"]), n_classes, tuple(arch.get("widths", (200, 200))))
    if name == "cnn_relu":
        return CNNReLU(tuple(meta["input_shape"]), n_classes, **arch)
    return Transformer(meta["vocab_size"], meta["max_len"], n_classes, **arch)

"""Simulated Local SGD step cost vs the loop over K models vs the batched single-model floor.

All three are timed in the same process, interleaved repeat by repeat, so ratios hold on a noisy box.
"""

from __future__ import annotations

import statistics
import time

import torch

from sharpgaps.core.specs import RunSpec
from sharpgaps.engine import losses, models
from sharpgaps.engine.localsgd import LoopLocalSGD, SimulatedLocalSGD


def _floor_step(model, x, y, lr):
    """One model, one SGD step at batch K*b: the cost the batched engine cannot beat."""
    model.zero_grad(set_to_none=True)
    losses.mse_onehot(model(x), y).backward()
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(p.grad, alpha=lr)


def bench_engine(subset: dict, Ks=(2, 4, 8, 16), b: int = 50, steps: int = 20, repeats: int = 5,
                 model_name: str = "fc_tanh") -> list[dict]:
    x, y = subset["x_train"], subset["y_train"]
    rows = []
    for K in Ks:
        spec = RunSpec(K=K, tau=1, b=b, lr=0.05, rounds=1, window=1, seed=0, checkpoints=(1,))
        base = models.build_model(model_name, subset["meta"], seed=0)
        sim = SimulatedLocalSGD(base, losses.mse_onehot, x, y, spec)
        loop = LoopLocalSGD(base, losses.mse_onehot, x, y, spec)
        floor_model = models.build_model(model_name, subset["meta"], seed=0)
        gen = torch.Generator().manual_seed(0)
        idx = torch.randint(0, len(x), (K * b,), generator=gen)
        fx, fy = x[idx], y[idx]
        fns = {
            "simulated": lambda s: sim.local_step(s),
            "loop": lambda s: loop.local_step(s),
            "floor": lambda s: _floor_step(floor_model, fx, fy, 0.05),
        }
        for fn in fns.values():  # warm-up (vmap tracing, allocator)
            fn(0)
        times = {k: [] for k in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                for s in range(steps):
                    fn(s)
                times[name].append((time.perf_counter() - t0) / steps * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({
            "K": K, "b": b,
            **{f"{k}_ms": med[k] for k in fns},
            **{f"{k}_range_ms": (min(v), max(v)) for k, v in times.items()},
            "simulated_over_floor": med["simulated"] / med["floor"],
            "loop_over_simulated": med["loop"] / med["simulated"],
        })
    return rows

"""Probe: why plain-SGD Local SGD keeps the SST-2 Transformer on its loss plateau.

One run = one variant of the quick sst2_transformer setting (K=8, tau=8, b=25 per worker, averaging every tau
local steps, plain SGD, no momentum). The variant changes one or more of: learning rate and linear warm-up,
embedding init scale, post-/pre-norm, loss (MSE on one-hot / cross-entropy), feed-forward width. Architecture
changes are made here, on the library's model, never in src/.

Records per run (JSON): the trajectory (train/dev accuracy and loss every --eval-every local steps), lambda_1
of the Hessian on the first 128 training examples at the end (against 2/eta), per-parameter gradient norms at
the start and the end (full-batch gradient on 1,000 training examples), statistics of the pooled feature (the
output layer's input) on the same examples, seconds per 100 local steps (training
only, evaluation excluded).

  nice -n 19 env PYTHONPATH=src python benchmarks/probe_transformer.py --variant base --steps 480 \
      --out docs/probes/transformer_plateau/base_n480_s0.json
  python benchmarks/probe_transformer.py --table docs/probes/transformer_plateau     # the markdown tables
  python benchmarks/probe_transformer.py --splice    # into docs/FIDELITY.md and docs/probes/transformer_plateau.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

from sharpgaps.core.specs import RunSpec
from sharpgaps.curvature.hessian import top_eigenpairs
from sharpgaps.data.subsets import make_subset
from sharpgaps.engine.localsgd import SimulatedLocalSGD, evaluate
from sharpgaps.engine.losses import get_loss
from sharpgaps.engine.models import EncoderLayer, Transformer, build_model
from sharpgaps.engine.objective import Objective
from sharpgaps.report.summary import splice

# name -> settings; unspecified keys take BASE (the quick setting on its plateau: ff 2048, no embedding multiplier)
# emb_mult m: embedding stored as E/m and multiplied by m in the forward pass (same function at init); under SGD
# this is exactly an m^2 learning-rate multiplier on the embedding alone.
# pool: "mean" over real positions (the library's) or "first" (the first position only, a CLS-like read-out).
# b, max_len: per-worker batch and sentence length (the paper config's are 50 and 50).
BASE = dict(lr=0.05, warmup=0, emb_std=1.0, emb_mult=1.0, prenorm=False, loss="mse", ff=2048, pool="mean",
            b=25, max_len=32)
VARIANTS = {
    "base": {},
    "lr0.1_wu": dict(lr=0.1, warmup=200),
    "lr0.2_wu": dict(lr=0.2, warmup=200),
    "prenorm": dict(prenorm=True),
    "ce": dict(loss="ce"),
    "embmult100": dict(emb_mult=100.0),
    "ff256": dict(ff=256),
    "ff256_lr0.2_wu": dict(ff=256, lr=0.2, warmup=200),
    "ff256_emb0.125": dict(ff=256, emb_std=0.125),
    "ff256_emb0.125_wu": dict(ff=256, emb_std=0.125, warmup=200),
    "ff256_prenorm": dict(ff=256, prenorm=True),
    "ff256_ce": dict(ff=256, loss="ce"),
    "ff256_embmult8": dict(ff=256, emb_mult=8.0),
    "ff256_embmult32": dict(ff=256, emb_mult=32.0),
    "ff256_embmult32_prenorm": dict(ff=256, emb_mult=32.0, prenorm=True),
    "ff256_embmult100": dict(ff=256, emb_mult=100.0),
    "ff256_embmult100_ce": dict(ff=256, emb_mult=100.0, loss="ce"),
    "ff256_embmult300": dict(ff=256, emb_mult=300.0),
    "ff256_firstpool": dict(ff=256, pool="first"),
    "ff256_embmult100_lr0.02": dict(ff=256, emb_mult=100.0, lr=0.02),
    # the paper config's sst2_transformer setting (lr 0.02, b 50, max_len 50, ff 2048) without and with the multiplier
    "paper": dict(lr=0.02, b=50, max_len=50),
    "paper_embmult100": dict(lr=0.02, b=50, max_len=50, emb_mult=100.0),
}


class ScaledEmbedding(nn.Embedding):
    """Embedding lookup times a fixed multiplier ``mult`` (set on the instance)."""

    def forward(self, tokens):
        return super().forward(tokens) * self.mult


class PreNormLayer(EncoderLayer):
    """x + attn(LN(x)), then x + ff(LN(x)); same parameters as the post-norm layer."""

    def forward(self, x, key_pad):
        x = x + self.attention(self.norm1(x), key_pad)
        return x + self.ff2(torch.relu(self.ff1(self.norm2(x))))


class PreNormTransformer(Transformer):
    """The library's Transformer with pre-norm layers and a final LayerNorm before pooling."""

    def forward(self, tokens):
        x, key_pad = self.encode(tokens)
        return self.pool(self.final_norm(x), key_pad)


class FirstPoolTransformer(Transformer):
    """The library's Transformer read out at the first position instead of the mean over real positions."""

    def pool(self, x, key_pad):
        return self.out(x[:, 0])


def make_model(cfg: dict, meta: dict, seed: int) -> nn.Module:
    model = build_model("transformer", meta, seed=seed, ff=cfg["ff"])
    if cfg["emb_std"] != 1.0:  # the same seeded N(0,1) draw, rescaled to N(0, emb_std^2)
        with torch.no_grad():
            model.embed.weight.mul_(cfg["emb_std"])
    if cfg["emb_mult"] != 1.0:
        with torch.no_grad():
            model.embed.weight.div_(cfg["emb_mult"])
        model.embed.__class__ = ScaledEmbedding
        model.embed.mult = cfg["emb_mult"]
    if cfg["prenorm"]:  # same parameter values, pre-norm wiring, plus a final LayerNorm (ones/zeros)
        for layer in model.layers:
            layer.__class__ = PreNormLayer
        model.__class__ = PreNormTransformer
        model.final_norm = nn.LayerNorm(model.embed.embedding_dim)
    if cfg["pool"] == "first":
        model.__class__ = FirstPoolTransformer
    return model


def lr_at(cfg: dict, step: int) -> float:
    """Linear warm-up from lr/warmup to lr over the first `warmup` local steps, then flat."""
    w = cfg["warmup"]
    return cfg["lr"] * min(1.0, (step + 1) / w) if w else cfg["lr"]


def grad_norms(model, loss_fn, theta, x, y) -> dict:
    """Per-parameter ||g|| and ||g||/||p|| of the mean loss over (x, y)."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in theta.items()}
    loss = loss_fn(torch.func.functional_call(model, params, (x,)), y)
    gs = torch.autograd.grad(loss, list(params.values()))
    return {n: {"g": float(g.norm()), "g_over_p": float(g.norm() / params[n].detach().norm().clamp_min(1e-12))}
            for n, g in zip(params, gs)}


@torch.no_grad()
def pooled_stats(model, theta, x, y) -> dict:
    """Statistics of the pooled feature h (the input of the output layer): ||mean h||^2 (the shared direction that
    sets the output layer's top curvature), tr Cov(h), and ||mu_1 - mu_0||^2 (the class signal)."""
    feats = []
    hook = model.out.register_forward_pre_hook(lambda mod, inp: feats.append(inp[0]))
    torch.func.functional_call(model, theta, (x,))
    hook.remove()
    h = feats[0]
    mu0, mu1 = h[y == 0].mean(0), h[y == 1].mean(0)
    return {"mean_sq": float(h.mean(0).pow(2).sum()), "trace_cov": float(h.var(0).sum()),
            "class_diff_sq": float((mu1 - mu0).pow(2).sum())}


# The variant each config runs (tests/test_models.py checks the configs against these variants' settings).
ADOPTED = {"config.quick.yaml": "ff256_embmult100", "config.yaml": "paper_embmult100"}
PROBES = "docs/probes/transformer_plateau"
RUNS_BEGIN, RUNS_END = ("<!-- transformer-probes:begin (generated by `python benchmarks/probe_transformer.py "
                        "--splice`) -->", "<!-- transformer-probes:end -->")
STATS_BEGIN, STATS_END = ("<!-- transformer-stats:begin (generated by `python benchmarks/probe_transformer.py "
                          "--splice`) -->", "<!-- transformer-stats:end -->")


def load_runs(directory: str | Path) -> list[dict]:
    """Every run JSON in ``directory``, ordered by feed-forward width, variant, length and seed."""
    runs = [json.loads(p.read_text()) for p in sorted(Path(directory).glob("*.json"))]
    return sorted(runs, key=lambda d: (d["cfg"]["ff"], d["variant"], d["local_steps"], d["seed"]))


def runs_table(runs: list[dict]) -> str:
    """Markdown: the end of each run against the best constant prediction and the stability limit 2/eta."""
    adopted = {v: f for f, v in ADOPTED.items()}
    rows = ["| variant | ff, b, max_len, lr | seed | local steps | train acc | dev acc | train loss (constant) "
            "| dev loss | lambda_1 / (2/eta) | s per 100 local steps |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for d in runs:
        c, f = {**BASE, **d["cfg"]}, d["final"]  # runs recorded before a key existed ran at its BASE value
        name = d["variant"] + (f" (adopted: `{adopted[d['variant']]}`)" if d["variant"] in adopted else "")
        shape = f"{c['ff']}, {c['b']}, {c['max_len']}, {c['lr']}"
        if d["diverged"]:
            rows.append(f"| {name} | {shape} | {d['seed']} | {d['local_steps']} | diverged | | | | | "
                        f"{d['s_per_100']:.1f} |")
            continue
        lam = "n/a" if d["lambda1"] is None else f"{d['lambda1']:.1f} / {d['two_over_eta']:.0f}"
        rows.append(f"| {name} | {shape} | {d['seed']} | {d['local_steps']} | {f['train_acc']:.3f} | "
                    f"{f['dev_acc']:.3f} | {f['train_loss']:.4f} ({d['const_loss']:.4f}) | {f['dev_loss']:.4f} | "
                    f"{lam} | {d['s_per_100']:.1f} |")
    return "\n".join(rows)


def stats_table(runs: list[dict]) -> str:
    """Markdown: per-tensor relative gradients and pooled-feature statistics at the end of each run."""
    rows = ["| variant | seed | local steps | embedding ‖g‖/‖p‖ | output-layer ‖g‖/‖p‖ | median block ‖g‖/‖p‖ "
            "| pooled ‖mean h‖² | pooled tr Cov h | pooled ‖mu_1 - mu_0‖² |",
            "|---|---|---|---|---|---|---|---|---|"]
    for d in runs:
        gn, pe = (d["grad_norms_end"], d["pooled_end"]) if not d["diverged"] else (d["grad_norms_start"],
                                                                                       d["pooled_start"])
        blocks = sorted(v["g_over_p"] for k, v in gn.items() if k.startswith("layers"))
        when = "start (diverged)" if d["diverged"] else d["local_steps"]
        rows.append(f"| {d['variant']} | {d['seed']} | {when} | {gn['embed.weight']['g_over_p']:.1e} | "
                    f"{gn['out.weight']['g_over_p']:.1e} | {blocks[len(blocks) // 2]:.1e} | {pe['mean_sq']:.1f} | "
                    f"{pe['trace_cov']:.1f} | {pe['class_diff_sq']:.2f} |")
    return "\n".join(rows)


def splice_docs(directory: str | Path, docs: list[Path]) -> None:
    """Write the run table into each doc with its markers, and the statistics table where it has those."""
    runs = load_runs(directory)
    for doc in docs:
        text = doc.read_text()
        if RUNS_BEGIN not in text and STATS_BEGIN not in text:
            raise SystemExit(f"{doc}: no probe-table markers; add '{RUNS_BEGIN}' ... '{RUNS_END}' where the table goes")
        if RUNS_BEGIN in text:
            splice(doc, runs_table(runs), RUNS_BEGIN, RUNS_END)
        if STATS_BEGIN in doc.read_text():
            splice(doc, stats_table(runs), STATS_BEGIN, STATS_END)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", help="print the markdown tables of the run JSONs in this folder and exit")
    ap.add_argument("--splice", nargs="*", type=Path, help=f"write the tables of {PROBES} into these docs "
                    "(default: docs/FIDELITY.md and the probe write-up) and exit")
    ap.add_argument("--variant", choices=sorted(VARIANTS))
    ap.add_argument("--steps", type=int, default=480, help="local steps (multiple of tau)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=96)
    ap.add_argument("--out")
    ap.add_argument("--data-dir", default=os.environ.get("SHARPGAPS_DATA_DIR", "/work/shared/data"))
    ap.add_argument("--no-hessian", action="store_true")
    args = ap.parse_args()
    if args.table:
        runs = load_runs(args.table)
        print(runs_table(runs) + "\n\n" + stats_table(runs))
        return
    if args.splice is not None:
        splice_docs(PROBES, args.splice or [Path("docs/FIDELITY.md"), Path(PROBES + ".md")])
        return
    if not (args.variant and args.out):
        ap.error("--variant and --out are required for a run")
    torch.set_num_threads(1)
    cfg = {**BASE, **VARIANTS[args.variant]}
    K, tau, b = 8, 8, cfg["b"]

    sub = make_subset("sst2", Path(args.data_dir), n_train=5000, seed=0, test_cap=None, max_len=cfg["max_len"],
                      min_freq=1)
    x, y, xt, yt = sub["x_train"], sub["y_train"], sub["x_test"], sub["y_test"]
    model = make_model(cfg, sub["meta"], args.seed)
    loss_fn = get_loss(cfg["loss"])
    rounds = args.steps // tau
    spec = RunSpec(K=K, tau=tau, b=b, lr=cfg["lr"], rounds=rounds, window=1, seed=args.seed, checkpoints=())
    sim = SimulatedLocalSGD(model, loss_fn, x, y, spec)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    gsub = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:1000]
    gn_start = grad_norms(model, loss_fn, theta, x[gsub], y[gsub])
    feat_start = pooled_stats(model, theta, x[gsub], y[gsub])

    def record(step):
        tl, ta = evaluate(model, theta, loss_fn, x, y)
        dl, da = evaluate(model, theta, loss_fn, xt, yt)
        row = dict(step=step, train_loss=tl, train_acc=ta, dev_loss=dl, dev_acc=da)
        print(json.dumps(row), flush=True)
        return row

    traj, train_s, diverged = [record(0)], 0.0, False
    step = 0
    for r in range(rounds):
        t0 = time.perf_counter()
        for _ in range(tau):
            sim.spec = dataclasses.replace(spec, lr=lr_at(cfg, step))  # local_step reads spec.lr each call
            losses = sim.local_step(step)
            step += 1
        theta, _ = sim.end_round()
        train_s += time.perf_counter() - t0
        if not torch.isfinite(losses).all():
            diverged = True
            break
        if step % args.eval_every == 0 or r == rounds - 1:
            traj.append(record(step))

    final = traj[-1] if not diverged else dict(step=step, diverged=True)
    gn_end = grad_norms(model, loss_fn, theta, x[gsub], y[gsub]) if not diverged else None
    feat_end = pooled_stats(model, theta, x[gsub], y[gsub]) if not diverged else None
    lam1, n_hvp, hess_s = None, None, None
    if not args.no_hessian and not diverged:
        t0 = time.perf_counter()
        hvp = Objective(model, loss_fn, x, y, hessian_examples=128).hessian(theta)
        eig = top_eigenpairs(hvp, k=1, tol=1e-3)
        lam1, n_hvp, hess_s = float(eig.values[0]), eig.n_hvp, time.perf_counter() - t0
    prior = float(y.float().mean())
    const_mse = prior * (1 - prior)  # best constant prediction (the class prior) under one-hot MSE
    const_ce = -(prior * math.log(prior) + (1 - prior) * math.log(1 - prior))
    out = dict(variant=args.variant, cfg=cfg, seed=args.seed, local_steps=step, K=K, tau=tau, b=b,
               final=final, trajectory=traj, lambda1=lam1, two_over_eta=2.0 / cfg["lr"], lambda1_hvps=n_hvp,
               lambda1_s=hess_s, s_per_100=100.0 * train_s / max(step, 1), train_s=train_s,
               majority=max(prior, 1 - prior), const_loss=const_mse if cfg["loss"] == "mse" else const_ce,
               grad_norms_start=gn_start, grad_norms_end=gn_end,
               pooled_start=feat_start, pooled_end=feat_end, diverged=diverged,
               n_params=sum(p.numel() for p in model.parameters()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("variant", "local_steps", "final", "lambda1", "two_over_eta",
                                           "s_per_100")}), flush=True)


if __name__ == "__main__":
    main()

"""The paper-scale run's cost, projected from unit costs measured at paper sizes on this machine.

Model (every assumption is printed with the table):
  train job       local_steps x (one local step of all K workers at K, b), the step measured at K=8,
                  b=50 and scaled by K*b/400 (cost ~ examples per step);
  geometry job    per checkpoint: cached-graph build + HVPs x HVP + gradient + random removal, the
                  HVP/gradient measured on n examples and scaled linearly to hessian_examples; HVPs per
                  checkpoint = (HVPs per eigenpair of the quick run) x (k + extra) + (k + extra) residuals;
                  each Lanczos HVP also pays ARPACK's own step (memory-bound on its d x ncv basis,
                  ncv = 2k+1: measured at arpack_k and scaled by ncv), on the CPU also next to a GPU;
  restricted job  rounds x tau local steps, plus per refresh: Dom/Bulk the quick run's HVPs per refresh,
                  gap modes window x tau probe steps; evaluations excluded;
  other rules     the mean job time of the same rule in the finished (quick) run's benchmark files.
GPU: an estimate from FLOP counts (torch.utils.flop_counter) at 30% of an H100's FP32 rate with a
kernel-launch floor, not a measurement. SLURM: 100 concurrent jobs are bounded below by the longest
dependency chain and by total/100, above by their sum (list scheduling).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
# The benchmarks' one private import: no public torch API counts the aten ops that reach the kernels
# (below autograd's decompositions, each op once). FlopCounterMode keeps only ops with a FLOP formula;
# torch.profiler events include composite ops and their nested calls, so their counts differ (more in
# all, fewer at the top level). torch.library's own docs import TorchDispatchMode from here.
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from sharpgaps import grid, losses, models
from sharpgaps.hessian import FullBatchHVP
from sharpgaps.jobcosts import read_job_costs

GPU_PEAK_FLOPS = 67e12  # H100 SXM FP32 (no TF32: the HVPs need full fp32)
GPU_EFFICIENCY = 0.3  # sustained share of peak assumed for these small models
GPU_LAUNCH_S = 10e-6  # eager PyTorch op dispatch + kernel launch, per aten op


class _OpCount(TorchDispatchMode):
    """Counts aten ops (~ GPU kernel launches)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def flops_and_ops(fn) -> tuple[float, int]:
    with FlopCounterMode(display=False) as fc, _OpCount() as oc:
        fn()
    return float(fc.get_total_flops()), oc.n


def gpu_seconds(flops: float, ops: int) -> float:
    return max(flops / (GPU_PEAK_FLOPS * GPU_EFFICIENCY), ops * GPU_LAUNCH_S)


def paper_job_counts(config_file: Path, repo: Path) -> dict[str, int]:
    """Jobs per rule of the paper DAG from scratch (a dry run in an empty work dir)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-d", tmp, "-n",
                              "--quiet", "rules", "all", "--configfile", str(config_file)],
                             capture_output=True, text=True, cwd=repo)
    rows = [line.split() for line in (out.stdout + out.stderr).splitlines()]
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[1].isdigit() and r[0] not in ("total", "all")}


def unit_gpu_costs(subsets: dict, b: int = 50, K: int = 8, n_hvp: int = 64) -> dict[str, dict]:
    """FLOPs and aten ops of one local step (all K workers as one batched model would take it, FLOPs
    scaled to K*b = 400 examples) and of one HVP / gradient per example."""
    out = {}
    for name, sub in subsets.items():
        model = models.build_model(name, sub["meta"], seed=0)
        x, y = sub["x_train"][: K * b], sub["y_train"][: K * b]

        def step():
            losses.mse_onehot(model(x), y).backward()

        n = min(n_hvp, len(sub["x_train"]))
        H = FullBatchHVP(model, losses.mse_onehot, sub["x_train"][:n], sub["y_train"][:n])
        v = torch.randn(H.dim)
        gf, go = flops_and_ops(H.gradient)  # builds the create_graph graph: ~ a gradient
        hf, ho = flops_and_ops(lambda: H.hvp(v))
        sf, so = flops_and_ops(step)
        out[name] = {"step_flops": sf * 400 / (K * b), "step_ops": so,  # FLOPs at K*b = 8*50 examples
                     "hvp_flops_per_ex": hf / n, "hvp_ops": ho,
                     "grad_flops_per_ex": gf / n, "grad_ops": go}
    return out


def _quick_hvp_counts(workdir: Path) -> tuple[dict, dict]:
    """(HVPs per eigenpair per checkpoint, HVPs per Dom/Bulk refresh) by setting, from the quick tables."""
    from sharpgaps.atomic import read_frame

    per_pair, per_refresh = {}, {}
    main = workdir / "results/tables/main_geometry.parquet"
    if main.exists():
        df = read_frame(main)
        for setting, g in df.groupby("setting"):
            n = g[g.metric == "n_hvp"].value.median()
            pairs = g[g.metric == "lambda"].groupby("round").size().median()
            per_pair[setting] = float(n / pairs)
    table = workdir / "results/tables/restricted.parquet"
    if table.exists():
        df = read_frame(table)
        last = df[df["mode"].isin(["dom", "bulk"])].sort_values("round").groupby(["setting", "mode"]).tail(1)
        for setting, g in last.groupby("setting"):
            per_refresh[setting] = float((g.n_hvp / g.refreshes.clip(lower=1)).mean())
    return per_pair, per_refresh


def _other_rule_seconds(workdir: Path) -> dict[str, float]:
    """Mean job seconds per benchmark directory (rule group) of a finished run."""
    return read_job_costs(workdir / "results/benchmarks").groupby("rule").s.mean().to_dict()


def _rule_group(rule: str) -> str:
    if rule.startswith("fig") or rule == "results_summary":
        return "figures"
    return "collect" if rule.startswith("collect") else rule


def paper_scale(cfg: dict, counts: dict[str, int], unit: dict[str, dict], gpu: dict[str, dict],
                workdir: Path) -> tuple[list[dict], dict]:
    """Per-rule CPU and GPU-estimate hours of the paper DAG, and the SLURM bounds. `unit[setting]`:
    step_s (K=8, b=50 local step), hvp_s_per_ex, grad_s_per_ex, build_s_per_ex, removal_s."""
    per_pair, per_refresh = _quick_hvp_counts(workdir)
    other = _other_rule_seconds(workdir)
    runs = grid.expand_runs(cfg)
    jobs = []  # (rule, setting, run id, cpu_s, gpu_s)

    def geo(setting: str) -> dict:
        return {**cfg["geometry"], **cfg["settings"][setting].get("geometry", {})}

    def arpack_s(u: dict, n_eig: int) -> float:  # ARPACK's own seconds per Lanczos step at this k
        return u.get("arpack_step_s", 0.0) * (2 * n_eig + 1) / (2 * u.get("arpack_k", n_eig) + 1)

    for run in runs:
        s, rid = run["setting"], grid.run_id(run)
        u, gu = unit[cfg["settings"][s]["model"]], gpu[cfg["settings"][s]["model"]]
        scale = run["K"] * run["b"] / 400
        jobs.append(("train", s, rid, run["local_steps"] * u["step_s"] * scale,
                     run["local_steps"] * gpu_seconds(gu["step_flops"] * scale, gu["step_ops"])))
        g = geo(s)
        n_h = g.get("hessian_examples") or cfg["subset"]["n_train"]
        n_eig = u["classes"] + g["extra"]
        hvps = per_pair.get(s, 3.0) * n_eig + n_eig
        ckpts = run["checkpoints"]["count"]
        lanczos = (hvps - n_eig) * arpack_s(u, n_eig)  # the residual checks are bare HVPs
        cpu = ckpts * (hvps * u["hvp_s_per_ex"] * n_h + (u["build_s_per_ex"] + u["grad_s_per_ex"]) * n_h
                       + u["removal_s"] + lanczos)
        gpu_s = ckpts * (hvps * gpu_seconds(gu["hvp_flops_per_ex"] * n_h, gu["hvp_ops"])
                         + 2 * gpu_seconds(gu["grad_flops_per_ex"] * n_h, gu["grad_ops"]) + u["removal_s"] + lanczos)
        jobs.append(("geometry", s, rid, cpu, gpu_s))
    for run in grid.expand_runs(cfg, ["main"]):
        s, rid = run["setting"], grid.run_id(run)
        u, gu = unit[cfg["settings"][s]["model"]], gpu[cfg["settings"][s]["model"]]
        rr = {**cfg["restricted"], **cfg["settings"][s].get("restricted", {})}
        steps = rr["rounds"] * run["tau"]
        refreshes = -(-rr["rounds"] // rr["refresh"])
        n_h = rr.get("hessian_examples") or cfg["subset"]["n_train"]
        for mode in rr["modes"]:
            extra_steps = refreshes * rr["gap_window"] * run["tau"] if mode.startswith("gap") else 0
            hvps = refreshes * per_refresh.get(s, 3.0 * u["classes"]) if mode in ("dom", "bulk") else 0
            lanczos = hvps * arpack_s(u, u["classes"])
            cpu = (steps + extra_steps) * u["step_s"] + hvps * u["hvp_s_per_ex"] * n_h + lanczos
            gpu_s = ((steps + extra_steps) * gpu_seconds(gu["step_flops"], gu["step_ops"])
                     + hvps * gpu_seconds(gu["hvp_flops_per_ex"] * n_h, gu["hvp_ops"]) + lanczos)
            jobs.append(("restricted", s, rid, cpu, gpu_s))
    modelled = {j[0] for j in jobs}
    for rule, n in counts.items():
        if rule not in modelled:
            sec = other.get(_rule_group(rule), 0.0) * (2 if rule == "theory" else 1)  # paper theory: 2x quick rounds
            jobs += [(rule, "-", "-", sec, sec)] * n  # CPU-side work: the same next to a GPU
    df = pd.DataFrame(jobs, columns=["rule", "setting", "run", "cpu_s", "gpu_s"])
    rows = []
    group = df.rule.where(df.rule.isin(["train", "geometry", "restricted"]),
                          "other (" + ", ".join(sorted({_rule_group(r) for r in counts if r not in modelled})) + ")")
    for rule, g in df.groupby(group, sort=False):
        rows.append({"rule": rule, "jobs": len(g), "cpu_h": g.cpu_s.sum() / 3600,
                     "longest_cpu_h": g.cpu_s.max() / 3600, "gpu_h_estimate": g.gpu_s.sum() / 3600})
    total = df.cpu_s.sum()

    def longest(pred) -> float:
        sel = df[df.rule.map(pred)]
        return float(sel.cpu_s.max()) if len(sel) else 0.0

    # longest chains: subset -> train -> geometry -> collect -> figure, and subset -> train(main) ->
    # restricted -> collect -> figure (per run, so a long train is paired with its own geometry)
    per_run = df[df.rule.isin(["train", "geometry", "restricted"])].pivot_table(
        index="run", columns="rule", values="cpu_s", aggfunc="max").fillna(0.0)
    head = longest(lambda r: r == "subset")
    fig = longest(lambda r: _rule_group(r) == "figures")
    chain_geo = head + float((per_run.get("train", 0) + per_run.get("geometry", 0)).max()) + \
        longest(lambda r: r == "collect_geometry") + fig
    chain_res = head + float((per_run.get("train", 0) + per_run.get("restricted", 0))[
        per_run.get("restricted", pd.Series(0.0, index=per_run.index)) > 0].max()) + \
        longest(lambda r: r == "collect_restricted") + fig
    chain = max(chain_geo, chain_res if chain_res == chain_res else 0.0)
    assumptions = [f"HVPs per eigenpair per checkpoint (quick run): "
                   f"{ {k: round(v, 1) for k, v in per_pair.items()} or 'none found, 3 assumed'}",
                   f"HVPs per Dom/Bulk refresh (quick run): "
                   f"{ {k: round(v, 1) for k, v in per_refresh.items()} or 'none found, 3k assumed'}"]
    gtotal = df.gpu_s.sum()
    summary = {"cpu_h": total / 3600, "gpu_h_estimate": gtotal / 3600, "critical_path_h": chain / 3600,
               "slurm100_lower_h": max(chain, total / 100) / 3600, "slurm100_upper_h": (chain + total / 100) / 3600,
               "jobs": len(df), "assumptions": assumptions}
    return rows, summary


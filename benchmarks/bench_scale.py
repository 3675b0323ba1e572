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
  estimators job  modelled, not measured: per evaluated checkpoint, 2 x max(krylov_hvps) HVPs (a random-start and
                  a gap-start block Krylov, nested budgets) on hessian_examples, one full-batch gradient on the
                  subset, n = K*W minibatch gradients of b examples (noise PCA), and ceil(W/tau) replayed rounds
                  (tau local steps of all K workers);
  mechanism job   modelled, not measured: per checkpoint, per-example gradients on mechanism.examples (default
                  the subset) priced at the full-batch gradient's per-example cost (a lower bound: per-example
                  gradients are slower than one batched gradient, BENCHMARKS' mechanism section), for every run
                  of mechanism.experiments (main, tau_ablation, heterogeneity);
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

from sharpgaps.core import grid
from sharpgaps.core.specs import ESTIMATOR_EXPERIMENTS, config_default
from sharpgaps.engine import losses, models
from sharpgaps.engine.objective import FullBatchHVP
from sharpgaps.pipeline.jobcosts import read_tree_job_costs

MODELLED = ("train", "geometry", "restricted", "estimators", "mechanism")  # rules with a cost model (the rest:
# their mean job time in a finished run)
# The quick release's part `main` (its tables and job times) inside a checkout: config.quick.yaml's results_dir / main
QUICK_MAIN = Path("results/quick/main")
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
    from sharpgaps.core.atomic import read_frame

    per_pair, per_refresh = {}, {}
    main = workdir / QUICK_MAIN / "tables/main_geometry.parquet"
    if main.exists():
        df = read_frame(main)
        for setting, g in df.groupby("setting"):
            n = g[g.metric == "n_hvp"].value.median()
            pairs = g[g.metric == "lambda"].groupby(["seed", "round"]).size().median()  # eigenpairs per checkpoint
            per_pair[setting] = float(n / pairs)
    table = workdir / QUICK_MAIN / "tables/restricted.parquet"
    if table.exists():
        df = read_frame(table)
        last = df[df["mode"].isin(["dom", "bulk"])].sort_values("round").groupby(["setting", "mode"]).tail(1)
        for setting, g in last.groupby("setting"):
            per_refresh[setting] = float((g.n_hvp / g.refreshes.clip(lower=1)).mean())
    return per_pair, per_refresh


def _other_rule_seconds(workdir: Path) -> dict[str, float]:
    """Mean job seconds per benchmark directory (rule group) of a finished run."""
    return read_tree_job_costs(workdir / QUICK_MAIN.parent).groupby("rule").s.mean().to_dict()


def _rule_group(rule: str) -> str:
    if rule.startswith("fig") or rule == "results_summary":
        return "figures"
    return "collect" if rule.startswith("collect") else rule


def paper_jobs(cfg: dict, counts: dict[str, int], unit: dict[str, dict], gpu: dict[str, dict],
               workdir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every job of the paper DAG with its projected CPU and GPU-estimate seconds (rule, setting, run, cpu_s, gpu_s;
    a restricted run has one row per mode), and the assumptions taken from the quick run. `unit[model]`: step_s
    (K=8, b=50 local step), hvp_s_per_ex, grad_s_per_ex, build_s_per_ex, removal_s."""
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
    est_cfg = cfg.get("estimators") or {}
    measured = [e for e in ESTIMATOR_EXPERIMENTS if e in cfg["experiments"]]
    for run in (grid.expand_runs(cfg, measured) if "estimators" in counts else []):
        s, rid = run["setting"], grid.run_id(run)
        u, gu = unit[cfg["settings"][s]["model"]], gpu[cfg["settings"][s]["model"]]
        n_h = geo(s).get("hessian_examples") or cfg["subset"]["n_train"]
        n_vec = est_cfg.get("n") or run["K"] * run["window"]
        hvps = 2 * max(est_cfg.get("krylov_hvps") or [10, 20, 40])
        replay_steps = -(-n_vec // (run["K"] * run["tau"])) * run["tau"]
        ckpts = min(run["checkpoints"]["count"], est_cfg.get("last_checkpoints") or run["checkpoints"]["count"])
        grad_ex = cfg["subset"]["n_train"] + n_vec * run["b"]
        scale = run["K"] * run["b"] / 400
        cpu = ckpts * (hvps * u["hvp_s_per_ex"] * n_h + u["build_s_per_ex"] * n_h + grad_ex * u["grad_s_per_ex"]
                       + replay_steps * u["step_s"] * scale)
        gpu_s = ckpts * (hvps * gpu_seconds(gu["hvp_flops_per_ex"] * n_h, gu["hvp_ops"])
                         + (1 + n_vec) * gpu_seconds(gu["grad_flops_per_ex"] * grad_ex / (1 + n_vec), gu["grad_ops"])
                         + replay_steps * gpu_seconds(gu["step_flops"] * scale, gu["step_ops"]))
        jobs.append(("estimators", s, rid, cpu, gpu_s))
    mech_cfg = cfg.get("mechanism") or {}
    mech_exps = [e for e in mech_cfg.get("experiments", config_default("mechanism", "experiments"))
                 if e in cfg["experiments"]]
    for run in (grid.expand_runs(cfg, mech_exps) if "mechanism" in counts and mech_exps else []):
        s, rid = run["setting"], grid.run_id(run)
        u, gu = unit[cfg["settings"][s]["model"]], gpu[cfg["settings"][s]["model"]]
        ex = ({**mech_cfg, **cfg["settings"][s].get("mechanism", {})}.get("examples")
              or cfg["subset"]["n_train"])
        ckpts, chunk = run["checkpoints"]["count"], mech_cfg.get("chunk_size", 256)  # vmapped chunks on a GPU
        jobs.append(("mechanism", s, rid, ckpts * ex * u["grad_s_per_ex"],
                     ckpts * -(-ex // chunk) * gpu_seconds(gu["grad_flops_per_ex"] * min(ex, chunk), gu["grad_ops"])))
    modelled = {j[0] for j in jobs}
    for rule, n in counts.items():
        if rule not in modelled:
            sec = other.get(_rule_group(rule), 0.0) * (2 if rule == "theory" else 1)  # paper theory: 2x quick rounds
            jobs += [(rule, "-", "-", sec, sec)] * n  # CPU-side work: the same next to a GPU
    assumptions = [f"HVPs per eigenpair per checkpoint (quick run): "
                   f"{ {k: round(v, 1) for k, v in per_pair.items()} or 'none found, 3 assumed'}",
                   f"HVPs per Dom/Bulk refresh (quick run): "
                   f"{ {k: round(v, 1) for k, v in per_refresh.items()} or 'none found, 3k assumed'}"]
    return pd.DataFrame(jobs, columns=["rule", "setting", "run", "cpu_s", "gpu_s"]), assumptions


def paper_scale(cfg: dict, counts: dict[str, int], unit: dict[str, dict], gpu: dict[str, dict],
                workdir: Path, measured: pd.DataFrame | None = None) -> tuple[list[dict], dict]:
    """Per-rule CPU and GPU-estimate hours of the paper DAG (paper_jobs), and the SLURM bounds; with ``measured``
    (measured_paper_jobs), the projection checked against the paper-scale jobs that ran (summary["check"])."""
    df, assumptions = paper_jobs(cfg, counts, unit, gpu, workdir)
    rows = []
    modelled = set(df.rule) & set(MODELLED)
    group = df.rule.where(df.rule.isin(list(MODELLED)),
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
    per_run = df[df.rule.isin(list(MODELLED))].pivot_table(
        index="run", columns="rule", values="cpu_s", aggfunc="max").fillna(0.0)
    after_geo = pd.concat([per_run.get(r, pd.Series(0.0, index=per_run.index)) for r in ("estimators", "mechanism")],
                          axis=1).max(axis=1)  # both start once the run's geometry job is done
    head = longest(lambda r: r == "subset")
    fig = longest(lambda r: _rule_group(r) == "figures")
    chain_geo = head + float((per_run.get("train", 0) + per_run.get("geometry", 0) + after_geo).max()) + \
        longest(lambda r: r == "collect_geometry") + fig
    chain_res = head + float((per_run.get("train", 0) + per_run.get("restricted", 0))[
        per_run.get("restricted", pd.Series(0.0, index=per_run.index)) > 0].max()) + \
        longest(lambda r: r == "collect_restricted") + fig
    chain = max(chain_geo, chain_res if chain_res == chain_res else 0.0)
    gtotal = df.gpu_s.sum()
    summary = {"cpu_h": total / 3600, "gpu_h_estimate": gtotal / 3600, "critical_path_h": chain / 3600,
               "slurm100_lower_h": max(chain, total / 100) / 3600, "slurm100_upper_h": (chain + total / 100) / 3600,
               "jobs": len(df), "assumptions": assumptions,
               "job_counts": {r: int(n) for r, n in df.rule.value_counts().items()}}
    if measured is not None and len(measured):
        summary["check"] = projection_check(df, measured)
    return rows, summary


def measured_paper_jobs(manifest: Path) -> pd.DataFrame:
    """The paper-scale jobs that ran, from the release parts' records in the paper scale's MANIFEST.json (their
    `job_s`): rule, setting, run, s, part. Empty when no part has run."""
    from sharpgaps.pipeline.jobcosts import job_run
    from sharpgaps.pipeline.manifest import read_parts

    rows = [{"rule": job.split("/", 1)[0], **dict(zip(("setting", "run"), job_run(job))), "s": s, "part": part}
            for part, entry in (read_parts(manifest).items() if manifest.is_file() else ())
            for job, s in entry.get("job_s", {}).items()]
    return pd.DataFrame(rows, columns=["rule", "setting", "run", "s", "part"])


def projection_check(df: pd.DataFrame, measured: pd.DataFrame) -> dict:
    """Each modelled stage's projected seconds (paper_jobs) against the measured ones, over the jobs that ran, and
    the whole projection corrected with it: a measured job counts as measured, every other job of the stage as
    projected x the stage's ratio (measured / projected over the jobs that ran)."""
    key = ["rule", "setting", "run"]
    projected = df[df.rule.isin(list(MODELLED))].groupby(key).cpu_s.sum()  # a restricted run's modes summed
    ran = measured[measured.rule.isin(list(MODELLED))].groupby(key).s.sum()
    both = pd.concat({"projected_s": projected, "measured_s": ran}, axis=1, join="inner")
    stages = []
    for rule, g in both.groupby(level="rule", sort=False):
        ratio = g.measured_s.sum() / g.projected_s.sum()
        every = projected.loc[rule]
        done = every.index.isin(g.index.droplevel("rule"))
        per_job = g.measured_s / g.projected_s
        stages.append({"rule": rule, "jobs": len(g), "settings": sorted(set(g.index.get_level_values("setting"))),
                       "projected_s": float(g.projected_s.sum()), "measured_s": float(g.measured_s.sum()),
                       "ratio": float(ratio), "job_ratio_median": float(per_job.median()),
                       "job_ratio_range": [float(per_job.min()), float(per_job.max())],
                       "paper_cpu_h": float(every.sum() / 3600),
                       "corrected_cpu_h": float((g.measured_s.sum() + every[~done].sum() * ratio) / 3600)})
    unchecked = df.cpu_s.sum() - sum(projected.loc[s["rule"]].sum() for s in stages)
    return {"stages": stages, "parts": sorted(set(measured.part)),
            "settings": sorted(set(both.index.get_level_values("setting"))),
            "unmatched_jobs": int(len(ran) - len(both)),
            "cpu_h": float(df.cpu_s.sum() / 3600),
            "corrected_cpu_h": float((unchecked + sum(s["corrected_cpu_h"] * 3600 for s in stages)) / 3600)}



# ----------------------------------------------------------------------------- rendering (also from the recorded JSON)

REPO = Path(__file__).resolve().parents[1]
README_ROW = "| paper | `make all` |"


def units_from_record(results: dict, arpack_ms: dict[str, float], threads: int = 2) -> dict[str, dict]:
    """The per-model CPU unit costs scale_section derives from the recorded rows (BENCHMARKS.json: `hvp`, `cuts`),
    with ARPACK's step in ms as recorded; no measurement."""
    classes = {"fc_tanh": 10, "cnn_relu": 10, "transformer": 2}
    unit = {}
    for name in classes:
        hvp = {r["op"]: r for r in results["hvp"] if r["model"] == name}
        step = next(r for r in results["cuts"] if r["cut"].startswith("training step") and r["case"].startswith(name)
                    and r["threads"] == threads
                    and r["variant"] == ("after" if r["default"] == "per-worker" else "before"))
        removal = next(r for r in results["cuts"] if r["cut"].startswith("random removal")
                       and r["case"].startswith(name) and r["variant"] == "after")
        n = hvp["gradient"]["n"]
        unit[name] = {"step_s": step["median"] * 400 / (8 * step["b"]),
                      "hvp_s_per_ex": hvp["hvp_cached_graph"]["median_s"] / n,
                      "grad_s_per_ex": hvp["gradient"]["median_s"] / n,
                      "build_s_per_ex": hvp["cached_graph_build"]["median_s"] / n,
                      "removal_s": removal["median"], "classes": classes[name], "n_measured": n,
                      "arpack_k": 20, "arpack_step_s": arpack_ms[name] / 1e3}
    return unit


def section(rows: list[dict], summ: dict, unit: dict) -> str:
    """The "Scale on paper" section of docs/BENCHMARKS.md."""
    counts = summ.get("job_counts", {})
    lines = ["## Scale on paper: the paper-scale run (config.yaml) projected from measured unit costs", "",
             "CPU hours = job wall hours at this run's torch threads on this machine, from unit costs measured "
             "above at paper sizes (one local step of K=8 workers at b=50; HVP, gradient and graph build per "
             "example; random removal at the paper's d), times the counts config.yaml implies "
             "(benchmarks/bench_scale.py states the model). HVP/gradient costs are scaled linearly from the "
             "examples measured (" + ", ".join(f"{k} {v['n_measured']}" for k, v in unit.items()) +
             ") to the 5,000 of the paper. Every HVP of a Lanczos solve also pays ARPACK's own step (measured "
             "per model with a free operator at the paper's d and k + extra = 20, in config.yaml's lanczos_dtype: "
             + ", ".join(f"{k} {v['arpack_step_s'] * 1e3:.1f} ms" for k, v in unit.items()) +
             "), on the CPU also next to a GPU. The `estimators` and `mechanism` jobs are **modelled, not "
             "measured**: estimators per checkpoint = 2 x max(krylov_hvps) HVPs + graph build + one full-batch "
             "gradient + K*W minibatch gradients + ceil(W/tau) replayed rounds; mechanism per checkpoint = "
             "per-example gradients on `mechanism.examples` priced at the batched gradient's per-example cost (a "
             "lower bound). Rules without a model (subset, theory, collect, figures) take their mean job time in "
             "the finished run's benchmark files.", "",
             f"**GPU column: estimate, not measured** (no GPU was lent): FLOPs counted by "
             f"torch.utils.flop_counter at paper sizes / ({GPU_EFFICIENCY:.0%} of {GPU_PEAK_FLOPS / 1e12:.0f} "
             f"TFLOP/s, an H100's FP32 rate), at least {GPU_LAUNCH_S * 1e6:.0f} us per aten op (launch "
             "latency), one batched step for all K workers; CPU-side rules unchanged.", "",
             "| rule | jobs | CPU h | longest job h | GPU h (estimate) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['rule']} | {r['jobs']} | {r['cpu_h']:.1f} | {r['longest_cpu_h']:.2f} | "
                     f"{r['gpu_h_estimate']:.2f} |")
    lines.append(f"| **total** | {summ['jobs']} | **{summ['cpu_h']:.0f}** | | **{summ['gpu_h_estimate']:.1f}** |")
    lines += ["", f"- one machine like this one, jobs one after another: {summ['cpu_h']:.0f} h "
              f"({summ['cpu_h'] / 24:.1f} days)",
              f"- one GPU (estimate, not measured): {summ['gpu_h_estimate']:.1f} h",
              f"- SLURM, 100 concurrent jobs: longest dependency chain (subset -> train -> geometry -> estimators "
              f"or mechanism -> collect -> figure) {summ['critical_path_h']:.1f} h; makespan between max(chain, "
              f"total/100) = {summ['slurm100_lower_h']:.1f} h and chain + total/100 = {summ['slurm100_upper_h']:.1f} h",
              *[f"- {a}" for a in summ["assumptions"]],
              "- jobs per rule of config.yaml's DAG (a dry run): " + ", ".join(f"{r} {n}" for r, n in counts.items()),
              "- not modelled: memory. The paper's geometry keeps the second-order graph of all 5,000 examples "
              "(`hessian_examples: null`, `chunk_size: null`); for the transformer the one-chunk gradient alone "
              "peaked near 10 GB (Cuts table), so set `geometry.chunk_size` there or expect swapping. The chain "
              "is one geometry job because its checkpoints run in sequence (each warm-starts the next)."]
    if "check" in summ:
        lines += ["", *check_lines(summ["check"])]
    return "\n".join(lines)


def check_lines(check: dict) -> list[str]:
    """The projection against the paper-scale jobs that ran (projection_check), as a table and its reading."""
    lines = [f"### The projection against the measured paper-scale jobs ({', '.join(check['settings'])})", "",
             f"The jobs of release part(s) {', '.join(check['parts'])} (paper_figures/MANIFEST.json, each job's "
             "seconds from its `benchmark:` file), against this projection of the same jobs. ratio = measured / "
             "projected over the jobs that ran; the corrected column counts those jobs as measured and every other "
             "job of the stage (the other settings' too) at projected x ratio. Applying the measured setting's ratio "
             "to the other models is an assumption, not a measurement.", "",
             "| stage | jobs measured | projected s | measured s | ratio | per-job ratio, median (min-max) | "
             "paper CPU h projected | corrected |", "|---|---:|---:|---:|---:|---|---:|---:|"]
    for st in check["stages"]:
        lo, hi = st["job_ratio_range"]
        lines.append(f"| {st['rule']} | {st['jobs']} | {st['projected_s']:,.0f} | {st['measured_s']:,.0f} | "
                     f"{st['ratio']:.2f} | {st['job_ratio_median']:.2f} ({lo:.2f}-{hi:.2f}) | "
                     f"{st['paper_cpu_h']:.1f} | {st['corrected_cpu_h']:.1f} |")
    lines += ["", f"- the whole paper-scale projection: {check['cpu_h']:.0f} CPU h as projected, "
              f"{check['corrected_cpu_h']:.0f} CPU h corrected (rules not modelled unchanged)"]
    if check["unmatched_jobs"]:
        lines.append(f"- {check['unmatched_jobs']} measured job(s) of the modelled stages are not in config.yaml's "
                     "DAG (another config ran them) and are left out")
    return lines


def readme_row(rows: list[dict], summ: dict) -> str:
    """The paper row of the README's cost table, from the same projection."""
    parts = ", ".join(f"{r['rule']} {r['cpu_h']:.0f}" for r in sorted(rows, key=lambda r: -r["cpu_h"])
                      if r["cpu_h"] >= 0.5)
    check = summ.get("check")
    ran = (f"not run in full (part {', '.join(check['parts'])} ran: paper_figures/MANIFEST.json)" if check
           else "not run")
    return (f"{README_ROW} {ran}. Projected for config.yaml's DAG ({summ['jobs']} jobs, every seed and stage; "
            f"estimators and mechanism modelled from the unit costs, not measured) from unit costs measured at paper "
            f"sizes: {summ['cpu_h']:.0f} job-hours ({parts}; mechanism is a lower bound: it prices per-example "
            f"gradients at the batched gradient's per-example rate; docs/BENCHMARKS.md has the quick-scale "
            f"mechanism jobs as measured), so {summ['cpu_h'] / 24:.0f} days on one such machine, "
            f"or {summ['slurm100_lower_h']:.0f}-{summ['slurm100_upper_h']:.0f} h on a 100-job SLURM allocation (the "
            f"longest chain is {summ['critical_path_h']:.1f} h){_checked(summ)} | not modelled; set "
            f"`geometry.chunk_size` for the transformer | {summ['gpu_h_estimate']:.1f} h (FLOP count at {GPU_EFFICIENCY:.0%} of an H100's FP32 "
            "rate, plus ARPACK's CPU steps: an estimate) |")


def _checked(summ: dict) -> str:
    check = summ.get("check")
    if not check:
        return ""
    return (f"; corrected with the measured/projected ratio per stage of the {', '.join(check['settings'])} "
            "paper-scale jobs that ran (" + ", ".join(f"{st['rule']} {st['ratio']:.2f}x" for st in check["stages"]) +
            f"): {check['corrected_cpu_h']:.0f} job-hours")


def write_docs(rows: list[dict], summ: dict, unit: dict, bench_md: Path, readme: Path, bench_json: Path) -> None:
    """Replace the Scale-on-paper section of BENCHMARKS.md, its JSON record and the README's paper row."""
    import json

    text = bench_md.read_text()
    head = "## Scale on paper"
    a = text.index(head)
    b = text.index("\n## ", a + len(head))
    bench_md.write_text(text[:a] + section(rows, summ, unit) + "\n" + text[b:])
    record = json.loads(bench_json.read_text())
    record["paper_scale"] = rows + [{"rule": "summary", **summ, "unit": unit}]
    bench_json.write_text(json.dumps(record, indent=1, default=str))
    write_readme_row(rows, summ, readme)


def write_readme_row(rows: list[dict], summ: dict, readme: Path) -> None:
    """The README's paper row (its Cost table) from the projection."""
    lines = readme.read_text().splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if line.startswith(README_ROW))
    lines[i] = readme_row(rows, summ) + "\n"
    readme.write_text("".join(lines))


def recorded_units(record: dict, bench_md: Path) -> dict[str, dict]:
    """The CPU unit costs of the recorded run: from the JSON's own `unit` when it has one, else derived from its
    `hvp`/`cuts` rows with ARPACK's step as printed in BENCHMARKS.md (older records; 0.1 ms resolution)."""
    import re

    summ = next((r for r in record.get("paper_scale", []) if r.get("rule") == "summary"), {})
    if "unit" in summ:
        return summ["unit"]
    m = re.search(r"in config.yaml's lanczos_dtype: ([^)]*)\)", bench_md.read_text())
    if not m:
        raise SystemExit(f"{bench_md}: no recorded ARPACK step per model; rerun `make bench`")
    arpack = {k: float(v) for k, v in re.findall(r"(\w+) ([0-9.]+) ms", m.group(1))}
    return units_from_record(record, arpack)


def render(workdir: Path, bench_md: Path = REPO / "docs/BENCHMARKS.md", readme: Path = REPO / "README.md") -> dict:
    """Re-render the projection from the recorded unit costs (no timing): job counts from a dry run of config.yaml,
    FLOP counts (deterministic) for the GPU estimate, the quick run's HVP counts and rule times from ``workdir``."""
    import json

    import yaml

    from sharpgaps.data.sources import resolve_data_dir
    from sharpgaps.data.subsets import make_subset
    from sharpgaps.pipeline.config import validate

    bench_json = bench_md.with_suffix(".json")
    record = json.loads(bench_json.read_text())
    unit = recorded_units(record, bench_md)
    cfg = validate(yaml.safe_load((REPO / "config.yaml").read_text()), REPO / "workflow/schemas/config.schema.yaml")
    data_dir = resolve_data_dir(str(REPO.parent / "shared" / "data"))
    subsets = {"fc_tanh": make_subset("mnist", data_dir, n_train=600, seed=0, test_cap=100),
               "cnn_relu": make_subset("cifar10", data_dir, n_train=600, seed=0, test_cap=100),
               "transformer": make_subset("sst2", data_dir, n_train=600, seed=0, test_cap=100, max_len=50)}
    gpu = unit_gpu_costs(subsets, b=50, n_hvp=64)
    counts = paper_job_counts(REPO / "config.yaml", REPO)
    measured = measured_paper_jobs(REPO / cfg["figures"]["dir"] / "MANIFEST.json")  # the paper-scale parts that ran
    rows, summ = paper_scale(cfg, counts, unit, gpu, workdir, measured)
    write_docs(rows, summ, unit, bench_md, readme, bench_json)
    return {"rows": rows, "summary": summ}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Re-render docs/BENCHMARKS.md's Scale-on-paper section, its JSON record "
                                 "and the README's paper row from the recorded unit costs (no timing).")
    ap.add_argument("--workdir", default=str(REPO), help="a finished quick run (its tables and benchmark files)")
    a = ap.parse_args()
    out = render(Path(a.workdir))
    print("\n".join(f"{r['rule']}: {r['jobs']} jobs, {r['cpu_h']:.1f} CPU h, {r['gpu_h_estimate']:.2f} GPU h (estimate)"
                    for r in out["rows"]))

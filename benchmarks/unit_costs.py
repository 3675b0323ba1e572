"""The paper-scale unit costs per model, timed on one device: what benchmarks/bench_scale.py's cost model multiplies.

For each model of config.yaml's `main` settings, on the paper's subset (its n_train, vocabulary and arch), with the
project's own engine, objective and eigensolver:
  step      one local step of all K workers at b (config.yaml: K=8, b=50), the engine the train job builds;
  gradient  one full-batch gradient on `examples` examples, chunked as the geometry job takes g;
  build     the Hessian operator's cached first-order graph on those examples (its first gradient);
  hvp       one Hessian-vector product on that graph;
  lanczos   one step of eigsh over that operator at the geometry job's k + extra and working precision: the HVP,
            the vector's trips between device and host, and ARPACK's own step (on the CPU, next to a GPU too);
  arpack    ARPACK's own step alone at that d and k (bench_hessian.arpack_step_seconds).
Gradient, HVP and Lanczos run with TF32 off, as the geometry job does. Medians over interleaved repeats.
"""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

import torch
import yaml
from bench_hessian import arpack_step_seconds, interleaved_times  # benchmarks/ is on sys.path

from sharpgaps.core import grid
from sharpgaps.core.specs import GeometrySpec, RunSpec, geometry_params
from sharpgaps.curvature.hessian import top_eigenpairs
from sharpgaps.data.sources import resolve_data_dir
from sharpgaps.data.subsets import make_subset
from sharpgaps.engine import losses, models
from sharpgaps.engine.devices import no_tf32
from sharpgaps.engine.localsgd import SimulatedLocalSGD
from sharpgaps.engine.objective import Objective
from sharpgaps.pipeline.config import validate

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIG = REPO / "config.yaml"
LANCZOS_RESTARTS = 1  # eigsh's maxiter: one pass of about 2(k + extra) + 1 steps bounds the solve's time


def paper_config() -> dict:
    return validate(yaml.safe_load(PAPER_CONFIG.read_text()), REPO / "workflow/schemas/config.schema.yaml")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lanczos_step(H, k: int, tol: float, dtype: str) -> dict:
    """Seconds per step of a real eigsh solve over ``H`` (capped at LANCZOS_RESTARTS restarts; an unconverged
    solve is expected and costs the same per step)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "only j/k eigenpairs converged": the cap, not a fault
        ep = top_eigenpairs(H, k=k, tol=tol, dtype=dtype, maxiter=LANCZOS_RESTARTS, compute_residuals=False)
    return {"lanczos_step_s": ep.seconds / ep.n_hvp, "lanczos_steps": ep.n_hvp}


def time_model(setting: str, cfg: dict, subset: dict, device: torch.device, examples: int, repeats: int,
               steps: int) -> dict:
    """The unit costs of one setting's model on ``device`` (see the module docstring)."""
    s = cfg["settings"][setting]
    run = grid.setting_defaults(cfg, setting)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    data = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in subset.items()}
    model = models.build_model(s["model"], data["meta"], seed=0, **s.get("arch", {})).to(device)
    loss_fn = losses.get_loss(run["loss"])
    theta = {n: p.detach() for n, p in model.named_parameters()}
    k = data["meta"]["n_classes"]
    geo = GeometrySpec.from_config(geometry_params(cfg, setting), k)
    n = min(examples, len(data["x_train"]))
    objective = Objective(model, loss_fn, data["x_train"][:n], data["y_train"][:n],
                          **{**geo.objective_options(), "hessian_examples": None})
    spec = RunSpec(K=run["K"], tau=1, b=run["b"], lr=run["lr"], rounds=1, window=1, seed=0, checkpoints=(1,))
    engine = SimulatedLocalSGD(model, loss_fn, data["x_train"], data["y_train"], spec)
    step_ts = [t / steps for t in interleaved_times(
        {"step": lambda: [engine.local_step(i) for i in range(steps)]}, repeats)["step"]]
    with no_tf32():
        ts = interleaved_times({"gradient": lambda: objective.gradient(theta),
                                "build": lambda: objective.hessian(theta).gradient()}, repeats)
        H = objective.hessian(theta)
        H.gradient()  # the cached graph, built once for the products below
        v = torch.randn(H.dim, generator=torch.Generator().manual_seed(0)).to(device)
        ts.update(interleaved_times({"hvp": lambda: H.hvp(v)}, repeats))
        _sync(device)
        lanczos = lanczos_step(H, geo.k + geo.extra, geo.tol, geo.lanczos_dtype)
    arpack = arpack_step_seconds(H.dim, geo.k + geo.extra, geo.lanczos_dtype, repeats=1)
    row = {"setting": setting, "model": s["model"], "dataset": s["dataset"], "device": str(device), "d": H.dim,
           "classes": k, "K": spec.K, "b": spec.b, "examples": n, "repeats": repeats, "steps": steps,
           "lanczos_k": geo.k + geo.extra, "lanczos_dtype": geo.lanczos_dtype, "step_s": statistics.median(step_ts),
           **{f"{op}_s": statistics.median(t) for op, t in ts.items()}, **lanczos, "arpack_step_s": arpack,
           "ranges_s": {"step": [min(step_ts), max(step_ts)], **{op: [min(t), max(t)] for op, t in ts.items()}},
           # what bench_scale.py does not model: the device memory of the cached graph on `examples` examples
           "peak_device_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}
    H.release()
    return row


def paper_subsets(cfg: dict, data_dir: Path, settings: list[str]) -> dict[str, dict]:
    """The paper's training subset of each setting's dataset (n_train, seed, max_len, min_freq of config.yaml: the
    vocabulary, hence the transformer's d, depends on them); a small test split, which no unit cost reads."""
    out = {}
    for setting in settings:
        ds = cfg["settings"][setting]["dataset"]
        d = cfg["datasets"][ds]
        out[setting] = make_subset(ds, data_dir, n_train=cfg["subset"]["n_train"], seed=cfg["subset"]["seed"],
                                   test_cap=10, max_len=d["max_len"], min_freq=d["min_freq"])
    return out


def unit_costs(device: torch.device, examples: int, repeats: int = 5, steps: int = 3,
               data_dir: Path | None = None, log=print) -> list[dict]:
    """One row per setting of config.yaml's `main` experiment (one per model)."""
    cfg = paper_config()
    data_dir = resolve_data_dir(data_dir or str((REPO / cfg["data_dir"]).resolve()))
    settings = cfg["experiments"]["main"]["settings"]
    rows = []
    for setting, subset in paper_subsets(cfg, data_dir, settings).items():
        t0 = time.perf_counter()
        rows.append(time_model(setting, cfg, subset, device, examples, repeats, steps))
        r = rows[-1]
        log(f"{r['model']}: step {r['step_s'] * 1e3:.2f} ms, gradient {r['gradient_s'] * 1e3:.2f} ms, "
            f"HVP {r['hvp_s'] * 1e3:.2f} ms, Lanczos step {r['lanczos_step_s'] * 1e3:.2f} ms "
            f"({r['examples']} examples; {time.perf_counter() - t0:.0f} s)")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def bench_scale_units(rows: list[dict]) -> dict[str, dict]:
    """The rows in bench_scale.paper_scale's `unit` form (per-example costs scaled linearly from `examples`; the
    random removal, a CPU-side cost, is not timed here)."""
    return {r["model"]: {"step_s": r["step_s"] * 400 / (r["K"] * r["b"]), "hvp_s_per_ex": r["hvp_s"] / r["examples"],
                         "grad_s_per_ex": r["gradient_s"] / r["examples"],
                         "build_s_per_ex": r["build_s"] / r["examples"], "classes": r["classes"],
                         "n_measured": r["examples"], "arpack_k": r["lanczos_k"], "arpack_step_s": r["arpack_step_s"],
                         "lanczos_step_s": r["lanczos_step_s"]} for r in rows}

"""Cost of the restricted-update runs: HVPs and wall time per round, Hessian Dom/Bulk vs gap Dom/Bulk.

Two sources: a short run of every mode measured here (FC-tanh on MNIST, modes interleaved repeat by
repeat), and the per-mode totals of a finished run's restricted table (results/tables/restricted.parquet).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from sharpgaps.core.specs import MODES, RunSpec
from sharpgaps.engine import losses, models
from sharpgaps.engine.localsgd import SimulatedLocalSGD, flatten
from sharpgaps.engine.objective import Objective
from sharpgaps.studies.restricted import RestrictSpec, restricted_run


def _branch(model, subset, run: RunSpec, rounds: int) -> dict:
    """A branch checkpoint: `rounds` rounds of plain Local SGD from the model's init."""
    eng = SimulatedLocalSGD(model, losses.mse_onehot, subset["x_train"], subset["y_train"], run)
    for r in range(rounds):
        for s in range(run.tau):
            eng.local_step(r * run.tau + s)
        theta, _ = eng.end_round()
    return {"round": rounds, "theta": flatten(theta)}


def bench_restricted(subset: dict, rounds: int = 20, refresh: int = 10, branch_rounds: int = 10,
                     repeats: int = 3) -> list[dict]:
    """One short restricted run per mode and repeat (fresh work dir each); per-round costs."""
    model = models.build_model("fc_tanh", subset["meta"], seed=0)
    run = RunSpec(K=8, tau=8, b=50, lr=0.05, rounds=branch_rounds + rounds, window=4, seed=0, checkpoints=())
    branch = _branch(model, subset, run, branch_rounds)
    k = subset["meta"]["n_classes"]
    out = {m: [] for m in MODES}
    for _ in range(repeats):
        for mode in MODES:  # interleaved: background load hits every mode alike
            spec = RestrictSpec(mode=mode, rounds=rounds, refresh=refresh, eval_every=refresh, k=k, window=4)
            with tempfile.TemporaryDirectory() as tmp:
                df = restricted_run(Objective.from_subset(model, losses.mse_onehot, subset, hessian_examples=spec.hessian_examples),
                                    spec, branch, run, Path(tmp), progress=False)
            out[mode].append(df.iloc[-1])
    rows = []
    for mode, last in out.items():
        per_round = [float(r["seconds"]) / rounds for r in last]
        rows.append({"source": "measured", "setting": f"mnist_fc ({len(subset['x_train'])} examples)",
                     "mode": mode, "rounds": rounds, "refreshes": int(last[0]["refreshes"]),
                     "n_hvp": int(last[0]["n_hvp"]), "probe_steps": int(last[0]["probe_steps"]),
                     "hvp_per_round": last[0]["n_hvp"] / rounds, "probe_steps_per_round": last[0]["probe_steps"] / rounds,
                     "s_per_round": statistics.median(per_round), "s_per_round_min": min(per_round),
                     "s_per_round_max": max(per_round),
                     "refresh_share": statistics.median(float(r["refresh_seconds"] / r["seconds"]) for r in last)})
    return _relative_to_none(rows)


def restricted_table_costs(table: Path, source: str) -> list[dict]:
    """Per setting and mode of a finished run's restricted table: its last row's cumulative counts;
    ``source`` names the table in the rows (a path relative to the run, not this machine's)."""
    from sharpgaps.core.atomic import read_frame

    df = read_frame(table)
    rows = []
    for (setting, mode), g in df.groupby(["setting", "mode"], sort=True):
        last = g.sort_values("round").iloc[-1]
        r = int(last["round"])
        rows.append({"source": source, "setting": setting, "mode": mode, "rounds": r,
                     "refreshes": int(last["refreshes"]), "n_hvp": int(last["n_hvp"]),
                     "probe_steps": int(last["probe_steps"]), "hvp_per_round": last["n_hvp"] / r,
                     "probe_steps_per_round": last["probe_steps"] / r, "s_per_round": last["seconds"] / r,
                     "s_per_round_min": last["seconds"] / r, "s_per_round_max": last["seconds"] / r,
                     "refresh_share": last["refresh_seconds"] / last["seconds"]})
    return _relative_to_none(rows)


def _relative_to_none(rows: list[dict]) -> list[dict]:
    none = {(r["source"], r["setting"]): r["s_per_round"] for r in rows if r["mode"] == "none"}
    for r in rows:
        r["vs_none"] = r["s_per_round"] / none.get((r["source"], r["setting"]), float("nan"))
    return rows


def restricted_lines(rows: list[dict]) -> list[str]:
    lines = ["| source | setting | mode | rounds | HVPs | HVPs / round | probe steps / round | s / round "
             "(min-max) | refresh share | / none |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rng = ("" if r["s_per_round_min"] == r["s_per_round_max"]
               else f" ({r['s_per_round_min']:.3f}-{r['s_per_round_max']:.3f})")
        lines.append(f"| {'measured here' if r['source'] == 'measured' else 'quick run'} | {r['setting']} | "
                     f"{r['mode']} | {r['rounds']} | {r['n_hvp']} | {r['hvp_per_round']:.1f} | "
                     f"{r['probe_steps_per_round']:.1f} | {r['s_per_round']:.3f}{rng} | "
                     f"{100 * r['refresh_share']:.0f}% | {r['vs_none']:.2f} |")
    return lines


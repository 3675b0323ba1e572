"""The experiment grid: which runs a config asks for, their path ids and checkpoint rounds."""

from __future__ import annotations

import hashlib
import itertools
import re

import numpy as np

TRAIN_KEYS = ("K", "tau", "b", "lr", "local_steps", "window", "loss", "checkpoints")
RUN_ID = re.compile(r"K(?P<K>\d+)_tau(?P<tau>\d+)_b(?P<b>\d+)_lr(?P<lr>[0-9.e+-]+)_(?P<loss>mse|ce)"
                    r"_T(?P<local_steps>\d+)_W(?P<window>\d+)_s(?P<seed>\d+)")
# The same shape without named groups, for Snakemake's wildcard constraint.
RUN_ID_WILDCARD = re.sub(r"\(\?P<\w+>", "(", RUN_ID.pattern)


def fmt_float(x: float) -> str:
    return format(float(x), "g")


def run_id(run: dict) -> str:
    """Every parameter that changes a run's numbers appears in its path."""
    return (f"K{run['K']}_tau{run['tau']}_b{run['b']}_lr{fmt_float(run['lr'])}_{run['loss']}"
            f"_T{run['local_steps']}_W{run['window']}_s{run['seed']}")


def parse_run_id(text: str) -> dict:
    m = RUN_ID.fullmatch(text)
    if not m:
        raise ValueError(f"not a run id: '{text}' (expected e.g. K8_tau8_b50_lr0.05_mse_T20000_W4_s0)")
    d = m.groupdict()
    out = {k: int(v) for k, v in d.items() if k not in ("lr", "loss")}
    out.update(lr=float(d["lr"]), loss=d["loss"])
    return out


def setting_defaults(config: dict, setting: str) -> dict:
    s = config["settings"][setting]
    run = {k: v for k, v in config["train"].items() if k != "seeds"}
    run.update({k: v for k, v in s.get("train", {}).items() if k != "seeds"})
    run["lr"] = s.get("train", {}).get("lr", s["lr"])
    run["seeds"] = s.get("train", {}).get("seeds", config["train"]["seeds"])
    return run


def expand_runs(config: dict, experiments: list[str] | None = None, strict: bool = True) -> list[dict]:
    """All runs of the named experiments (default: all), deduplicated, in a stable order."""
    seen, runs = set(), []
    for name in experiments or list(config["experiments"]):
        exp = config["experiments"][name]
        for setting in exp["settings"]:
            base = setting_defaults(config, setting)
            own = exp.get("per_setting", {}).get(setting, {})
            axes = {k: own.get(k, exp.get(k, [base[k]])) for k in ("K", "tau", "b")}
            for K, tau, b, seed in itertools.product(axes["K"], axes["tau"], axes["b"], base["seeds"]):
                run = {**{k: base[k] for k in TRAIN_KEYS}, "K": K, "tau": tau, "b": b, "seed": seed,
                       "setting": setting}
                key = (setting, run_id(run))
                if key not in seen:
                    seen.add(key)
                    runs.append(run)
    return runs


def checkpoint_rounds(rounds: int, window: int, checkpoints: dict) -> list[int]:
    """Explicit rounds, or ``count`` rounds from ``window`` (a full gap window) to the last round.

    Log spacing puts more checkpoints early, where the geometry changes fastest.
    """
    if checkpoints.get("rounds"):
        return sorted(set(int(r) for r in checkpoints["rounds"]))
    count = checkpoints.get("count", 20)
    lo = min(window, rounds)
    if checkpoints.get("spacing", "log") == "log":
        pts = np.geomspace(lo, rounds, count)
    else:
        pts = np.linspace(lo, rounds, count)
    return sorted(set(int(round(p)) for p in pts) | {rounds})


def digest(text: str, n: int = 12) -> str:
    """A short sha256 of a text (a path tag, a resume state's spec key)."""
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def run_info(run: dict) -> dict:
    """The descriptive part of a run recorded in its checkpoints and run.json."""
    return {k: run[k] for k in ("setting", "model", "dataset", "loss", "local_steps") if k in run}

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


def exact_float(x: float) -> str:
    """A float for a path that reads back exactly: float(exact_float(x)) == x.

    The short %g form where it is exact (0.05, 1e-05: the paths of every existing run), else the
    shortest exact repr (0.0123456789, where %g would round to 0.0123457 and train another lr)."""
    short = format(float(x), "g")
    return short if float(short) == float(x) else repr(float(x))


def exact_int(x: int) -> str:
    """An integer for a path; refuses a non-integral value instead of writing one the run id cannot parse."""
    if int(x) != x:
        raise ValueError(f"{x!r} is not an integer")
    return str(int(x))


def run_id(run: dict) -> str:
    """Every parameter that changes a run's numbers appears in its path, exactly (parse_run_id inverts it)."""
    i = {k: exact_int(run[k]) for k in ("K", "tau", "b", "local_steps", "window", "seed")}
    return (f"K{i['K']}_tau{i['tau']}_b{i['b']}_lr{exact_float(run['lr'])}_{run['loss']}"
            f"_T{i['local_steps']}_W{i['window']}_s{i['seed']}")


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
            axes["seeds"] = own.get("seeds", exp.get("seeds", base["seeds"]))
            match = exp.get("match", "none")
            for K, tau, b, seed in itertools.product(axes["K"], axes["tau"], axes["b"], axes["seeds"]):
                run = {**{k: base[k] for k in TRAIN_KEYS}, "K": K, "tau": tau, "b": b, "seed": seed,
                       "setting": setting, **matched(base, match, K, b, f"experiments.{name}.match")}
                key = (setting, run_id(run))
                if key not in seen:
                    seen.add(key)
                    runs.append(run)
    return runs


# What a sweep holds fixed besides its axis (experiments.<name>.match): "none" = the setting's window W and local
# steps; "gap_vectors" = (K-1)W, the gap matrix's rank, kept at the setting's by scaling W (rounded up) with K;
# "epochs" = local_steps * b, the examples each worker sees, kept at the setting's by scaling the local steps with b.
MATCHES = ("none", "gap_vectors", "epochs")


def matched(base: dict, match: str, K: int, b: int, key: str) -> dict:
    """The window or local steps a swept run takes so that what ``match`` names stays the setting's."""
    if match == "gap_vectors":
        return {"window": -(-base["window"] * (base["K"] - 1) // (K - 1))}
    if match == "epochs":
        steps, rest = divmod(base["local_steps"] * base["b"], b)
        if rest:
            raise ValueError(f"{key}: epochs cannot be matched at b = {b}: the setting's local_steps x b = "
                             f"{base['local_steps']} x {base['b']} is not a multiple of it; choose b that divides it")
        return {"local_steps": steps}
    if match != "none":
        raise ValueError(f"{key} is '{match}'; use one of {MATCHES}")
    return {}


def main_runs(config: dict, setting: str) -> list[dict]:
    """The parents of a setting's restricted runs: every seed of its first `main` configuration."""
    runs = [r for r in expand_runs(config, ["main"]) if r["setting"] == setting]
    first = {k: runs[0][k] for k in TRAIN_KEYS}
    return [r for r in runs if {k: r[k] for k in TRAIN_KEYS} == first]


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

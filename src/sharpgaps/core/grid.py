"""The experiment grid: which runs a config asks for, their path ids and checkpoint rounds."""

from __future__ import annotations

import hashlib
import itertools
import re

from .specs import OPTIONAL_RUN_KEYS, exact_float, exact_int, partition_momentum_problems, run_default
from .specs import checkpoint_rounds  # noqa: F401  (grid.checkpoint_rounds; its home is RunSpec's module)

OPTIONAL_KEYS = tuple(k for pair in OPTIONAL_RUN_KEYS for k in pair)
# A run's keys from the setting's `train` section; the OPTIONAL_KEYS only where they differ from plain IID SGD.
TRAIN_KEYS = ("K", "tau", "b", "lr", "local_steps", "window", "loss", "checkpoints", *OPTIONAL_KEYS)
# momentum_buffers in a run id
BUFFER_TAGS = {"average": "avg", "keep": "keep", "reset": "reset"}
RUN_ID = re.compile(r"K(?P<K>\d+)_tau(?P<tau>\d+)_b(?P<b>\d+)_lr(?P<lr>[0-9.e+-]+)_(?P<loss>mse|ce)"
                    r"_T(?P<local_steps>\d+)_W(?P<window>\d+)_s(?P<seed>\d+)"
                    # optional suffixes, present only off the defaults: Dirichlet shards, local momentum
                    r"(?:_dir(?P<alpha>[0-9.e+-]+))?"
                    r"(?:_mom(?P<momentum>[0-9.e+-]+)(?P<momentum_buffers>" + "|".join(BUFFER_TAGS.values()) + "))?"
                    # an experiment's own checkpoint count (experiments.<name>.checkpoint_count), off the setting's
                    r"(?:_ck(?P<checkpoint_count>\d+))?")
# The same shape without named groups, for Snakemake's wildcard constraint.
RUN_ID_WILDCARD = re.sub(r"\(\?P<\w+>", "(", RUN_ID.pattern)


# The columns that identify a run in every per-run table (geometry, estimators, mechanism); seeds are replicates.
RUN_COLUMNS = ("setting", "K", "tau", "b", "lr", "seed", "loss", "window")


def run_columns(run: dict | None) -> dict:
    """A run's identifying columns in its tables: RUN_COLUMNS, then its OPTIONAL_KEYS where they differ from plain
    IID SGD (a plain run's tables keep exactly their columns)."""
    run = run or {}
    return {**{key: run.get(key) for key in RUN_COLUMNS}, **optional_keys(run)}


def run_keys(table) -> list[str]:
    """The columns of ``table`` that tell its runs apart (group with dropna=False: a plain run's optional keys
    are missing)."""
    return [c for c in (*RUN_COLUMNS, *OPTIONAL_KEYS) if c in table]


def optional_keys(run: dict) -> dict:
    """The run's OPTIONAL_KEYS where they differ from plain IID SGD, complete (a momentum run names its buffer
    policy, the default if unset); {} for a plain run, whose id and job parameters stay as they always were.
    Inconsistent keys (alpha without partition dirichlet, say) raise ValueError naming the key."""
    problems = partition_momentum_problems(*(run.get(k, run_default(k)) for k in OPTIONAL_KEYS))
    if problems:
        raise ValueError("; ".join(problems))
    out = {}
    for lead, *rest in OPTIONAL_RUN_KEYS:
        if run.get(lead, run_default(lead)) != run_default(lead):
            out.update({k: run.get(k, run_default(k)) for k in (lead, *rest)})
    return out


def run_id(run: dict) -> str:
    """Every parameter that changes a run's numbers appears in its path, exactly (parse_run_id inverts it)."""
    i = {k: exact_int(run[k]) for k in ("K", "tau", "b", "local_steps", "window", "seed")}
    rid = (f"K{i['K']}_tau{i['tau']}_b{i['b']}_lr{exact_float(run['lr'])}_{run['loss']}"
           f"_T{i['local_steps']}_W{i['window']}_s{i['seed']}")
    opt = optional_keys(run)
    if "partition" in opt:
        rid += f"_dir{exact_float(opt['alpha'])}"
    if "momentum" in opt:
        rid += f"_mom{exact_float(opt['momentum'])}{BUFFER_TAGS[opt['momentum_buffers']]}"
    if "checkpoint_count" in run:
        rid += f"_ck{exact_int(run['checkpoint_count'])}"
    return rid


def run_checkpoints(setting_checkpoints: dict, run: dict) -> dict:
    """The run's checkpoint spec: the setting's, or with the run's own checkpoint_count that many, spaced as the
    setting's (explicit rounds give way to log spacing)."""
    if "checkpoint_count" not in run:
        return setting_checkpoints
    spacing = setting_checkpoints.get("spacing", "log") if not setting_checkpoints.get("rounds") else "log"
    return {"count": run["checkpoint_count"], "spacing": spacing}


def parse_run_id(text: str) -> dict:
    """The run parameters of a run id; the optional keys only where their suffix is present."""
    m = RUN_ID.fullmatch(text)
    if not m:
        raise ValueError(f"not a run id: '{text}' (expected e.g. K8_tau8_b50_lr0.05_mse_T20000_W4_s0, "
                         "optionally _dir0.5 and/or _mom0.9avg after it)")
    d = m.groupdict()
    out = {k: int(d[k]) for k in ("K", "tau", "b", "local_steps", "window", "seed")}
    out.update(lr=float(d["lr"]), loss=d["loss"])
    if d["alpha"] is not None:
        out.update(partition="dirichlet", alpha=float(d["alpha"]))
    if d["momentum"] is not None:
        policy = {tag: name for name, tag in BUFFER_TAGS.items()}[d["momentum_buffers"]]
        out.update(momentum=float(d["momentum"]), momentum_buffers=policy)
    if d["checkpoint_count"] is not None:
        out["checkpoint_count"] = int(d["checkpoint_count"])
    return out


def setting_defaults(config: dict, setting: str) -> dict:
    s = config["settings"][setting]
    run = {k: v for k, v in config["train"].items() if k != "seeds"}
    run.update({k: v for k, v in s.get("train", {}).items() if k != "seeds"})
    run["lr"] = s.get("train", {}).get("lr", s["lr"])
    run["seeds"] = s.get("train", {}).get("seeds", config["train"]["seeds"])
    return run


def expand_runs(config: dict, experiments: list[str] | None = None, strict: bool = True) -> list[dict]:
    """All runs of the named experiments (default: all), deduplicated, in a stable order.

    Axes: K, tau, b, local_steps, seeds, and beyond the paper alpha (null = IID, a number = Dirichlet shards) and momentum;
    an axis the experiment leaves out takes the setting's value. checkpoint_count (not an axis) thins the
    per-checkpoint stages of an experiment's runs, which then have ids of their own."""
    seen, runs = set(), []
    for name in experiments or list(config["experiments"]):
        exp = config["experiments"][name]
        for setting in exp["settings"]:
            base = setting_defaults(config, setting)
            own = exp.get("per_setting", {}).get(setting, {})
            axes = {k: own.get(k, exp.get(k, [base[k]])) for k in ("K", "tau", "b", "local_steps")}
            axes["seeds"] = own.get("seeds", exp.get("seeds", base["seeds"]))
            alphas = [{"partition": "dirichlet" if a is not None else "iid", "alpha": a}
                      for a in own.get("alpha", exp.get("alpha", []))] or [{}]
            momenta = [{"momentum": mu} for mu in own.get("momentum", exp.get("momentum", []))] or [{}]
            match = exp.get("match", "none")
            count = own.get("checkpoint_count", exp.get("checkpoint_count"))
            # a count the setting already has keeps the setting's runs (and their ids)
            counted = {} if count is None or base["checkpoints"] == run_checkpoints(
                base["checkpoints"], {"checkpoint_count": count}) else {"checkpoint_count": count}
            for K, tau, b, steps, alpha, mu, seed in itertools.product(axes["K"], axes["tau"], axes["b"],
                                                                       axes["local_steps"], alphas, momenta,
                                                                       axes["seeds"]):
                length = {**base, "local_steps": steps}  # what a match scales from
                run = {**{k: length[k] for k in TRAIN_KEYS if k in length}, **alpha, **mu}
                run = {**{k: v for k, v in run.items() if k not in OPTIONAL_KEYS}, **optional_keys(run),
                       "K": K, "tau": tau, "b": b, "seed": seed, "setting": setting,
                       **matched(length, match, K, b, f"experiments.{name}.match"), **counted}
                run["checkpoints"] = run_checkpoints(base["checkpoints"], run)
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
    first = {k: runs[0].get(k) for k in TRAIN_KEYS}
    return [r for r in runs if {k: r.get(k) for k in TRAIN_KEYS} == first]


def digest(text: str, n: int = 12) -> str:
    """A short sha256 of a text (a path tag, a resume state's spec key)."""
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def run_info(run: dict) -> dict:
    """The descriptive part of a run recorded in its checkpoints and run.json."""
    return {k: run[k] for k in ("setting", "model", "dataset", "loss", "local_steps") if k in run}

"""Projected wall time of the quick release's parts, priced from the job times of a finished part.

Every job of a part (Snakemake's dry run of `all` with `--config part=<name>`) is priced from the jobs of the
same rule and setting in a finished part's `benchmark:` files, as the median over them of:
- train: seconds per worker-example (K x b x local steps), times the job's;
- geometry, estimators, mechanism: seconds per checkpoint, times the job's checkpoint count;
- restricted: seconds per local step since the branch (the config's restricted rounds x tau), times the job's;
- any other rule (collect, figures, ...): its median job of the setting (of any setting for a rule
  without one, or a setting the finished part did not run).
A rule the finished part lacks is listed as unpriced. The wall time is the priced jobs' core-seconds (their
seconds x the torch threads each finished job had) over the cores: the measured parts kept both cores busy
throughout. Exact in threads when the finished part ran the projected config's `threads`; from 1-thread jobs to
2-thread ones it assumes perfect thread scaling (a lower bound). A projection, to size a part before it runs; the
measured wall time is MANIFEST.json's.

    python benchmarks/part_costs.py results/quick/main [config.quick.yaml] [--cores 2]
    python benchmarks/part_costs.py results/quick/main config.yaml   # the paper scale's parts, from quick jobs
    python benchmarks/part_costs.py results/paper/mnist_main config.yaml --finished-config config.yaml

The finished jobs are sized by the config that ran them (--finished-config, default config.quick.yaml), the
projected ones by the config projected, so a quick part prices the paper scale's parts too.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from sharpgaps.core import grid, specs
from sharpgaps.pipeline.jobcosts import job_run, read_job_costs

REPO = Path(__file__).resolve().parents[1]
PER_CHECKPOINT = ("geometry", "estimators", "mechanism")


def checkpoint_count(config: dict, setting: str, run: dict) -> int:
    return grid.run_checkpoints(grid.setting_defaults(config, setting)["checkpoints"], run)["count"]


def size(rule: str, config: dict, setting: str, run_id: str) -> float:
    """What a job's seconds are proportional to (1 for rules priced per job)."""
    if not setting or not run_id or setting not in config["settings"]:
        return 1.0
    run = grid.parse_run_id(run_id)
    if rule == "train":
        return float(run["K"] * run["b"] * run["local_steps"])
    if rule in PER_CHECKPOINT:
        return float(checkpoint_count(config, setting, run))
    if rule == "restricted":  # local steps since the branch: rounds x tau (the refreshes scale with the rounds too)
        return float(specs.restricted_params(config, setting)["rounds"] * run["tau"])
    return 1.0


def unit_costs(finished: Path, config: dict) -> pd.Series:
    """(rule, setting) -> median seconds per unit of size() over the finished part's jobs, and (rule, '') over
    all its settings. ``config``: the config the finished part ran (it sizes the finished jobs)."""
    jobs = read_job_costs(finished / "benchmarks")
    rows = []
    for job in jobs.itertuples():
        setting, run = job_run(job.job)
        rows.append({"rule": job.rule, "setting": setting, "unit_s": job.s / size(job.rule, config, setting, run)})
    rows = pd.DataFrame(rows)
    units = pd.concat([rows.groupby(["rule", "setting"])["unit_s"].median(),
                       rows.assign(setting="").groupby(["rule", "setting"])["unit_s"].median()])
    return units[~units.index.duplicated()]  # a rule without settings has its (rule, '') row once


def unit_of(units: pd.Series, rule: str, setting: str) -> float | None:
    """The job's unit cost: its setting's, else the rule's over all settings (None: the rule never ran); sized
    rules need their own setting's."""
    for key in ((rule, setting), (rule, "")):
        if key in units.index and (key[1] or rule not in ("train", *PER_CHECKPOINT)):
            return float(units[key])
    return None


def wall_min(job_s: float, threads: int, cores: int) -> float:
    """Wall minutes of jobs that ran ``threads`` torch threads each, packed on ``cores`` cores."""
    return job_s * threads / cores / 60


def dry_run_jobs(config_file: Path, part: str) -> list[dict]:
    """rule, setting and run id of every job the part's `all` would run from an empty tree."""
    out = subprocess.run([sys.executable, "-m", "snakemake", "all", "-n", "--cores", "2", f"--configfile={config_file}",
                          "--config", f"part={part}", "results_dir=/nonexistent-projection-tree"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head:
            continue
        wildcards = re.search(r"wildcards: (.*)", block)
        found = dict(kv.split("=", 1) for kv in wildcards[1].split(", ")) if wildcards else {}
        jobs.append({"rule": head[1], "setting": found.get("setting", ""), "run": found.get("run", "")})
    return jobs


def project(finished: Path, config_file: Path, cores: int, finished_config: Path = REPO / "config.quick.yaml") -> str:
    config = yaml.safe_load(config_file.read_text())
    finished_cfg = yaml.safe_load(finished_config.read_text())
    units = unit_costs(finished, finished_cfg)
    threads = finished_cfg["threads"]  # each finished job's cores: its seconds x threads are core-seconds
    # the tree as a results_dir names it (from results/ down): no machine's absolute path in the committed docs
    shown = Path(*finished.parts[finished.parts.index("results"):]) if "results" in finished.parts else finished.name
    lines = [f"Priced from {len(read_job_costs(finished / 'benchmarks'))} finished jobs of `{shown}`; "
             f"wall = job seconds x {threads} thread{'s' * (threads > 1)} / {cores} cores.", "",
             "| part | jobs | projected job s by rule | projected job s | projected wall min | unpriced jobs |",
             "|---|---:|---|---:|---:|---|"]
    for part in config["parts"]:
        jobs = pd.DataFrame(dry_run_jobs(config_file, part))
        costs, unpriced = {}, []
        for job in jobs.itertuples():
            # every figure family's jobs write their benchmark files under one folder, figures/
            unit = unit_of(units, "figures" if job.rule.startswith("fig") else job.rule, job.setting)
            if unit is None:
                unpriced.append(f"{job.rule} ({job.setting})" if job.setting else job.rule)
                continue
            costs[job.rule] = costs.get(job.rule, 0.0) + unit * size(job.rule, config, job.setting, job.run)
        total = sum(costs.values())
        by_rule = ", ".join(f"{r} {v:,.0f}" for r, v in sorted(costs.items(), key=lambda kv: -kv[1]) if v >= 1)
        missing = ", ".join(f"{r} x{n}" for r, n in pd.Series(unpriced).value_counts().items()) or "-"
        lines.append(f"| {part} | {len(jobs)} | {by_rule} | {total:,.0f} | {wall_min(total, threads, cores):.0f} | {missing} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("finished", type=Path, help="a finished part's results tree (with benchmarks/)")
    p.add_argument("config", type=Path, nargs="?", default=REPO / "config.quick.yaml")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--finished-config", type=Path, default=REPO / "config.quick.yaml",
                   help="the config the finished part ran")
    a = p.parse_args(argv)
    print(project(a.finished, a.config, a.cores, a.finished_config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

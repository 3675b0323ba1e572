"""The cheap-estimator stage's cost against its geometry job, from a finished run's own records.

Reads, per run with an `estimators` job, the Snakemake `benchmark:` files (job wall seconds `s`) of its
geometry and estimators jobs and the per-checkpoint seconds both jobs print in their logs, and prints a
Markdown table (docs/BENCHMARKS.md, "Cheap-estimator stage"). Nothing is timed here: the numbers are the
jobs' own, so the two stages are compared under the conditions of one run.

    python benchmarks/stage_costs.py [results/quick]     (a scale's results_dir)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from sharpgaps.core.grid import RUN_ID_WILDCARD, parse_run_id

# a duration as the geometry job prints it: "54 s", "1 min 24 s" or "1 h 02 min"
DURATION = r"(?:\d+ h \d+ min|(?:\d+ min )?\d+ s)"
GEOMETRY_CKPT = re.compile(rf"checkpoint \d+/\d+ \(round (\d+)\): lambda_1=\S+ ({DURATION}) \(eigensolver {DURATION}, (\d+) HVPs\)")
ESTIMATOR_CKPT = re.compile(r"^round (\d+) \(([\d.]+) s\): overlap", re.M)
RUN_NAME = re.compile(rf"(?P<run>{RUN_ID_WILDCARD})_(?P<gtag>H\w+_tol[\d.e-]+_x\d+)(?:_(?P<etag>[0-9a-f]+))?$")


def seconds(duration: str) -> float:
    """A printed duration (DURATION) in seconds."""
    units = {"h": 3600, "min": 60, "s": 1}
    parts = duration.split()
    return float(sum(int(n) * units[u] for n, u in zip(parts[::2], parts[1::2])))


def job_seconds(tsv: Path) -> float:
    head, values = tsv.read_text().splitlines()[:2]
    return float(dict(zip(head.split("\t"), values.split("\t")))["s"])


def rows(results: Path) -> list[dict]:
    out = []
    for est in sorted((results / "benchmarks" / "estimators").glob("*/*.tsv")):
        setting = est.parent.name
        parts = RUN_NAME.match(est.stem)
        if parts is None:
            continue
        run, gtag = parts["run"], parts["gtag"]
        geo = results / "benchmarks" / "geometry" / setting / f"{run}_{gtag}.tsv"
        geo_log = results / "logs" / "geometry" / setting / f"{run}_{gtag}.log"
        est_log = results / "logs" / "estimators" / setting / f"{est.stem}.log"
        if not (geo.exists() and geo_log.exists() and est_log.exists()):
            continue
        g_ckpt = GEOMETRY_CKPT.findall(geo_log.read_text())
        e_ckpt = ESTIMATOR_CKPT.findall(est_log.read_text())
        out.append({"setting": setting, "run": run, "seed": parse_run_id(run)["seed"],
                    "geometry_s": job_seconds(geo), "estimators_s": job_seconds(est),
                    "geometry_ckpt_s": [seconds(s) for _, s, _ in g_ckpt],
                    "lanczos_hvps": [int(h) for _, _, h in g_ckpt],
                    "estimators_ckpt_s": [float(s) for _, s in e_ckpt]})
    return out


def _span(values, fmt="{:.0f}") -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"


def markdown(table: list[dict]) -> str:
    lines = ["| setting | run | geometry job s | estimators job s | estimators / geometry | geometry s per checkpoint "
             "(Lanczos HVPs) | estimators s per checkpoint |", "|---|---:|---:|---:|---:|---|---|"]
    for r in table:
        lines.append(f"| {r['setting']} | {r['run']} | {r['geometry_s']:.0f} | {r['estimators_s']:.0f} | "
                     f"{r['estimators_s'] / r['geometry_s']:.2f}x | {_span(r['geometry_ckpt_s'])} "
                     f"({_span(r['lanczos_hvps'])}) | {_span(r['estimators_ckpt_s'])} |")
    for setting in sorted({r["setting"] for r in table}):
        sel = [r for r in table if r["setting"] == setting]
        ratio = sum(r["estimators_s"] for r in sel) / sum(r["geometry_s"] for r in sel)
        worst = max(r["estimators_s"] / r["geometry_s"] for r in sel)
        lines.append(f"\n{setting}: estimators / geometry summed over its {len(sel)} run{'s' * (len(sel) != 1)} {ratio:.2f}x, "
                     f"largest single run {worst:.2f}x.")
    return "\n".join(lines)


if __name__ == "__main__":
    found = rows(Path(sys.argv[1] if len(sys.argv) > 1 else "results/quick"))
    if not found:
        raise SystemExit("no run with both a geometry and an estimators job (benchmark file and log) in that results_dir")
    print(markdown(found))

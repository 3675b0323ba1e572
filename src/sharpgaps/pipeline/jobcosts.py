"""Per-job cost records that Snakemake's `benchmark:` directive writes (one TSV per job)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from ..core import grid

# A per-run job's name: <rule>/<setting>/<run id>[<its stage's suffix>...]
_SETTING_RUN = re.compile(rf"^[^/]+/(?P<setting>[A-Za-z0-9_]+)/(?P<run>{grid.RUN_ID_WILDCARD})")


def read_job_costs(root: str | os.PathLike) -> pd.DataFrame:
    """One row per benchmark file under root: rule (its first folder), job (its path without the
    suffix), wall seconds s and peak RSS max_rss_mb. Empty if root holds none."""
    root = Path(root)
    rows = []
    for f in sorted(root.rglob("*.tsv")):
        df = pd.read_csv(f, sep="\t")
        rel = f.relative_to(root)
        rows.append({"rule": rel.parts[0], "job": str(rel.with_suffix("")), "s": float(df["s"].iloc[0]),
                     "max_rss_mb": float(df["max_rss"].iloc[0])})
    return pd.DataFrame(rows, columns=["rule", "job", "s", "max_rss_mb"])


def read_tree_job_costs(results: str | os.PathLike) -> pd.DataFrame:
    """read_job_costs of a results_dir, with a `part` column: its own benchmarks/ (part "") and those of each
    release part run in a subtree of it (results/<part>/benchmarks)."""
    results = Path(results)
    roots = [("", results / "benchmarks"), *((p.parent.name, p) for p in sorted(results.glob("*/benchmarks")))]
    frames = [read_job_costs(root).assign(part=part) for part, root in roots if root.is_dir()]
    return (pd.concat(frames, ignore_index=True) if frames
            else pd.DataFrame(columns=["rule", "job", "s", "max_rss_mb", "part"]))


def job_run(job: str) -> tuple[str, str]:
    """(setting, run id) of a per-run job's name (read_job_costs' `job`), ("", "") for any other job."""
    m = _SETTING_RUN.match(job)
    return (m["setting"], m["run"]) if m else ("", "")

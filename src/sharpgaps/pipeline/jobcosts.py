"""Per-job cost records that Snakemake's `benchmark:` directive writes (one TSV per job)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


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

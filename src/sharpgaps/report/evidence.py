"""Numbers across seeds, and claim sentences that cannot be emitted without them.

Every per-seed value is read at one checkpoint rule ("last": each seed's final checkpoint; "late": the mean
over the last third of its checkpoints, i.e. over the trajectory rather than one noisy point), then summarised
across seeds as mean, sample sd and n. A claim is a template filled with such numbers: a missing table or a
NaN number raises MissingEvidence, so no sentence is ever printed without the measurement behind it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..core.specs import FALLBACK, EstimatorSpec

# The per-run columns that identify one configuration of a setting (seeds are the replicates).
CONFIG_KEYS = ("K", "tau", "b", "lr")


class MissingEvidence(RuntimeError):
    """A claim or table asked for a number the tables do not have."""


def fmt(x: float) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


@dataclass(frozen=True)
class Stat:
    """mean, sample standard deviation (ddof 1; NaN for one seed) and number of seeds."""

    mean: float
    sd: float
    n: int

    @classmethod
    def of(cls, values) -> "Stat":
        v = np.asarray(list(values), dtype=float)
        v = v[np.isfinite(v)]
        if len(v) == 0:
            return cls(math.nan, math.nan, 0)
        return cls(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v))

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a"
        if self.n == 1:
            return f"{fmt(self.mean)} (n=1)"
        return f"{fmt(self.mean)} ± {fmt(self.sd)} (n={self.n})"

    def ok(self) -> bool:
        return self.n > 0 and math.isfinite(self.mean)

    def lo(self) -> float:
        """The lower edge of the band (mean - sd; the mean alone for one seed)."""
        return self.mean - (self.sd if math.isfinite(self.sd) else 0.0)

    def hi(self) -> float:
        return self.mean + (self.sd if math.isfinite(self.sd) else 0.0)


def late_rounds(rounds) -> list[int]:
    """The last third of a run's checkpoint rounds (at least one): the 'late trajectory'."""
    r = sorted(set(int(x) for x in rounds))
    return r[len(r) - max(1, math.ceil(len(r) / 3)):]


def per_seed(df: pd.DataFrame, metric: str, at: str = "last", m=None, i=None) -> pd.Series:
    """One value per seed of ``metric`` (rows of one configuration), at the seed's last checkpoint or
    averaged over its late checkpoints. ``m``/``i`` select a subspace dimension / eigen-index."""
    sel = df[df["metric"] == metric]
    if m is not None:
        sel = sel[sel["m"] == m]
    if i is not None:
        sel = sel[sel["i"] == i]
    out = {}
    for seed, g in sel.groupby("seed"):
        rounds = [max(g["round"])] if at == "last" else late_rounds(g["round"])
        out[int(seed)] = float(g[g["round"].isin(rounds)]["value"].mean())
    return pd.Series(out, dtype=float)


def stat(df: pd.DataFrame, metric: str, at: str = "last", m=None, i=None) -> Stat:
    return Stat.of(per_seed(df, metric, at=at, m=m, i=i))


def configs(df: pd.DataFrame, setting: str) -> list[pd.DataFrame]:
    """The rows of each run configuration of ``setting`` (seeds together), in the table's order."""
    sel = df[df["setting"] == setting]
    keys = [k for k in CONFIG_KEYS if k in sel]
    return [g for _, g in sel.groupby(keys, sort=False)]


def k_by_setting(table: pd.DataFrame) -> dict:
    """k (= classes: the Hessian eigenvectors spanning V_k) per setting, of a geometry table (the squared
    cosines' columns j) or an estimator table (its `k` rows)."""
    if "estimator" in table:
        rows = table[table["metric"] == "k"]
        return {s: int(g["value"].max()) for s, g in rows.groupby("setting")}
    cos = table[table["metric"] == "sqcos"]
    return {s: int(g["j"].max() + 1) for s, g in cos.groupby("setting")}


def claim(template: str, **numbers) -> str:
    """``template`` filled with ``numbers`` (Stats or floats); raises if any of them is missing."""
    bad = [k for k, v in numbers.items()
           if (isinstance(v, Stat) and not v.ok()) or (not isinstance(v, Stat) and not np.isfinite(v))]
    if bad:
        raise MissingEvidence(f"claim {template[:60]!r}... lacks its numbers: {', '.join(bad)}")
    return template.format(**{k: (str(v) if isinstance(v, Stat) else fmt(v)) for k, v in numbers.items()})


def branch_fallbacks(df: pd.DataFrame) -> pd.Series:
    """Per row: whether its run branched by the rule's fallback (the chi_k criterion never held). Tables made
    before the `branch_fallback` column read it from `branch_rule`."""
    if "branch_fallback" in df:
        return df["branch_fallback"].astype(bool)
    if "branch_rule" in df:
        return df["branch_rule"].astype(str).str.startswith(FALLBACK)
    return pd.Series(False, index=df.index)


KRYLOV = ("krylov", "krylovgap")


def krylov_start_blocks(table: pd.DataFrame, blocks: dict | None = None) -> dict[str, int | None]:
    """The Krylov start block's size p per setting of an estimator table (the vectors the Krylov sequence grows by:
    EstimatorSpec.krylov_block, the config's estimators.block or k, capped by the smallest budget j).

    The table records each budget j and the rank of its basis (p * floor(j / p) vectors), not p. ``blocks``
    (setting -> the config's estimators.block, None = unset) gives it where the caller knows. Otherwise: the
    stage's default (k capped by the smallest budget) where the random-start ranks fit it; where they do not (the
    config set a block), the largest block they fit if every block they fit says the same of each budget (start
    block only or not); else None (unknown: a WARNING, and nothing is dropped for that setting)."""
    k = k_by_setting(table)
    rows = table[(table["estimator"] == "krylov") & (table["metric"] == "rank") & table["j"].notna()]
    out = {}
    for s, g in rows.groupby("setting"):
        if s not in k:  # no `k` row: nothing to cap the block with
            out[s] = None
            continue
        ranks = {int(j): int(r) for j, r in g.groupby("j")["value"].max().items()}
        if blocks is not None and s in blocks:
            out[s] = EstimatorSpec(krylov_hvps=tuple(ranks), block=blocks[s]).krylov_block(k[s])
            continue
        fit = [p for p in range(1, min(ranks) + 1) if all(r == p * (j // p) for j, r in ranks.items())]
        default = EstimatorSpec(krylov_hvps=tuple(ranks)).krylov_block(k[s])
        verdicts = {tuple(j // p <= 1 for j in sorted(ranks)) for p in fit}
        out[s] = default if default in fit else (max(fit) if len(verdicts) == 1 else None)
        if out[s] is None:
            print(f"WARNING: {s}: the Krylov ranks {ranks} (budget: rank) do not tell the start block: "
                  "no Krylov budget is dropped")
    return out


def krylov_start_block_only(table: pd.DataFrame, starts: dict | None = None) -> pd.Series:
    """True on the Krylov estimators' rows whose HVP budget j buys no block beyond the start block,
    floor(j / p) <= 1 (p per setting: ``starts``, by default :func:`krylov_start_blocks`): their basis is the start
    block itself (a random block for krylov, the gap subspace's first p directions for krylovgap) priced as p
    HVPs, not a Krylov estimate; a figure must not draw them as one."""
    p = table["setting"].map(krylov_start_blocks(table) if starts is None else starts).astype(float)
    return table["estimator"].isin(KRYLOV) & table["j"].notna() & p.notna() & (table["j"] // p <= 1)

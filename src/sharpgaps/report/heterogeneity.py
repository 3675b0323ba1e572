"""The heterogeneity family (beyond the paper): workers on label-skewed shards and workers with local momentum.

One tidy table of the family's cells (setting x alpha x momentum, per seed and checkpoint) from the experiment's
geometry, mechanism and estimator tables, read by Fig X5 and by RESULTS' section (docs/DEFINITIONS.md, "Heterogeneous
workers and momentum: noise + drift"):

- the gap subspace against V_k at m = k: overlap, capture, removal, and the g-aligned control's overlap and removal;
- the best estimator that costs no extra gradient: its overlap at m = k (per checkpoint, every free estimator);
- the mechanism over the top-k eigendirections: median |log10(measured / predicted)| with the noise term alone and
  with noise + drift, and the share of the measured gap energy in V_k each term predicts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .evidence import Stat, claim, fmt, k_by_setting, late_rounds

IID = "iid"
CELL = ["setting", "alpha", "momentum"]  # alpha: IID or the Dirichlet concentration, as text
GEOMETRY_METRICS = ("overlap", "capture", "removal", "aligned_overlap", "aligned_removal")
FACTOR_2 = float(np.log10(2.0))  # the mechanism "fits" within a factor 2, as the main claim table reads it


def _cells(df: pd.DataFrame) -> pd.DataFrame:
    """The cell columns of a per-run table: alpha as text (IID where the run has no Dirichlet shards), momentum 0
    where the run has none."""
    alpha = df["alpha"] if "alpha" in df else pd.Series(np.nan, index=df.index)
    momentum = df["momentum"] if "momentum" in df else pd.Series(np.nan, index=df.index)
    return df.assign(alpha=[IID if pd.isna(a) else f"{float(a):g}" for a in alpha],
                     momentum=momentum.fillna(0.0).astype(float))


def _tidy(df: pd.DataFrame, metric: str, value: pd.Series, estimator=None) -> pd.DataFrame:
    out = df[[*CELL, "seed", "round", "step"]].copy()
    out["metric"], out["value"], out["estimator"] = metric, value.to_numpy(), estimator
    return out


def cell_table(geometry: pd.DataFrame, mechanism: pd.DataFrame, estimators: pd.DataFrame | None = None) -> pd.DataFrame:
    """The family's tidy table: CELL, seed, round, step, metric, value, estimator (free estimators' rows only)."""
    geometry = _cells(geometry)
    ks = k_by_setting(geometry)
    parts = []
    at_k = geometry[geometry["m"] == geometry["setting"].map(ks)]
    for metric in GEOMETRY_METRICS:
        rows = at_k[at_k["metric"] == metric]
        parts.append(_tidy(rows, metric, rows["value"]))
    if estimators is not None and len(estimators):
        est = _cells(estimators)
        cost = est[est["metric"] == "extra_cost"].groupby("estimator")["value"].max()
        free = [e for e, c in cost.items() if c == 0 and e != "random"]
        rows = est[(est["metric"] == "overlap") & (est["m"] == est["setting"].map(ks)) & est["estimator"].isin(free)]
        parts.append(_tidy(rows, "estimator_overlap", rows["value"], rows["estimator"].to_numpy()))
    mech = _cells(mechanism[mechanism["experiment"] == "heterogeneity"])
    if len(mech):
        if "predicted_noise" not in mech:
            mech = mech.assign(predicted_noise=np.nan, predicted_drift=np.nan)
        plain = mech["predicted_noise"].isna()  # IID plain SGD: the whole prediction is noise
        mech = mech.assign(predicted_noise=mech["predicted_noise"].where(~plain, mech["predicted"]),
                           predicted_drift=mech["predicted_drift"].where(~plain, 0.0))
        top = mech[(mech["kind"] == "eigen") & (mech["direction"] < mech["k"]) & (mech["measured"] > 0)]
        keys = [*CELL, "seed", "round", "step"]
        per = top.groupby(keys).apply(lambda g: pd.Series({
            "mech_err": float(np.log10(g["measured"] / g["predicted"]).abs().median()),
            "mech_err_noise": float(np.log10(g["measured"] / g["predicted_noise"]).abs().median()),
            "noise_explains": float(g["predicted_noise"].sum() / g["measured"].sum()),
            "drift_explains": float(g["predicted_drift"].sum() / g["measured"].sum())}), include_groups=False)
        per = per.reset_index().melt(id_vars=keys, var_name="metric", value_name="value")
        parts.append(per.assign(estimator=None))
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values([*CELL, "seed", "metric", "round"], kind="stable").reset_index(drop=True)


def _late(table: pd.DataFrame) -> pd.DataFrame:
    """Each run's last third of checkpoints."""
    keep = [g[g["round"].isin(late_rounds(sorted(g["round"].unique())))]
            for _, g in table.groupby([*CELL, "seed"], sort=False)]
    return pd.concat(keep) if keep else table


def late_stat(table: pd.DataFrame, setting: str, alpha: str, momentum: float, metric: str) -> Stat:
    """A cell's metric over the late third of checkpoints: per seed the mean, then mean ± sd over seeds. For
    estimator_overlap, the best free estimator of the cell (by that mean)."""
    sel = _late(table[(table["setting"] == setting) & (table["alpha"] == alpha) & (table["momentum"] == momentum)
                      & (table["metric"] == metric)])
    if metric == "estimator_overlap" and len(sel):
        best = sel.groupby("estimator")["value"].mean().idxmax()
        sel = sel[sel["estimator"] == best]
    return Stat.of(sel.groupby("seed")["value"].mean())


def best_estimator(table: pd.DataFrame, setting: str, alpha: str, momentum: float) -> str | None:
    sel = _late(table[(table["setting"] == setting) & (table["alpha"] == alpha) & (table["momentum"] == momentum)
                      & (table["metric"] == "estimator_overlap")])
    return sel.groupby("estimator")["value"].mean().idxmax() if len(sel) else None


def _change(new: Stat, base: Stat) -> str:
    """What the new cell does to the overlap: raises / lowers it when the two mean ± sd bands do not overlap,
    else it changes it by no more than the seed band; one seed has no band, so it settles nothing."""
    if new.n < 2 or base.n < 2:
        return "not settled: one seed has no band"
    if new.lo() > base.hi():
        return "raises it"
    if new.hi() < base.lo():
        return "lowers it"
    return "changes it by no more than the seed band"


def cells_of(table: pd.DataFrame, setting: str) -> list[tuple[str, float]]:
    sel = table[table["setting"] == setting]
    alphas = sorted(sel["alpha"].unique(), key=lambda a: (a != IID, -float(a) if a != IID else 0.0))
    return [(a, m) for a in alphas for m in sorted(sel.loc[sel["alpha"] == a, "momentum"].unique())]


def section(table: pd.DataFrame) -> list[str]:
    """RESULTS' heterogeneity section: the cells' numbers and one generated verdict sentence per question."""
    out = ["| setting | alpha | momentum | seeds | overlap (m = k) | g-aligned control overlap | removal | "
           "best free estimator: overlap | mechanism error, noise + drift | noise only | drift explains | "
           "noise explains |", "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    sentences = []
    for setting in table["setting"].unique():
        for alpha, mom in cells_of(table, setting):
            s = {m: late_stat(table, setting, alpha, mom, m) for m in (
                "overlap", "aligned_overlap", "removal", "estimator_overlap", "mech_err", "mech_err_noise",
                "drift_explains", "noise_explains")}
            est = best_estimator(table, setting, alpha, mom)
            out.append(f"| {setting} | {alpha} | {mom:g} | {s['overlap'].n} | {s['overlap']} | {s['aligned_overlap']} | "
                       f"{s['removal']} | {est or 'n/a'}: {s['estimator_overlap']} | {s['mech_err']} | "
                       f"{s['mech_err_noise']} | {s['drift_explains']} | {s['noise_explains']} |")
        sentences += verdicts(table, setting)
    return ["Late third of checkpoints: per seed the mean, then mean ± sample sd over seeds (n = seeds). Mechanism "
            "error: median over the top-k eigendirections of |log10(measured / predicted)| (0 = exact, 0.301 = a "
            "factor 2). Drift/noise explains: the term's predicted gap energy in V_k over the measured.", "",
            "\n".join(out), "", *sentences]


def verdicts(table: pd.DataFrame, setting: str) -> list[str]:
    """The three questions of the family, per setting, each sentence beside its numbers."""
    cells = cells_of(table, setting)
    skews = sorted({a for a, _ in cells if a != IID}, key=float)
    out = []
    base = late_stat(table, setting, IID, 0.0, "overlap")

    def control(alpha, mom) -> str:  # the same change in the g-aligned control: how much of it any g-heavy subspace shows
        new_c, base_c = (late_stat(table, setting, a, m, "aligned_overlap") for a, m in ((alpha, mom), (IID, 0.0)))
        if not (new_c.ok() and base_c.ok()):
            return ""
        return claim(" The g-aligned control's overlap is {new_c} against {base_c} (difference "
                     f"{fmt(new_c.mean - base_c.mean)}).", new_c=new_c, base_c=base_c)

    if skews and base.ok():
        strong = skews[0]
        new = late_stat(table, setting, strong, 0.0, "overlap")
        if new.ok():
            out.append(claim(
                f"- {setting}: the gap subspace's overlap with V_k at m = k is {{new}} with label skew (Dirichlet "
                f"alpha = {strong}, no momentum) against {{base}} for IID workers (difference "
                f"{fmt(new.mean - base.mean)}, ratio {fmt(new.mean / base.mean)}): label skew "
                f"{_change(new, base)}.", new=new, base=base) + control(strong, 0.0))
    moms = sorted({m for a, m in cells if a == IID and m > 0})
    if moms and base.ok():
        new = late_stat(table, setting, IID, moms[-1], "overlap")
        if new.ok():
            out.append(claim(
                f"- {setting}: with local momentum {moms[-1]:g} (IID workers) the overlap is {{new}} against {{base}} "
                f"without (difference {fmt(new.mean - base.mean)}, ratio {fmt(new.mean / base.mean)}): momentum "
                f"{_change(new, base)}.", new=new, base=base) + control(IID, moms[-1]))
    for alpha, mom in [(a, m) for a, m in cells if a != IID]:
        err, noise = (late_stat(table, setting, alpha, mom, m) for m in ("mech_err", "mech_err_noise"))
        drift = late_stat(table, setting, alpha, mom, "drift_explains")
        if err.ok():
            fits = ("within a factor 2" if err.hi() < FACTOR_2 else
                    "not within a factor 2" if err.lo() >= FACTOR_2 else
                    "within a factor 2 or not: these seeds' band straddles it")
            out.append(claim(
                f"- {setting}, alpha = {alpha}, momentum {mom:g}: the noise + drift model predicts the per-direction "
                f"gap variance on V_k {fits} (median |log10(measured/predicted)| {{err}}; the noise term alone "
                f"{{noise}}); drift's predicted energy in V_k is {{drift}} of the measured.", err=err, noise=noise,
                drift=drift))
    return out

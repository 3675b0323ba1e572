"""Two runs' tables compared column by column within stated tolerances (the GPU check's comparison).

A table passes when both runs made it with the same rows and the same keys (text and integer columns, exactly)
and every measured entry b of the run under test lies within atol + rtol * |a| of the reference's a (NaN only
where the reference has NaN). Tidy tables (a `metric` column) are compared per metric: `value[lambda]` is one
compared column, so each reported deviation belongs to one quantity. Wall-clock timings are left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sharpgaps.core.atomic import read_frame
from sharpgaps.curvature.geometry import TIMING_METRICS as GEOMETRY_TIMINGS
from sharpgaps.studies.estimators import TIMING_METRICS as ESTIMATOR_TIMINGS


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    reason: str

    def allows(self, ref: np.ndarray, new: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            close = np.abs(new - ref) <= self.atol + self.rtol * np.abs(ref)
        return (ref == new) | (np.isnan(ref) & np.isnan(new)) | close


# Both runs on the CPU: the project guarantees the same numbers for the same config and seed (README, Guarantees).
BITWISE = Tolerance(0.0, 0.0, "same config, seed and device (CPU): the project guarantees bitwise equal tables")
# GPU against CPU, measured quantities: float32 sums in another order (cuBLAS/cuDNN) differ in the last bits, and
# 96 SGD steps carry that into every checkpoint; 1e-3 is eigsh's tol, the accuracy the tables claim for a spectrum.
CROSS_DEVICE = Tolerance(1e-3, 1e-6, "GPU vs CPU: float32 rounding in another order, carried through training; "
                                     "rtol = eigsh's tol (1e-3), atol for quantities near 0 (random-subspace removal)")
# GPU against CPU, the eigensolver's own path: a restart more or less changes its HVP count, and its residuals sit
# anywhere below tol; a GPU that doubled either would still be flagged.
SOLVER_PATH = Tolerance(0.5, 1e-3, "GPU vs CPU: ARPACK's HVP count and residuals follow rounding (a restart more or "
                                   "less); residuals below tol (1e-3) always pass")
# Keys (text and integer columns: setting, seed, round, counts) never move with rounding: exact on any device.
KEYS = Tolerance(0.0, 0.0, "keys and counts (text and integer columns): exact on any device")

SOLVER_PATH_QUANTITIES = ("n_hvp", "residual")  # columns, or metrics of a tidy table
# Wall-clock timings differ from run to run even on one machine: never compared.
TIMING_COLUMNS = ("seconds", "refresh_seconds", "extra_cost")
TIMING_METRICS = (*GEOMETRY_TIMINGS, *ESTIMATOR_TIMINGS)
WHERE = ("experiment", "setting", "seed", "mode", "round", "kind", "estimator", "metric", "tau", "direction", "m", "i",
         "j")  # the columns that name a row in a report, where present


def tolerances(same_device: bool) -> dict[str, Tolerance]:
    """The tolerances in force, by name (for the record)."""
    if same_device:
        return {"bitwise": BITWISE}
    return {"cross_device": CROSS_DEVICE, "solver_path": SOLVER_PATH, "keys": KEYS}


def tolerance_for(quantity: str, integer: bool, same_device: bool) -> Tolerance:
    """The tolerance of one compared column (``quantity``: the column's name, or a tidy table's metric)."""
    if same_device:
        return BITWISE
    if quantity in SOLVER_PATH_QUANTITIES:
        return SOLVER_PATH
    return KEYS if integer else CROSS_DEVICE


def is_timing_metric(name: str) -> bool:
    return name in TIMING_METRICS or "seconds" in name


def _without_timings(df: pd.DataFrame) -> pd.DataFrame:
    df = df.drop(columns=[c for c in TIMING_COLUMNS if c in df])
    if "metric" in df:
        df = df[~df["metric"].astype(str).map(is_timing_metric)]
    return df.reset_index(drop=True)


def _where(df: pd.DataFrame, row: int) -> str:
    def show(v):
        return int(v) if isinstance(v, float) and v.is_integer() else v  # an index stored as float (NaN elsewhere)

    return " ".join(f"{c}={show(df.at[row, c])}" for c in WHERE if c in df and not pd.isna(df.at[row, c]))


def _deviation(ref: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute and relative deviation per entry (0 where both are NaN or equal; inf where only one is NaN)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.abs(new - ref)
        one_nan = np.isnan(ref) ^ np.isnan(new)
        same = (ref == new) | (np.isnan(ref) & np.isnan(new))  # equal infinities too
        diff = np.where(same, 0.0, np.where(one_nan, np.inf, diff))
        rel = np.where(diff == 0, 0.0, diff / np.abs(ref))
    return diff, np.where(np.isnan(rel), np.inf, rel)


def _column(name: str, ref: pd.Series, new: pd.Series, tol: Tolerance, frame: pd.DataFrame) -> dict:
    a, b = ref.astype("float64").to_numpy(), new.astype("float64").to_numpy()  # nullable integers: NA -> NaN
    diff, rel = _deviation(a, b)
    ok = tol.allows(a, b)
    worst = int(ref.index[int(np.argmax(diff))]) if len(diff) else None
    return {"column": name, "n": len(a), "max_abs": float(diff.max(initial=0.0)),
            "max_rel": float(rel.max(initial=0.0)),
            "rtol": tol.rtol, "atol": tol.atol, "failing": int((~ok).sum()), "passed": bool(ok.all()),
            "worst": _where(frame, worst) if worst is not None and diff.max() > 0 else ""}


def compare_tables(ref: pd.DataFrame, new: pd.DataFrame, same_device: bool) -> dict:
    """One table of the run under test (``new``) against the reference's: {passed, problem, columns: [...]}, a
    column entry per compared column (max abs and relative deviation, its tolerance, failing entries, where the
    largest deviation is)."""
    ref, new = _without_timings(ref), _without_timings(new)
    if list(ref.columns) != list(new.columns):
        return {"passed": False, "problem": f"columns differ: {list(ref.columns)} vs {list(new.columns)}",
                "columns": []}
    if len(ref) != len(new):
        return {"passed": False, "problem": f"{len(new)} rows, the reference has {len(ref)}", "columns": []}
    columns, problems = [], []
    for col in ref.columns:
        a, b = ref[col], new[col]
        if not (pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b)) or pd.api.types.is_bool_dtype(a):
            differ = ~((a == b) | (a.isna() & b.isna())).fillna(False)
            if differ.any():
                first = _where(ref, int(differ.idxmax()))
                problems.append(f"{col} differs in {int(differ.sum())} rows (first: {first})")
            continue
        integer = pd.api.types.is_integer_dtype(a)
        if col == "value" and "metric" in ref:
            for metric, rows in ref.groupby("metric", sort=True).groups.items():
                tol = tolerance_for(str(metric), integer, same_device)
                columns.append(_column(f"value[{metric}]", a[rows], b[rows], tol, ref))
        else:
            columns.append(_column(col, a, b, tolerance_for(col, integer, same_device), ref))
    return {"passed": not problems and all(c["passed"] for c in columns), "problem": "; ".join(problems) or None,
            "columns": columns}


def compare_dirs(ref_dir: Path, new_dir: Path, names: list[str], same_device: bool) -> list[dict]:
    """Every table of ``names`` (file names) in ``new_dir`` against ``ref_dir``'s; a missing one fails."""
    out = []
    for name in names:
        a, b = Path(ref_dir) / name, Path(new_dir) / name
        missing = [str(p) for p in (a, b) if not p.is_file()]
        if missing:
            out.append({"table": name, "rows": 0, "passed": False, "problem": f"missing: {', '.join(missing)}",
                        "columns": []})
            continue
        ref, new = read_frame(a), read_frame(b)
        out.append({"table": name, "rows": len(new), **compare_tables(ref, new, same_device)})
    return out


def tolerance_record(same_device: bool) -> dict:
    """The tolerances and exclusions of a comparison, as the record states them."""
    return {"in_force": {k: asdict(t) for k, t in tolerances(same_device).items()},
            "solver_path_quantities": list(SOLVER_PATH_QUANTITIES),
            "excluded": {"columns": list(TIMING_COLUMNS), "metrics": [*TIMING_METRICS, "*seconds*"],
                         "reason": "wall-clock timings: they differ run to run even on one machine"}}

"""The GPU check (`make gpu-check`, benchmarks/gpu_check.py): its table comparison fails on a real difference, bad
input stops it before any work, and on the CPU it runs end to end with bitwise equal tables and positive timings."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.helpers import mini_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import table_diff  # noqa: E402
from table_diff import compare_dirs, compare_tables  # noqa: E402

SCRIPT = REPO / "benchmarks/gpu_check.py"


def _tidy() -> pd.DataFrame:
    """A geometry-like tidy table: keys, a metric column and its values, one timing metric."""
    rows = [{"setting": "mnist_fc", "seed": 0, "round": r, "metric": m, "i": float(i), "value": v}
            for r in (2, 8) for m, i, v in (("lambda", 0, 9.83), ("lambda", 1, 9.45), ("n_hvp", np.nan, 40.0),
                                           ("residual", 0, 2e-4), ("eig_seconds", np.nan, 1.7))]
    return pd.DataFrame(rows)


def _wide() -> pd.DataFrame:
    """A restricted-like wide table: measured columns, an integer count and wall-clock seconds."""
    return pd.DataFrame({"mode": ["none", "dom"], "round": [0, 3], "train_loss": [0.237, 0.231],
                         "n_hvp": [0, 30], "seconds": [0.03, 6.0]})


def _set(df: pd.DataFrame, metric: str, value: float, col: str = "value") -> pd.DataFrame:
    df = df.copy()
    df.loc[df.index[df["metric"] == metric][0], col] = value
    return df


def test_identical_tables_show_no_deviation():
    for df in (_tidy(), _wide()):
        out = compare_tables(df, df.copy(), same_device=True)
        assert out["passed"] and out["problem"] is None
        assert out["columns"] and all(c["max_abs"] == 0 == c["max_rel"] for c in out["columns"])
    names = {c["column"] for c in compare_tables(_tidy(), _tidy(), same_device=True)["columns"]}
    assert {"value[lambda]", "value[n_hvp]", "value[residual]"} <= names  # a tidy table: one column per metric


def test_a_perturbed_value_fails_on_one_device_and_is_weighed_by_tolerance_across_devices():
    ref = _tidy()
    one_ulp = _set(ref, "lambda", np.nextafter(9.83, 10.0))
    out = compare_tables(ref, one_ulp, same_device=True)
    assert not out["passed"]
    bad = [c for c in out["columns"] if not c["passed"]]
    assert [c["column"] for c in bad] == ["value[lambda]"] and bad[0]["failing"] == 1
    assert 0 < bad[0]["max_abs"] < 1e-14 and "round=2" in bad[0]["worst"] and "i=0" in bad[0]["worst"]
    assert compare_tables(ref, one_ulp, same_device=False)["passed"]  # rounding: within the cross-device rtol
    moved = _set(ref, "lambda", 9.83 * (1 + 10 * table_diff.CROSS_DEVICE.rtol))
    out = compare_tables(ref, moved, same_device=False)
    assert not out["passed"]
    lam = next(c for c in out["columns"] if c["column"] == "value[lambda]")
    assert lam["max_rel"] == pytest.approx(10 * table_diff.CROSS_DEVICE.rtol)
    wide = _wide()
    wide.loc[1, "train_loss"] *= 1.01
    assert not compare_tables(_wide(), wide, same_device=False)["passed"]


def test_solver_path_quantities_get_their_own_tolerance_across_devices_only():
    ref = _tidy()
    more_hvps = _set(ref, "n_hvp", 48.0)  # a restart more
    assert compare_tables(ref, more_hvps, same_device=False)["passed"]
    assert not compare_tables(ref, more_hvps, same_device=True)["passed"]
    assert not compare_tables(ref, _set(ref, "n_hvp", 100.0), same_device=False)["passed"]  # more than doubled
    wide = _wide()
    wide.loc[1, "n_hvp"] = 33
    assert compare_tables(_wide(), wide, same_device=False)["passed"]
    wide.loc[1, "round"] = 4  # an integer key: exact on any device
    out = compare_tables(_wide(), wide, same_device=False)
    assert not out["passed"] and next(c for c in out["columns"] if c["column"] == "round")["failing"] == 1


def test_keys_rows_and_nans_must_match():
    ref = _tidy()
    renamed = ref.copy()
    renamed.loc[0, "setting"] = "cifar_cnn"
    out = compare_tables(ref, renamed, same_device=False)
    assert not out["passed"] and "setting differs in 1 rows" in out["problem"]
    out = compare_tables(ref, ref.iloc[:-2], same_device=False)
    assert not out["passed"] and "rows" in out["problem"]
    out = compare_tables(ref, ref.drop(columns="i"), same_device=False)
    assert not out["passed"] and "columns differ" in out["problem"]
    nan = _set(ref, "residual", np.nan)
    out = compare_tables(ref, nan, same_device=False)
    res = next(c for c in out["columns"] if c["column"] == "value[residual]")
    assert not out["passed"] and res["max_abs"] == math.inf


def test_wall_clock_timings_are_not_compared():
    ref = _tidy()
    out = compare_tables(ref, _set(ref, "eig_seconds", 99.0), same_device=True)
    assert out["passed"] and not any("seconds" in c["column"] for c in out["columns"])
    wide = _wide()
    wide["seconds"] = [5.0, 7.0]
    assert compare_tables(_wide(), wide, same_device=True)["passed"]


def test_a_missing_table_fails(tmp_path):
    from sharpgaps.core.atomic import save_frame

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        save_frame(_wide(), tmp_path / d / "restricted.parquet")
    save_frame(_tidy(), tmp_path / "a" / "main_geometry.parquet")
    out = {t["table"]: t for t in compare_dirs(tmp_path / "a", tmp_path / "b",
                                               ["main_geometry.parquet", "restricted.parquet"], same_device=True)}
    assert out["restricted.parquet"]["passed"]
    assert not out["main_geometry.parquet"]["passed"] and "missing" in out["main_geometry.parquet"]["problem"]


def _check(tmp_path, *args):
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out.json"),
                           "--workdir", str(tmp_path), *args], capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize("device", ["tpu", "cuda"])
def test_bad_device_stops_before_any_work_naming_device(tmp_path, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: DEVICE=cuda is the real check")
    proc = _check(tmp_path, "--device", device)
    assert proc.returncode != 0
    assert f"DEVICE={device}" in proc.stderr or f"DEVICE='{device}'" in proc.stderr
    assert "make gpu-check DEVICE=cpu" in proc.stderr  # the fix
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no Snakemake started


def test_make_passes_device_through(tmp_path):
    proc = subprocess.run(["make", "-s", "gpu-check", "DEVICE=tpu"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and "DEVICE='tpu'" in proc.stderr


def test_a_reference_without_tables_stops_before_any_work(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = _check(tmp_path, "--device", "cpu", "--reference", str(tmp_path / "empty"))
    assert proc.returncode != 0 and f"REFERENCE={tmp_path / 'empty'}" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.workflow
def test_gpu_check_on_cpu_matches_its_reference_bitwise_and_times_every_model(tmp_path):
    """DEVICE=cpu end to end on the minimal DAG's config without its sweeps and heterogeneity (one MNIST run through
    every per-run stage): the check runs its own CPU reference and the run under test, few examples."""
    config = mini_config(tmp_path / "config.yaml")
    cfg = yaml.safe_load(config.read_text())
    cfg["experiments"] = {"main": cfg["experiments"]["main"]}
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cpu.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--config", str(config), "--out", str(out),
                           "--workdir", str(tmp_path / "w"), "--examples", "16", "--repeats", "1", "--steps", "1",
                           "--cores", "2"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["passed"] and record["tolerances"]["in_force"].keys() == {"bitwise"} and record["reference_ran"]
    made = sorted(p.name for p in (tmp_path / "w/results/gpu-check/reference/tables").glob("*.parquet"))
    assert {"main_geometry.parquet", "restricted.parquet", "mechanism.parquet"} <= set(made)
    assert sorted(t["table"] for t in record["tables"]) == made  # every table of the DAG, compared
    for t in record["tables"]:
        assert t["passed"] and t["columns"], t
        assert all(c["max_abs"] == 0 == c["max_rel"] for c in t["columns"]), t
    assert not (tmp_path / "w/results/gpu-check/cpu/figures").exists()  # tables only
    models = record["units"]["models"]
    assert sorted(m["model"] for m in models) == ["cnn_relu", "fc_tanh", "transformer"]
    for m in models:
        assert (m["K"], m["b"], m["examples"]) == (8, 50, 16)
        for key in ("step_s", "gradient_s", "build_s", "hvp_s", "lanczos_step_s", "arpack_step_s"):
            assert math.isfinite(m[key]) and m[key] > 0, (m["model"], key, m[key])
        assert m["lanczos_steps"] > m["lanczos_k"]
    assert record["units"]["bench_scale_unit"]["fc_tanh"]["hvp_s_per_ex"] > 0
    summary = out.with_suffix(".md").read_text()
    assert "**PASS**" in summary and "| transformer |" in summary

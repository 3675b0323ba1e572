"""The per-run geometry driver on a real (small) Local SGD run."""

import numpy as np
import pandas as pd
import pytest
import torch

from sharpgaps.core.specs import RunSpec
from sharpgaps.curvature.geometry import TIMING_METRICS, GeometrySpec, run_geometry
from sharpgaps.engine import losses, models
from sharpgaps.engine.objective import Objective
from sharpgaps.engine.training import train_run

K, W = 4, 2


@pytest.fixture(scope="module")
def run(tmp_path_factory, mnist_small):
    work = tmp_path_factory.mktemp("run")
    model = models.build_model("fc_tanh", mnist_small["meta"], seed=0, widths=(24, 24))
    spec = RunSpec(K=K, tau=4, b=25, lr=0.1, rounds=30, window=W, seed=0, checkpoints=(10, 30))
    ckpts = train_run(Objective.from_subset(model, losses.mse_onehot, mnist_small), spec, work, progress=False)
    return model, ckpts, work


GSPEC = GeometrySpec(k=10, extra=2, tol=1e-6, m_list=(1, 2, 4), random_draws=4, cos_top=4)


def _geometry(run, tmp, spec=GSPEC):
    model, ckpts, _ = run
    x, y = run_inputs(model)
    return run_geometry(Objective(model, losses.mse_onehot, x, y, **spec.objective_options()), spec, ckpts, tmp)


def run_inputs(model):
    return run_inputs.subset["x_train"], run_inputs.subset["y_train"]


@pytest.fixture(autouse=True)
def _subset(mnist_small):
    run_inputs.subset = mnist_small


def _metric(df, name, m=None):
    sel = df[df.metric == name]
    if m is not None:
        sel = sel[sel.m == m]
    return sel.sort_values(["round", "i"]).value.to_numpy()


def test_table_shape_and_invariants(run, tmp_path):
    df = _geometry(run, tmp_path)
    assert sorted(df["round"].unique()) == [10, 30]
    assert np.all(_metric(df, "gap_rank") == (K - 1) * W)  # K gaps per round sum to zero
    lam = df[df.metric == "lambda"].pivot(index="round", columns="i", values="value").to_numpy()
    assert lam.shape == (2, 12) and np.all(np.diff(lam, axis=1) <= 1e-9)  # descending
    assert np.all(_metric(df, "residual") < 1e-3)
    for m in (1, 2, 4, (K - 1) * W):
        rem, rnd = _metric(df, "removal", m), _metric(df, "random_removal", m)
        assert np.all(rem <= 1 + 1e-9) and np.all(np.abs(rnd) < 0.05)
        assert np.all((0 <= _metric(df, "capture", m)) & (_metric(df, "capture", m) <= 1 + 1e-9))
    assert np.all(np.abs(_metric(df, "oracle_removal", 4) - 1) > 0)  # m < k: the oracle is partial
    chi = _metric(df, "chi_k")
    assert np.all((0 < chi) & (chi <= 1))
    cos = df[df.metric == "sqcos"]
    assert len(cos) == 2 * 4 * 10 and cos.value.between(0, 1 + 1e-9).all()


def test_gap_subspace_beats_random_by_orders_of_magnitude(run, tmp_path):
    """The paper's claim, on a small real run: removal >> the random-subspace reference."""
    df = _geometry(run, tmp_path)
    m = (K - 1) * W
    assert np.all(_metric(df, "removal", m) > 20 * np.abs(_metric(df, "random_removal_expected", m)))


def _science(df):
    assert not df.metric.isin(TIMING_METRICS).any()  # wall-clock rows stay out of the table
    return df


def test_deterministic_and_resumable(run, tmp_path):
    a = _science(_geometry(run, tmp_path / "a"))
    b = _science(_geometry(run, tmp_path / "b"))
    pd.testing.assert_frame_equal(a, b, check_exact=True)  # same inputs -> bitwise the same table
    pd.testing.assert_frame_equal(a, _science(_geometry(run, tmp_path / "a")), check_exact=True)  # from cache
    (tmp_path / "a" / "r000030.geom.pt").unlink()  # 'killed' before the last checkpoint
    pd.testing.assert_frame_equal(a, _science(_geometry(run, tmp_path / "a")), check_exact=True)
    from sharpgaps.core.atomic import save_frame

    save_frame(a, tmp_path / "a.parquet")
    save_frame(b, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_stale_cache_is_not_reused(run, tmp_path):
    _geometry(run, tmp_path)
    cache = tmp_path / "r000010.geom.pt"
    blob = torch.load(cache, weights_only=False)
    blob["rows"] = [{**r, "value": -1.0} for r in blob["rows"]]
    blob["key"] = "from-another-training"
    torch.save(blob, cache)
    df = _geometry(run, tmp_path)
    assert (df[df["round"] == 10].value != -1.0).any()


def test_progress_lines_have_rate_and_eta_and_speak_inside_the_eigensolver():
    import io

    from sharpgaps.curvature.geometry import Progress

    now = [0.0]
    log = io.StringIO()
    p = Progress(3, log, every_s=30, clock=lambda: now[0])
    rows = lambda s: [{"metric": "lambda", "value": 2.0}, {"metric": "geometry_seconds", "value": s},  # noqa: E731
                      {"metric": "eig_seconds", "value": s / 2}, {"metric": "n_hvp", "value": 40}]
    p.done(1, 10, rows(999.0), cached=True)  # a cached checkpoint gives no rate
    p.start(2, 20)
    for n in range(1, 11):  # 10 HVPs, 10 s apart: lines only every 30 s
        now[0] += 10
        p.hvp(n, now[0])
    p.done(2, 20, rows(100.0), cached=False)
    lines = log.getvalue().splitlines()
    assert lines[0] == "checkpoint 1/3 (round 10): lambda_1=2, cached; ETA after the first computed checkpoint"
    assert lines[1].startswith("checkpoint 2/3 (round 20): gradient and Hessian top-k")
    assert [ln.strip() for ln in lines[2:-1]] == [f"eigensolver: {n} HVPs in {t} (10.00 s/HVP)"
                                                  for n, t in ((3, "30 s"), (6, "1 min 00 s"), (9, "1 min 30 s"))]
    assert lines[-1] == ("checkpoint 2/3 (round 20): lambda_1=2, 1 min 40 s (eigensolver 50 s, 40 HVPs), "
                         "1 min 40 s/checkpoint; ETA 1 min 40 s")


def test_geometry_log_reports_each_checkpoint(run, tmp_path):
    import io

    model, ckpts, _ = run
    x, y = run_inputs(model)
    log = io.StringIO()
    run_geometry(Objective(model, losses.mse_onehot, x, y, **GSPEC.objective_options()), GSPEC, ckpts, tmp_path, log=log)
    text = log.getvalue()
    assert "checkpoint 1/2 (round 10): gradient" in text and "checkpoint 2/2 (round 30): lambda_1=" in text
    assert "/checkpoint; ETA" in text and text.rstrip().endswith("; done")

"""Cheap estimators of the dominant subspace (sharpgaps.studies.estimators): synthetic recovery, rank, cost accounting,
exact replay of the update and gradient histories, determinism and resume of the per-run stage."""

import math

import numpy as np
import pytest
import torch

from sharpgaps.core.specs import EstimatorSpec, GeometrySpec, RunSpec
from sharpgaps.curvature import gaps
from sharpgaps.curvature import metrics as M
from sharpgaps.engine import losses, models
from sharpgaps.engine.objective import Objective
from sharpgaps.engine.training import CKPT_DIR, checkpoint_path, history_rounds, list_checkpoints, train_run
from sharpgaps.studies import estimators as E

LOSS = losses.mse_onehot


def _orthonormal(d, k, seed=0):
    return torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]


def _overlap(V, U):
    return float((V.T @ U).square().sum()) / min(V.shape[1], U.shape[1])


D, K_DOM = 400, 4


@pytest.fixture(scope="module")
def dominant():
    return _orthonormal(D, K_DOM, seed=1)


def _rows_in(V, n, noise, seed, offset=None):
    """n vectors with a large random component in span(V), plus isotropic noise (and a common offset)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, V.shape[1], generator=g, dtype=torch.float64) * 10.0 @ V.T
    X = X + noise * torch.randn(n, V.shape[0], generator=g, dtype=torch.float64)
    return X if offset is None else X + offset


@pytest.mark.parametrize("name", ["gradhist", "noise", "gap", "update"])
def test_vector_estimators_recover_a_known_subspace_and_report_its_rank(dominant, name):
    """Exactly low rank: the basis is span(V) itself (overlap 1, rank k); with 1% noise, overlap > 0.99."""
    for noise, (lo, rank) in ((0.0, (1 - 1e-9, K_DOM)), (0.1, (0.99, None))):
        X = _rows_in(dominant, 32, noise, seed=2)
        if name == "gradhist":
            U = E.gradient_estimate(X.float())
        elif name == "noise":  # a common mean (the full gradient) must not enter a centred PCA
            U = E.noise_estimate(X + 50.0 * _orthonormal(D, 1, seed=9).T)
        elif name == "gap":  # (W, K, d) windows whose K gaps are re-centred per round
            U = E.gap_estimate(X.reshape(4, 8, D))
        else:  # averages whose round-to-round changes are X (plus a constant drift that centring removes)
            drift = 30.0 * _orthonormal(D, 1, seed=9).T
            U = E.update_estimate(torch.cat([torch.zeros(1, D, dtype=torch.float64), torch.cumsum(X + drift, 0)]))
        assert torch.allclose(U.T @ U, torch.eye(U.shape[1], dtype=torch.float64), atol=1e-10)
        assert _overlap(dominant, U[:, :K_DOM]) > lo
        if rank is not None:
            assert U.shape[1] == rank
        else:
            assert U.shape[1] > K_DOM  # noise has full rank up to the vector count


def test_uncentred_and_centred_pca_differ_where_they_should(dominant):
    """A common mean is the top direction of the uncentred estimate and absent from the centred one."""
    mean = _orthonormal(D, 1, seed=9)
    mean = mean - dominant @ (dominant.T @ mean)
    mean = mean / mean.norm()
    X = _rows_in(dominant, 32, 0.0, seed=2, offset=1000.0 * mean.T)
    assert _overlap(mean, E.gradient_estimate(X)[:, :1]) > 0.99
    assert _overlap(mean, E.noise_estimate(X)) < 1e-12


def _quadratic(V, top=(100.0, 80.0, 60.0, 50.0), bulk=1.0, seed=3):
    d = V.shape[0]
    g = torch.Generator().manual_seed(seed)
    B = _orthonormal(d, d, seed=seed)
    B = B - V @ (V.T @ B)
    bulk_vals = bulk * torch.rand(d, generator=g, dtype=torch.float64)
    H = V @ torch.diag(torch.tensor(top, dtype=torch.float64)) @ V.T + (B * bulk_vals) @ B.T
    count = [0]

    def hvp(v):
        count[0] += 1
        return H @ v.to(torch.float64)
    return H, hvp, count


def test_block_krylov_recovers_the_top_eigenspace_within_its_budget(dominant):
    """Eigengap 50 : 1: three blocks of k (12 HVPs) give the top-k subspace; every budget spends exactly its
    HVPs (a multiple of the block), and the bases of smaller budgets are prefixes of one Krylov sequence."""
    _, hvp, count = _quadratic(dominant)
    start = torch.randn(D, K_DOM, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = E.block_krylov(hvp, start, [4, 8, 12, 14])
    assert count[0] == 12  # 14 is not a multiple of the block: it spends 12
    assert [out[j][0].shape[1] for j in (4, 8, 12, 14)] == [4, 8, 12, 12]
    assert _overlap(dominant, out[12][0][:, :K_DOM]) > 0.99
    assert torch.allclose(out[12][1][:K_DOM], torch.tensor([100.0, 80.0, 60.0, 50.0], dtype=torch.float64),
                          rtol=1e-4)  # Ritz values: error ~ tan^2 of the angle
    assert _overlap(dominant, out[4][0]) < 0.99  # one block: the random start itself, not the top subspace


def test_krylov_from_the_true_subspace_is_exact_at_one_block(dominant):
    _, hvp, _ = _quadratic(dominant)
    U, vals = E.block_krylov(hvp, dominant, [K_DOM])[K_DOM]
    assert _overlap(dominant, U) > 1 - 1e-10


def test_random_basis_is_orthonormal_seeded_and_unaligned(dominant):
    a = E.random_basis(D, 8, torch.Generator().manual_seed(0))
    b = E.random_basis(D, 8, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and torch.allclose(a.T @ a, torch.eye(8, dtype=torch.float64), atol=1e-12)
    assert _overlap(dominant, a) < 0.2  # E = m/d = 0.02


def test_quality_metrics(dominant):
    off = _orthonormal(D, 1, seed=7)[:, 0]
    off = off - dominant @ (dominant.T @ off)  # a bulk component: not part of P_dom g
    g = dominant @ torch.tensor([3.0, 0, 0, 0], dtype=torch.float64) + 0.5 * off
    q = E.quality(g, dominant, dominant[:, :2])
    assert q["overlap"] == pytest.approx(1.0) and q["capture"] == pytest.approx(1.0, abs=1e-6)
    assert q["removal"] == pytest.approx(1.0, abs=1e-6) and q["max_angle_deg"] == pytest.approx(0.0, abs=1e-4)
    other = _orthonormal(D, 2, seed=11)
    other = other - dominant @ (dominant.T @ other)
    q = E.quality(g, dominant, torch.linalg.qr(other)[0])
    assert q["overlap"] == pytest.approx(0.0, abs=1e-12) and q["max_angle_deg"] == pytest.approx(90.0)


def test_prefix_metrics_equal_quality_of_each_prefix(dominant):
    """The one-pass metrics of every prefix U[:, :m] agree with quality() of that prefix; m > rank is skipped."""
    g = dominant @ torch.tensor([3.0, -1.0, 0.5, 0.2], dtype=torch.float64) + _orthonormal(D, 1, seed=3)[:, 0]
    U = _orthonormal(D, 6, seed=5)
    U = gaps.orthonormalise(torch.cat([dominant[:, 1:3] + 0.3 * U[:, :2], U[:, 2:]], 1))
    got = M.prefix_metrics(g, dominant, U, [1, 2, 4, 6, 9])
    assert sorted(got) == [1, 2, 4, 6]
    for m, q in got.items():
        ref = E.quality(g, dominant, U[:, :m])
        assert q == pytest.approx(ref, rel=1e-10, abs=1e-10), m
    assert all(0.01 < got[m]["removal"] < 0.99 and 0.01 < got[m]["overlap"] < 0.99 for m in got)  # not degenerate


def test_cost_accounting():
    """A minibatch gradient costs b/N full gradients; an HVP on N_H examples costs (N_H/N) x rho."""
    assert E.cost(minibatch_grads=32, b=50, n_train=5000) == pytest.approx(0.32)
    assert E.cost(n_hvp=40, n_hessian=256, n_train=5000, hvp_grad_ratio=1.5) == pytest.approx(40 * 256 / 5000 * 1.5)
    assert E.cost(minibatch_grads=2, b=10, n_hvp=3, n_hessian=100, n_train=1000, hvp_grad_ratio=2.0) == \
        pytest.approx(0.02 + 0.6)
    assert E.cost() == 0.0


# ----------------------------------------------------------------------------- on a real (tiny) run


def _objective(model, x, y, gspec: GeometrySpec) -> Objective:
    """The run's objective with the geometry job's Hessian sample and chunking."""
    return Objective(model, LOSS, x, y, **gspec.objective_options())


@pytest.fixture(scope="module")
def run(tmp_path_factory, mnist_small):
    work = tmp_path_factory.mktemp("estrun")
    model = models.build_model("fc_tanh", mnist_small["meta"], seed=0, widths=(16,))
    spec = RunSpec(K=4, tau=2, b=20, lr=0.1, rounds=14, window=2, seed=0, checkpoints=(5, 14))
    train_run(Objective.from_subset(model, LOSS, mnist_small), spec, work, progress=False)
    return model, spec, work


def test_checkpoints_keep_the_kw_averages_before_them(run, mnist_small):
    model, spec, work = run
    c5, c14 = (torch.load(checkpoint_path(work / CKPT_DIR, r), weights_only=False) for r in (5, 14))
    n = history_rounds(spec)
    assert n == 8 and c5["history_rounds"] == [0, 1, 2, 3, 4] and c14["history_rounds"] == list(range(6, 14))
    assert c14["theta_history"].shape == (8, c14["theta"].numel())
    init = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(c5["theta_history"][0], init)


def test_replay_reproduces_training_bit_for_bit(run, mnist_small):
    """The stored history plus one replayed round reproduce the checkpoint's average and last gaps exactly; a
    format-1 checkpoint (no history) replayed from the previous checkpoint gives the same vectors bit for bit."""
    model, spec, work = run
    x, y = mnist_small["x_train"], mnist_small["y_train"]
    c5, c14 = (torch.load(checkpoint_path(work / CKPT_DIR, r), weights_only=False) for r in (5, 14))
    new = E.history_inputs(Objective(model, LOSS, x, y), spec, c14, 8)
    assert new["exact"] and new["replayed_rounds"] == 1  # ceil(8 / K = 2 steps / tau = 2) = 1 round
    assert new["averages"].shape[0] == 9 and new["grads"].shape[0] == 8
    old = {k: v for k, v in c14.items() if k not in ("theta_history", "history_rounds")}
    fallback = E.history_inputs(Objective(model, LOSS, x, y), spec, old, 8, earlier=(5, c5["theta"]))
    assert fallback["exact"] and fallback["replayed_rounds"] == 9
    assert torch.equal(fallback["averages"], new["averages"]) and torch.equal(fallback["grads"], new["grads"])
    # fewer rounds than n before the checkpoint: what exists (rounds 0..5)
    early = E.history_inputs(Objective(model, LOSS, x, y), spec, c5, 8)
    assert early["exact"] and early["averages"].shape[0] == 6
    tampered = dict(c14, theta=c14["theta"] + 1e-6)
    assert not E.history_inputs(Objective(model, LOSS, x, y), spec, tampered, 8)["exact"]


def test_stage_rows_determinism_and_resume(run, mnist_small, tmp_path):
    from sharpgaps.curvature.geometry import checkpoint_eigenvectors

    model, spec, work = run
    x, y = mnist_small["x_train"], mnist_small["y_train"]  # the run's own data: the replay must match it
    gspec = GeometrySpec(k=10, extra=2, hessian_examples=200, m_list=(1, 2), random_draws=2, cos_top=2)
    espec = EstimatorSpec(m_list=(1, 2, 12), krylov_hvps=(10, 20))
    ckpts = list_checkpoints(work / CKPT_DIR)
    vecs = checkpoint_eigenvectors(_objective(model, x, y, gspec), gspec, ckpts, tmp_path / "geom")
    a = E.run_estimators(_objective(model, x, y, gspec), espec, ckpts, vecs, spec, tmp_path / "a", k=gspec.k)
    b = E.run_estimators(_objective(model, x, y, gspec), espec, ckpts, vecs, spec, tmp_path / "b", k=gspec.k)
    c = E.run_estimators(_objective(model, x, y, gspec), espec, ckpts, vecs, spec, tmp_path / "a", k=gspec.k)  # from the cache
    det = lambda df: df[~df["metric"].isin(E.TIMING_METRICS)].reset_index(drop=True)  # noqa: E731
    assert det(a).equals(det(b)) and a.equals(c)
    assert set(a["estimator"]) == set(E.ESTIMATORS) and sorted(set(a["round"])) == [5, 14]
    last = a[a["round"] == 14]
    ov = {e: g["value"].max() for e, g in last[(last["metric"] == "overlap") & (last["m"] == 10)].groupby("estimator")}
    assert ov["oracle"] == pytest.approx(1.0)
    assert ov["random"] < 0.05  # ~ m/d
    rank = last[last["metric"] == "rank"].groupby("estimator")["value"].max()
    assert rank["gap"] <= 3 * 2 and rank["update"] <= 8 and rank["gradhist"] <= 8 and rank["noise"] <= 7
    assert not (last["m"] > last["estimator"].map(rank)).any()  # no m beyond an estimator's rank
    assert (last.loc[last["metric"] == "replay_exact", "value"] == 1.0).all()
    cost = last[last["metric"] == "extra_cost"].set_index(["estimator", "j"])["value"]
    assert cost[("gap", np.nan)] == 0 and cost[("update", np.nan)] == 0 and cost[("gradhist", np.nan)] == 0
    assert cost[("noise", np.nan)] == pytest.approx(8 * 20 / 600)
    rho = float(last.loc[last["metric"] == "hvp_grad_ratio", "value"].iloc[0])
    assert cost[("krylov", 20.0)] == pytest.approx(20 * 200 / 600 * rho)
    assert math.isnan(cost[("oracle", np.nan)])


def test_stage_reuses_the_geometry_jobs_gradient(run, mnist_small, tmp_path):
    """The geometry cache keeps g per checkpoint; the estimators given it agree with computing it themselves
    (to float rounding: the geometry job's g is chunked differently), and a cache entry written before g was
    kept is treated as stale and recomputed, not read without it."""
    from sharpgaps.core.atomic import load_torch, save_torch
    from sharpgaps.core.flat import unflatten
    from sharpgaps.curvature.geometry import checkpoint_cache
    from sharpgaps.engine.objective import FullBatchHVP

    model, spec, work = run
    x, y = mnist_small["x_train"], mnist_small["y_train"]
    gspec = GeometrySpec(k=10, extra=2, hessian_examples=200, m_list=(1, 2), random_draws=2, cos_top=2)
    espec = EstimatorSpec(m_list=(1, 2, 12), krylov_hvps=(10,))
    ckpts = list_checkpoints(work / CKPT_DIR)
    cache = checkpoint_cache(_objective(model, x, y, gspec), gspec, ckpts, tmp_path / "geom")
    for path in ckpts:
        ckpt = load_torch(path)
        theta = unflatten(ckpt["theta"], dict(model.named_parameters()))
        g = FullBatchHVP(model, LOSS, x, y, params=theta, cache_graph=False).gradient()
        cached = cache[int(ckpt["round"])]["gradient"]
        assert cached.shape == g.shape and torch.allclose(cached, g, rtol=1e-5, atol=1e-7)
    vecs = {r: c["vectors"] for r, c in cache.items()}
    grads = {r: c["gradient"] for r, c in cache.items()}
    given = E.run_estimators(_objective(model, x, y, gspec), espec, ckpts, vecs, spec, tmp_path / "a", k=gspec.k, gradients=grads)
    own = E.run_estimators(_objective(model, x, y, gspec), espec, ckpts, vecs, spec, tmp_path / "b", k=gspec.k)
    q = lambda df: df[df["metric"].isin(["overlap", "capture", "removal"])].reset_index(drop=True)  # noqa: E731
    assert np.allclose(q(given)["value"], q(own)["value"], rtol=1e-4, atol=1e-6)
    entry = tmp_path / "geom" / f"{ckpts[0].stem}.geom.pt"
    old = load_torch(entry)
    del old["gradient"]
    save_torch(old, entry)
    again = checkpoint_cache(_objective(model, x, y, gspec), gspec, ckpts, tmp_path / "geom")
    assert torch.equal(again[int(load_torch(ckpts[0])["round"])]["gradient"], grads[int(load_torch(ckpts[0])["round"])])
    assert "gradient" in load_torch(entry)


# ----------------------------------------------------------------------------- in the smoke DAG (shared fixture)

def test_smoke_dag_runs_the_stage_on_every_main_seed_and_draws_it(smoke):
    """Rule `estimators` ran after geometry for every `main` run (each seed), its replay was exact, the collected
    table feeds Fig X3 (both metrics) and the RESULTS section."""
    import pandas as pd
    import yaml

    from sharpgaps.core import grid
    from sharpgaps.pipeline import config as C
    from tests.helpers import FIGURE_DIR, SMOKE_CONFIG, figure_files

    cfg = C.validate(yaml.safe_load(SMOKE_CONFIG.read_text()), SMOKE_CONFIG.parents[1] / "workflow/schemas/config.schema.yaml")
    table = pd.read_parquet(smoke / "results/tables/main_estimators.parquet")
    runs = {(r["setting"], r["seed"]) for s in cfg["experiments"]["main"]["settings"] for r in grid.main_runs(cfg, s)}
    assert set(map(tuple, table[["setting", "seed"]].drop_duplicates().to_numpy().tolist())) == runs
    assert table.groupby(["setting", "seed"])["round"].nunique().eq(cfg["estimators"]["last_checkpoints"]).all()
    assert (table.loc[table["metric"] == "replay_exact", "value"] == 1.0).all()
    assert set(table["estimator"]) == set(E.ESTIMATORS)
    for stem in ("figX3_estimators_overlap", "figX3_estimators_capture"):
        csv, params = figure_files(smoke, stem)
        assert set(csv["panel"]) == {"last", "late", "cost", "training"} and params["metric"] in stem
    assert "## Fig X3" in (smoke / FIGURE_DIR / "RESULTS.md").read_text()


def test_format1_checkpoints_replay_from_the_previous_one_or_skip_the_histories(run, mnist_small, tmp_path):
    """Checkpoints without the average history (format 1, e.g. the committed quick release's) give the same rows as
    format 2 through the replay from the previous checkpoint; with max_replay_rounds below that replay the update
    and gradient histories are skipped (rank 0, no quality rows) and every other estimator is unchanged."""
    from sharpgaps.core.atomic import save_torch
    from sharpgaps.curvature.geometry import checkpoint_eigenvectors

    model, spec, work = run
    x, y = mnist_small["x_train"], mnist_small["y_train"]
    gspec = GeometrySpec(k=10, extra=0, hessian_examples=100, m_list=(1,), random_draws=2, cos_top=2)
    new = list_checkpoints(work / CKPT_DIR)
    old_dir = tmp_path / "old"
    for p in new:
        ck = torch.load(p, weights_only=False)
        save_torch({k: v for k, v in ck.items() if k not in ("theta_history", "history_rounds", "_sha256")},
                   old_dir / p.name)
    old = list_checkpoints(old_dir)
    vecs = checkpoint_eigenvectors(_objective(model, x, y, gspec), gspec, new, tmp_path / "geom")
    det = lambda df: df[~df["metric"].isin(E.TIMING_METRICS)].reset_index(drop=True)  # noqa: E731
    one = EstimatorSpec(m_list=(1, 2), krylov_hvps=(10,), last_checkpoints=1)
    ref = det(E.run_estimators(_objective(model, x, y, gspec), one, new, vecs, spec, tmp_path / "new", k=gspec.k))
    replayed = det(E.run_estimators(_objective(model, x, y, gspec), one, old, vecs, spec, tmp_path / "old_e", k=gspec.k))
    same = lambda df: df[df["metric"] != "replayed_rounds"].reset_index(drop=True)  # noqa: E731  (1 vs 9 rounds)
    assert same(ref).equals(same(replayed))
    assert set(replayed.loc[replayed["metric"] == "replayed_rounds", "value"]) == {9.0}  # from round 5 to 14
    skip = EstimatorSpec(m_list=(1, 2), krylov_hvps=(10,), last_checkpoints=1, max_replay_rounds=0)
    skipped = det(E.run_estimators(_objective(model, x, y, gspec), skip, old, vecs, spec, tmp_path / "skip", k=gspec.k))
    hist = skipped["estimator"].isin(["update", "gradhist"])
    assert (skipped.loc[hist & (skipped["metric"] == "rank"), "value"] == 0).all()
    assert not (hist & skipped["metric"].isin(["overlap", "capture"])).any()
    keep = lambda df: df[~df["estimator"].isin(["update", "gradhist"])].reset_index(drop=True)  # noqa: E731
    assert len(keep(ref)) > 20
    assert keep(skipped).equals(keep(ref))

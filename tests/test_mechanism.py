"""The per-direction mechanism (sharpgaps.studies.mechanism) against the quadratic model run through the engine."""

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sharpgaps.core.specs import MechanismSpec, RunSpec, TheorySpec
from sharpgaps.engine.objective import Objective
from sharpgaps.engine.training import checkpoint_path, train_run
from sharpgaps.studies import mechanism as mech
from sharpgaps.studies.theory import (
    NoisyQuadratic,
    _identity_loss,
    noise_pool,
    predicted_gap_covariance,
    quadratic_problem,
)

REPO = Path(__file__).resolve().parents[1]


def _quadratic_checkpoint(tmp_path, H, C, *, pool, b, lr, tau, K, rounds, seed=0):
    """Train NoisyQuadratic with the project's own train_run and return its one checkpoint (window = all rounds)."""
    d = len(H)
    z = noise_pool(C, pool, seed)
    model = NoisyQuadratic(torch.from_numpy(np.asarray(H, np.float64)), torch.zeros(d, dtype=torch.float64))
    spec = RunSpec(K=K, tau=tau, b=b, lr=lr, rounds=rounds, window=rounds, seed=seed, checkpoints=(rounds,))
    subset = {"x_train": z, "y_train": torch.zeros(pool), "x_test": z[:10], "y_test": torch.zeros(10)}
    train_run(Objective.from_subset(model, _identity_loss, subset), spec, tmp_path,
              run_info={"setting": "quad", "loss": "identity"}, progress=False)
    ckpt = torch.load(checkpoint_path(tmp_path / "ckpt", rounds), weights_only=False)
    return model, z, ckpt


def _mechanism(model, z, ckpt, H, n_random=0):
    evals, U = np.linalg.eigh(H)
    spec = MechanismSpec(k=len(H), random_directions=n_random, examples=None, chunk_size=997, seed=0)
    return mech.checkpoint_mechanism(Objective(model, _identity_loss, z, torch.zeros(len(z))), spec, ckpt, U, evals)


def test_per_direction_formula_is_the_closed_form_in_the_eigenbasis():
    """Exact algebra, generic (non-commuting) C: the per-direction prediction with sampling with replacement
    is the diagonal of the closed-form covariance in H's eigenbasis; a wrong power of a is not."""
    H, C = quadratic_problem(TheorySpec())
    lr, K, b, tau = 0.05, 8, 4, 16
    evals, U = np.linalg.eigh(H)
    closed = np.diag(U.T @ predicted_gap_covariance(H, C, b, lr, tau, K) @ U)
    c = np.diag(U.T @ C @ U)
    ours = mech.predicted_variance(evals, c, lr=lr, K=K, b=b, tau=tau, N=math.inf, rounds=[1])
    np.testing.assert_allclose(ours, closed, rtol=1e-12)
    a = 1 - lr * evals
    wrong = lr**2 * (1 - 1 / K) * c / b * (1 - a**tau) / (1 - a)  # sum of a^s, not a^(2s)
    assert np.abs(wrong / closed - 1).max() > 0.1


def test_noise_weight_counts_same_epoch_pairs():
    """F(a) against a brute-force sum of the minibatch-mean covariances of WorkerBatches' schedule."""
    N, b, tau = 12, 3, 6  # 4 steps per epoch: rounds straddle epochs
    a = np.array([1.0, 0.7, -0.3])
    for first in (0, 2, 6):
        t = np.arange(tau)
        w = a[:, None] ** (tau - 1 - t)
        ep = (first + t) // (N // b)
        # Cov(mean batch t, mean batch t') in units of S/b: 1 - b/N on the diagonal, -b/N within an epoch
        cov = np.where(ep[:, None] == ep[None, :], -b / N, 0.0) + np.eye(tau)
        brute = np.einsum("jt,tu,ju->j", w, cov, w)
        np.testing.assert_allclose(mech.noise_weight(a, tau, b, N, first), brute, rtol=1e-12)
    # one round = one whole epoch: every worker sees each example once, the flat direction's noise cancels
    assert mech.noise_weight(np.array([1.0]), 4, 3, 12, 0)[0] == pytest.approx(0.0, abs=1e-12)


def test_engine_reproduces_the_per_direction_prediction(tmp_path):
    """NoisyQuadratic through train_run and the checkpoint path (c_j from per-example gradients, gaps from the
    checkpoint's window): measured within 4 standard errors of the prediction along every eigendirection,
    with a generic C that does not commute with H."""
    spec = TheorySpec()
    H, C = quadratic_problem(spec)
    model, z, ckpt = _quadratic_checkpoint(tmp_path, H, C, pool=20_000, b=4, lr=0.05, tau=8, K=8, rounds=600)
    df = _mechanism(model, z, ckpt, H, n_random=2)
    eig = df[df["kind"] == "eigen"]
    zscore = (eig["measured"] - eig["predicted"]) / eig["stderr"]
    assert (zscore.abs() < 4).all(), eig
    # the Gaussian error bar agrees with the empirical one (both estimate the same spread)
    assert ((eig["stderr"] / eig["stderr_gauss"]).between(0.7, 1.4)).all()
    # c_j is the pool's covariance along v_j (the per-example gradient is H theta + z_n)
    evals, U = np.linalg.eigh(H)
    zc = z.numpy() - z.numpy().mean(0)
    np.testing.assert_allclose(eig["c"], np.diag(U.T @ (zc.T @ zc / (len(z) - 1)) @ U), rtol=1e-9)
    # random directions: the Rayleigh quotient, orthogonal to the eigenvectors (here: none left, d = 6)
    assert set(df["kind"]) == {"eigen", "random", "total"}
    assert df.loc[df["kind"] == "total", "measured"].item() == pytest.approx(eig["measured"].sum(), rel=1e-9)
    assert "predicted_drift" not in df  # IID plain SGD: the table keeps its columns


def test_without_replacement_factor(tmp_path):
    """A small pool (N = 64, b = 4, tau = 8: half an epoch per round): the engine matches F(a) with the
    same-epoch correlations and rejects sampling with replacement and the (N-b)/(N-1)-only factor."""
    H = np.diag([5.0, 1.0, 1e-9])
    C = np.eye(3)
    N, b, lr, tau, K, rounds = 64, 4, 0.1, 8, 8, 500
    model, z, ckpt = _quadratic_checkpoint(tmp_path, H, C, pool=N, b=b, lr=lr, tau=tau, K=K, rounds=rounds)
    df = _mechanism(model, z, ckpt, H)
    eig = df[df["kind"] == "eigen"].set_index("direction")
    assert ((eig["measured"] - eig["predicted"]).abs() < 4 * eig["stderr"]).all(), eig
    flat = eig.loc[0]  # eigh: ascending, direction 0 is the flat one
    assert mech.noise_weight(np.array([1.0]), tau, b, N, 0)[0] == pytest.approx(4.0)
    with_replacement = lr**2 * (1 - 1 / K) * flat["c"] * (N - 1) / N / b * tau
    fpc_only = with_replacement * (N - b) / (N - 1)
    for wrong in (with_replacement, fpc_only):
        assert abs(flat["measured"] - wrong) > 8 * flat["stderr"]


def test_gradient_noise_is_unbiased_for_a_known_covariance():
    """Per-example gradients z_n ~ N(0, Sigma) (NoisyQuadratic): the mean of c_j over many small data sets is
    v_j^T Sigma v_j within 4 standard errors; the ddof-0 variance (biased by (n-1)/n) is rejected."""
    d, n, reps = 4, 5, 3000
    rng = np.random.default_rng(1)
    A = rng.standard_normal((d, d))
    Sigma = A @ A.T / d + 0.2 * np.eye(d)
    V = np.linalg.qr(rng.standard_normal((d, 2)))[0]
    truth = np.diag(V.T @ Sigma @ V)
    model = NoisyQuadratic(torch.eye(d, dtype=torch.float64), torch.from_numpy(rng.standard_normal(d)))
    theta = dict(model.named_parameters())
    L = np.linalg.cholesky(Sigma)
    # one vmapped pass over all reps * n examples; each data set's c_j from its own n rows
    z = torch.from_numpy(rng.standard_normal((reps * n, d)) @ L.T)
    P = mech.per_example_projections(model, _identity_loss, theta, z, torch.zeros(reps * n), torch.from_numpy(V), 512)
    est = np.array([mech.gradient_noise(P[i * n : (i + 1) * n]) for i in range(reps)])
    se = est.std(0, ddof=1) / reps**0.5
    assert (np.abs(est.mean(0) - truth) < 4 * se).all()
    assert (np.abs(est.mean(0) * (n - 1) / n - truth) > 4 * se).any()


def test_subsampled_examples_are_unbiased_for_the_whole_set():
    """c_j from n of N examples drawn without replacement averages to the whole set's c_j."""
    rng = np.random.default_rng(2)
    N, n, reps = 40, 6, 4000
    P = torch.from_numpy(rng.standard_normal((N, 2)) * [1.0, 3.0] + 0.5)
    full = mech.gradient_noise(P)
    est = np.array([mech.gradient_noise(P[torch.from_numpy(rng.permutation(N)[:n])]) for _ in range(reps)])
    se = est.std(0, ddof=1) / reps**0.5
    assert (np.abs(est.mean(0) - full) < 4 * se).all()


def test_random_bulk_directions_are_orthonormal_and_seeded():
    V = np.linalg.qr(np.random.default_rng(0).standard_normal((50, 5)))[0]
    U = mech.random_bulk_directions(V, 3, seed=7)
    np.testing.assert_allclose(U.T @ U, np.eye(3), atol=1e-12)
    assert np.abs(V.T @ U).max() < 1e-12
    np.testing.assert_array_equal(U, mech.random_bulk_directions(V, 3, seed=7))
    assert not np.array_equal(U, mech.random_bulk_directions(V, 3, seed=8))


def test_fit_exponent_recovers_a_power_law():
    rng = np.random.default_rng(0)
    lam = 10 ** rng.uniform(-1, 2, 40)
    c = 3 * lam**1.5 * 10 ** rng.normal(0, 0.05, 40)
    fit = mech.fit_exponent(lam, c)
    assert fit["lo"] < 1.5 < fit["hi"] and fit["hi"] - fit["lo"] < 0.2 and fit["n"] == 40
    assert math.isnan(mech.fit_exponent([1.0, 2.0], [1.0, 2.0])["gamma"])


def test_vk_share():
    rows = []
    for r in (1, 2):
        for j, (m, p) in enumerate([(4.0, 2.0), (1.0, 1.0), (0.5, 0.5)]):
            rows.append({"round": r, "step": r, "kind": "eigen", "direction": j, "k": 2, "measured": m, "predicted": p})
        rows.append({"round": r, "step": r, "kind": "total", "direction": -1, "k": 2, "measured": 10.0,
                     "predicted": 6.0})
    share = mech.vk_share(pd.DataFrame(rows))
    assert list(share["share_measured"]) == [0.5, 0.5] and list(share["share_predicted"]) == [0.5, 0.5]


def test_vk_share_of_a_table_with_plain_and_heterogeneous_runs():
    """A plain run's optional keys are NaN beside a Dirichlet run's (one mechanism table of several experiments):
    both runs still get their shares."""
    base = {"setting": "mnist_fc", "K": 8, "tau": 8, "b": 50, "lr": 0.05, "loss": "mse", "window": 4, "seed": 0,
            "round": 3, "step": 24, "k": 1}
    rows = []
    for alpha, top in ((float("nan"), 2.0), (0.1, 5.0)):
        rows += [{**base, "alpha": alpha, "kind": "eigen", "direction": 0, "measured": top, "predicted": top},
                 {**base, "alpha": alpha, "kind": "total", "direction": -1, "measured": 10.0, "predicted": 10.0}]
    share = mech.vk_share(pd.DataFrame(rows))
    assert sorted(share["share_measured"]) == [0.2, 0.5] and sorted(share["share_predicted"]) == [0.2, 0.5]


def test_tau_shares_take_each_runs_own_late_third():
    """A tau ablation holds several runs per seed, each with its own checkpoint rounds: the late third is each
    run's, never one pooled over the seed's runs (which read a long-tau run at its final checkpoint only)."""
    from sharpgaps.report.summary import mechanism_numbers

    base = {"setting": "mnist_fc", "K": 8, "b": 50, "lr": 0.05, "loss": "mse", "window": 4,
            "experiment": "tau_ablation"}
    rows = []
    for seed in (0, 1):
        for tau, rounds in ((8, (10, 20, 30, 40, 50, 60)), (32, (2, 4, 6))):
            for r in rounds:
                share = 0.1 * seed + r / 100 + tau / 1000  # a different share per run and round
                run = {**base, "tau": tau, "seed": seed, "round": r, "step": r * tau, "k": 2}
                rows.append({**run, "kind": "eigen", "direction": 0, "measured": share, "predicted": share / 2})
                rows.append({**run, "kind": "total", "direction": -1, "measured": 1.0, "predicted": 1.0})
    got = mechanism_numbers(pd.DataFrame(rows))["share"].set_index(["tau", "seed"])
    for seed in (0, 1):  # by run: tau 8 over rounds 50, 60; tau 32 over round 6 (the last third of 3)
        assert got.loc[(8, seed), "share_measured"] == pytest.approx(0.1 * seed + 0.55 + 0.008)
        assert got.loc[(32, seed), "share_measured"] == pytest.approx(0.1 * seed + 0.06 + 0.032)
        assert got.loc[(32, seed), "share_predicted"] == pytest.approx((0.1 * seed + 0.06 + 0.032) / 2)


def test_the_concentration_splits_into_noise_share_and_curvature_filter():
    """Noise 100x larger per direction on V_k than in the bulk and a filter that halves V_k: the split says so."""
    from sharpgaps.report.summary import mechanism_split, split_reading

    base = {"setting": "mnist_fc", "K": 8, "tau": 8, "b": 50, "lr": 0.05, "loss": "mse", "window": 4, "k": 2,
            "d": 1002, "experiment": "main"}
    rows = []
    for seed in (0, 1):
        for r in (10, 20, 30):
            run = {**base, "seed": seed, "round": r, "step": 8 * r}
            f_v, f_b = 0.5 + 0.01 * seed, 1.0  # the filter on V_k and on the bulk
            for j in range(2):
                rows.append({**run, "kind": "eigen", "direction": j, "c": 100.0, "predicted": 100.0 * f_v,
                             "measured": 100.0 * f_v})
            for j in range(4):
                rows.append({**run, "kind": "random", "direction": j, "c": 1.0, "predicted": f_b, "measured": f_b})
            rows.append({**run, "kind": "total", "direction": -1, "c": float("nan"),
                         "predicted": 200 * f_v + 1000 * f_b, "measured": 200 * f_v + 1000 * f_b})
    split = mechanism_split(pd.DataFrame(rows))
    assert split["noise_share"].mean == pytest.approx(200 / 1200)  # tr C = 200 on V_k + 1000 x 1 elsewhere
    assert split["filter"].mean == pytest.approx(0.505) and split["k_over_d"].mean == pytest.approx(2 / 1002)
    assert split["pred_share"].mean == pytest.approx((100 / 1100 + 102 / 1102) / 2)
    assert split_reading(split).startswith("the noise: its variance concentrates on V_k while the curvature filter damps")
    # without random (bulk) directions the split is unmeasured, and no number is made up for it
    no_bulk = mechanism_split(pd.DataFrame([r for r in rows if r["kind"] != "random"]))
    assert not no_bulk["filter"].ok() and not no_bulk["noise_share"].ok()


def test_per_example_loop_matches_vmap():
    """The two per-example paths give the same projections (the small-n loop and the vmapped chunks)."""
    from sharpgaps.engine.losses import mse_onehot
    from sharpgaps.engine.models import build_model

    torch.manual_seed(0)
    meta = {"input_shape": [1, 28, 28], "n_classes": 10}
    model = build_model("fc_tanh", meta, seed=0)
    x, y = torch.randn(20, 1, 28, 28), torch.randint(0, 10, (20,))
    theta = dict(model.named_parameters())
    D = torch.randn(sum(p.numel() for p in theta.values()), 3, dtype=torch.float64)
    a = mech.per_example_projections(model, mse_onehot, theta, x, y, D, chunk_size=7, vectorize=True)
    b = mech.per_example_projections(model, mse_onehot, theta, x, y, D, vectorize=False)
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5 * float(a.abs().max()))  # float32 sums over d terms
    assert a.shape == (20, 3) and a.abs().max() > 0


# ----------------------------------------------------------------------------- the stage in the smoke DAG

def _smoke_mechanism_run(smoke):
    """A smoke mnist_fc run with its mechanism table, and the command line that made it (from its log)."""
    out = sorted((smoke / "results/runs/mnist_fc").glob("*_s0/mechanism_*.parquet"))
    assert out, "the smoke DAG has no mechanism table for mnist_fc seed 0"
    return out[0]


def test_smoke_mechanism_table(smoke):
    """Every main run of the smoke DAG is measured, in the collected table, with finite positive predictions."""
    from sharpgaps.core.atomic import read_frame

    table = read_frame(smoke / "results/tables/mechanism.parquet")
    runs = {p.parent.name for p in (smoke / "results/runs").glob("*/*/run.json")}
    assert {f"{s}" for s in table["setting"]} == {"mnist_fc", "cifar_cnn", "sst2_transformer"}
    assert set(table["experiment"]) == {"main", "heterogeneity"}
    assert table.drop_duplicates(["setting", "seed", "alpha", "momentum"]).shape[0] == len(runs)  # one run: one table
    # the heterogeneity runs name their partition and momentum; a Dirichlet run predicts drift, an IID one none
    het = table[table["alpha"].notna()]
    assert len(het) and (het.loc[het["kind"] == "eigen", "predicted_drift"] >= 0).all()
    assert table.loc[table["alpha"].isna() & table["momentum"].isna(), "predicted_drift"].isna().all()
    eig = table[table["kind"] == "eigen"]
    assert (eig["predicted"] > 0).all() and (eig["measured"] > 0).all() and np.isfinite(eig["ratio"]).all()
    # k + extra eigenvectors per checkpoint, as in the geometry table
    assert (eig.groupby(["setting", "seed", "round"])["direction"].max() + 1 >= eig.groupby(
        ["setting", "seed", "round"])["k"].first()).all()


def test_mechanism_job_is_deterministic_and_resumes(smoke, tmp_path):
    """Rerunning the job (fresh work dir) gives the same table bitwise; a work dir with one checkpoint's cache
    deleted (a kill mid-run) recomputes it and again gives the same table."""
    import shutil
    import subprocess
    import sys

    from sharpgaps.core.atomic import read_frame

    out = _smoke_mechanism_run(smoke)
    setting, run = out.parent.parent.name, out.parent.name
    log = next((smoke / "results/logs/mechanism" / setting).glob(f"{run}_*.log"))
    assert "median |log10(measured/predicted)|" in log.read_text()  # progress per checkpoint
    snake = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(smoke),
                            "-n", "-p", "-f", str(out.relative_to(smoke)), "--configfile",
                            str(REPO / ".test/config.yaml")], capture_output=True, text=True, check=True)
    cmd = next(line.strip().removeprefix("Shell command: ") for line in snake.stdout.splitlines()
               if "sharpgaps mechanism" in line)
    cmd = re.sub(r"--work-dir \S+", f"--work-dir {tmp_path}/work", cmd.split(" > ")[0])
    cmd = re.sub(r"--out \S+", f"--out {tmp_path}/a.parquet", cmd)
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run(cmd, shell=True, cwd=smoke, check=True, env=env, capture_output=True)
    a, ref = read_frame(tmp_path / "a.parquet"), read_frame(out)
    pd.testing.assert_frame_equal(a, ref, check_exact=True)
    caches = sorted((tmp_path / "work").glob("*.mech.pt"))
    assert len(caches) == a["round"].nunique()
    caches[-1].unlink()
    subprocess.run(cmd.replace(f"{tmp_path}/a.parquet", f"{tmp_path}/b.parquet"), shell=True, cwd=smoke,
                   check=True, env=env, capture_output=True)
    pd.testing.assert_frame_equal(read_frame(tmp_path / "b.parquet"), ref, check_exact=True)
    shutil.rmtree(tmp_path / "work")


def _synthetic_table(shift=0.1, gamma=1.5):
    """A mechanism table with known answers: measured = predicted x 10^shift, c = lambda^gamma."""
    rows = []
    for exp, taus in (("main", (8,)), ("tau_ablation", (1, 8))):
        for tau in taus:
            for seed in (0, 1):
                for r in range(1, 7):
                    for j, lam in enumerate((40.0, 20.0, 10.0, 5.0, 2.0)):
                        p = 1e-4 * lam ** -0.5
                        rows.append({"experiment": exp, "setting": "s", "K": 8, "tau": tau, "b": 50, "lr": 0.05,
                                     "seed": seed, "loss": "mse", "window": 4, "k": 3, "d": 1000, "round": r,
                                     "step": r * tau, "kind": "eigen", "direction": j, "lambda": lam,
                                     "c": lam**gamma, "predicted": p, "measured": p * 10**shift})
                    rows.append({**rows[-1], "kind": "total", "direction": -1, "lambda": np.nan, "c": np.nan,
                                 "predicted": 1e-3 * tau, "measured": 2e-3 * tau})
    df = pd.DataFrame(rows)
    df["ratio"] = df["measured"] / df["predicted"]
    return df


def test_results_section_reads_the_table():
    from sharpgaps.report.summary import mechanism_section

    text = "\n".join(mechanism_section(_synthetic_table()))
    assert "median abs log10(measured/predicted) is 0.1 ± 0 (n=2)" in text
    assert "measured above predicted" in text
    assert "gamma 1.5 ± 0 (n=2)" in text
    assert "### The tau factor" in text and "| s | 1 |" in text
    low = "\n".join(mechanism_section(_synthetic_table(shift=-0.3, gamma=1.0)))
    assert "median abs log10(measured/predicted) is 0.3 ± 0 (n=2)" in low and "measured below predicted" in low
    assert "gamma 1 ± 0 (n=2)" in low


def test_smoke_mechanism_figures(smoke):
    """Fig X4's outputs of the smoke DAG, drawn from the main runs of every setting; its tau panel shows the tau
    ablation, which the smoke config lacks, so it is not drawn there."""

    fig_dir = smoke / "results/figures"
    for stem in ("figX4_mechanism_scatter", "figX4_mechanism_ratio", "figX4_noise_curvature"):
        assert (fig_dir / f"{stem}.pdf").stat().st_size > 0 and (fig_dir / f"{stem}.png").stat().st_size > 0
        data = pd.read_csv(fig_dir / f"{stem}.csv")
        assert set(data["setting"]) == {"mnist_fc", "cifar_cnn", "sst2_transformer"}, stem
    assert not (fig_dir / "figX4_tau_share.png").exists()
    scatter = pd.read_csv(fig_dir / "figX4_mechanism_scatter.csv")
    assert np.allclose(scatter["ratio"], scatter["measured"] / scatter["predicted"])
    results = (fig_dir / "RESULTS.md").read_text()
    assert "## The mechanism direction by direction (Fig X4)" in results


def test_momentum_weights_follow_the_heavy_ball_recurrence():
    """step_weights with momentum against a brute-force run of v <- mu v + g, theta <- theta - lr v on a
    1-d quadratic (curvature lam) hit by a unit gradient kick at one step; mu = 0 gives a^(tau-1-t)."""
    lr, tau = 0.05, 8
    lam = np.array([0.5, 4.0, 30.0])
    a = 1 - lr * lam
    np.testing.assert_array_equal(mech.step_weights(a, tau), a[:, None] ** (tau - 1 - np.arange(tau)))
    for mu in (0.0, 0.9):
        w = mech.step_weights(a, tau, mu)
        for t in range(tau):
            x, v = np.zeros(3), np.zeros(3)
            for s in range(tau):
                v = mu * v + lam * x + (1.0 if s == t else 0.0)
                x = x - lr * v
            np.testing.assert_allclose(w[:, t], -x / lr, rtol=1e-12)


def test_iid_shards_give_the_noise_prediction_and_no_drift():
    lam, c = np.array([30.0, 2.0, 0.1]), np.array([5.0, 1.0, 0.2])
    kw = dict(lr=0.05, b=50, tau=8, rounds=[3, 4])
    K, N = 8, 5000
    parts = mech.predicted_components(lam, np.tile(c, (K, 1)), np.zeros((K, 3)), [N] * K, **kw)
    np.testing.assert_allclose(parts["noise"], mech.predicted_variance(lam, c, K=K, N=N, **kw), rtol=1e-12)
    assert not parts["drift"].any()


def test_noise_plus_drift_predicts_the_gaps_of_heterogeneous_workers():
    """Monte Carlo: K workers on one quadratic, each pulled by its own mean gradient d_i plus Gaussian noise
    (with replacement), averaged every tau steps. The measured per-direction gap variance matches noise +
    drift within its sampling error (with and without momentum), and the noise term alone misses it."""
    rng = np.random.default_rng(0)
    lam = np.array([20.0, 5.0, 0.5])
    lr, tau, K, b, rounds = 0.05, 8, 6, 10, 3000
    c = rng.uniform(0.5, 2.0, (K, 3))  # per-shard example-gradient variances
    d = rng.normal(0.0, 0.3, (K, 3))
    d -= d.mean(0)
    for mu in (0.0, 0.9):
        x, v = np.zeros((K, 3)), np.zeros((K, 3))
        q = []
        for _ in range(rounds):
            v[:] = v.mean(0)  # buffers averaged with the parameters
            x[:] = x.mean(0)
            for _ in range(tau):
                g = lam * x + d + rng.normal(0.0, 1.0, (K, 3)) * np.sqrt(c / b)
                v = mu * v + g
                x = x - lr * v
            gaps = x - x.mean(0)
            q.append((gaps**2).mean(0))
        measured = np.mean(q[100:], axis=0)
        parts = mech.predicted_components(lam, c, d, [math.inf] * K, lr=lr, b=b, tau=tau, rounds=[1], momentum=mu)
        total = parts["noise"] + parts["drift"]
        np.testing.assert_allclose(measured, total, rtol=0.06)
        assert np.abs(measured / parts["noise"] - 1).max() > 0.3


def test_shard_statistics_recover_shard_means_and_not_sampling_noise():
    rng = np.random.default_rng(1)
    K, n = 4, 40000
    shard_of = rng.integers(0, K, n)
    P = torch.from_numpy(rng.normal(0.0, 1.0, (n, 2)))
    c, drift = mech.shard_statistics(P, shard_of, [np.sum(shard_of == i) * 10 for i in range(K)])
    np.testing.assert_allclose(c, 1.0, atol=0.06)  # ~10,000 per shard: sd of a variance ~0.014
    assert np.abs(drift).max() < 0.03  # one split of one distribution: no drift beyond sampling noise
    P[:, 0] += torch.from_numpy(np.array([1.0, -1.0, 0.5, -0.5])[shard_of])
    c, drift = mech.shard_statistics(P, shard_of, [np.sum(shard_of == i) * 10 for i in range(K)])
    np.testing.assert_allclose(np.abs(drift[:, 0]), [1.0, 1.0, 0.5, 0.5], atol=0.06)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_engine_reproduces_noise_plus_drift_on_label_skewed_shards(tmp_path, momentum):
    """NoisyQuadratic whose examples' noise depends on their label, trained on Dirichlet shards (with and
    without momentum): the mechanism measures drift and the noise + drift prediction matches the gaps within
    4 standard errors along every eigendirection, where the noise term alone falls far short. The table
    names the run's partition and momentum; an IID plain run's table has no drift columns."""
    H = np.diag([8.0, 2.0, 0.5])
    rng = np.random.default_rng(3)
    N, K, b, lr, tau, rounds, classes = 4000, 4, 4, 0.05, 8, 600, 4
    y = torch.from_numpy(rng.integers(0, classes, N))
    offsets = rng.normal(0.0, 1.0, (classes, 3))
    z = noise_pool(np.eye(3), N, 0) + torch.from_numpy(offsets)[y]
    z = z - z.mean(0)
    model = NoisyQuadratic(torch.from_numpy(H), torch.zeros(3, dtype=torch.float64))
    spec = RunSpec(K=K, tau=tau, b=b, lr=lr, rounds=rounds, window=rounds, seed=0, checkpoints=(rounds,),
                   partition="dirichlet", alpha=0.3, momentum=momentum)
    subset = {"x_train": z, "y_train": y, "x_test": z[:10], "y_test": y[:10]}
    train_run(Objective.from_subset(model, _identity_loss, subset), spec, tmp_path,
              run_info={"setting": "quad", "loss": "identity"}, progress=False)
    ckpt = torch.load(checkpoint_path(tmp_path / "ckpt", rounds), weights_only=False)
    evals, U = np.linalg.eigh(H)
    mspec = MechanismSpec(k=3, random_directions=0, examples=None, chunk_size=997, seed=0)
    df = mech.checkpoint_mechanism(Objective(model, _identity_loss, z, y), mspec, ckpt, U, evals)
    eig = df[df["kind"] == "eigen"]
    assert (eig["predicted_drift"] > 0.5 * eig["predicted_noise"]).any(), eig  # the skew matters here
    assert ((eig["measured"] - eig["predicted"]).abs() < 4 * eig["stderr"]).all(), eig
    assert ((eig["measured"] - eig["predicted_noise"]).abs() > 8 * eig["stderr"]).any(), eig
    table = mech.run_mechanism(Objective(model, _identity_loss, z, y), mspec,
                               [checkpoint_path(tmp_path / "ckpt", rounds)], {rounds: U}, {rounds: evals},
                               tmp_path / "mech")
    assert table["alpha"].unique().tolist() == [0.3] and "predicted_drift" in table

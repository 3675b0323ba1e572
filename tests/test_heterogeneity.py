"""The heterogeneity family's cell table and RESULTS verdicts (sharpgaps.report.heterogeneity) on synthetic tables
whose answers are known."""

import numpy as np
import pandas as pd

from sharpgaps.report import heterogeneity as het

CELLS = [(None, 0.0), (None, 0.9), (0.1, 0.0), (0.1, 0.9)]
ROUNDS = (4, 8, 16)


def _run(alpha, momentum, seed):
    base = {"setting": "mnist_fc", "K": 8, "tau": 8, "b": 50, "lr": 0.05, "seed": seed, "loss": "mse", "window": 4}
    if alpha is not None:
        base |= {"partition": "dirichlet", "alpha": alpha}
    if momentum:
        base |= {"momentum": momentum, "momentum_buffers": "average"}
    return base


def _overlap(alpha, momentum, seed):
    """Skew halves the overlap; momentum leaves it; seeds differ a little."""
    return (0.2 if alpha is not None else 0.4) + 0.01 * seed


def _tables():
    geo, mech, est = [], [], []
    for alpha, momentum in CELLS:
        for seed in (0, 1):
            run = _run(alpha, momentum, seed)
            for r in ROUNDS:
                at = {**run, "round": r, "step": 8 * r, "i": np.nan, "j": np.nan}
                geo.append({**at, "metric": "gap_rank", "m": np.nan, "value": 28.0})
                geo += [{**at, "metric": "sqcos", "m": np.nan, "i": 0, "j": j, "value": 0.1} for j in range(2)]  # k = 2
                for metric, value in (("overlap", _overlap(alpha, momentum, seed)), ("aligned_overlap", 0.03 if alpha else 0.01),
                                      ("removal", 0.5), ("capture", 0.3), ("aligned_removal", 0.2)):
                    geo.append({**at, "metric": metric, "m": 2, "value": value})
                    geo.append({**at, "metric": metric, "m": 1, "value": -1.0})  # another m: never read
                for name, cost, value in (("gradhist", 0.0, 0.6), ("gap", 0.0, 0.3), ("krylov", 12.0, 0.9)):
                    est += [{**at, "estimator": name, "metric": "overlap", "m": 2, "value": value},
                            {**at, "estimator": name, "metric": "extra_cost", "m": np.nan, "value": cost}]
                drift = 0.5 if alpha is not None else 0.0
                for direction in range(3):  # k = 2 top directions + one beyond
                    row = {**at, "experiment": "heterogeneity", "k": 2, "kind": "eigen", "direction": direction,
                           "measured": 1.0, "predicted": 1.0, "ratio": 1.0}
                    if alpha is not None or momentum:
                        row |= {"predicted_noise": 1.0 - drift, "predicted_drift": drift}
                    mech.append(row)
    main = {**_run(None, 0.0, 0), "experiment": "main", "round": 4, "step": 32, "k": 2, "kind": "eigen",
            "direction": 0, "measured": 5.0, "predicted": 1.0, "ratio": 5.0}  # another experiment: never read
    return pd.DataFrame(geo), pd.DataFrame(mech + [main]), pd.DataFrame(est)


def test_cell_table_reads_m_k_the_free_estimators_and_the_drift_split():
    table = het.cell_table(*_tables())
    assert set(table["alpha"]) == {"iid", "0.1"} and set(table["momentum"]) == {0.0, 0.9}
    ov = table[table["metric"] == "overlap"]
    assert (ov["value"] > 0).all() and len(ov) == len(CELLS) * 2 * len(ROUNDS)  # m = k only
    assert set(table.loc[table["metric"] == "estimator_overlap", "estimator"]) == {"gradhist", "gap"}  # Krylov costs
    skew = table[(table["alpha"] == "0.1") & (table["momentum"] == 0.0)]
    assert skew.loc[skew["metric"] == "drift_explains", "value"].eq(0.5).all()
    np.testing.assert_allclose(skew.loc[skew["metric"] == "mech_err_noise", "value"], np.log10(2.0))
    plain = table[(table["alpha"] == "iid") & (table["momentum"] == 0.0)]
    assert plain.loc[plain["metric"] == "drift_explains", "value"].eq(0.0).all()  # IID plain SGD: all noise
    assert plain.loc[plain["metric"] == "noise_explains", "value"].eq(1.0).all()


def test_verdicts_say_which_way_each_answer_falls():
    table = het.cell_table(*_tables())
    text = " ".join(het.verdicts(table, "mnist_fc"))
    assert ("overlap with V_k at m = k is 0.205 ± 0.00707 (n=2) with label skew (Dirichlet alpha = 0.1, no "
            "momentum) against 0.405 ± 0.00707 (n=2) for IID workers (difference -0.2, ratio 0.506): label skew "
            "lowers it. The g-aligned control's overlap is 0.03 ± 0 (n=2) against 0.01 ± 0 (n=2) (difference 0.02).") in text
    assert "momentum changes it by no more than the seed band." in text
    one = table[table["seed"] == 0]  # one seed: no band, no direction claimed
    assert " ".join(het.verdicts(one, "mnist_fc")).count("not settled: one seed has no band") == 2
    assert text.count("predicts the per-direction gap variance on V_k within a factor 2") == 2
    assert "drift's predicted energy in V_k is 0.5 ± 0 (n=2) of the measured" in text
    lines = het.section(table)
    assert any(line.startswith("| setting | alpha | momentum |") for line in lines)
    assert "gradient history" not in " ".join(lines) and "gradhist: 0.6" in " ".join(lines)


def test_smoke_dag_runs_partitions_and_momentum_end_to_end(smoke):
    """The smoke DAG's heterogeneity experiment (MNIST, Dirichlet 0.5 x momentum 0.9, one seed): each run records
    its shards' label histograms, the mechanism predicts drift only where workers hold their own shards, and the
    cell table and Fig X5 hold all four cells."""
    import json

    from sharpgaps.core.atomic import read_frame

    runs = {p.parent.name: json.loads(p.read_text()) for p in (smoke / "results/runs/mnist_fc").glob("*/run.json")}
    skewed = {name: r for name, r in runs.items() if "_dir0.5" in name}
    assert len(skewed) == 2 and any("_mom0.9avg" in name for name in runs)
    for r in skewed.values():
        counts = np.asarray(r["worker_label_counts"])
        assert counts.shape[0] == 8 and counts.sum() == 1000 and (counts.sum(1) >= 50).all()  # K shards of >= b
    cells = read_frame(smoke / "results/tables/heterogeneity.parquet")
    assert set(zip(cells["alpha"], cells["momentum"])) == {("iid", 0.0), ("iid", 0.9), ("0.5", 0.0), ("0.5", 0.9)}
    drift = cells[cells["metric"] == "drift_explains"].groupby("alpha")["value"].max()
    assert drift["iid"] == 0.0 and drift["0.5"] > 0.0
    drawn = pd.read_csv(smoke / "results/figures/figX5_heterogeneity_overlap.csv")
    assert set(drawn["alpha"].astype(str)) == {"iid", "0.5"}

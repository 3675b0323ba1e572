"""Numbers across seeds and claims generated beside them (sharpgaps.report.evidence, sharpgaps.report.summary)."""

import math

import numpy as np
import pandas as pd
import pytest

from sharpgaps.report.evidence import MissingEvidence, Stat, claim, late_rounds, per_seed, stat
from sharpgaps.report.summary import restricted_verdicts, write_results


def _geometry(seeds=(0, 1, 2), rounds=(2, 4, 8, 16, 32, 64)):
    """A geometry-shaped table whose removal depends on seed and round in a known way."""
    rows = []
    for seed in seeds:
        for r in rounds:
            base = {"setting": "mnist_fc", "K": 8, "tau": 8, "b": 50, "lr": 0.05, "seed": seed, "loss": "mse",
                    "window": 4, "d": 1000, "round": r, "step": 8 * r, "i": np.nan, "j": np.nan}
            rows.append({**base, "metric": "removal", "m": 4, "value": 0.5 + 0.1 * seed + r / 1000})
            rows.append({**base, "metric": "chi_k", "m": np.nan, "value": 0.9})
    return pd.DataFrame(rows)


def test_stat_is_mean_sample_sd_and_count():
    s = Stat.of([1.0, 2.0, 4.0])
    assert (s.mean, s.n) == (pytest.approx(7 / 3), 3)
    assert s.sd == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert str(Stat.of([0.5])) == "0.5 (n=1)" and math.isnan(Stat.of([0.5]).sd)
    assert Stat.of([np.nan]).n == 0 and not Stat.of([]).ok()


def test_late_rounds_are_the_last_third_of_checkpoints():
    assert late_rounds([1, 2, 3, 4, 5, 6]) == [5, 6]
    assert late_rounds([7, 3, 5]) == [7]
    assert late_rounds([4]) == [4]


def test_seeds_give_different_numbers_and_the_band_comes_from_them():
    df = _geometry()
    last = per_seed(df, "removal", m=4)
    assert list(last.index) == [0, 1, 2] and last.nunique() == 3
    assert last.to_list() == pytest.approx([0.5 + 0.1 * s + 0.064 for s in range(3)])
    late = per_seed(df, "removal", "late", m=4)  # rounds 32 and 64
    assert late.to_list() == pytest.approx([0.5 + 0.1 * s + 0.048 for s in range(3)])
    s = stat(df, "removal", m=4)
    assert s.sd == pytest.approx(0.1) and s.n == 3
    assert stat(df[df["seed"] == 0], "removal", m=4).n == 1


def test_a_claim_cannot_be_emitted_without_its_number():
    assert claim("removes {x}", x=Stat.of([0.5, 0.7])) == "removes 0.6 ± 0.141 (n=2)"
    with pytest.raises(MissingEvidence, match="x"):
        claim("removes {x}", x=Stat.of([]))
    with pytest.raises(MissingEvidence):
        claim("ratio {r}", r=float("nan"))


def test_the_generator_fails_on_a_missing_table(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_results({"main": tmp_path / "absent.parquet"}, tmp_path / "R.md", "t")
    assert not (tmp_path / "R.md").exists()


def test_restricted_verdicts_follow_the_measured_progress():
    rows = []
    for seed in (0, 1):
        for mode, final in (("none", 0.2), ("dom", 0.95), ("bulk", 0.21)):
            rows += [{"setting": "s", "mode": mode, "seed": seed, "round": 0, "train_loss": 1.0},
                     {"setting": "s", "mode": mode, "seed": seed, "round": 5, "train_loss": final + 0.01 * seed}]
    text = " ".join(restricted_verdicts(pd.DataFrame(rows)))
    assert "is supported here" in text and "stalls: < 0.5, tracks: >= 0.8;" in text
    assert "flatter bulk directions" in text  # the abstract's sentence is the claim judged
    # the "retain useful optimization behaviour" wording is a third-party summary's, and says so
    assert "a third-party summary's \"dominant-component updates retain useful optimization behaviour\" (>= 0.5) " \
           "is not supported" in text
    flipped = pd.DataFrame(rows).replace({"mode": {"dom": "bulk", "bulk": "dom"}})
    assert "is contradicted" in " ".join(restricted_verdicts(flipped))
    # seeds that straddle a threshold give no verdict either way (the band, not the mean, decides)
    spread = pd.DataFrame(rows)
    spread.loc[(spread["mode"] == "dom") & (spread["round"] == 5), "train_loss"] = [0.95, 0.2]
    text = " ".join(restricted_verdicts(spread))
    assert text.count("not settled by these seeds") == 2 and "supported" not in text.replace("not supported", "")


def _phased(setting="sst2_transformer", losses=(0.24, 0.10), const=0.2466):
    """Two seeds, checkpoints at rounds 4, 10, 24; train accuracy crosses 0.85 at round 10 for seed 0 and at 24
    for seed 1; removal and overlap known per checkpoint; final train loss losses[seed]."""
    rows, acc = [], {0: (0.6, 0.86, 0.95), 1: (0.6, 0.8, 0.9)}
    for seed in (0, 1):
        for i, r in enumerate((4, 10, 24)):
            base = {"setting": setting, "K": 8, "tau": 8, "b": 25, "lr": 0.05, "seed": seed, "loss": "mse",
                    "window": 4, "d": 1000, "round": r, "step": 8 * r, "i": np.nan, "j": np.nan, "m": np.nan}
            for metric, value in (("train_acc", acc[seed][i]), ("test_acc", 0.6), ("chi_k", 0.1 * (i + 1)),
                                  ("train_loss", losses[seed] if i == 2 else 0.3), ("const_loss", const)):
                rows.append({**base, "metric": metric, "value": value})
            rows.append({**base, "metric": "lambda", "i": 0, "value": 10.0})
            rows.append({**base, "metric": "gap_rank", "value": 28.0})
            rows += [{**base, "metric": "sqcos", "i": 0, "j": j, "value": 0.5} for j in (0, 1)]  # k = 2
            for metric, value in (("removal", 0.5 + r / 100), ("overlap", 0.2 + r / 100), ("random_removal", 1e-4),
                                  ("oracle_removal", 1.0), ("random_removal_expected", 1e-4),
                                  ("aligned_removal", 0.3), ("aligned_overlap", 0.01), ("aligned_capture", 0.01)):
                rows.append({**base, "metric": metric, "m": 2, "value": value})
    return pd.DataFrame(rows)


def test_phase_numbers_average_each_seeds_checkpoints_in_the_phase():
    from sharpgaps.report.summary import phase_numbers

    out = {r["phase"]: r for r in phase_numbers(_phased(), {"sst2_transformer": 2})}
    # learning: seed 0 round 4; seed 1 rounds 4 and 10. trained: seed 0 rounds 10, 24; seed 1 round 24.
    assert out["learning"]["rounds"] == [4, 10] and out["trained"]["rounds"] == [10, 24]
    assert out["learning"]["removal"].mean == pytest.approx((0.54 + (0.54 + 0.60) / 2) / 2)
    assert out["trained"]["overlap"].mean == pytest.approx(((0.30 + 0.44) / 2 + 0.44) / 2)
    assert out["trained"]["chi_k"].n == 2 and out["learning"]["train_acc"].mean == pytest.approx((0.6 + 0.7) / 2)


def test_a_setting_on_its_loss_plateau_is_labelled_everywhere(tmp_path):
    from sharpgaps.report.summary import PLATEAU_LABEL, mark_plateau, plateau_settings, trained_regime

    on = _phased(losses=(0.24, 0.235))  # 0.97 and 0.95 of the constant loss
    off = _phased(setting="mnist_fc", losses=(0.24, 0.10))  # mean ratio 0.69: left the plateau
    both = pd.concat([on, off])
    assert plateau_settings(both) == ["sst2_transformer"]
    table = trained_regime(both)
    assert "| plateau (untrained) |" in table and "| left the plateau |" in table
    text = "| sst2_transformer | 0.5 |\n- sst2_transformer: removal\nmnist_fc"
    marked = mark_plateau(text, ["sst2_transformer"])
    assert marked.count(PLATEAU_LABEL) == 2 and "mnist_fc" in marked and PLATEAU_LABEL not in marked.split("\n")[2]
    assert mark_plateau(marked, ["sst2_transformer"]) == marked  # labelling twice changes nothing
    # a table written before the constant-prediction loss was recorded: no verdict either way
    assert plateau_settings(both[both["metric"] != "const_loss"]) == []
    path = tmp_path / "main.parquet"
    both.to_parquet(path)
    results = write_results({"main": path}, tmp_path / "R.md", "t")
    assert "never left the loss plateau" in results
    assert all(PLATEAU_LABEL in line for line in results.splitlines() if "sst2_transformer" in line)


def test_restricted_verdicts_need_a_horizon_and_name_fallback_branches():
    rows = []
    for seed, (branch, rule) in enumerate(((60, "fallback: chi_k never >= 0.9"), (24, "chi_k >= 0.9 at 2"))):
        for mode, final in (("none", 0.2), ("dom", 0.95), ("bulk", 0.21)):
            base = {"setting": "s", "mode": mode, "seed": seed, "tau": 8, "branch_round": branch, "branch_rule": rule}
            rows += [{**base, "round": 0, "train_loss": 1.0}, {**base, "round": 5, "train_loss": final + 0.01 * seed}]
    text = " ".join(restricted_verdicts(pd.DataFrame(rows)))
    assert "branched at round 24 (seed 1); round 60 (seed 0); FALLBACK for seed 0" in text
    assert "fell by 0.795 ± 0.00707 (n=2) over 40 local steps" in text and "3x its seed sd: met" in text
    # Local SGD's drop within 3 sd of the seeds: no verdict either way
    noisy = pd.DataFrame(rows)
    noisy.loc[(noisy["mode"] == "none") & (noisy["round"] == 5), "train_loss"] = [0.2, 0.9]
    text = " ".join(restricted_verdicts(noisy))
    assert "NOT met" in text and text.count("not judged (horizon too short)") == 2
    assert "is supported" not in text and "contradicted" not in text


def test_dom_bulk_verdict_is_checked_against_the_random_control():
    """A random k-dim subspace that also stalls and tracks makes "Dom stalls, Bulk tracks" non-specific; the
    paired per-seed differences from it say what is specific."""
    def table(rand_dom, rand_bulk):
        rows = []
        for seed in (0, 1, 2):
            finals = {"none": 0.2, "dom": 0.98, "bulk": 0.0 - 0.01 * seed,  # Bulk beats Local SGD: share 1.25-1.26
                      "randdom": rand_dom, "randbulk": rand_bulk + 0.001 * seed}
            for mode, final in finals.items():
                rows += [{"setting": "s", "mode": mode, "seed": seed, "round": 0, "train_loss": 1.0},
                         {"setting": "s", "mode": mode, "seed": seed, "round": 5, "train_loss": final}]
        return pd.DataFrame(rows)

    trivial = " ".join(restricted_verdicts(table(rand_dom=0.99, rand_bulk=0.2)))  # random: stalls and tracks
    assert "is supported, but not specific (the random control passes too) here" in trivial
    assert "moving only in the bulk progresses beyond the random control" in trivial
    assert "moving only in V_k progresses within the random control's band" not in trivial  # dom 0.025 vs 0.0125
    specific = " ".join(restricted_verdicts(table(rand_dom=0.5, rand_bulk=0.6)))  # random Dom moves, Bulk stalls
    assert "is supported here" in specific and "does not pass the Dom/Bulk test" in specific
    assert "moving only in V_k progresses short of the random control" in specific


def test_release_tables_are_named_as_summary_reads_them(tmp_path):
    """Each part's tables under tables/<part>/: geometry by experiment, main_estimators as `estimators`, theory by
    its tag, a table two parts both have (the mechanism table) as both paths; other experiments' estimator tables
    are read through their own family's table."""
    from sharpgaps.report.summary import release_tables

    files = {"main": ["main_geometry", "main_estimators", "mechanism", "restricted", "theory_abc123"],
             "sweeps": ["tau_ablation_geometry", "k_sweep_geometry", "mechanism"],
             "heterogeneity": ["heterogeneity_geometry", "heterogeneity_estimators", "heterogeneity", "mechanism"]}
    for part, stems in files.items():
        (tmp_path / part).mkdir()
        for stem in stems:
            (tmp_path / part / f"{stem}.parquet").write_bytes(b"")
    tables = release_tables(tmp_path)
    assert sorted(tables) == ["estimators", "heterogeneity", "k_sweep", "main", "mechanism", "restricted",
                              "tau_ablation", "theory"]
    assert tables["heterogeneity"] == tmp_path / "heterogeneity/heterogeneity.parquet"  # the cell table alone
    assert tables["estimators"] == tmp_path / "main/main_estimators.parquet"
    assert tables["theory"] == tmp_path / "main/theory_abc123.parquet"
    assert sorted(p.parent.name for p in tables["mechanism"]) == ["heterogeneity", "main", "sweeps"]
    with pytest.raises(FileNotFoundError, match="make release-quick"):
        release_tables(tmp_path / "none")

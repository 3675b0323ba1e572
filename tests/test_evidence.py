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
    assert "is supported here" in text and "(stalls: < 0.5, tracks: >= 0.8;" in text
    assert "useful optimization behaviour\" (>= 0.5) is not supported" in text
    flipped = pd.DataFrame(rows).replace({"mode": {"dom": "bulk", "bulk": "dom"}})
    assert "is contradicted" in " ".join(restricted_verdicts(flipped))
    # seeds that straddle a threshold give no verdict either way (the band, not the mean, decides)
    spread = pd.DataFrame(rows)
    spread.loc[(spread["mode"] == "dom") & (spread["round"] == 5), "train_loss"] = [0.95, 0.2]
    text = " ".join(restricted_verdicts(spread))
    assert text.count("not settled by these seeds") == 2 and "supported" not in text.replace("not supported", "")

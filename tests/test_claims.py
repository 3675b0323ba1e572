"""The abstract's claims, one row each, generated from the tables (sharpgaps.report.summary.claim_rows / write_results)."""

import re
from pathlib import Path

import pytest

from sharpgaps.core.atomic import read_frame
from sharpgaps.report.evidence import MissingEvidence, Stat
from sharpgaps.report.summary import CLAIMS, band_verdict, claim_rows, stage_numbers, write_results

VERDICT = re.compile(r"\*\*(supported|contradicted|not settled(?: by these seeds)?|not supported|"
                     r"not testable at this scale)\*\*")
NUMBER = re.compile(r"\d(?:\.\d+)? ± \d|\(n=\d+\)")


def _smoke_tables(smoke: Path) -> dict[str, Path]:
    t = smoke / "results/tables"
    tables = {"main": t / "main_geometry.parquet", "restricted": t / "restricted.parquet",
              "estimators": t / "main_estimators.parquet", "mechanism": t / "mechanism.parquet"}
    missing = [p for p in tables.values() if not p.exists()]
    if missing:
        pytest.skip(f"the smoke run lacks {missing}")
    return tables


def test_one_row_per_claim_with_numbers_and_a_verdict(smoke, tmp_path):
    tables = _smoke_tables(smoke)
    rows = claim_rows(stage_numbers({k: read_frame(p) for k, p in tables.items()}))
    assert [r["claim"] for r in rows] == [c[0] for c in CLAIMS] == list("abcde")
    for r in rows:
        assert r["wording"].startswith("(paper's wording)") or r["wording"].startswith("(our paraphrase")
        assert r["rule"]  # every verdict states its rule
        if r["claim"] == "d":  # the smoke config has no tau_ablation
            assert r["verdict"] == "**not run**" and r["measured"].startswith("not run")
            continue
        assert NUMBER.search(r["measured"]), r
        assert VERDICT.search(r["verdict"]), r
    # the table sits in RESULTS.md beside the sections that hold the same numbers
    out = write_results(tables, tmp_path / "R.md", "smoke")
    head = out.split("## Trained regime")[0]
    assert head.count("\n| (") == 5 and "verdict (rule)" in head


def test_a_named_but_missing_table_fails_clearly(smoke, tmp_path):
    tables = {**_smoke_tables(smoke), "estimators": tmp_path / "main_estimators.parquet"}
    with pytest.raises(FileNotFoundError, match="main_estimators.parquet: no such table"):
        write_results(tables, tmp_path / "R.md", "t")
    assert not (tmp_path / "R.md").exists()


def test_a_stage_the_run_lacks_is_not_run_and_an_empty_one_fails(smoke, tmp_path):
    tables = _smoke_tables(smoke)
    frames = {k: read_frame(p) for k, p in tables.items() if k != "mechanism"}
    rows = {r["claim"]: r for r in claim_rows(stage_numbers(frames))}
    assert rows["c"]["verdict"] == "**not run**" and "mechanism" in rows["c"]["measured"]
    # a mechanism table of the tau ablation's runs only (a release part without `main`): (c) is not run either
    tau_only = read_frame(tables["mechanism"]).assign(experiment="tau_ablation")
    rows = {r["claim"]: r for r in claim_rows(stage_numbers({**frames, "mechanism": tau_only}))}
    assert rows["c"]["verdict"] == "**not run**" and "no `main` runs" in rows["c"]["measured"]
    # a restricted table without the none/dom/bulk modes yields no number: no row is printed without one
    frames["restricted"] = frames["restricted"][frames["restricted"]["mode"] == "none"]
    with pytest.raises(MissingEvidence, match=r"claim \(e\)"):
        claim_rows(stage_numbers(frames))


def test_band_verdicts_need_the_whole_band_on_one_side():
    assert band_verdict(Stat(0.9, 0.05, 3), Stat(0.1, 0.05, 3)) == "supported"
    assert band_verdict(Stat(0.1, 0.05, 3), Stat(0.9, 0.05, 3)) == "contradicted"
    assert band_verdict(Stat(0.5, 0.3, 3), Stat(0.4, 0.05, 3)) == "not settled"

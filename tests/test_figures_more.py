"""Figures 5-8, 10-18, X1, X2 and RESULTS.md (workflow/rules/figures.smk).

The restricted-training figures, the theory check and RESULTS.md come with the shared smoke DAG (`smoke`,
conftest.py: `all` of .test/config.yaml builds them); the sweep figures need sweep experiments, which the smoke
config lacks, so `sweeps` builds them from a small mnist_fc-only config without `main` (which also checks that
a config without `main` gets neither restricted figures nor their RESULTS.md sections).
"""

import re
import shutil
import subprocess
import sys

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml

from sharpgaps.report import evidence, plotting
from tests.helpers import (
    REPO,
    FIGURE_DIR,
    SMOKE_CONFIG,
    SWEEPS,
    figure_files,
    job_counts,
    run_notebook_inline,
    snakemake,
    sweep_config,
    workflow_copy,
)

SETTINGS = {"mnist_fc", "cifar_cnn", "sst2_transformer"}

RESTRICTED = {"fig05_restricted_train_loss": "train_loss", "fig06_restricted_train_acc": "train_acc",
              "fig07_restricted_test_loss": "test_loss", "fig08_restricted_test_acc": "test_acc"}
COLUMNS = {
    "restricted": ["setting", "mode", "K", "tau", "b", "lr", "seed", "branch_round", "branch_fallback", "round", "step",
                   "since_branch", "quantity", "value", "change"],
    "figX1_gap_restricted": ["panel", "setting", "mode", "family", "K", "tau", "b", "lr", "seed", "branch_round",
                             "round", "step", "since_branch", "metric", "value", "change"],
    "sweep": ["panel", "setting", "K", "tau", "b", "lr", "seed", "round", "step", "metric", "m", "m_kind", "value"],
    "figX2_theory": ["tau", "direction", "eigenvalue", "measured", "stderr", "predicted", "z", "K", "b", "lr",
                     "rounds"],
}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, data_dir):
    work = tmp_path_factory.mktemp("sweeps")
    config = sweep_config(work / "config.yaml")
    targets = [f"{FIGURE_DIR}/{name}.pdf" for name in SWEEPS] + [f"{FIGURE_DIR}/figX2_theory.pdf",
                                                                   f"{FIGURE_DIR}/RESULTS.md"]
    snakemake(work, "--cores", "2", *targets, config=config)
    return work, config


@pytest.mark.workflow
@pytest.mark.parametrize("name", RESTRICTED)
def test_restricted_figures(smoke, name):
    data, passed = figure_files(smoke, name)
    assert list(data.columns) == COLUMNS["restricted"]
    assert passed["quantity"] == RESTRICTED[name] and set(data["quantity"]) == {RESTRICTED[name]}
    assert set(data["setting"]) == SETTINGS and set(passed["settings"]) == SETTINGS
    assert set(data["mode"]) == {"none", "dom", "bulk"} and data["value"].notna().all()
    # the values drawn are the table's
    table = pd.read_parquet(smoke / "results/tables/restricted.parquet")
    both = data.merge(table, on=["setting", "mode", "seed", "round"])
    assert len(both) == len(data)
    assert np.allclose(both["value"], both[RESTRICTED[name]])
    # drawn: each seed's change since its own branch (0 at the branch)
    first = data.groupby(["setting", "mode", "seed"])["value"].transform("first")
    assert np.allclose(data["change"], data["value"] - first)
    assert np.allclose(data.loc[data["since_branch"] == 0, "change"], 0.0)
    # every seed of a setting branches at one round (the seeds' mean chi_k); the fallback flag is the table's
    assert (data.groupby("setting")["branch_round"].nunique() == 1).all()
    flags = table.drop_duplicates(["setting", "seed"]).set_index(["setting", "seed"])["branch_fallback"]
    drawn = data.drop_duplicates(["setting", "seed"]).set_index(["setting", "seed"])["branch_fallback"]
    assert drawn.equals(flags.loc[drawn.index])


@pytest.mark.workflow
def test_gap_restricted_figure(smoke):
    data, _ = figure_files(smoke, "figX1_gap_restricted")
    assert list(data.columns) == COLUMNS["figX1_gap_restricted"]
    assert set(data["panel"]) == {"train_loss", "test_acc", "compute"}
    assert set(data["mode"]) == {"none", "dom", "bulk", "gapdom", "gapbulk"}
    assert set(data["setting"]) == SETTINGS
    # one column of panels per subspace family the run has (here Hessian and gap), Local SGD the reference in each
    assert (data["family"] == data["mode"].map(plotting.mode_family)).all()
    assert set(data["family"]) == {"reference", "hessian", "gap"}
    # drawn as in Figs 5-8: each seed's change since its own branch (0 at the branch); none for the cost counters
    curves = data[data["panel"] != "compute"]
    first = curves.groupby(["panel", "setting", "mode", "seed"])["value"].transform("first")
    assert np.allclose(curves["change"], curves["value"] - first)
    assert np.allclose(curves.loc[curves["since_branch"] == 0, "change"], 0.0)
    assert data.loc[data["panel"] == "compute", "change"].isna().all()
    cost = data[data["panel"] == "compute"].pivot_table(index=["setting", "mode"], columns="metric", values="value")
    assert set(cost.columns) >= {"n_hvp", "probe_steps", "refresh_seconds"}
    gap = cost.xs("gapbulk", level="mode")
    hessian = cost.xs("bulk", level="mode")
    assert (gap["n_hvp"] == 0).all() and (gap["probe_steps"] > 0).all()  # the gap modes never touch the Hessian
    assert (hessian["n_hvp"] > 0).all()


def test_gap_restricted_figure_has_one_panel_per_subspace_family_with_local_sgd_in_each(tmp_path):
    """Fig X1 with all nine modes: per setting, four families (Hessian, gap, gradient history, random) x two rows
    (training loss, test accuracy) of panels, each with plain Local SGD and its family's Dom and Bulk, and the cost
    panel; nine lines in one panel were unreadable."""
    from sharpgaps.core import atomic

    rows = [{"setting": s, "mode": mode, "K": 4, "tau": 4, "b": 16, "lr": 0.05, "seed": seed, "branch_round": 6,
             "round": r, "step": 4 * (6 + r), "train_loss": 1.0 - 0.01 * r * (1 + i % 3), "test_acc": 0.5 + 0.01 * r,
             **({"n_hvp": 10.0 * (mode in ("dom", "bulk")), "probe_steps": 8.0 * mode.startswith(("gap", "grad")),
                 "refreshes": 2.0, "refresh_seconds": 1.0 + i, "seconds": 10.0} if r == 3 else {})}
            for s in ("mnist_fc", "cifar_cnn") for i, mode in enumerate(plotting.MODES) for seed in (0, 1)
            for r in range(4)]
    atomic.save_frame(pd.DataFrame(rows), tmp_path / "restricted.parquet")
    ns = run_notebook_inline("figX1_gap_restricted", tmp_path, table=str(tmp_path / "restricted.parquet"),
                             settings=["mnist_fc", "cifar_cnn"], labels={}, dpi=40)
    titles = {title for _, (title, _) in plotting.MODE_FAMILIES.items()}
    assert len(ns["fig"].subfigs) == 2  # a block per setting
    for block in ns["fig"].subfigs:
        curves = [ax for ax in block.axes if ax.get_xlabel() == "local steps since the branch" or ax.get_title() in titles]
        assert len(curves) == 8 and len(block.axes) == 9  # 4 families x 2 rows, and the cost panel
        assert [ax.get_title() for ax in block.axes if ax.get_title() in titles] == [
            plotting.MODE_FAMILIES[f][0] for f in ("hessian", "gap", "gradhist", "random")]
        assert all(len(ax.get_lines()) == 4 for ax in curves)  # Local SGD, Dom, Bulk and the zero line
    data = pd.read_csv(tmp_path / "figX1_gap_restricted.csv")
    assert set(data["family"]) == {"reference", "hessian", "gap", "gradhist", "random"}


@pytest.mark.workflow
@pytest.mark.parametrize("name", ["figX3_estimators_overlap", "figX3_estimators_capture"])
def test_estimator_figure_draws_no_krylov_budget_that_is_only_its_start_block(smoke, name):
    """A Krylov budget j with floor(j / p) <= 1 (the smoke config: j = 4 where p = min(k, 4) = 4) is the start block
    itself at a cost of p HVPs: Fig X3 must not draw it as an estimator."""
    table = pd.read_parquet(smoke / "results/tables/main_estimators.parquet")
    start_only = table[evidence.krylov_start_block_only(table)]
    assert len(start_only)  # the smoke run has such budgets (MNIST and CIFAR, k = 10)
    data, _ = figure_files(smoke, name)
    key = ["setting", "estimator", "j"]
    drawn = set(map(tuple, data[key].to_numpy().tolist()))
    assert drawn.isdisjoint(map(tuple, start_only[key].to_numpy().tolist()))
    assert {e for _, e, _ in drawn} >= set(evidence.KRYLOV)  # the other budgets are still drawn


@pytest.mark.workflow
def test_theory_figure(smoke):
    data, passed = figure_files(smoke, "figX2_theory")
    assert list(data.columns) == COLUMNS["figX2_theory"]
    cfg = yaml.safe_load(SMOKE_CONFIG.read_text())
    assert sorted(data["tau"].unique()) == sorted(cfg["theory"]["taus"])
    assert np.allclose(data["z"], (data["measured"] - data["predicted"]) / data["stderr"])
    assert data["z"].abs().max() < 6  # the engine reproduces the closed form within Monte-Carlo error
    assert set(passed) == {"table", "caption", "out_pdf", "out_png", "out_csv", "dpi"}


@pytest.mark.workflow
def test_results_md_of_the_smoke_config(smoke):
    text = (smoke / FIGURE_DIR / "RESULTS.md").read_text()
    title = yaml.safe_load(SMOKE_CONFIG.read_text())["figures"]["title"]
    assert text.startswith(f"# Results ({title})")
    for section in ("## Headline", "## Figs 5-8 and the gap-restricted variant", "## Theory check"):
        assert section in text
    assert "## Figs 10-12" not in text and "## Figs 13-15" not in text  # the smoke config has no sweeps
    for setting in SETTINGS:
        assert f"| {setting} |" in text


@pytest.mark.workflow
def test_readme_headline_block_is_generated_from_the_results_tables(smoke, tmp_path):
    """`make fidelity`'s README block: regenerated between its markers, and every number in it is one of
    RESULTS.md's (so a README number can always be traced to a committed table)."""
    from sharpgaps.report.summary import README_BEGIN, README_END, VERDICTS_BEGIN, VERDICTS_END

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{VERDICTS_BEGIN}\nold\n{VERDICTS_END}\n{README_BEGIN}\nstale 0.123\n{README_END}\nafter\n")
    tables = smoke / "results/tables"
    subprocess.run([sys.executable, "-m", "sharpgaps", "summary", "--out", str(tmp_path / "RESULTS.md"),
                    "--table", f"main={tables / 'main_geometry.parquet'}",
                    "--table", f"restricted={tables / 'restricted.parquet'}", "--readme", str(readme)], check=True)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n") and "stale" not in text
    block = text.split(README_BEGIN, 1)[1].split(README_END, 1)[0]
    results = (tmp_path / "RESULTS.md").read_text()
    numbers = re.findall(r"(?<![\w.])\d+\.\d+(?:e-?\d+)?(?: ± \d+\.?\d*(?:e-?\d+)?)?", block)
    assert len(numbers) > 10
    assert [n for n in numbers if n not in results] == []
    assert "](RESULTS.md)" in block
    # the first screen: one verdict line per claim, the restricted claim judged, the others not run here
    verdicts = text.split(VERDICTS_BEGIN, 1)[1].split(VERDICTS_END, 1)[0]
    lines = [line for line in verdicts.splitlines() if line.startswith("- (")]
    assert [line[3] for line in lines] == list("abcde") and "old" not in verdicts
    assert lines[1].startswith("- (b) **not run**") and "**not run**" not in lines[4]


@pytest.mark.workflow
@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_figures(sweeps, name):
    work, _ = sweeps
    data, passed = figure_files(work, name)
    axis, values = SWEEPS[name]
    assert list(data.columns) == COLUMNS["sweep"]
    assert passed["axis"] == axis and passed["setting"] == "mnist_fc" and passed["figure"] == int(name[3:5])
    assert set(data["setting"]) == {"mnist_fc"}
    assert sorted(data[axis].unique()) == values
    assert {"removal_rank", "chi_k", "final"} <= set(data["panel"])
    # m = rank(G) = (K-1) W in every run; the K sweep matches gap vectors, so each K has the default's (K-1) W
    train = yaml.safe_load(SMOKE_CONFIG.read_text())["train"]
    rank = data[data["m_kind"] == "rank"]
    expected = (train["K"] - 1) * train["window"] if axis == "K" else (rank["K"] - 1) * train["window"]
    assert (rank["m"] == expected).all()
    assert set(rank["metric"]) == {"removal", "random_removal"}
    # the final panel is the last checkpoint of each run
    final = data[data["panel"] == "final"]
    last = data[data["panel"] != "final"].groupby(axis)["round"].max()
    assert (final["round"] == final[axis].map(last)).all()
    assert set(final[axis]) == set(values)


@pytest.mark.workflow
def test_results_md_of_the_sweep_config(sweeps):
    work, _ = sweeps
    text = (work / FIGURE_DIR / "RESULTS.md").read_text()
    assert text.startswith("# Results (sweep test)")
    assert "\nSettings in these tables: mnist_fc; each verdict names the settings it covers.\n" in text
    for section, axis in (("## Figs 10-12: tau_ablation", "tau"), ("## Figs 13-15: k_sweep", "K"),
                          ("## Figs 16-18: batch_sweep", "b"), ("## Theory check", None)):
        assert section in text
    assert "## Headline" not in text and "## Figs 5-8" not in text  # no `main`, no restricted runs
    assert not (work / "results/tables/restricted.parquet").exists()


@pytest.mark.workflow
def test_sweep_targets_follow_the_config(sweeps, tmp_path):
    """`all` lists a sweep figure only for sweeps in the config; the figure number follows figures.sweep_settings."""
    work, config = sweeps
    out = snakemake(tmp_path, "-n", "--quiet", "rules", "all", config=SMOKE_CONFIG)  # smoke: no sweep experiment
    assert "fig10_18_sweep" not in job_counts(out)
    assert job_counts(out)["fig05_08_restricted"] == 4 and job_counts(out)["results_summary"] == 1
    cfg = yaml.safe_load(config.read_text())
    cfg["figures"]["sweep_settings"] = ["cifar_cnn", "mnist_fc"]
    moved = tmp_path / "moved.yaml"
    moved.write_text(yaml.safe_dump(cfg))
    out = snakemake(work, "-n", f"{FIGURE_DIR}/fig11_tau_ablation_mnist_fc.pdf", config=moved)
    assert "fig11_tau_ablation_mnist_fc" in out
    out = snakemake(work, "-n", f"{FIGURE_DIR}/fig10_tau_ablation_mnist_fc.pdf", config=moved, check=False)
    assert "MissingRuleException" in out or "No rule to produce" in out
    cfg["figures"]["sweep_settings"] = ["cifar_cnn"]
    moved.write_text(yaml.safe_dump(cfg))
    out = snakemake(work, "-n", config=moved, check=False)
    assert "figures.sweep_settings" in out and "mnist_fc (tau_ablation)" in out


@pytest.mark.workflow
@pytest.mark.parametrize("notebook,fixture,rerun", [
    ("fig05_08_restricted", "smoke", {"fig05_08_restricted": 4}),
    ("fig10_18_sweep", "sweeps", {"fig10_18_sweep": 3}),
])
def test_editing_a_shared_notebook_reruns_exactly_its_figures(request, tmp_path, notebook, fixture, rerun):
    made = request.getfixturevalue(fixture)
    work, config = (made, SMOKE_CONFIG) if fixture == "smoke" else made
    repo = workflow_copy(tmp_path / "repo")
    # every rerun trigger but `input` (the recorded notebook paths point into the real checkout, not this copy)
    dry = ["-n", "--nolock", "--rerun-triggers", "mtime", "params", "code", "software-env", "--quiet", "rules"]
    targets = ["all"] if fixture == "smoke" else [f"{FIGURE_DIR}/{name}.pdf" for name in SWEEPS]
    out = snakemake(work, *targets, *dry, snakefile=repo / "Snakefile", config=config)
    assert "Nothing to be done" in out and job_counts(out) == {}
    path = repo / "notebooks" / f"{notebook}.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("A harmless note."))
    nbformat.write(nb, path)
    out = snakemake(work, *targets, *dry, snakefile=repo / "Snakefile", config=config)
    counts = {k: v for k, v in job_counts(out).items() if k not in ("all", "total")}
    assert counts == rerun


@pytest.mark.workflow
def test_changing_one_tau_reruns_only_that_taus_jobs(sweeps, tmp_path):
    """tau 4 -> 8 in the tau ablation: one new run (train + geometry) and the tables/figures that read it."""
    work, config = sweeps
    cfg = yaml.safe_load(config.read_text())
    cfg["experiments"]["tau_ablation"]["tau"] = [2, 8]
    changed = tmp_path / "tau.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    targets = [f"{FIGURE_DIR}/{name}.pdf" for name in SWEEPS] + [f"{FIGURE_DIR}/RESULTS.md"]
    counts = job_counts(snakemake(work, "-n", *targets, config=changed))
    seeds = len(cfg["settings"]["mnist_fc"]["train"]["seeds"])  # one new run per seed
    assert counts.get("train") == seeds and counts.get("geometry") == seeds
    assert counts.get("collect_geometry") == 1  # only the tau_ablation table
    assert "subset" not in counts and counts.get("fig10_18_sweep") == 1  # the tau figure; K and batch ones untouched
    assert counts.get("results_summary") == 1


@pytest.mark.workflow
def test_a_one_setting_config_draws_every_figure_for_that_setting_without_empty_panels(mini, tmp_path):
    """A config whose experiments run one setting (the minimal DAG: mnist_fc; the paper scale's MNIST parts)
    draws each figure with setting panels (the families of the geometry, restricted, estimator and mechanism
    tables) for that setting only, none with an empty panel or overlapping text (figure_files)."""
    from sharpgaps.pipeline.config import validate
    from sharpgaps.report import figures

    work, config = mini
    cfg = validate(yaml.safe_load(config.read_text()), REPO / "workflow/schemas/config.schema.yaml")
    tables = {"geometry": "{experiment}", "restricted": "r", "estimators": "e", "mechanism": "m"}
    stems = [stem for family in figures.expand(figures.load_registry(REPO / "workflow/figures.yaml"), cfg, tables)
             .values() for stem in family]
    assert {"fig01_cosines", "fig02_removal", "fig03_spectrum", "fig04_alignment", "fig09_removal_raw",
            *RESTRICTED, "figX1_gap_restricted"} <= set(stems)
    assert any(n.startswith("figX3_") for n in stems) and any(n.startswith("figX4_") for n in stems)
    copy = tmp_path / "w"
    # a real copy: Snakemake and the jobs rewrite some files in place (logs, metadata), which hard links would share
    # with the run other tests read
    shutil.copytree(work, copy, symlinks=True)
    snakemake(copy, "--cores", "2", *(f"{FIGURE_DIR}/{stem}.pdf" for stem in stems), config=config)
    for stem in stems:
        data, _ = figure_files(copy, stem)
        if "setting" in data:
            assert set(data["setting"].dropna()) == {"mnist_fc"}, stem

"""Figures 1-4 and 9, and the figure rules (workflow/rules/figures.smk, generated from workflow/figures.yaml):
notebooks run by papermill, one job per figure."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys

import nbformat
import pandas as pd
import pytest
import yaml

from sharpgaps.pipeline.config import validate
from sharpgaps.report import figures
from tests.helpers import FIGURE_DIR, REPO, SMOKE_CONFIG, figure_files, job_counts, snakemake, workflow_copy

# figure -> columns of the tidy CSV behind it
FIGURES = {
    "fig01_cosines": ["panel", "setting", "K", "tau", "b", "lr", "seed", "round", "step", "metric", "m", "i", "j",
                      "value"],
    "fig02_removal": ["setting", "K", "tau", "b", "lr", "seed", "round", "step", "metric", "m", "m_kind", "raw",
                      "value"],
    "fig03_spectrum": ["setting", "K", "tau", "b", "lr", "seed", "round", "step", "i", "top_k", "value",
                       "two_over_lr"],
    "fig04_alignment": ["setting", "K", "tau", "b", "lr", "seed", "round", "step", "metric", "value"],
    "fig09_removal_raw": ["panel", "setting", "K", "tau", "b", "lr", "seed", "round", "step", "metric", "m",
                          "value"],
}
SETTINGS = {"mnist_fc", "cifar_cnn", "sst2_transformer"}


@pytest.mark.workflow
@pytest.mark.parametrize("name", FIGURES)
def test_figure_outputs(smoke, name):
    data, passed = figure_files(smoke, name)
    assert list(data.columns) == FIGURES[name]
    assert len(data) > 0 and data["value"].notna().all()
    assert set(data["setting"]) == ({"mnist_fc"} if name == "fig01_cosines" else SETTINGS)
    assert {"table", "caption", "out_pdf", "settings", "labels"} <= set(passed)


@pytest.mark.workflow
def test_figure_csv_values(smoke):
    """Spot checks that the CSVs hold what the captions say."""
    fig2 = pd.read_csv(smoke / FIGURE_DIR / "fig02_removal.csv")
    assert set(fig2["metric"]) == {"removal", "oracle_removal", "aligned_removal", "random_removal"}
    window = yaml.safe_load(SMOKE_CONFIG.read_text())["figures"]["smooth_window"]
    fig2 = fig2.sort_values("step")
    smoothed = fig2.groupby(["setting", "seed", "metric", "m"])["raw"].transform(
        lambda v: v.rolling(window, center=True, min_periods=1).mean())
    assert (fig2["value"] - smoothed).abs().max() < 1e-12  # a centred moving average over checkpoints
    assert (fig2["value"] != fig2["raw"]).any()
    fig3 = pd.read_csv(smoke / FIGURE_DIR / "fig03_spectrum.csv")
    assert (fig3["two_over_lr"] == 2 / fig3["lr"]).all()
    assert fig3.groupby("setting")["top_k"].sum().min() > 0
    fig9 = pd.read_csv(smoke / FIGURE_DIR / "fig09_removal_raw.csv")
    table = pd.read_parquet(smoke / "results/tables/main_geometry.parquet")
    over = fig9[fig9["panel"] == "over_training"].merge(
        table[table["metric"] == "removal"], on=["setting", "seed", "step", "m"], suffixes=("", "_table"))
    assert len(over) == (fig9["panel"] == "over_training").sum()
    assert (over["value"] - over["value_table"]).abs().max() < 1e-12  # raw means raw


@pytest.mark.workflow
def test_fig2_draws_m_equals_k_wherever_the_table_has_it(smoke):
    """The headline's dimension m = k (classes) is drawn beside m_show in every setting whose geometry table
    evaluated it, marked m_kind = k, with all four removal curves; never under another label."""
    from sharpgaps.report.evidence import k_by_setting

    fig2 = pd.read_csv(smoke / FIGURE_DIR / "fig02_removal.csv")
    table = pd.read_parquet(smoke / "results/tables/main_geometry.parquet")
    k = k_by_setting(table)
    removal = table[table["metric"] == "removal"]
    evaluated = {s for s, g in removal.groupby("setting") if k[s] in set(g["m"].astype(int))}
    assert evaluated  # the smoke run has settings with m = k evaluated (k <= rank(G))
    at_k = fig2[fig2["m_kind"] == "k"]
    assert set(at_k["setting"]) == evaluated
    assert (at_k["m"] == at_k["setting"].map(k)).all()
    assert at_k.groupby("setting")["metric"].agg(set).map(
        lambda m: m == {"removal", "oracle_removal", "aligned_removal", "random_removal"}).all()
    assert not ((fig2["m_kind"] != "k") & (fig2["m"] == fig2["setting"].map(k))).any()


@pytest.mark.workflow
def test_one_figure_target_is_up_to_date(smoke):
    out = snakemake(smoke, f"{FIGURE_DIR}/fig02_removal.pdf", "-n")
    assert "Nothing to be done" in out


@pytest.mark.workflow
def test_editing_one_notebook_reruns_exactly_that_figure(smoke, tmp_path):
    repo = workflow_copy(tmp_path / "repo")
    # Every rerun trigger but `input`: that one fires for all figures here only because the notebooks'
    # recorded paths point into the real checkout, not into this copy.
    dry = ["-n", "--nolock", "--rerun-triggers", "mtime", "params", "code", "software-env", "--quiet", "rules"]
    # (targets go first: --quiet and --rerun-triggers take several values)
    snakefile = repo / "Snakefile"
    out = snakemake(smoke, "all", *dry, snakefile=snakefile)
    assert "Nothing to be done" in out and job_counts(out) == {}
    path = repo / "notebooks/fig02_removal.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("A harmless note."))
    nbformat.write(nb, path)
    out = snakemake(smoke, "all", *dry, snakefile=snakefile)
    assert job_counts(out) == {"fig02_removal": 1, "all": 1, "total": 2}
    out = snakemake(smoke, f"{FIGURE_DIR}/fig02_removal.pdf", *dry, snakefile=snakefile)
    assert job_counts(out) == {"fig02_removal": 1, "total": 1}


@pytest.mark.workflow
@pytest.mark.parametrize("name", ["fig02_removal.png", "fig07_restricted_test_loss.csv", "RESULTS.md"])
def test_deleting_one_figure_output_reruns_exactly_its_job(smoke, tmp_path, name):
    work = tmp_path / "w"
    shutil.copytree(smoke, work, symlinks=True, copy_function=os.link)  # hard links: the smoke run stays as it is
    (work / FIGURE_DIR / name).unlink()
    # every rerun trigger but `input`: the recorded notebook paths are relative to the smoke run's directory
    dry = ["-n", "--nolock", "--rerun-triggers", "mtime", "params", "code", "software-env", "--quiet", "rules"]
    counts = job_counts(snakemake(work, "all", *dry))
    rule = {"fig02_removal.png": "fig02_removal", "fig07_restricted_test_loss.csv": "fig05_08_restricted",
            "RESULTS.md": "results_summary"}[name]
    assert counts == {rule: 1, "all": 1, "total": 2}


@pytest.mark.workflow
@pytest.mark.parametrize("key,value,rerun", [
    ("smooth_window", 2, {"fig02_removal"}),
    ("m_show", [1, 2], {"fig02_removal", "fig09_removal_raw"}),
    ("xscale", "log", {"fig02_removal", "fig03_spectrum", "fig04_alignment", "fig09_removal_raw"}),
])
def test_changing_a_figure_key_reruns_only_the_figures_using_it(smoke, tmp_path, key, value, rerun):
    cfg = yaml.safe_load(SMOKE_CONFIG.read_text())
    cfg["figures"][key] = value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = snakemake(smoke, "all", "-n", "--nolock", "--quiet", "rules", config=path)
    assert job_counts(out) == {**dict.fromkeys(rerun, 1), "all": 1, "total": len(rerun) + 1}


# What a figure's text shows (axis labels, titles, legend entries, colour bars, annotations) and a raw subscript or
# transpose in it (c_j, lambda_j, V_k, v_j^T) outside mathtext ($...$).
LABEL_CALLS = {"set_xlabel", "set_ylabel", "set_title", "title", "suptitle", "text", "annotate", "colorbar", "legend",
               "legend_below", "Line2D"}
LABEL_KEYWORDS = {"xlabel", "ylabel", "label", "title"}
RAW_MATH = re.compile(r"(?<![\w$\\])[A-Za-zλχγτη]+_\{?\w+\}?|\^T\b")


@pytest.mark.parametrize("notebook", sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb")))
def test_figure_text_writes_symbols_in_mathtext(notebook):
    """Every string a notebook hands to matplotlib as visible text writes subscripts in mathtext ($c_j$,
    $\\lambda_j$), never raw (Fig X4 printed 'c_j = v_j^T S v_j')."""
    nb = nbformat.read(REPO / "notebooks" / notebook, as_version=4)
    raw = []
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        for call in (n for n in ast.walk(ast.parse(cell.source)) if isinstance(n, ast.Call)):
            name = getattr(call.func, "attr", getattr(call.func, "id", ""))
            shown = [k.value for k in call.keywords if k.arg in LABEL_KEYWORDS] + (call.args if name in LABEL_CALLS else [])
            raw += [s.value for node in shown for s in ast.walk(node) if isinstance(s, ast.Constant)
                    and isinstance(s.value, str) and RAW_MATH.search(re.sub(r"\$[^$]*\$", "", s.value))]
    assert raw == [], f"{notebook}: figure text with raw subscripts (write them as $...$): {raw}"


def test_the_raw_math_check_sees_raw_subscripts():
    assert RAW_MATH.search("gradient noise c_j = v_j^T S v_j") and RAW_MATH.search("log10 λ_j")
    assert not RAW_MATH.search(re.sub(r"\$[^$]*\$", "", "noise variance $c_j = v_j^{\\top} S v_j$"))
    assert not RAW_MATH.search("removal fraction (log scale)")


def test_fig1_setting_outside_the_experiment_is_a_config_error(tmp_path):
    cfg = yaml.safe_load(SMOKE_CONFIG.read_text())
    cfg["figures"]["fig1_setting"] = "nope"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n",
           "--configfile", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode != 0 and "figures.fig1_setting" in proc.stdout + proc.stderr


@pytest.mark.workflow
def test_report_shows_every_figure_with_its_caption_and_labels(smoke_report):
    html = smoke_report.read_text()  # tests/test_report_browser.py opens the same report in Chromium
    results = json.loads(re.search(r"var results = (\{.*?\});\n", html).group(1))
    cfg = validate(yaml.safe_load(SMOKE_CONFIG.read_text()), REPO / "workflow/schemas/config.schema.yaml")
    registry = figures.load_registry(REPO / "workflow/figures.yaml")
    drawn = {stem: fig for figs in figures.expand(registry, cfg, {"geometry": "{experiment}", "restricted": "r",
                                                                   "theory": "t", "estimators": "e",
                                                                   "mechanism": "m", "heterogeneity": "h"}).values()
             for stem, fig in figs.items()}
    assert len(drawn) == 18  # 11 + Fig X3's two + Fig X4's three (its tau panel needs a tau ablation) + Fig X5's two
    assert set(results) == {f"{FIGURE_DIR}/{stem}.{ext}" for stem in drawn for ext in ("png", "csv")} | {
        f"{FIGURE_DIR}/RESULTS.md"}
    for stem, fig in drawn.items():
        for ext in ("png", "csv"):
            shown = results[f"{FIGURE_DIR}/{stem}.{ext}"]
            assert shown["labels"] == fig["labels"]
            assert shown["caption"].startswith("<p><strong>Figure") and "{{" not in shown["caption"], stem
    assert "mnist_fc" in results[f"{FIGURE_DIR}/fig01_cosines.png"]["caption"]  # rendered from its parameters

"""The figure registry (workflow/figures.yaml) and what it expands to for each shipped config, without running
anything: every figure's notebook, caption and parameters fit together, and no scale writes where another's
(or the repository's committed) figures are."""

import re
import subprocess

import papermill
import pytest
import yaml

from sharpgaps.pipeline.config import validate
from sharpgaps.report import figures, plotting
from tests.helpers import REPO, SMOKE_CONFIG, check_notebook, snakemake, sweep_config

REGISTRY = figures.load_registry(REPO / "workflow/figures.yaml")
SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
TABLES = {"geometry": "results/tables/{experiment}_geometry.parquet", "restricted": "results/tables/restricted.parquet",
          "theory": "results/tables/theory.parquet", "estimators": "results/tables/main_estimators.parquet",
          "mechanism": "results/tables/mechanism.parquet", "heterogeneity": "results/tables/heterogeneity.parquet"}
CONFIGS = {"paper": REPO / "config.yaml", "quick": REPO / "config.quick.yaml", "smoke": SMOKE_CONFIG}
PATHS = {"table", "caption", "out_pdf", "out_png", "out_csv"}  # what the rule passes besides the parameters


def config(name):
    return validate(yaml.safe_load(CONFIGS[name].read_text()), SCHEMA)


def expanded(cfg):
    """stem -> (family, its figure) for every figure the config draws."""
    return {stem: (family, fig) for family, figs in figures.expand(REGISTRY, cfg, TABLES).items()
            for stem, fig in figs.items()}


def test_every_notebook_and_caption_belongs_to_one_family():
    assert sorted(row["notebook"] for row in REGISTRY.values()) == sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
    captions = sorted(row["caption"] for row in REGISTRY.values()) + ["results_summary.rst"]
    assert captions == sorted(p.name for p in (REPO / "workflow/report").glob("*.rst"))


@pytest.mark.parametrize("family", REGISTRY)
def test_notebook_is_clean_and_declares_what_the_rule_passes(family):
    _, declared = check_notebook(REPO / "notebooks" / REGISTRY[family]["notebook"])
    assert PATHS | {"dpi"} | set(REGISTRY[family]["keys"]) <= declared


def test_the_paper_config_draws_the_papers_figures():
    stems = set(expanded(config("paper")))
    sweeps = {f"fig{first + i}_{exp}_{s}" for exp, (_, first) in figures.SWEEPS.items()
              for i, s in enumerate(["mnist_fc", "cifar_cnn", "sst2_transformer"])}
    assert stems == {"fig01_cosines", "fig02_removal", "fig03_spectrum", "fig04_alignment", "fig09_removal_raw",
                     "fig05_restricted_train_loss", "fig06_restricted_train_acc", "fig07_restricted_test_loss",
                     "fig08_restricted_test_acc", "figX1_gap_restricted", "figX2_theory",
                     "figX3_estimators_overlap", "figX3_estimators_capture", "figX4_mechanism_scatter",
                     "figX4_mechanism_ratio", "figX4_noise_curvature", "figX4_tau_share",
                     "figX5_heterogeneity_overlap", "figX5_heterogeneity_mechanism"} | sweeps
    assert len(sweeps) == 9 and {"fig12_tau_ablation_sst2_transformer", "fig16_batch_sweep_mnist_fc"} <= sweeps


def test_a_family_without_its_table_draws_nothing():
    cfg = config("smoke")  # no sweeps
    assert not figures.expand(REGISTRY, cfg, TABLES)["fig10_18_sweep"]
    cfg["experiments"] = {"k_sweep": {"settings": ["mnist_fc"], "K": [2, 4]}}  # no `main` either
    drawn = expanded(cfg)
    assert set(drawn) == {"fig13_k_sweep_mnist_fc", "figX2_theory"}
    assert drawn["fig13_k_sweep_mnist_fc"][1]["table"] == "results/tables/k_sweep_geometry.parquet"


def test_a_figure_can_show_another_experiment_than_its_family():
    """Fig X4's tau panel shows the tau ablation's settings: drawn only where that experiment runs, the other
    panels only where `main` runs (a release part may have either)."""
    cfg = config("quick")
    tau = expanded(cfg)["figX4_tau_share"][1]
    assert tau["parameters"]["settings"] == cfg["experiments"]["tau_ablation"]["settings"]
    assert "experiment" not in tau["parameters"]  # it picks the panels; the notebook does not take it
    sweeps_only = {**cfg, "experiments": {"tau_ablation": cfg["experiments"]["tau_ablation"]}}
    assert {s for s in expanded(sweeps_only) if s.startswith("figX4")} == {"figX4_tau_share"}
    main_only = {**cfg, "experiments": {"main": cfg["experiments"]["main"]}}
    assert {s for s in expanded(main_only) if s.startswith("figX4")} == {
        "figX4_mechanism_scatter", "figX4_mechanism_ratio", "figX4_noise_curvature"}


@pytest.mark.parametrize("scale", CONFIGS)
def test_every_figure_gets_exactly_what_its_notebook_declares_and_its_caption_renders(scale):
    declared = {}
    for stem, (family, fig) in expanded(config(scale)).items():
        row = REGISTRY[family]
        if family not in declared:
            declared[family] = set(papermill.inspect_notebook(str(REPO / "notebooks" / row["notebook"])))
        assert set(fig["parameters"]) | PATHS <= declared[family], stem
        # the caption as the notebook shows it: every name it uses exists (StrictUndefined)
        text = plotting.caption_text(REPO / "workflow/report" / row["caption"],
                                     {**fig["parameters"], "out_png": f"x/{stem}.png"})
        assert "{{" not in text and "{%" not in text and text.startswith("**Figure")
        assert set(fig["labels"]) == {"figure", "shows"} and "{" not in "".join(fig["labels"].values())


def test_captions_give_the_random_subspace_removal_as_2m_over_d():
    """A random m-dim subspace removes ~2m/d of the dominant gradient (sharpgaps.curvature.metrics.random_removal_expected);
    m/d is what it captures."""
    said = [(path.name, m.group(0)) for path in (REPO / "workflow/report").glob("*.rst")
            for m in re.finditer(r"\S* ?m/d", path.read_text())]
    assert said and all(what.endswith("2m/d") or what == "captures m/d" for _, what in said), said


def test_sweep_figures_are_numbered_by_sweep_settings():
    cfg = config("paper")
    cfg["figures"]["sweep_settings"] = ["sst2_transformer", "mnist_fc", "cifar_cnn"]
    stems = set(expanded(cfg))
    assert {"fig10_tau_ablation_sst2_transformer", "fig11_tau_ablation_mnist_fc", "fig18_batch_sweep_cifar_cnn"} <= stems
    params = expanded(cfg)["fig14_k_sweep_mnist_fc"][1]["parameters"]
    assert (params["figure"], params["axis"], params["settings"]) == (14, "K", ["mnist_fc"])
    assert str(params) == '{"axis": "K", "dpi": 150, "figure": 14, "labels": {"mnist_fc": "FC-tanh / MNIST-5k\\n' \
                          'Hessian on all 5,000 examples"}, ' \
                          '"match": "gap_vectors", "setting": "mnist_fc", "settings": ["mnist_fc"]}'  # the JSON papermill -y reads


def test_each_scale_has_its_own_figure_directory():
    dirs = {scale: config(scale)["figures"]["dir"] for scale in CONFIGS}
    assert dirs == {"paper": "paper_figures", "quick": "paper_figures/quick", "smoke": "results/figures"}
    tracked = subprocess.run(["git", "ls-files", "paper_figures"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    assert any(p.startswith("paper_figures/quick/") for p in tracked)
    assert (REPO / dirs["quick"] / "MANIFEST.json").is_file()
    # a tracked file of the paper scale's directory (outside quick/) is one a paper-scale part recorded: its figures,
    # its tables, the MANIFEST and the RESULTS made from them; no quick file strays into it
    paper = [p for p in tracked if not p.startswith("paper_figures/quick/")]
    if paper:
        from sharpgaps.pipeline.manifest import read_parts

        parts = read_parts(REPO / dirs["paper"] / "MANIFEST.json")
        recorded = {f"paper_figures/{f}" for entry in parts.values() for f in entry["figures"]}
        assert all(entry["config_file"] == "config.yaml" for entry in parts.values())
        assert {p for p in paper if not p.startswith(tuple(f"paper_figures/tables/{part}/" for part in parts))} <= (
            recorded | {"paper_figures/MANIFEST.json", "paper_figures/RESULTS.md"})
    make = (REPO / "Makefile").read_text()
    assert re.search(rf"^QUICK_FIGURES := {re.escape(dirs['quick'])}$", make, re.M)
    assert re.search(rf"^PAPER_FIGURES := {re.escape(dirs['paper'])}$", make, re.M)
    assert "paper_figures/" not in make.replace("paper_figures/quick", "")  # every other path goes through it


def _outputs(text):
    """Every path a dry run (-n -p) lists as a job's output, log or benchmark."""
    paths = []
    for line in text.splitlines():
        m = re.match(r"\s+(output|log|benchmark): (.+)", line)
        if m:
            paths += [p.strip() for p in m.group(2).split(",")]
    return paths


@pytest.mark.workflow
@pytest.mark.parametrize("which", ["smoke", "sweeps"])
def test_no_test_config_writes_a_committed_file(tmp_path, which):
    """Everything a smoke or test run would write (every job of `all`, forced) is outside the files git tracks, and
    inside the working directory: a test run in the checkout cannot overwrite the committed figures."""
    cfg = SMOKE_CONFIG if which == "smoke" else sweep_config(tmp_path / "sweeps.yaml")
    written = _outputs(snakemake(tmp_path / "w", "all", "-n", "--forceall", config=cfg))
    assert len(written) > 40 and any(p.endswith(".png") for p in written)
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split())
    assert not [p for p in written if p in tracked or any(t.startswith(p.rstrip("/") + "/") for t in tracked)]
    assert not [p for p in written if p.startswith(("/", "..")) or "/../" in p]


def test_figures_that_use_v_k_name_its_hessian_sample():
    """The panel titles of every figure drawn from V_k say on how many examples the Hessian was taken."""
    cfg = config("quick")
    figs = expanded(cfg)
    for stem, (_, fig) in figs.items():
        labels = fig["parameters"].get("labels", {})
        if stem == "figX2_theory":
            continue
        assert labels, stem
        for setting, label in labels.items():
            assert "Hessian on " in label, (stem, label)
    geometry = figs["fig02_removal"][1]["parameters"]["labels"]
    assert geometry["sst2_transformer"].endswith("Hessian on 128 of 5,000 examples")
    assert geometry["mnist_fc"].endswith("Hessian on all 5,000 examples")

"""Committed documentation: generated blocks are current, and nothing names this machine's paths."""

import copy
import json
import inspect
import re
import sys
from pathlib import Path

import pytest

from sharpgaps.core import grid
from sharpgaps.core.specs import BranchSpec
from sharpgaps.engine.models import Transformer
from sharpgaps.pipeline import scales
from sharpgaps.report.summary import PLATEAU, splice_text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import probe_transformer as probe  # noqa: E402
# An absolute path under one of these roots (or this checkout's own root, wherever it lives) names one
# machine. The lookbehind skips relative paths that merely contain them (`results/work/...`).
ROOTS = sorted({"work", "tmp", "root", "home", REPO.parts[1]})
ABSOLUTE = re.compile(r"(?<![\w.~-])/(?:" + "|".join(map(re.escape, ROOTS)) + r")/")


@pytest.fixture(scope="module")
def configs():
    return scales.load(REPO)


def test_fidelity_scales_block_is_current(configs):
    doc = (REPO / "docs/FIDELITY.md").read_text()
    assert doc.count(scales.BEGIN) == 1 and doc.count(scales.END) == 1
    assert splice_text(doc, scales.render(configs), scales.BEGIN, scales.END) == doc, \
        "docs/FIDELITY.md: the Scales block is stale; run `make docs` (python -m sharpgaps.pipeline.scales --splice ...)"


def _cell(text: str, setting: str, label: str, scale: str) -> str:
    """One cell of the rendered Scales tables."""
    section = text.split(f"### {setting}\n", 1)[1].split("\n### ", 1)[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("|")]
    col = [c.strip(" |") for c in rows[0]].index(f"{scale} (`{scales.SCALES[scale]}`)")
    return next(r[col].strip(" |") for r in rows if r[0].strip("| ") == label)


def test_scales_table_follows_the_configs(configs):
    """A setting's override reaches its own cell only; rounds, checkpoints and sweeps come from the grid."""
    changed = copy.deepcopy(configs)
    quick = changed["quick"]
    train = quick["settings"]["cifar_cnn"].setdefault("train", {})
    tau = quick["train"]["tau"]
    train["local_steps"] = 37 * tau
    train["checkpoints"] = {"count": 2, "spacing": "linear"}
    k_sweep = quick["experiments"]["k_sweep"]
    k_sweep["settings"] = [*dict.fromkeys([*k_sweep["settings"], "cifar_cnn"])]
    k_sweep.setdefault("per_setting", {})["cifar_cnn"] = {"K": [3, 5]}
    before, after = scales.render(configs), scales.render(changed)
    assert _cell(after, "cifar_cnn", "local steps (rounds)", "quick") == f"{37 * tau} (37)"
    assert _cell(after, "cifar_cnn", "checkpoints", "quick") == "2, linear, rounds 4-37"
    seeds = quick["experiments"]["k_sweep"].get("seeds", quick["train"]["seeds"])  # the per-setting seeds are gone
    # K 3 and 5 with (8-1) x 4 = 28 gap vectors matched: W = ceil(28 / 2) = 14 and ceil(28 / 4) = 7
    thinned = f"; {k_sweep['checkpoint_count']} checkpoints per run" if "checkpoint_count" in k_sweep else ""
    assert _cell(after, "cifar_cnn", "`k_sweep`", "quick") == \
        "K 3, 5; seed " + ", ".join(map(str, seeds)) + "; W 7, 14 (gap vectors matched)" + thinned
    for label in ("local steps (rounds)", "checkpoints", "`k_sweep`"):
        assert _cell(after, "mnist_fc", label, "quick") == _cell(before, "mnist_fc", label, "quick")
        assert _cell(after, "cifar_cnn", label, "paper") == _cell(before, "cifar_cnn", label, "paper")
    # an experiment a scale lacks is shown as such, not left out
    assert "tau_ablation" not in configs["smoke"]["experiments"]
    assert _cell(before, "mnist_fc", "`tau_ablation`", "smoke") == scales.NONE


def _committed_docs() -> list[Path]:
    return sorted([*(REPO / "docs").rglob("*.md"), REPO / "README.md", *(REPO / "paper_figures").rglob("*.md")])


def test_absolute_path_pattern():
    assert ABSOLUTE.search("per-rule cost (/work/main/results)")
    assert ABSOLUTE.search("`/tmp/pytest-1/x.parquet`") and ABSOLUTE.search("see /home/u/repo")
    assert not ABSOLUTE.search("state in `results/work/geometry/...` and ../shared/data")


def test_committed_docs_name_no_absolute_path():
    docs = _committed_docs()
    assert REPO / "docs/FIDELITY.md" in docs and REPO / "paper_figures/quick/RESULTS.md" in docs
    hits = [f"{p.relative_to(REPO)}:{i}: {m.group(0)}" for p in docs
            for i, line in enumerate(p.read_text().splitlines(), 1) for m in ABSOLUTE.finditer(line)]
    assert not hits, "absolute paths of this machine in committed docs:\n" + "\n".join(hits)


def _anchors(doc: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", doc.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_links_to_doc_headings_resolve():
    """Code and docs cite definitions as docs/DEFINITIONS.md#<heading>, docs link as [..](FILE.md#<heading>)
    or [..](#<heading>): every such link names a heading that exists."""
    docs = REPO / "docs"
    targets = {p.name: _anchors(p) for p in [*docs.glob("*.md"), REPO / "README.md"]}
    texts = [*_committed_docs(), *(REPO / "src").rglob("*.py"), *(REPO / "tests").rglob("*.py"),
             *(REPO / "workflow").rglob("*.yaml"), *(REPO / "workflow").rglob("*.smk"),
             *(REPO / "workflow").rglob("*.rst")]
    links = [(p, name or p.name, anchor) for p in texts
             for name, anchor in re.findall(r"(?:\]\(|docs/)([A-Z]+\.md)?#([a-z0-9_-]+)", p.read_text())]
    assert {"DEFINITIONS.md", "FIDELITY.md"} <= {name for _, name, _ in links}
    bad = [f"{p.relative_to(REPO)}: {name}#{a}" for p, name, a in links if a not in targets.get(name, ())]
    assert not bad, "links to missing headings:\n" + "\n".join(bad)


def test_transformer_probe_tables_are_current():
    runs = probe.load_runs(REPO / probe.PROBES)
    fidelity = (REPO / "docs/FIDELITY.md").read_text()
    assert fidelity.count(probe.RUNS_BEGIN) == 1
    for doc in ("docs/FIDELITY.md", probe.PROBES + ".md"):
        text = (REPO / doc).read_text()
        want = splice_text(text, probe.runs_table(runs), probe.RUNS_BEGIN, probe.RUNS_END)
        if probe.STATS_BEGIN in text:
            want = splice_text(want, probe.stats_table(runs), probe.STATS_BEGIN, probe.STATS_END)
        assert want == text, f"{doc}: the Transformer probe tables are stale; run python benchmarks/probe_transformer.py --splice"


def test_configs_run_the_adopted_transformer_probe(configs):
    """Each config's SST-2 setting is the probe variant FIDELITY marks adopted for it; every seed of that probe
    left the loss plateau (as RESULTS judges it: train loss below PLATEAU of the constant prediction's), and the
    quick scale's met the
    targets (train accuracy >= 0.85, dev >= 0.65)."""
    runs = probe.load_runs(REPO / probe.PROBES)
    ff_default = inspect.signature(Transformer).parameters["ff"].default
    mult_default = inspect.signature(Transformer).parameters["emb_mult"].default
    for scale, variant in ((s, probe.ADOPTED[f]) for s, f in scales.SCALES.items() if f in probe.ADOPTED):
        adopted = [d for d in runs if d["variant"] == variant]
        assert adopted, f"no probe run of the adopted variant {variant} in {probe.PROBES}"
        want = {**probe.BASE, **adopted[0]["cfg"]}
        config = configs[scale]
        setting, run = config["settings"]["sst2_transformer"], grid.setting_defaults(config, "sst2_transformer")
        arch = setting.get("arch", {})
        got = {"ff": arch.get("ff", ff_default), "emb_mult": arch.get("emb_mult", mult_default), "lr": run["lr"],
               "b": run["b"], "max_len": config["datasets"]["sst2"]["max_len"], "loss": run["loss"],
               "K": run["K"], "tau": run["tau"]}
        assert got == {**{k: want[k] for k in got if k in want}, "K": adopted[0]["K"], "tau": adopted[0]["tau"]}, \
            (scale, variant)
        assert want["warmup"] == 0 and not want["prenorm"] and want["pool"] == "mean" and want["emb_std"] == 1.0
        for d in adopted:
            assert d["final"]["train_loss"] < PLATEAU * d["const_loss"], (variant, d["seed"], d["final"])
        if scale == "quick":  # the targets, on every probed seed at the config's own run length
            full = [d for d in adopted if d["local_steps"] == run["local_steps"]]
            assert len({d["seed"] for d in full}) >= 3
            assert all(d["final"]["train_acc"] >= 0.85 and d["final"]["dev_acc"] >= 0.65 for d in full)
    assert "quick" in scales.SCALES and "config.quick.yaml" in probe.ADOPTED


def test_readme_smoke_time_is_the_recorded_measurement():
    import smoke_time

    record = json.loads(smoke_time.RECORD.read_text())
    row = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith(smoke_time.ROW_START))
    assert row == smoke_time.readme_row(record), "README's smoke row is stale: python benchmarks/smoke_time.py --readme-only"
    assert record["wall_s"] > 0 and record["load_median"] >= 0 and record["jobs"] > 0


def test_readme_paper_row_is_the_recorded_projection():
    from bench_scale import README_ROW, readme_row

    *rows, summ = json.loads((REPO / "docs/BENCHMARKS.json").read_text())["paper_scale"]
    row = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith(README_ROW))
    assert row == readme_row(rows, summ), "README's paper row is stale: python benchmarks/bench_scale.py"


def test_fidelity_hessian_sample_table_is_current():
    import hessian_sample

    doc = (REPO / "docs/FIDELITY.md").read_text()
    rows = [json.loads(x) for x in hessian_sample.RECORD.read_text().splitlines()]
    assert rows and all(0.0 <= r["overlap"] <= 1.0 + 1e-9 for r in rows)
    assert splice_text(doc, hessian_sample.table(rows), hessian_sample.BEGIN, hessian_sample.END) == doc, \
        "docs/FIDELITY.md: the Hessian-sample table is stale; python benchmarks/hessian_sample.py --splice docs/FIDELITY.md"


def test_fidelity_hessian_sample_claims_table_is_current_and_its_reading_holds():
    """The V_k(128) -> V_k(2,048) table is the committed rows', and what FIDELITY reads from it is true of them:
    the gap subspace beats the g-aligned control in every row with both subspaces, and the seeds' mean chi_k stays
    below the branch rule's threshold at every round measured."""
    import hessian_sample_claims as claims

    rows = [json.loads(x) for x in claims.RECORD.read_text().splitlines()]
    doc = (REPO / "docs/FIDELITY.md").read_text()
    assert splice_text(doc, claims.table(rows), claims.BEGIN, claims.END) == doc, \
        "the hessian-sample-claims block is stale: python benchmarks/hessian_sample_claims.py --splice docs/FIDELITY.md"
    assert rows and all(r[v]["overlap_beats_control"] for r in rows for v in ("sample", "reference"))
    threshold = BranchSpec().branch_chi_k
    for rnd in {r["round"] for r in rows}:
        at = [r for r in rows if r["round"] == rnd]
        for v in ("sample", "reference"):
            assert sum(r[v]["chi_k"] for r in at) / len(at) < threshold, (rnd, v)


@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_committed_results_are_what_summary_prints_from_the_release_tables(tmp_path, configs, scale):
    """RESULTS.md is generated, never edited: `make fidelity` (quick) or `make results-paper` on the tables the
    release's parts committed prints it again, and every part MANIFEST.json records left its tables beside the
    figures."""
    from sharpgaps.report.summary import release_tables, write_results

    release = REPO / configs[scale]["figures"]["dir"]
    if scale == "paper" and not (release / "MANIFEST.json").exists():
        pytest.skip("no paper-scale part is committed")
    manifest = json.loads((release / "MANIFEST.json").read_text())
    with_tables = sorted(p.name for p in (release / "tables").iterdir())
    assert with_tables and set(with_tables) <= set(manifest["parts"]) <= set(configs[scale]["parts"])
    text = write_results(release_tables(release / "tables"), tmp_path / "RESULTS.md", configs[scale]["figures"]["title"])
    assert text == (release / "RESULTS.md").read_text()
    drawn = {f for part in manifest["parts"].values() for f in part["figures"]}
    assert {p.name for p in release.iterdir() if p.is_file()} - {"MANIFEST.json", "RESULTS.md"} <= drawn


def test_fidelity_compares_the_scales_from_both_releases_committed_tables(configs, monkeypatch):
    """FIDELITY's quick-against-paper table is what `compare-scales` prints from the two releases' committed
    tables (`make fidelity` and `make results-paper` regenerate it), and it names every headline quantity the
    quick release measured for mnist_fc."""
    from sharpgaps.report import scale_compare
    from sharpgaps.report.summary import splice_text

    monkeypatch.chdir(REPO)  # the block names the releases by their paths relative to the checkout
    quick, paper = (configs[s]["figures"]["dir"] for s in ("quick", "paper"))
    doc = (REPO / "docs/FIDELITY.md").read_text()
    text = scale_compare.comparison_markdown(quick, paper, "mnist_fc")
    assert splice_text(doc, text, scale_compare.BEGIN, scale_compare.END) == doc, "stale: run `make results-paper`"
    for quantity in ("removal at m = k", "overlap with V_k at m = k", "best free estimator", "Dom share",
                     "Bulk share", "mechanism fit"):
        assert f"| {quantity}" in text


def test_the_scale_comparison_says_where_bands_do_not_meet(tmp_path, configs):
    """A paper release whose gap overlap sits far above the quick one's (the quick tables with 0.5 added to it)
    is reported as differing there, and as agreeing where its tables are the quick ones'."""
    from sharpgaps.core.atomic import read_frame, save_frame
    from sharpgaps.report import scale_compare

    quick = REPO / configs["quick"]["figures"]["dir"]
    (tmp_path / "tables/p").mkdir(parents=True)
    for name in ("main_geometry", "restricted"):
        df = read_frame(quick / f"tables/main/{name}.parquet")
        if name == "main_geometry":
            df.loc[df["metric"] == "overlap", "value"] += 0.5
        save_frame(df, tmp_path / f"tables/p/{name}.parquet")
    table = scale_compare.comparison(scale_compare.release_numbers(quick), scale_compare.release_numbers(tmp_path),
                                     "mnist_fc").set_index("quantity")["reading"]
    assert table["overlap with V_k at m = k (gap subspace)"] == "**differ**: paper higher beyond both bands"
    assert table["removal at m = k (gap subspace)"] == "bands meet"
    assert table["Dom share of Local SGD's loss drop"] == "bands meet"
    assert table["mechanism fit: median abs log10(measured / predicted)"].startswith("not compared")

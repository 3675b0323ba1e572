"""The benchmark script runs end to end at tiny sizes and produces every table (no timing asserts)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from sharpgaps.curvature.metrics import random_removal_all

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def test_superseded_dense_removal_matches_the_library_in_law():
    """The cut's 'before' (benchmarks/, a (d, m) Gaussian per m and draw) and the library (one Haar frame
    of span(V, g) per draw) draw different numbers of one law: means agree within 5 standard errors."""
    from bench_cuts import random_removal_draws_dense

    gen = torch.Generator().manual_seed(0)
    d, k, n = 500, 4, 2000
    V = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))[0]
    g = torch.randn(d, generator=gen, dtype=torch.float64) + 5 * V[:, 0]
    frame = random_removal_all(g, V, (1, 7, 40), torch.Generator().manual_seed(1), n)
    for m, batch_bytes in ((1, 2**20), (7, 8 * d * 7 * 3), (40, 2**24)):  # one batch; batches of 3 draws
        dense = random_removal_draws_dense(g, V, m, torch.Generator().manual_seed(m), n, batch_bytes)
        assert dense.std() > 1e-3  # distinct draws: a shared bug in the draws could not hide
        se = math.sqrt(float(dense.var() + frame[m].var()) / n)
        assert abs(float(dense.mean() - frame[m].mean())) < 5 * se


def test_benchmark_script_produces_every_table(tmp_path):
    out = tmp_path / "BENCH.md"
    # a section an interrupted run finished is kept (--resume), dated in the header; the rest are measured
    partial = out.with_suffix(".partial.json")
    partial.write_text(json.dumps({"curvlinops": {"date": "2026-01-01 00:00 UTC", "rows": [], "text":
                                                  "## curvlinops HessianLinearOperator vs the hand-written FullBatchHVP"
                                                  "\n\nfrom the interrupted run"}}))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/run.py"), "--quick", "--threads", "1", "--resume",
                           "--out", str(out), "--workdir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "from the interrupted run" in text and "measured at: curvlinops (2026-01-01 00:00 UTC)" in text
    assert not partial.exists()  # a finished run leaves no partial record behind
    for heading in ("Simulated Local SGD step", "Full-batch HVP vs full-batch gradient", "Top-k eigensolver",
                    "Cuts: before / after", "Restricted-update runs", "Whole DAG", "wall time and peak memory by scale",
                    "Scale on paper", "ARPACK's own step", "estimate, not measured", "Snakemake overhead",
                    "curvlinops HessianLinearOperator vs the hand-written FullBatchHVP"):
        assert heading in text
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [r["K"] for r in rows["engine"]] == [2, 4]
    assert {r["model"] for r in rows["hvp"]} == {"fc_tanh", "cnn_relu", "transformer"}
    assert {r["op"] for r in rows["hvp"]} >= {"gradient", "hvp_cached_graph", "hvp_rebuild_graph"}
    assert {(r["solver"], r["start"]) for r in rows["eigensolver"]} >= {("eigsh", "cold"), ("eigsh", "warm"),
                                                                        ("power_oracle", "cold")}
    assert all(r["n_hvp"] > 0 for r in rows["eigensolver"])
    # cold and warm eigsh at both checkpoints, each at a gapped and an ungapped k (measured gap)
    eig = [r for r in rows["eigensolver"] if r["solver"] == "eigsh"]
    assert {(r["checkpoint"], r["spectrum"], r["start"]) for r in eig} == {
        (c, g, s) for c in ("init", "trained") for g in ("gapped", "ungapped") for s in ("cold", "warm")}
    for c in ("init", "trained"):
        gap = {r["spectrum"]: r["rel_gap"] for r in eig if r["checkpoint"] == c}
        assert gap["gapped"] > 10 * gap["ungapped"] > 0
    # every cut: a before and an after row, positive medians
    cuts = rows["cuts"]
    assert {r["cut"].split(":")[0] for r in cuts} == {"training step", "geometry gradient", "random removal", "HVP",
                                                         "CNN forward", "Lanczos working precision",
                                                         "evaluation", "training-set gradient",
                                                         "gap-subspace orthonormalisation"}
    assert all(r["max_abs_diff"] < 1e-12 for r in cuts if r["cut"].startswith("gap-subspace"))
    # padded text only: the gradient cut has a transformer row and nothing else
    assert {r["case"].split(",")[0] for r in cuts if r["cut"].startswith("training-set gradient")} == {"transformer"}
    assert [r["variant"] for r in cuts] == ["before", "after"] * (len(cuts) // 2)
    assert all(r["median"] > 0 and r["speedup"] > 0 for r in cuts)
    assert {r["case"].split(",")[0] for r in cuts if r["cut"].startswith("training step")} == {
        "fc_tanh", "cnn_relu", "transformer"}
    assert {r["unit"] for r in cuts if r["cut"].startswith("geometry gradient")} == {"s", "MB"}
    lanczos = [r for r in cuts if r["cut"].startswith("Lanczos")]
    assert {r["case"].split(",")[0] for r in lanczos} == {"fc_tanh", "cnn_relu", "transformer"}
    assert all(r["max_rel_diff"] < 1e-3 and min(map(float, r["arpack_ms_per_step"].split(" / "))) > 0
               for r in lanczos)  # float32 ARPACK agrees with float64 well within eigsh's tol
    assert {r["mode"] for r in rows["restricted"]} == {"none", "dom", "bulk", "gapdom", "gapbulk"}
    assert all(r["n_hvp"] > 0 for r in rows["restricted"] if r["mode"] in ("dom", "bulk"))
    assert all(r["probe_steps"] > 0 for r in rows["restricted"] if r["mode"].startswith("gap"))
    smoke = rows["scales"][0]
    assert smoke["scale"].startswith("smoke") and smoke["wall_s"] > 0 and smoke["max_rss_mb"] > 0
    paper = {r["rule"]: r for r in rows["paper_scale"]}
    assert {"train", "geometry", "restricted", "summary"} <= set(paper)
    s = paper["summary"]
    assert s["cpu_h"] > 0 and s["gpu_h_estimate"] > 0
    assert s["critical_path_h"] <= s["slurm100_lower_h"] <= s["slurm100_upper_h"] <= s["cpu_h"]
    assert rows["snakemake"][0]["median_s"] > 0


def test_curvlinops_decision_keeps_ours_unless_within_10_percent_in_time_and_memory():
    from bench_curvlinops import decision, section

    def row(hvp_ours, hvp_theirs, rss_ours, rss_theirs):
        mem = {"ours": {"peak_rss_mb": rss_ours, "growth_mb": 1.0}, "curvlinops": {"peak_rss_mb": rss_theirs,
                                                                                   "growth_mb": 1.0}}
        return {"setting": "mnist_fc", "size": "quick", "n": 10, "d": 100, "ours": (hvp_ours, hvp_ours, hvp_ours),
                "curvlinops": (hvp_theirs, hvp_theirs, hvp_theirs), "memory": mem}

    assert decision([row(1.0, 1.05, 100, 109)])[0]
    adopt, worse = decision([row(1.0, 1.05, 100, 109), row(1.0, 1.2, 100, 100)])
    assert not adopt and worse == ["mnist_fc quick: HVP 1.20x ours"]
    assert not decision([row(1.0, 1.0, 100, 120)])[0]
    text = section([row(1.0, 1.2, 100, 100)], "measured today")
    assert "keep FullBatchHVP" in text and "| mnist_fc | quick |" in text
    assert section([row(1.0, 1.2, 100, 100)], "today", notes="One case ran out of memory.").endswith(
        "\n\nOne case ran out of memory.")


def test_committed_curvlinops_record_renders_the_committed_section():
    """docs/BENCHMARKS.md's curvlinops section is the rendering of the committed record (`make bench` redoes it)."""
    from bench_curvlinops import section

    record = json.loads((REPO / "docs/BENCHMARKS.curvlinops.json").read_text())
    assert record["rows"] and section(record["rows"], record["measured"], record.get("notes", "")) in \
        (REPO / "docs/BENCHMARKS.md").read_text()


def test_paper_projection_counts_every_stage_from_the_recorded_unit_costs(tmp_path):
    """bench_scale's model, re-rendered from the committed record (no timing): every rule of config.yaml's DAG,
    the estimators and mechanism stages modelled, the restricted runs for every seed and mode."""
    import yaml
    from bench_scale import paper_scale, readme_row, recorded_units, section

    from sharpgaps.core import grid
    from sharpgaps.pipeline.config import validate

    record = json.loads((REPO / "docs/BENCHMARKS.json").read_text())
    unit = recorded_units(record, REPO / "docs/BENCHMARKS.md")
    assert set(unit) == {"fc_tanh", "cnn_relu", "transformer"} and all(u["arpack_step_s"] > 0 for u in unit.values())
    gpu = {m: {"step_flops": 1e9, "step_ops": 100, "hvp_flops_per_ex": 1e6, "hvp_ops": 100,
               "grad_flops_per_ex": 5e5, "grad_ops": 50} for m in unit}
    cfg = validate(yaml.safe_load((REPO / "config.yaml").read_text()), REPO / "workflow/schemas/config.schema.yaml")
    counts = {"train": 1, "geometry": 1, "restricted": 1, "estimators": 1, "mechanism": 1, "subset": 3}
    rows, summ = paper_scale(cfg, counts, unit, gpu, tmp_path)
    jobs = summ["job_counts"]
    main = grid.expand_runs(cfg, ["main"])
    assert len(main) == 9  # the estimator stage measures `main` and the heterogeneity family
    assert jobs["estimators"] == len(grid.expand_runs(cfg, ["main", "heterogeneity"]))
    assert jobs["mechanism"] == len(grid.expand_runs(cfg, ["main", "tau_ablation", "heterogeneity"]))
    assert jobs["restricted"] == len(main) * len(cfg["restricted"]["modes"])
    assert jobs["train"] == jobs["geometry"] == len(grid.expand_runs(cfg))
    assert {r["rule"] for r in rows} >= {"train", "geometry", "restricted", "estimators", "mechanism"}
    assert all(r["cpu_h"] > 0 for r in rows if r["rule"] in ("estimators", "mechanism"))
    assert summ["critical_path_h"] <= summ["slurm100_lower_h"] <= summ["slurm100_upper_h"] <= summ["cpu_h"]
    text = section(rows, summ, unit)
    assert "modelled, not measured" in text and "estimate, not measured" in text
    assert readme_row(rows, summ).startswith("| paper | `make all` | not run. Projected")


def test_stage_costs_reads_every_estimator_job_of_a_real_run(smoke):
    """benchmarks/stage_costs.py parses the smoke run's own benchmark files and job logs: one row per estimators
    job, with the per-checkpoint seconds both jobs print (a changed log format would leave them empty)."""
    import stage_costs

    jobs = sorted((smoke / "results/benchmarks/estimators").glob("*/*.tsv"))
    table = stage_costs.rows(smoke / "results")
    assert jobs and len(table) == len(jobs)
    for row in table:
        assert row["geometry_s"] > 0 and row["estimators_s"] > 0
        assert row["estimators_ckpt_s"] and len(row["geometry_ckpt_s"]) >= len(row["estimators_ckpt_s"])
        assert len(row["lanczos_hvps"]) == len(row["geometry_ckpt_s"]) and min(row["lanczos_hvps"]) > 0
    assert "estimators / geometry summed over" in stage_costs.markdown(table)


def test_regenerating_keeps_the_by_hand_sections_in_place():
    """`make bench` rewrites its own sections and keeps every other `##`/`###` section of the previous file after
    the generated section it followed (by-hand measurements used to be dropped)."""
    from run import keep_by_hand

    previous = ("# Benchmarks\n\nold preamble\n\n## Engine\n\nold engine table\n\n## By hand: mechanism\n\nkept 1\n\n"
                "## Curvlinops\n\nold curvlinops\n\n### Other hand-written code\n\nkept 2\n")
    generated = "# Benchmarks\n\nnew preamble\n\n## Engine\n\nnew engine table\n\n## Curvlinops\n\nnew curvlinops\n"
    text, kept = keep_by_hand(generated, previous)
    assert kept == ["## By hand: mechanism", "### Other hand-written code"]
    assert "old" not in text and "new preamble" in text and "new curvlinops" in text
    order = [text.index(s) for s in ("new engine table", "## By hand: mechanism", "kept 1", "## Curvlinops",
                                     "new curvlinops", "### Other hand-written code", "kept 2")]
    assert order == sorted(order)
    assert keep_by_hand(generated, None) == (generated, [])


@pytest.mark.workflow
def test_hessian_sample_script_compares_a_sample_with_all_examples(mini, tmp_path):
    """On the minimal DAG's MNIST run: V_k on all examples against itself overlaps 1; a sample gives a number in
    [0, 1]."""
    ref, config = mini
    run = next((ref / "results/runs/mnist_fc").iterdir())
    out = tmp_path / "rows.jsonl"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/hessian_sample.py"), "--run-dir", str(run),
                           "--config", str(config), "--setting", "mnist_fc", "--rounds", "7",
                           "--n-hessian", "1000", "100", "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["n_hessian"] for r in rows] == [1000, 100] and rows[0]["n_all"] == 1000
    assert rows[0]["overlap"] == pytest.approx(1.0, abs=1e-3)  # the whole subset is the full Hessian
    assert 0.0 <= rows[1]["overlap"] <= 1.0 and rows[1]["lambda_sample"][0] > 0


def test_part_costs_price_training_by_work_and_stages_by_checkpoints(tmp_path):
    """A part's projection: a train job costs in proportion to K x b x local steps, a geometry job to its
    checkpoints, a restricted job to its local steps since the branch, another rule its median job; a rule never
    run is unpriced, not guessed. A quick part prices the paper scale's jobs by the paper config's sizes."""
    import yaml
    from part_costs import size, unit_costs, unit_of, wall_min

    config = yaml.safe_load((REPO / "config.quick.yaml").read_text())
    run = "K8_tau8_b50_lr0.05_mse_T8000_W4_s0"
    for rule, job, seconds in (("train", f"mnist_fc/{run}", 100.0),
                               ("geometry", f"mnist_fc/{run}_Hall_tol0.001_x10", 80.0),
                               ("restricted", f"mnist_fc/{run}/dom", 30.0), ("theory", "abc", 5.0)):
        path = tmp_path / "benchmarks" / rule / f"{job}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:01\t100\n")
    units = unit_costs(tmp_path, config)
    k16 = "K16_tau8_b50_lr0.05_mse_T8000_W2_s1"
    assert unit_of(units, "train", "mnist_fc") * size("train", config, "mnist_fc", k16) == pytest.approx(200.0)
    thinned = "K8_tau1_b50_lr0.05_mse_T8000_W4_s0_ck4"  # 4 of the setting's 8 checkpoints
    assert unit_of(units, "geometry", "mnist_fc") * size("geometry", config, "mnist_fc", thinned) == pytest.approx(40.0)
    # restricted: per local step since the branch (60 rounds x tau 8 here); no CIFAR job: any setting's median
    assert unit_of(units, "restricted", "cifar_cnn") * size("restricted", config, "cifar_cnn", run) == pytest.approx(
        30.0 * config["settings"]["cifar_cnn"]["restricted"]["rounds"] / config["restricted"]["rounds"])
    # the paper scale's jobs priced from these quick ones: its own checkpoints and restricted rounds
    paper = yaml.safe_load((REPO / "config.yaml").read_text())
    paper_run = "K8_tau8_b50_lr0.05_mse_T20000_W4_s0"
    assert unit_of(units, "geometry", "mnist_fc") * size("geometry", paper, "mnist_fc", paper_run) == pytest.approx(
        80.0 / config["train"]["checkpoints"]["count"] * paper["train"]["checkpoints"]["count"])
    assert unit_of(units, "restricted", "mnist_fc") * size("restricted", paper, "mnist_fc", paper_run) == pytest.approx(
        30.0 * paper["restricted"]["rounds"] / config["restricted"]["rounds"])
    assert unit_of(units, "train", "cifar_cnn") is None and unit_of(units, "figX5_heterogeneity", "") is None
    assert unit_of(units, "theory", "") == pytest.approx(5.0)
    # the wall: core-seconds over the cores (2-thread paper jobs run one at a time on 2 cores)
    assert wall_min(3600.0, threads=2, cores=2) == pytest.approx(60.0)
    assert wall_min(3600.0, threads=1, cores=2) == pytest.approx(30.0)


def test_stage_costs_reads_every_duration_the_geometry_job_prints():
    """Under load a checkpoint takes minutes: "1 min 24 s" must parse as well as "54 s"."""
    from stage_costs import GEOMETRY_CKPT, seconds

    line = "checkpoint 1/3 (round 2): lambda_1=9.463, 1 min 24 s (eigensolver 1 min 09 s, 60 HVPs), 1 min 24 s/ckpt"
    assert GEOMETRY_CKPT.findall(line) == [("2", "1 min 24 s", "60")]
    assert [seconds(d) for d in ("54 s", "1 min 24 s", "1 h 02 min")] == [54.0, 84.0, 3720.0]


def test_job_costs_of_a_results_tree_include_every_release_parts_subtree(tmp_path):
    from sharpgaps.pipeline.jobcosts import read_tree_job_costs

    for part, rule, seconds in (("", "train", 1.0), ("main", "train", 2.0), ("sweeps", "geometry", 3.0)):
        path = tmp_path / part / "benchmarks" / rule / "mnist_fc/run.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:01\t100\n")
    jobs = read_tree_job_costs(tmp_path)
    assert sorted(zip(jobs["part"], jobs["rule"], jobs["s"])) == [
        ("", "train", 1.0), ("main", "train", 2.0), ("sweeps", "geometry", 3.0)]
    assert read_tree_job_costs(tmp_path / "none").empty


def test_projection_is_checked_against_the_paper_scale_jobs_that_ran(tmp_path):
    """Each modelled stage's measured/projected ratio over the jobs that ran (a restricted run's modes summed), and
    the whole projection corrected with it: measured jobs as measured, the rest of the stage at projected x ratio."""
    from bench_scale import check_lines, measured_paper_jobs, projection_check, readme_row

    a, b = "K8_tau8_b50_lr0.05_mse_T20000_W4_s0", "K8_tau8_b50_lr0.05_mse_T20000_W4_s1"
    projected = pd.DataFrame([("train", "mnist_fc", a, 100.0, 1.0), ("train", "mnist_fc", b, 100.0, 1.0),
                              ("train", "cifar_cnn", a, 1000.0, 1.0),
                              ("restricted", "mnist_fc", a, 10.0, 1.0), ("restricted", "mnist_fc", a, 30.0, 1.0),
                              ("restricted", "cifar_cnn", a, 400.0, 1.0), ("subset", "-", "-", 7.0, 7.0)],
                             columns=["rule", "setting", "run", "cpu_s", "gpu_s"])
    manifest = tmp_path / "MANIFEST.json"
    manifest.write_text(json.dumps({"parts": {
        "mnist_main": {"job_s": {f"train/mnist_fc/{a}": 150.0, f"train/mnist_fc/{b}": 250.0,
                                 f"restricted/mnist_fc/{a}_brchi0.9x2mean_abc_dom": 20.0,
                                 f"restricted/mnist_fc/{a}_brchi0.9x2mean_abc_bulk": 40.0,
                                 "figures/fig01_cosines": 3.0}},
        "quick_part": {}}}))
    measured = measured_paper_jobs(manifest)
    assert len(measured) == 5 and set(measured.part) == {"mnist_main"}
    check = projection_check(projected, measured)
    stages = {s["rule"]: s for s in check["stages"]}
    assert stages["train"]["ratio"] == pytest.approx(2.0) and stages["train"]["jobs"] == 2
    assert stages["train"]["job_ratio_range"] == pytest.approx([1.5, 2.5])
    assert stages["train"]["corrected_cpu_h"] * 3600 == pytest.approx(400.0 + 1000.0 * 2.0)
    assert stages["restricted"]["ratio"] == pytest.approx(60.0 / 40.0)  # one run, its two modes summed
    assert stages["restricted"]["corrected_cpu_h"] * 3600 == pytest.approx(60.0 + 400.0 * 1.5)
    assert check["corrected_cpu_h"] * 3600 == pytest.approx(2400.0 + 660.0 + 7.0)  # subset: not modelled, unchanged
    assert check["cpu_h"] * 3600 == pytest.approx(1647.0) and check["unmatched_jobs"] == 0
    text = "\n".join(check_lines(check))
    assert "| train | 2 | 200 | 400 | 2.00 | 2.00 (1.50-2.50) |" in text and "(mnist_fc)" in text
    summ = {"jobs": 7, "cpu_h": 1.0, "slurm100_lower_h": 1.0, "slurm100_upper_h": 2.0, "critical_path_h": 0.5,
            "gpu_h_estimate": 0.1, "check": check}
    row = readme_row([], summ)
    assert "not run in full (part mnist_main ran" in row and "): 1 job-hours" in row
    assert "train 2.00x" in row and "restricted 1.50x" in row
    assert measured_paper_jobs(tmp_path / "none.json").empty

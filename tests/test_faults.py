"""Fault injection through Snakemake: every fault ends in the correct result or a clear error naming the
file / key / run, never in a wrong table or figure.

The session `mini` run (conftest: the minimal DAG, one setting and one seed of the smoke config, --cores 8) is
the reference. Kill and corruption tests work on a copy of it, remove or damage one job's inputs/outputs, and
rerun exactly as a user would.
"""

import copy
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sharpgaps.studies.estimators import TIMING_METRICS
from tests.helpers import FIGURE_DIR, MINI_TARGETS, REPO, SMOKE_CONFIG, run_dag, snakemake

MNIST_RUN = "results/runs/mnist_fc/K8_tau4_b50_lr0.05_mse_T96_W2_s0"
# wall-clock columns: the restricted tables', and the estimator figures' extra cost (it prices an HVP by the
# HVP/gradient time ratio measured in the job, sharpgaps.studies.estimators.TIMING_METRICS)
TIMING = ("seconds", "refresh_seconds", "extra_cost")
MNIST_WORK = "results/work/mnist_fc/K8_tau4_b50_lr0.05_mse_T96_W2_s0"


def _copy(ref: Path, dst: Path) -> Path:
    shutil.copytree(ref, dst, symlinks=True)
    return dst


def _files(root: Path, pattern: str = "*") -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob(pattern)) if p.is_file()}


def _without_timings(path: Path) -> tuple[pd.DataFrame, bool]:
    """A table minus its wall-clock timings (columns or tidy rows), the one thing allowed to differ;
    and whether it had any."""
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    cols = [c for c in TIMING if c in df]
    rows = pd.Series(False, index=df.index)
    for col in ("metric", "quantity"):
        if col in df:
            rows |= df[col].astype(str).str.contains("seconds") | df[col].isin(TIMING_METRICS)
    return df.drop(columns=cols)[~rows].reset_index(drop=True), bool(cols) or bool(rows.any())


def _same_files(ref: Path, new: Path, pattern: str = "*") -> None:
    """Bitwise identical files; tables with wall-clock timings are compared exactly without them."""
    want, got = _files(ref, pattern), _files(new, pattern)
    assert want, f"nothing matches {pattern} under {ref}"
    assert sorted(got) == sorted(want)
    for k in (k for k in want if want[k] != got[k]):
        assert k.endswith((".parquet", ".csv")), f"{k} is not bitwise identical to the reference run"
        (a, timed), (b, _) = _without_timings(ref / k), _without_timings(new / k)
        assert timed, f"{k} differs from the reference run and holds no timings to explain it"
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=k)


def _kill_when(workdir: Path, config: Path, targets: list[str], trigger, delay: float, timeout: float = 600) -> bool:
    """Start Snakemake on ``targets``; once ``trigger()`` holds, wait ``delay`` s and SIGKILL Snakemake
    and every job it started (the whole process group, as a preemption does). False if it finished first."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2",
           "--rerun-incomplete", *targets, "--configfile", str(config)]
    with open(workdir / "killed_runs.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.monotonic()
        while proc.poll() is None:
            if trigger():
                time.sleep(delay)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                snakemake(workdir, "--unlock", config=config)  # a killed Snakemake leaves its lock: the documented first step
                return True
            if time.monotonic() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                raise TimeoutError(f"{targets} neither finished nor reached the kill point in {timeout} s")
            time.sleep(0.02)
    return False


def _still_pending(workdir: Path, config: Path, target: str, rule: str) -> None:
    """After a kill, Snakemake must not take the killed job's outputs as finished."""
    out = snakemake(workdir, "-n", target, config=config, check=False)
    assert re.search(rf"^(local)?rule {rule}:", out, re.M) or "IncompleteFilesException" in out, out[-2000:]


# ---------------------------------------------------------------------------------------------- kills

@pytest.mark.parametrize("seed", [0, 1])
def test_killed_training_resumes_and_ends_bitwise_identical(mini, tmp_path, seed):
    ref, config = mini  # the reference run and its config
    work = _copy(ref, tmp_path / "w")
    shutil.rmtree(work / MNIST_RUN)
    shutil.rmtree(work / MNIST_WORK)
    target = f"{MNIST_RUN}/ckpt"
    partial = work / MNIST_WORK / "ckpt"
    rng = random.Random(seed)
    for n in sorted(rng.sample([1, 2], 2)):  # kill just after the n-th of the 3 checkpoints is written
        fired = _kill_when(work, config, [target], lambda n=n: len(list(partial.glob("r*.pt"))) >= n, rng.uniform(0, 0.3))
        assert fired and not (work / MNIST_RUN / "metrics.csv").exists(), "the kill came too late to test anything"
        _still_pending(work, config, target, "train")
    snakemake(work, "--cores", "2", "--rerun-incomplete", target, config=config)
    log = (work / "results/logs/train/mnist_fc/K8_tau4_b50_lr0.05_mse_T96_W2_s0.log").read_text()
    resumed = [int(r) for r in re.findall(r"resuming from round (\d+)", log)]
    assert resumed and resumed[0] >= 2, f"the last attempt did not resume from a checkpoint:\n{log[-1500:]}"
    _same_files(ref / MNIST_RUN, work / MNIST_RUN, "*.pt")
    _same_files(ref / MNIST_RUN, work / MNIST_RUN, "*.csv")


@pytest.mark.parametrize("seed", [0, 1])
def test_killed_geometry_reuses_finished_checkpoints_and_ends_identical(mini, tmp_path, seed):
    ref, config = mini  # the reference run and its config
    work = _copy(ref, tmp_path / "w")
    table = next((work / MNIST_RUN).glob("geometry_*.parquet"))
    target = str(table.relative_to(work))
    table.unlink()
    cache = work / "results/work/geometry/mnist_fc/K8_tau4_b50_lr0.05_mse_T96_W2_s0"
    shutil.rmtree(cache)
    rng = random.Random(100 + seed)
    for n in (1, 2):  # after 1, then 2, of the 3 per-checkpoint results are cached
        fired = _kill_when(work, config, [target], lambda n=n: len(list(cache.rglob("*.geom.pt"))) >= n, rng.uniform(0, 0.5))
        assert fired and not table.exists()
        _still_pending(work, config, target, "geometry")
    snakemake(work, "--cores", "2", "--rerun-incomplete", target, config=config)
    assert table.read_bytes() == (ref / target).read_bytes()


@pytest.mark.parametrize("seed", [0, 1])
def test_killed_notebook_job_never_leaves_a_figure_taken_as_done(mini, tmp_path, seed):
    ref, config = mini  # the reference run and its config
    work = _copy(ref, tmp_path / "w")
    outs = [work / FIGURE_DIR / f"fig02_removal.{ext}" for ext in ("pdf", "png", "csv")]
    for p in outs + [work / "results/notebooks/fig02_removal.ipynb", work / "results/logs/figures/fig02_removal.log"]:
        p.unlink()
    target = f"{FIGURE_DIR}/fig02_removal.pdf"
    started = work / "results/logs/figures/fig02_removal.log"
    rng = random.Random(200 + seed)
    landed = 0
    for _ in range(2):
        fired = _kill_when(work, config, [target], started.exists, rng.uniform(0.2, 3.0))
        if not fired or all(p.exists() for p in outs):
            continue  # the job beat the kill: nothing to check this round
        landed += 1
        _still_pending(work, config, target, "fig02_removal")
        started.unlink(missing_ok=True)
    assert landed, "no kill landed inside the notebook job"
    snakemake(work, "--cores", "1", "--rerun-incomplete", target, config=config)
    assert (work / FIGURE_DIR / "fig02_removal.csv").read_bytes() == (ref / FIGURE_DIR / "fig02_removal.csv").read_bytes()
    pdf = (work / target).read_bytes()
    assert pdf.startswith(b"%PDF") and pdf.rstrip().endswith(b"%%EOF")


# ----------------------------------------------------------------------------------------- corruption

def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        data = data[: len(data) // 2]
    else:  # flip one byte inside the payload (tensor data / Parquet data pages, not the footer)
        b = bytearray(data)
        b[int(len(b) * 0.25)] ^= 0x5A
        data = bytes(b)
    path.unlink()  # new inode: never write through into a file shared with the reference run
    path.write_bytes(data)


@pytest.fixture(scope="module")
def damaged(mini, tmp_path_factory):
    """A copy of the minimal run in which one file at a time is damaged, then restored from the reference."""
    return _copy(mini[0], tmp_path_factory.mktemp("corrupt") / "w")


SUBSET = "results/data/mnist/subset_n1000_s0_test500.pt"
RUN_ID = MNIST_RUN.rsplit("/", 1)[1]
CORRUPTIONS = [  # (file to damage, the job that reads it, forced by this target, its log); {g}: geometry tag
    (SUBSET, "train", f"{MNIST_RUN}/ckpt", f"results/logs/train/mnist_fc/{RUN_ID}.log"),
    (f"{MNIST_RUN}/ckpt/r000007.pt", "geometry", f"{MNIST_RUN}/geometry_{{g}}.parquet",
     f"results/logs/geometry/mnist_fc/{RUN_ID}_{{g}}.log"),
    (f"{MNIST_RUN}/geometry_{{g}}.parquet", "collect_geometry", "results/tables/main_geometry.parquet",
     "results/logs/collect/main.log"),
]


@pytest.mark.parametrize("how", ["truncate", "alter"])
@pytest.mark.parametrize("victim,rule,target,log", CORRUPTIONS, ids=["subset", "checkpoint", "geometry_table"])
def test_corrupt_file_fails_the_reading_job_naming_it(mini, damaged, victim, rule, target, log, how):
    ref, config = mini  # the reference run and its config
    g = next((ref / MNIST_RUN).glob("geometry_*.parquet")).stem.removeprefix("geometry_")
    victim, target, log = (s.format(g=g) for s in (victim, target, log))
    _damage(damaged / victim, how)
    try:
        out = snakemake(damaged, "--cores", "1", "-f", target, config=config, check=False)
        assert f"Error in rule {rule}" in out, out[-2000:]
        text = (damaged / log).read_text()
        if rule == "geometry":  # a checkpoint: the round, and the manifest whose deletion retrains the run
            assert f"round 7 ({Path(victim).name})" in text and f"--forcerun {MNIST_RUN}/checkpoints.json" in text, text
        else:
            assert f"{victim}: " in text and "delete it and rerun" in text, text[-2000:]
        assert "Traceback" not in text  # a clear error, not a crash
        assert not (damaged / target).exists()  # no output from damaged input
    finally:
        (damaged / victim).unlink()
        shutil.copy2(ref / victim, damaged / victim)
        snakemake(damaged, "--cores", "1", target, config=config)  # the copy is whole again for the next case
        assert (damaged / target).exists()


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_a_damaged_checkpoint_is_refused_and_following_the_message_rebuilds_it(mini, tmp_path, how):
    """A truncated or deleted checkpoint: the next job that reads it (forced here, as any upstream change would)
    stops before any work, naming the round and the fix; following the fix rebuilds the run's checkpoints and
    everything after them, and every figure CSV ends identical to the undisturbed run's."""
    ref, config = mini
    work = _copy(ref, tmp_path / "w")
    victim = work / MNIST_RUN / "ckpt/r000007.pt"
    if how == "truncate":
        _damage(victim, "truncate")
    else:
        victim.unlink()
    geometry = next((work / MNIST_RUN).glob("geometry_*.parquet")).relative_to(work)
    out = snakemake(work, "--cores", "2", "-f", str(geometry), config=config, check=False)
    assert "Error in rule geometry" in out, out[-2000:]
    log = next((work / "results/logs/geometry/mnist_fc").glob(f"{RUN_ID}_*.log")).read_text()
    advice = f"Rerun the same command with `--forcerun {MNIST_RUN}/checkpoints.json` added"
    assert "round 7 (r000007.pt)" in log and advice in log and "Traceback" not in log, log
    # the advice, followed (the user's command: the DAG's targets, with the forced geometry job among them)
    snakemake(work, "--cores", "2", *MINI_TARGETS, "--forcerun", f"{MNIST_RUN}/checkpoints.json", config=config)
    assert victim.read_bytes() == (ref / MNIST_RUN / "ckpt/r000007.pt").read_bytes()
    _same_files(ref / FIGURE_DIR, work / FIGURE_DIR, "*.csv")


def test_published_checkpoints_share_no_inode_with_the_work_copies(mini):
    ref, _ = mini
    published = sorted((ref / MNIST_RUN / "ckpt").glob("r*.pt"))
    assert published
    for p in published:
        assert os.stat(p).st_ino != os.stat(ref / MNIST_WORK / "ckpt" / p.name).st_ino


@pytest.mark.parametrize("how", ["truncate", "alter"])
def test_corrupt_raw_data_fails_naming_the_file(mini, tmp_path, data_dir, how):
    ref, config = mini  # the reference run and its config
    raw = tmp_path / "data"
    shutil.copytree(data_dir / "mnist", raw / "mnist")
    victim = next(p for p in sorted((raw / "mnist").iterdir()) if "train-images" in p.name)
    _damage(victim, how)
    work = _copy(ref, tmp_path / "w")
    out = snakemake(work, "--cores", "1", "-f", SUBSET, config=config, check=False, env={"SHARPGAPS_DATA_DIR": str(raw)})
    assert "Error in rule subset" in out
    log = (work / "results/logs/subset/mnist_n1000_s0_test500.log").read_text()
    assert f"'{victim}'" in log and "Checksum mismatch" in log and "Traceback" not in log, log
    assert not (work / SUBSET).exists()


# ----------------------------------------------------------------------------------------- divergence

def test_diverging_run_fails_naming_run_round_and_loss_and_draws_no_figure(tmp_path):
    cfg = yaml.safe_load(SMOKE_CONFIG.read_text())
    cfg["settings"]["mnist_fc"]["lr"] = 1.0e4
    cfg["experiments"]["main"]["settings"] = ["mnist_fc"]  # the figure then needs only this run
    path = tmp_path / "diverge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    work = tmp_path / "w"
    out = snakemake(work, "--cores", "2", f"{FIGURE_DIR}/fig02_removal.pdf", config=path, check=False)
    assert "Error in rule train" in out
    run = "K8_tau4_b50_lr10000_mse_T96_W2_s0"
    log = (work / f"results/logs/train/mnist_fc/{run}.log").read_text()
    assert re.search(rf"run 'mnist_fc/{run}' diverged in round \d+ .*minibatch loss \[.*(nan|inf).*\] is not finite.*"
                     r"Lower the learning rate \(lr=10000.0\)", log), log
    assert not list(work.glob(f"{FIGURE_DIR}/fig02*"))
    assert not (work / f"results/runs/mnist_fc/{run}/ckpt").exists()


# ---------------------------------------------------------------------------------- bad configurations

@pytest.mark.parametrize("path,value,key", [
    ("train.seeds", [0, 0], "train.seeds"),
    ("geometry.m_list", [1, 500], "geometry.m_list"),
    ("engine", "mpi", "engine"),
    ("experiments.main.K", [], "experiments.main.K"),
])
def test_bad_config_stops_snakemake_before_any_job(tmp_path, path, value, key):
    cfg = yaml.safe_load(SMOKE_CONFIG.read_text())
    node = cfg
    *head, last = path.split(".")
    for k in head:
        node = node[k]
    node[last] = copy.deepcopy(value)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    out = snakemake(tmp_path, "--cores", "1", "all", config=bad, check=False)
    assert f"- {key}: " in out and ("allowed" in out or "is not one of" in out), out[-2000:]
    assert not (tmp_path / "results").exists()  # nothing ran


# ---------------------------------------------------------------------------------------- concurrency

def _written_paths(dry_run: str) -> list[tuple[str, str]]:
    """(job, path) for everything each job's shell command writes: outputs, work dirs and logs."""
    pairs = []
    for i, block in enumerate(re.split(r"^(?:local)?rule ", dry_run, flags=re.M)[1:]):
        job = f"{block.split(':', 1)[0]}#{i}"
        cmd = " ".join(line.strip() for line in block.splitlines() if not re.match(r"\s*(input|output|log|jobid|"
                       r"benchmark|reason|wildcards|resources|threads|priority):", line))
        for flag in ("--out", "--out-dir", "--work-dir"):
            pairs += [(job, p) for p in re.findall(rf"{flag} (\S+)", cmd)]
        pairs += [(job, p) for p in re.findall(r"> (results/logs/\S+)", cmd)]
    return pairs


def test_no_two_jobs_write_the_same_place(tmp_path):
    out = snakemake(tmp_path, "-n", "-p", "--forceall", "all")
    pairs = _written_paths(out)
    assert len({job for job, _ in pairs}) > 30
    owner = {}
    for job, path in pairs:
        assert owner.setdefault(path, job) == job, f"{path} is written by both {owner[path]} and {job}"
    work_dirs = sorted({p for _, p in pairs if "/work/" in p})
    for a, b in zip(work_dirs, work_dirs[1:]):
        assert not b.startswith(a + "/"), f"work dir {b} lies inside another job's work dir {a}"


def test_cores_1_gives_the_same_results_as_cores_8(mini, tmp_path):
    """The minimal DAG ran with --cores 8 (more jobs than cores); a serial run must match it bitwise."""
    ref, config = mini  # the reference run and its config
    work = run_dag(tmp_path / "serial", config, MINI_TARGETS, cores=1)
    for pattern in ("*.parquet", "*.pt", "*.csv"):
        _same_files(ref / "results/runs", work / "results/runs", pattern)
    _same_files(ref / "results/tables", work / "results/tables", "*.parquet")
    _same_files(ref / FIGURE_DIR, work / FIGURE_DIR, "*.csv")


# ------------------------------------------------------------------------------------------ scales

def _planned_outputs(text: str) -> list[str]:
    """Every output path a dry run lists."""
    outs = []
    for line in text.splitlines():
        if line.strip().startswith("output:"):
            outs += [p.strip() for p in line.split(":", 1)[1].split(",") if p.strip()]
    return outs


def test_scales_alternate_in_one_tree_without_invalidating_each_other(mini, request):
    """smoke -> quick -> smoke -> paper -> smoke in one working tree: each other scale plans and writes only under its
    own results_dir and figure dir (its data acquisition and subsets run for real here), and the smoke scale's
    products stay current each time (0 jobs)."""
    ref, config = mini
    # a copy at the reference's depth: rules name the notebooks by their path relative to the working directory,
    # so a copy at another depth reads as a changed input set
    work = _copy(ref, ref.parent.parent / f"alternate-{os.getpid()}" / "w")
    request.addfinalizer(lambda: shutil.rmtree(work.parent, ignore_errors=True))

    def current(when: str) -> None:
        out = snakemake(work, "-n", *MINI_TARGETS, config=config)
        assert "Nothing to be done" in out, (when, [line for line in out.splitlines() if "reason" in line][:10])

    current("at the start")
    for name in ("config.quick.yaml", "config.yaml"):
        other = yaml.safe_load((REPO / name).read_text())
        own = (other["results_dir"].rstrip("/") + "/", other["figures"]["dir"].rstrip("/") + "/")
        planned = _planned_outputs(snakemake(work, "-n", "all", config=REPO / name))
        assert planned and all(p.startswith(own) for p in planned), [p for p in planned if not p.startswith(own)]
        subset = next(p for p in planned if "/data/mnist/subset_" in p)
        snakemake(work, "--cores", "2", subset, config=REPO / name)  # the other scale's first jobs, for real
        assert (work / subset).is_file()
        current(f"after {name}")

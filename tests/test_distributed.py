"""The distributed engine (torchrun, gloo on localhost) against the simulated engine.

Same run JSON, same seeds: every checkpoint's average and gaps agree to 1e-6, the run files have the
same keys/columns/rows, so every downstream rule reads a distributed run unchanged.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import torch.distributed as dist

from sharpgaps.core.flat import flatten
from sharpgaps.core.specs import RunSpec
from sharpgaps.engine import losses, models
from sharpgaps.engine.localsgd import LoopLocalSGD
from sharpgaps.pipeline.distributed import DistributedLocalSGD, worker_assignment

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RUN = {"K": 4, "tau": 2, "b": 20, "lr": 0.1, "local_steps": 200, "window": 2, "seed": 3, "loss": "mse",
       "model": "fc_tanh", "arch": {"widths": [32, 32]}, "checkpoints": {"rounds": [2, 10, 50, 100]}}


def _args(run, subset_file, out, resume_every_s=120):
    return ["train", "--run", json.dumps(run), "--subset", str(subset_file), "--out-dir", str(out / "out"),
            "--work-dir", str(out / "work"), "--threads", "1", "--resume-every-s", str(resume_every_s)]


def _simulated(run, subset_file, out):
    """`sharpgaps train` in this process (saves a Python + torch start-up per run)."""
    from sharpgaps.pipeline import cli

    threads = torch.get_num_threads()
    try:
        assert cli.main(_args(run, subset_file, out)) == 0
    finally:
        torch.set_num_threads(threads)


def _torchrun_cmd(n, run, subset_file, out, resume_every_s=120):
    # "--": torchrun's parser would take "--run" for an abbreviation of its own "--run-path"
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
            "-m", "sharpgaps.pipeline.distributed", "--", *_args(run, subset_file, out, resume_every_s)]


def _distributed(n, run, subset_file, out, env=None):
    proc = subprocess.run(_torchrun_cmd(n, run, subset_file, out), env={**ENV, **(env or {})},
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _ckpts(out):
    files = sorted((out / "out" / "ckpt").glob("r*.pt"))
    assert files
    return {p.name: torch.load(p, weights_only=False) for p in files}


@pytest.fixture(scope="module")
def subset_file(tmp_path_factory, mnist_small):
    from sharpgaps.core.atomic import save_torch

    path = tmp_path_factory.mktemp("dist") / "subset.pt"
    save_torch(mnist_small, path)
    return path


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, subset_file):
    """The simulated engine's run files, per K."""
    cache = {}

    def get(K):
        if K not in cache:
            out = tmp_path_factory.mktemp(f"sim_K{K}")
            _simulated({**RUN, "K": K}, subset_file, out)
            cache[K] = out
        return cache[K]

    return get


@pytest.fixture(scope="module")
def distributed(tmp_path_factory, subset_file):
    """The distributed engine's run files, per (processes, K); rank scratch dirs kept for inspection."""
    cache = {}

    def get(nproc, K):
        if (nproc, K) not in cache:
            out = tmp_path_factory.mktemp(f"dist_{nproc}proc_K{K}")
            _distributed(nproc, {**RUN, "K": K}, subset_file, out, env={"SHARPGAPS_KEEP_RANK_DIRS": "1"})
            cache[nproc, K] = out
        return cache[nproc, K]

    return get


def _assert_same_run(sim, dst):
    a, b = _ckpts(sim), _ckpts(dst)
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        assert x.keys() == y.keys(), name
        for key in ("format", "run", "round", "step", "param_names", "param_shapes", "gap_rounds"):
            assert x[key] == y[key], (name, key)
        assert x["gaps"].shape == y["gaps"].shape
        torch.testing.assert_close(y["theta"], x["theta"], atol=1e-6, rtol=0)
        torch.testing.assert_close(y["gaps"], x["gaps"], atol=1e-6, rtol=0)
        assert x["worker_gap_norms"] == pytest.approx(y["worker_gap_norms"], abs=1e-5)
        assert x["metrics"].keys() == y["metrics"].keys()
        assert x["metrics"] == pytest.approx(y["metrics"], abs=1e-5)
    for table in ("metrics.csv", "rounds.csv"):
        s, d = pd.read_csv(sim / "out" / table), pd.read_csv(dst / "out" / table)
        assert list(s.columns) == list(d.columns) and len(s) == len(d), table
        pd.testing.assert_frame_equal(s, d, check_exact=False, atol=1e-5, rtol=0)
    info_s = json.loads((sim / "out" / "run.json").read_text())
    info_d = json.loads((dst / "out" / "run.json").read_text())
    assert set(info_s) <= set(info_d)
    assert {k: v for k, v in info_s.items() if k != "seconds"} == {k: info_d[k] for k in info_s if k != "seconds"}


@pytest.mark.parametrize("nproc,K", [(2, 4), (4, 4), (2, 3)], ids=["2proc_K4", "4proc_K4", "2proc_K3_uneven"])
def test_torchrun_gloo_matches_simulated(simulated, distributed, nproc, K):
    out = distributed(nproc, K)
    _assert_same_run(simulated(K), out)
    info = json.loads((out / "out" / "run.json").read_text())
    assert (info["engine"], info["world_size"], info["backend"]) == ("distributed", nproc, "gloo")
    # every rank holds bitwise the same average and gaps (the all-reduce gives every rank the same bytes)
    ref = _ckpts(out)
    for r in range(1, nproc):
        for name, c in ref.items():
            other = torch.load(out / "work" / f".rank{r}" / "ckpt" / name, weights_only=False)
            assert torch.equal(other["theta"], c["theta"]) and torch.equal(other["gaps"], c["gaps"])


def _kill_torchrun_mid_run(run, subset_file, cut):
    """Start a 2-process torchrun of ``run`` writing its resume state after every round, SIGKILL its process group
    as soon as the first state exists, and return that state's path."""
    proc = subprocess.Popen(_torchrun_cmd(2, run, subset_file, cut, resume_every_s=0), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state = cut / "work" / "state.pt"
    deadline = time.time() + 120
    try:
        while not state.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return state


def test_killed_torchrun_resumes_to_identical_numbers(tmp_path, subset_file, distributed):
    """SIGKILL the whole torchrun process group mid-run; the restart ends bitwise equal to a clean run."""
    run, rounds = RUN, RUN["local_steps"] // RUN["tau"]
    cut = tmp_path / "cut"
    state = _kill_torchrun_mid_run(run, subset_file, cut)
    killed_at = torch.load(state, weights_only=False)["round"]
    assert 0 < killed_at < rounds, "the kill must land mid-run for this test to mean anything"
    assert not (cut / "out" / "run.json").exists()
    _distributed(2, run, subset_file, cut)
    assert not (cut / "work" / ".rank1").exists()  # rank scratch dirs are removed after a run
    full = distributed(2, RUN["K"])  # the same run, uninterrupted
    a, b = _ckpts(full), _ckpts(cut)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name]["theta"], b[name]["theta"]) and torch.equal(a[name]["gaps"], b[name]["gaps"])
        assert a[name]["metrics"] == b[name]["metrics"]
    for table in ("metrics.csv", "rounds.csv"):
        assert (full / "out" / table).read_text() == (cut / "out" / table).read_text()


def test_a_damaged_work_checkpoint_restarts_every_rank_together(tmp_path, subset_file, distributed):
    """A rerun of a finished distributed run whose rank-0 work checkpoint is damaged: every rank trains again from
    round 0 (no rank resumes alone, which would hang the collectives) and the numbers equal the clean run's."""
    full = distributed(2, RUN["K"])
    work = tmp_path / "w"
    shutil.copytree(full, work)
    victim = next((work / "work" / "ckpt").glob("r*.pt"))
    victim.write_bytes(victim.read_bytes()[:100])
    proc = _distributed(2, RUN, subset_file, work)
    assert "missing or altered: training again from round 0" in proc.stderr
    a, b = _ckpts(full), _ckpts(work)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[n]["theta"], b[n]["theta"]) and torch.equal(a[n]["gaps"], b[n]["gaps"]) for n in a)


def test_more_processes_than_workers_is_refused(tmp_path, subset_file):
    proc = subprocess.run(_torchrun_cmd(2, {**RUN, "K": 1}, subset_file, tmp_path), env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "K=1 workers cannot be spread over 2 processes" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_worker_assignment():
    assert worker_assignment(4, 2, 0) == [0, 2] and worker_assignment(4, 2, 1) == [1, 3]
    assert worker_assignment(5, 2, 0) == [0, 2, 4] and worker_assignment(5, 2, 1) == [1, 3]  # uneven: fine
    assert sorted(sum((worker_assignment(7, 3, r) for r in range(3)), [])) == list(range(7))
    with pytest.raises(ValueError, match=r"K=2 workers cannot be spread over 4 processes.*at most K=2"):
        worker_assignment(2, 4, 0)


def test_outside_torchrun_is_a_clear_error(tmp_path, subset_file):
    proc = subprocess.run([sys.executable, "-m", "sharpgaps.pipeline.distributed", *_args(RUN, subset_file, tmp_path)],
                          env={k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR")},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "must run under torchrun" in proc.stderr


@pytest.fixture
def single_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("transform", [None, "halve_first_coords"])
def test_engine_in_one_process_matches_loop_reference(single_process_group, mnist_small, transform):
    """World size 1 (all workers on one rank, K=3): the engine is the loop reference plus collectives."""
    spec = RunSpec(K=3, tau=3, b=20, lr=0.1, rounds=3, window=2, seed=5, checkpoints=(3,))
    m = models.build_model("fc_tanh", mnist_small["meta"], seed=0, widths=(32, 32))
    x, y = mnist_small["x_train"], mnist_small["y_train"]
    if transform:  # a row-wise update transform, like the Dom/Bulk projections
        def transform(u):
            return torch.cat([0.5 * u[:, :100], u[:, 100:]], dim=1)
    eng = DistributedLocalSGD(m, losses.mse_onehot, x, y, spec, update_transform=transform)
    ref = LoopLocalSGD(m, losses.mse_onehot, x, y, spec, update_transform=transform)
    for r in range(3):
        for s in range(spec.tau):
            # exact in round 1; later the average (sum/K vs mean) may differ in the last bit
            torch.testing.assert_close(eng.local_step(r * spec.tau + s), ref.local_step(r * spec.tau + s),
                                       atol=0 if r == 0 else 1e-6, rtol=0)
        (avg_e, gap_e), (avg_r, gap_r) = eng.end_round(), ref.end_round()
        assert gap_e.shape == (3, flatten(avg_e).numel())
        torch.testing.assert_close(flatten(avg_e), flatten(avg_r), atol=1e-7, rtol=0)
        torch.testing.assert_close(gap_e, gap_r, atol=1e-7, rtol=0)
        assert all(torch.equal(p[i], avg_e[n]) for n, p in eng.params.items() for i in range(3))


# ----------------------------------------------------------------------------- partitions and local momentum

HETERO = {"keep_dirichlet": {"partition": "dirichlet", "alpha": 0.5, "momentum": 0.9, "momentum_buffers": "keep"},
          "average": {"momentum": 0.9, "momentum_buffers": "average"}}


@pytest.fixture(scope="module")
def hetero_runs(tmp_path_factory, subset_file):
    """(simulated, distributed over 2 processes) run files of each HETERO variant of RUN."""
    cache = {}

    def get(variant):
        if variant not in cache:
            run = {**RUN, **HETERO[variant]}
            sim, dst = tmp_path_factory.mktemp(f"sim_{variant}"), tmp_path_factory.mktemp(f"dist_{variant}")
            _simulated(run, subset_file, sim)
            _distributed(2, run, subset_file, dst)
            cache[variant] = sim, dst
        return cache[variant]

    return get


@pytest.mark.parametrize("variant", HETERO)
def test_torchrun_matches_simulated_with_partitions_and_momentum(hetero_runs, variant):
    sim, dst = hetero_runs(variant)
    _assert_same_run(sim, dst)
    info = json.loads((dst / "out" / "run.json").read_text())
    assert {k: info[k] for k in HETERO[variant]} == HETERO[variant]
    if "alpha" in HETERO[variant]:  # the shards' label histograms, recorded
        counts = info["worker_label_counts"]
        assert len(counts) == RUN["K"] and sum(map(sum, counts)) == 600 == sum(info["worker_examples"])


def test_killed_torchrun_with_kept_momentum_resumes_to_identical_numbers(tmp_path, subset_file, hetero_runs):
    """Every worker's kept buffer is in rank 0's resume state: a SIGKILLed run ends bitwise equal to a clean one."""
    run = {**RUN, **HETERO["keep_dirichlet"]}
    cut = tmp_path / "cut"
    state = _kill_torchrun_mid_run(run, subset_file, cut)
    saved = torch.load(state, weights_only=False)
    assert 0 < saved["round"] < RUN["local_steps"] // RUN["tau"], "the kill must land mid-run"
    assert saved["momentum"].shape[0] == RUN["K"]
    _distributed(2, run, subset_file, cut)
    full = hetero_runs("keep_dirichlet")[1]
    a, b = _ckpts(full), _ckpts(cut)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[n]["theta"], b[n]["theta"]) and torch.equal(a[n]["gaps"], b[n]["gaps"]) for n in a)
    assert (full / "out" / "rounds.csv").read_text() == (cut / "out" / "rounds.csv").read_text()


@pytest.mark.parametrize("variant", ["average", "keep", "reset", "dirichlet_keep"])
def test_engine_in_one_process_matches_loop_reference_with_momentum(single_process_group, mnist_small, variant):
    """World size 1: momentum buffers and Dirichlet shards as the loop reference has them, and the resume state
    of the simulated engine installed and read back."""
    from sharpgaps.engine.localsgd import SimulatedLocalSGD

    extra = {"momentum": 0.9, "momentum_buffers": variant.replace("dirichlet_", "")}
    if variant.startswith("dirichlet"):
        extra.update(partition="dirichlet", alpha=0.5)
    spec = RunSpec(K=3, tau=3, b=20, lr=0.05, rounds=3, window=2, seed=5, checkpoints=(3,), **extra)
    m = models.build_model("fc_tanh", mnist_small["meta"], seed=0, widths=(32, 32))
    x, y = mnist_small["x_train"], mnist_small["y_train"]
    eng = DistributedLocalSGD(m, losses.mse_onehot, x, y, spec)
    ref = LoopLocalSGD(m, losses.mse_onehot, x, y, spec)
    sim = SimulatedLocalSGD(m, losses.mse_onehot, x, y, spec)
    for r in range(3):
        for s in range(spec.tau):
            eng.local_step(r * spec.tau + s), ref.local_step(r * spec.tau + s), sim.local_step(r * spec.tau + s)
        (avg_e, gap_e), (avg_r, gap_r), _ = eng.end_round(), ref.end_round(), sim.end_round()
        torch.testing.assert_close(flatten(avg_e), flatten(avg_r), atol=1e-7, rtol=0)
        torch.testing.assert_close(gap_e, gap_r, atol=1e-7, rtol=0)
    state = eng.momentum_state()
    if variant == "reset":
        assert state is None and sim.momentum_state() is None
        return
    torch.testing.assert_close(state, sim.momentum_state(), atol=1e-7, rtol=0)
    other = DistributedLocalSGD(m, losses.mse_onehot, x, y, spec)
    other.load_momentum_state(state)
    assert torch.equal(other.momentum_state(), state)
    assert torch.equal(torch.stack([flatten(bufs) for bufs in other.buffers]), state.expand(3, -1))

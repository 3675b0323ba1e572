import pytest
import torch

from sharpgaps.core.flat import flatten
from sharpgaps.core.specs import RunSpec
from sharpgaps.engine import losses, models
from sharpgaps.engine.localsgd import LoopLocalSGD, SimulatedLocalSGD, WorkerBatches, vmap_pays
from sharpgaps.engine.objective import Objective
from sharpgaps.engine.training import CKPT_DIR, DivergenceError, checkpoint_path, train_run

LOSS = losses.mse_onehot


def _model(subset, seed=0):
    return models.build_model("fc_tanh", subset["meta"], seed=seed, widths=(32, 32))


def _rounds(engine, spec, n):
    out = []
    for r in range(n):
        for s in range(spec.tau):
            engine.local_step(r * spec.tau + s)
        out.append(engine.end_round())
    return out


def test_batches_are_stateless_and_per_worker():
    a, b = WorkerBatches(100, 10, seed=1, workers=3), WorkerBatches(100, 10, seed=1, workers=3)
    assert torch.equal(a.indices(37), b.indices(37))  # no dependence on the query history
    idx = a.indices(0)
    assert not torch.equal(idx[0], idx[1])  # workers draw independently
    epoch = torch.cat([a.worker_indices(0, s) for s in range(10)])
    assert sorted(epoch.tolist()) == list(range(100))  # one epoch = a permutation (drop-last)


def test_vmapped_engine_matches_loop_reference(mnist_small):
    spec = RunSpec(K=4, tau=3, b=20, lr=0.1, rounds=3, window=2, seed=5, checkpoints=(3,))
    m = _model(mnist_small)
    fast = SimulatedLocalSGD(m, LOSS, mnist_small["x_train"], mnist_small["y_train"], spec)
    ref = LoopLocalSGD(m, LOSS, mnist_small["x_train"], mnist_small["y_train"], spec)
    for (avg_f, gap_f), (avg_r, gap_r) in zip(_rounds(fast, spec, 3), _rounds(ref, spec, 3)):
        torch.testing.assert_close(flatten(avg_f), flatten(avg_r), atol=1e-6, rtol=0)
        torch.testing.assert_close(gap_f, gap_r, atol=1e-6, rtol=0)


def test_per_worker_engine_is_the_loop_reference_bit_for_bit(mnist_small):
    spec = RunSpec(K=3, tau=2, b=20, lr=0.1, rounds=2, window=1, seed=4, checkpoints=(2,))
    m = _model(mnist_small)
    halve = lambda u: 0.5 * u  # an update transform goes through the same path
    per = SimulatedLocalSGD(m, LOSS, mnist_small["x_train"], mnist_small["y_train"], spec, vectorize=False,
                            update_transform=halve)
    ref = LoopLocalSGD(m, LOSS, mnist_small["x_train"], mnist_small["y_train"], spec, update_transform=halve)
    for (avg_p, gap_p), (avg_r, gap_r) in zip(_rounds(per, spec, 2), _rounds(ref, spec, 2)):
        assert torch.equal(flatten(avg_p), flatten(avg_r)) and torch.equal(gap_p, gap_r)


def test_engine_batches_workers_with_vmap_only_where_it_pays():
    assert vmap_pays(models.FCTanh(16, 3)) and not vmap_pays(models.CNNReLU((3, 8, 8), 3, channels=4))
    assert not vmap_pays(models.Transformer(20, 6, 2, dim=8, heads=2, layers=1, ff=16))


def test_gaps_sum_to_zero_and_are_nonzero(mnist_small):
    spec = RunSpec(K=5, tau=4, b=20, lr=0.1, rounds=2, window=2, seed=0, checkpoints=(2,))
    eng = SimulatedLocalSGD(_model(mnist_small), LOSS, mnist_small["x_train"], mnist_small["y_train"], spec)
    for avg, gaps in _rounds(eng, spec, 2):
        assert gaps.shape[0] == 5
        # exact in real arithmetic; in float32 the mean's rounding (~eps * |theta| per entry) remains
        bound = 5 * 2 * torch.finfo(torch.float32).eps * flatten(avg).abs().max()
        assert gaps.sum(0).abs().max() <= bound
        assert gaps.norm(dim=1).min() > 1e3 * bound


def test_k1_equals_plain_sgd(mnist_small):
    """With one worker, averaging is the identity: Local SGD is plain SGD on that worker's batches."""
    spec = RunSpec(K=1, tau=4, b=25, lr=0.1, rounds=3, window=1, seed=2, checkpoints=(3,))
    m = _model(mnist_small)
    eng = SimulatedLocalSGD(m, LOSS, mnist_small["x_train"], mnist_small["y_train"], spec)
    results = _rounds(eng, spec, 3)
    plain = _model(mnist_small)
    opt = torch.optim.SGD(plain.parameters(), lr=spec.lr)
    batches = WorkerBatches(len(mnist_small["x_train"]), spec.b, spec.seed, 1)
    for step in range(12):
        idx = batches.worker_indices(0, step)
        opt.zero_grad()
        LOSS(plain(mnist_small["x_train"][idx]), mnist_small["y_train"][idx]).backward()
        opt.step()
    avg, gaps = results[-1]
    assert torch.equal(gaps, torch.zeros_like(gaps))
    torch.testing.assert_close(flatten(avg), flatten(dict(plain.named_parameters())).detach(), atol=1e-6, rtol=0)
    # and exactly equal to the loop reference (plain autograd SGD, same batches)
    ref = LoopLocalSGD(_model(mnist_small), LOSS, mnist_small["x_train"], mnist_small["y_train"], spec)
    ref_avg, _ = _rounds(ref, spec, 3)[-1]
    assert torch.equal(flatten(ref_avg), flatten(dict(plain.named_parameters())).detach())


def _train(tmp, subset, spec, **kw):
    return train_run(Objective.from_subset(_model(subset), LOSS, subset), spec, tmp, progress=False, **kw)


SPEC = RunSpec(K=4, tau=2, b=20, lr=0.1, rounds=9, window=3, seed=11, checkpoints=(3, 6, 9))


def _load_all(paths):
    return [torch.load(p, weights_only=False) for p in paths]


def test_same_seed_same_numbers(tmp_path, mnist_small):
    pa, pb = _train(tmp_path / "a", mnist_small, SPEC), _train(tmp_path / "b", mnist_small, SPEC)
    assert [p.read_bytes() for p in pa] == [p.read_bytes() for p in pb]  # byte-identical files
    a, b = _load_all(pa), _load_all(pb)
    for x, y in zip(a, b):
        assert torch.equal(x["theta"], y["theta"]) and torch.equal(x["gaps"], y["gaps"])
        assert x["metrics"] == y["metrics"]


def test_checkpoint_contents(tmp_path, mnist_small):
    ck = _load_all(_train(tmp_path, mnist_small, SPEC))
    assert [c["round"] for c in ck] == [3, 6, 9]
    d = sum(torch.Size(s).numel() for s in ck[0]["param_shapes"])
    assert ck[1]["gaps"].shape == (3, 4, d) and ck[1]["gap_rounds"] == [4, 5, 6]
    assert ck[1]["theta"].shape == (d,)
    assert set(ck[0]["metrics"]) >= {"train_loss", "train_acc", "test_loss", "test_acc"}
    assert (tmp_path / "metrics.csv").exists() and (tmp_path / "rounds.csv").exists()


@pytest.mark.parametrize("kill_at", [1, 4, 6])
def test_kill_and_resume_is_bitwise_identical(tmp_path, mnist_small, kill_at):
    full = _load_all(_train(tmp_path / "full", mnist_small, SPEC))
    assert _train(tmp_path / "cut", mnist_small, SPEC, stop_after_round=kill_at) == []
    assert (tmp_path / "cut" / "state.pt").exists()
    resumed = _load_all(_train(tmp_path / "cut", mnist_small, SPEC))
    for x, y in zip(full, resumed):
        assert torch.equal(x["theta"], y["theta"]) and torch.equal(x["gaps"], y["gaps"])
        assert x["metrics"] == y["metrics"]
    assert (tmp_path / "full/rounds.csv").read_text() == (tmp_path / "cut/rounds.csv").read_text()


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_finished_run_with_a_damaged_work_checkpoint_trains_again(tmp_path, mnist_small, capfd, damage):
    """A rerun of a finished run republishes its work copies only if they are the files it wrote."""
    first = [p.read_bytes() for p in _train(tmp_path, mnist_small, SPEC)]
    victim = tmp_path / "ckpt" / "r000006.pt"
    if damage == "truncate":
        victim.write_bytes(first[1][:1000])
    else:
        victim.unlink()
    again = _train(tmp_path, mnist_small, SPEC)
    assert "missing or altered: training again from round 0" in capfd.readouterr().err
    assert [p.read_bytes() for p in again] == first


def test_readers_refuse_checkpoints_the_manifest_does_not_vouch_for(tmp_path, mnist_small):
    from sharpgaps.engine.training import CheckpointsInvalid, verified_checkpoints, write_manifest

    published = tmp_path / "out" / "ckpt"
    published.mkdir(parents=True)
    for p in _train(tmp_path / "work", mnist_small, SPEC):
        published.joinpath(p.name).write_bytes(p.read_bytes())
    write_manifest(published)
    assert [p.name for p in verified_checkpoints(published, SPEC.checkpoints)] == [
        "r000003.pt", "r000006.pt", "r000009.pt"]
    with pytest.raises(CheckpointsInvalid, match=r"round 12 \(r000012.pt\) is not in the manifest"):
        verified_checkpoints(published, (*SPEC.checkpoints, 12))  # a round the spec implies but train never wrote
    (published / "r000006.pt").unlink()
    (published / "r000009.pt").write_bytes(b"")
    with pytest.raises(CheckpointsInvalid) as err:
        verified_checkpoints(published, SPEC.checkpoints)
    assert "round 6 (r000006.pt) is missing" in str(err.value) and "round 9 (r000009.pt) differs" in str(err.value)
    assert f"--forcerun {tmp_path / 'out' / 'checkpoints.json'}" in str(err.value)
    (tmp_path / "out" / "checkpoints.json").unlink()
    with pytest.raises(CheckpointsInvalid, match="unreadable checkpoint manifest"):
        verified_checkpoints(published, SPEC.checkpoints)


def _cli_train(subset_file, out, run, resume_every_s: float = 0, **popen):
    """The train CLI as a job runs it; ``resume_every_s: 0`` saves the resume state every round."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "sharpgaps", "train", "--run", json.dumps(run), "--subset", str(subset_file),
           "--out-dir", str(out / "out"), "--work-dir", str(out / "work"), "--threads", "1",
           "--resume-every-s", str(resume_every_s)]
    return subprocess.Popen(cmd, stderr=subprocess.DEVNULL, **popen)


def test_resume_survives_a_real_kill(tmp_path, mnist_small):
    """SIGKILL the training CLI mid-run; restarting it must end with the uninterrupted run's numbers."""
    import time

    from sharpgaps.core.atomic import save_torch

    subset_file = tmp_path / "subset.pt"
    save_torch(mnist_small, subset_file)
    run = {"K": 4, "tau": 2, "b": 20, "lr": 0.1, "local_steps": 1200, "window": 2, "seed": 3, "loss": "mse",
           "model": "fc_tanh", "arch": {"widths": [32, 32]}, "checkpoints": {"rounds": [300, 600]}}
    proc = _cli_train(subset_file, tmp_path / "cut", run)
    state = tmp_path / "cut" / "work" / "state.pt"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    killed_at = torch.load(state, weights_only=False)["round"]
    assert 0 < killed_at < 600, "the kill must land mid-run for this test to mean anything"
    assert not (tmp_path / "cut/out/run.json").exists()  # nothing half-done is published
    # the rest of the run, and the uninterrupted one, save their state rarely (a save per round is what costs here):
    # the numbers may not depend on when the state was saved
    assert _cli_train(subset_file, tmp_path / "cut", run, resume_every_s=60).wait() == 0
    assert _cli_train(subset_file, tmp_path / "full", run, resume_every_s=60).wait() == 0
    for r in (300, 600):
        x = torch.load(tmp_path / f"full/out/ckpt/r{r:06d}.pt", weights_only=False)
        y = torch.load(tmp_path / f"cut/out/ckpt/r{r:06d}.pt", weights_only=False)
        assert torch.equal(x["theta"], y["theta"]) and torch.equal(x["gaps"], y["gaps"])
    assert (tmp_path / "full/out/metrics.csv").read_text() == (tmp_path / "cut/out/metrics.csv").read_text()


def test_divergence_names_run_and_round(tmp_path, mnist_small):
    spec = RunSpec(K=2, tau=2, b=20, lr=1e6, rounds=5, window=1, seed=0, checkpoints=(5,))
    with pytest.raises(DivergenceError, match=r"run .mnist_fc/bad. diverged in round \d+ .*minibatch loss \[.*(nan|inf).*lr=1000000"):
        train_run(Objective.from_subset(_model(mnist_small), LOSS, mnist_small), spec, tmp_path, run_name="mnist_fc/bad", progress=False)
    assert not checkpoint_path(tmp_path / CKPT_DIR, 5).exists()


@pytest.mark.parametrize("name,meta", [
    ("cnn_relu", {"n_classes": 10, "input_shape": [3, 8, 8]}),
    ("transformer", {"n_classes": 2, "input_shape": [10], "vocab_size": 30, "max_len": 10}),
])
def test_other_models_vmapped_match_loop(name, meta):
    g = torch.Generator().manual_seed(0)
    if name == "transformer":
        x = torch.randint(1, 30, (64, 10), generator=g)
        x[::2, 6:] = 0
    else:
        x = torch.randn(64, 3, 8, 8, generator=g)
    y = torch.randint(0, meta["n_classes"], (64,), generator=g)
    m = models.build_model(name, meta, 0, **({"ff": 32} if name == "transformer" else {}))
    spec = RunSpec(K=3, tau=2, b=8, lr=0.05, rounds=2, window=1, seed=0, checkpoints=(2,))
    fast = SimulatedLocalSGD(m, LOSS, x, y, spec, vectorize=True)  # vmap even where the default loops
    ref = LoopLocalSGD(m, LOSS, x, y, spec)
    for (af, gf), (ar, gr) in zip(_rounds(fast, spec, 2), _rounds(ref, spec, 2)):
        torch.testing.assert_close(flatten(af), flatten(ar), atol=1e-6, rtol=0)
        torch.testing.assert_close(gf, gr, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- partitions and local momentum

# sha256 of every checkpoint's average and gaps of _train(SPEC) (the default vmapped engine, torch threads 1 or 2
# alike), computed with the engine before partitions and momentum existed. The iid, momentum-0 path must keep it.
DEFAULT_RUN_SHA256 = "dfe29685c0e935837579d357c08814cc89c2a0ec9da98538d5aede60d9eff30b"
TORCH_OF_SHA256 = "2.13.0+cpu"  # another torch build may round a kernel differently: the constant is this one's


def _digest(paths):
    import hashlib

    h = hashlib.sha256()
    for c in _load_all(paths):
        h.update(c["theta"].numpy().tobytes())
        h.update(c["gaps"].numpy().tobytes())
    return h.hexdigest()


def test_default_run_reproduces_the_numbers_before_partitions_and_momentum(tmp_path, mnist_small):
    if torch.__version__ != TORCH_OF_SHA256:
        pytest.skip(f"DEFAULT_RUN_SHA256 was computed with torch {TORCH_OF_SHA256}, this is {torch.__version__}")
    assert _digest(_train(tmp_path, mnist_small, SPEC)) == DEFAULT_RUN_SHA256


def test_explicit_iid_and_zero_momentum_are_the_defaults(tmp_path, mnist_small):
    from dataclasses import replace

    from sharpgaps.core import grid

    explicit = replace(SPEC, partition="iid", alpha=None, momentum=0, momentum_buffers="keep")
    assert explicit == SPEC and explicit.as_dict() == SPEC.as_dict()  # no buffer policy without momentum
    assert [p.read_bytes() for p in _train(tmp_path / "a", mnist_small, SPEC)] == \
        [p.read_bytes() for p in _train(tmp_path / "b", mnist_small, explicit)]
    run = {"K": 4, "tau": 2, "b": 20, "lr": 0.1, "loss": "mse", "local_steps": 18, "window": 3, "seed": 11}
    assert grid.run_id({**run, "partition": "iid", "alpha": None, "momentum": 0.0, "momentum_buffers": "reset"}) \
        == grid.run_id(run) == "K4_tau2_b20_lr0.1_mse_T18_W3_s11"


MOMENTUM = {"momentum": 0.9}
DIRICHLET = {"partition": "dirichlet", "alpha": 0.5}
VARIANTS = {"mom_average": {**MOMENTUM, "momentum_buffers": "average"}, "mom_keep": {**MOMENTUM, "momentum_buffers": "keep"},
            "mom_reset": {**MOMENTUM, "momentum_buffers": "reset"}, "dirichlet": DIRICHLET,
            "dirichlet_mom_keep": {**DIRICHLET, **MOMENTUM, "momentum_buffers": "keep"}}


@pytest.mark.parametrize("variant", VARIANTS)
def test_engines_agree_with_partitions_and_momentum(mnist_small, variant):
    """vmap to float rounding, the per-worker path bit for bit (with an update transform), against the loop
    reference, over rounds where the buffers cross averagings."""
    from dataclasses import replace

    spec = replace(RunSpec(K=4, tau=3, b=20, lr=0.05, rounds=3, window=2, seed=5, checkpoints=(3,)), **VARIANTS[variant])
    x, y, m = mnist_small["x_train"], mnist_small["y_train"], _model(mnist_small)
    fast, ref = SimulatedLocalSGD(m, LOSS, x, y, spec, vectorize=True), LoopLocalSGD(m, LOSS, x, y, spec)
    for (avg_f, gap_f), (avg_r, gap_r) in zip(_rounds(fast, spec, 3), _rounds(ref, spec, 3)):
        torch.testing.assert_close(flatten(avg_f), flatten(avg_r), atol=1e-6, rtol=0)
        torch.testing.assert_close(gap_f, gap_r, atol=1e-6, rtol=0)
    halve = lambda u: 0.5 * u  # noqa: E731
    per = SimulatedLocalSGD(m, LOSS, x, y, spec, vectorize=False, update_transform=halve)
    ref = LoopLocalSGD(m, LOSS, x, y, spec, update_transform=halve)
    for (avg_p, gap_p), (avg_r, gap_r) in zip(_rounds(per, spec, 3), _rounds(ref, spec, 3)):
        assert torch.equal(flatten(avg_p), flatten(avg_r)) and torch.equal(gap_p, gap_r)


def test_one_worker_with_momentum_is_torch_sgd_with_momentum(mnist_small):
    """K=1: Local SGD with heavy-ball momentum is torch.optim.SGD(momentum=mu) on that worker's batches, exactly."""
    x, y = mnist_small["x_train"], mnist_small["y_train"]
    for policy in ("average", "keep"):  # one worker: averaging the buffer keeps it
        spec = RunSpec(K=1, tau=4, b=25, lr=0.05, rounds=3, window=1, seed=2, checkpoints=(3,), momentum=0.9,
                       momentum_buffers=policy)
        plain = _model(mnist_small)
        opt = torch.optim.SGD(plain.parameters(), lr=spec.lr, momentum=0.9)
        batches = WorkerBatches(len(x), spec.b, spec.seed, 1)
        for step in range(12):
            idx = batches.worker_indices(0, step)
            opt.zero_grad()
            LOSS(plain(x[idx]), y[idx]).backward()
            opt.step()
        want = flatten(dict(plain.named_parameters())).detach()
        ref_avg, _ = _rounds(LoopLocalSGD(_model(mnist_small), LOSS, x, y, spec), spec, 3)[-1]
        assert torch.equal(flatten(ref_avg), want)
        avg, _ = _rounds(SimulatedLocalSGD(_model(mnist_small), LOSS, x, y, spec), spec, 3)[-1]
        torch.testing.assert_close(flatten(avg), want, atol=1e-6, rtol=0)


def test_momentum_buffers_at_averaging(mnist_small):
    """The first round is the same for every policy (gaps are taken before averaging); then the buffers are the
    workers' mean, each worker's own, or zero, and the next round differs."""
    x, y = mnist_small["x_train"], mnist_small["y_train"]
    out = {}
    for policy in ("average", "keep", "reset"):
        spec = RunSpec(K=3, tau=3, b=20, lr=0.05, rounds=2, window=1, seed=1, checkpoints=(2,), momentum=0.9,
                       momentum_buffers=policy)
        eng = SimulatedLocalSGD(_model(mnist_small), LOSS, x, y, spec)
        for s in range(3):
            eng.local_step(s)
        before = flatten(eng.buffers, batch_dims=1).clone()
        first = eng.end_round()
        after = flatten(eng.buffers, batch_dims=1)
        want = {"average": before.mean(0).expand_as(before), "keep": before, "reset": torch.zeros_like(before)}[policy]
        assert torch.equal(after, want), policy
        out[policy] = first, _rounds(eng, spec, 1)[0]
    for policy in ("keep", "reset"):
        assert torch.equal(out[policy][0][1], out["average"][0][1])  # round 1's gaps
        assert not torch.equal(out[policy][1][1], out["average"][1][1])  # round 2's
    mom0 = SimulatedLocalSGD(_model(mnist_small), LOSS, x, y, RunSpec(K=3, tau=3, b=20, lr=0.05, rounds=2, window=1,
                                                                       seed=1, checkpoints=(2,)))
    assert mom0.buffers is None  # plain SGD: no buffer at all


def test_shard_batches_stay_in_each_shard_and_are_stateless(mnist_small):
    from sharpgaps.engine.localsgd import ShardBatches, worker_batches

    spec = RunSpec(K=4, tau=2, b=20, lr=0.1, rounds=2, window=1, seed=3, checkpoints=(2,), **DIRICHLET)
    y = mnist_small["y_train"]
    a, b = worker_batches(spec, y), worker_batches(spec, y)
    assert isinstance(a, ShardBatches) and torch.equal(a.indices(57), b.indices(57))  # no query history
    for w, shard in enumerate(a.shards):
        steps = len(shard) // spec.b
        epoch = torch.cat([a.worker_indices(w, s) for s in range(steps)])
        assert set(epoch.tolist()) <= set(shard.tolist()) and len(set(epoch.tolist())) == steps * spec.b
        again = torch.cat([a.worker_indices(w, s) for s in range(steps, 2 * steps)])
        assert not torch.equal(epoch, again) and set(again.tolist()) <= set(shard.tolist())  # a fresh permutation
    iid = worker_batches(RunSpec(K=4, tau=2, b=20, lr=0.1, rounds=2, window=1, seed=3, checkpoints=(2,)), y)
    assert type(iid) is WorkerBatches and torch.equal(iid.indices(5), WorkerBatches(len(y), 20, 3, 4).indices(5))


@pytest.mark.parametrize("variant", ["mom_average", "mom_keep", "dirichlet_mom_keep"])
def test_kill_and_resume_with_momentum_is_bitwise_identical(tmp_path, mnist_small, variant):
    from dataclasses import replace

    spec = replace(SPEC, **VARIANTS[variant])
    full = _load_all(_train(tmp_path / "full", mnist_small, spec))
    _train(tmp_path / "cut", mnist_small, spec, stop_after_round=4)
    saved = torch.load(tmp_path / "cut" / "state.pt", weights_only=False)["momentum"]
    assert saved.shape == ((4, full[0]["theta"].numel()) if spec.momentum_buffers == "keep"
                           else (full[0]["theta"].numel(),))
    resumed = _load_all(_train(tmp_path / "cut", mnist_small, spec))
    for x, y in zip(full, resumed):
        assert torch.equal(x["theta"], y["theta"]) and torch.equal(x["gaps"], y["gaps"])
        assert x["metrics"] == y["metrics"] and x["run"] == y["run"]
    assert full[0]["run"]["momentum_buffers"] == spec.momentum_buffers
    assert (tmp_path / "full/rounds.csv").read_text() == (tmp_path / "cut/rounds.csv").read_text()


def test_partition_that_cannot_hold_a_batch_is_refused_before_training(tmp_path, mnist_small):
    from sharpgaps.engine.partitions import PartitionError

    spec = RunSpec(K=8, tau=2, b=70, lr=0.1, rounds=2, window=1, seed=0, checkpoints=(2,), partition="dirichlet",
                   alpha=0.05)
    with pytest.raises(PartitionError, match=r"train.alpha: .*at least b=70.*raise train.alpha.*lower train.b"):
        _train(tmp_path, mnist_small, spec)
    assert not (tmp_path / CKPT_DIR).exists() and not (tmp_path / "state.pt").exists()

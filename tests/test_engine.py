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


def _cli_train(subset_file, out, run, **popen):
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "sharpgaps", "train", "--run", json.dumps(run), "--subset", str(subset_file),
           "--out-dir", str(out / "out"), "--work-dir", str(out / "work"), "--threads", "1", "--resume-every-s", "0"]
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
    assert _cli_train(subset_file, tmp_path / "cut", run).wait() == 0
    assert _cli_train(subset_file, tmp_path / "full", run).wait() == 0
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

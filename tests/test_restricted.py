"""Dom/Bulk (Hessian) and gap-Dom/gap-Bulk restricted Local SGD."""

import pytest
import torch

from sharpgaps.core.flat import flatten
from sharpgaps.core.specs import RunSpec
from sharpgaps.engine import losses, models
from sharpgaps.engine.localsgd import LoopLocalSGD, SimulatedLocalSGD
from sharpgaps.engine.objective import Objective
from sharpgaps.engine.training import CKPT_DIR, checkpoint_path, train_run
from sharpgaps.studies.restricted import RestrictSpec, project, restricted_run

LOSS = losses.mse_onehot


def _orthonormal(d, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0]


def test_projection_properties():
    d, k = 500, 7
    V = _orthonormal(d, k)
    u = torch.randn(3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dom, bulk = project(u, V, True), project(u, V, False)
    assert (dom - (dom @ V) @ V.T).abs().max() < 1e-8  # Dom: nothing outside span(V)
    assert (bulk @ V).abs().max() < 1e-8  # Bulk: nothing inside span(V)
    assert torch.allclose(dom + bulk, u, atol=1e-12)
    empty = torch.zeros(d, 0, dtype=torch.float64)
    assert torch.equal(project(u, empty, False), u) and torch.equal(project(u, None, False), u)
    assert torch.equal(project(u, empty, True), torch.zeros_like(u))


@pytest.fixture(scope="module")
def setup(mnist_small):
    model = models.build_model("fc_tanh", mnist_small["meta"], seed=0, widths=(24, 24))
    spec = RunSpec(K=4, tau=3, b=25, lr=0.1, rounds=4, window=1, seed=0, checkpoints=(4,))
    return model, spec


@pytest.mark.parametrize("keep_inside", [True, False])
def test_restricted_engine_steps_stay_in_their_subspace(setup, mnist_small, keep_inside):
    """Every worker's displacement over a round is Dom (inside span V) or Bulk (orthogonal to it).

    Run in float64 so the check measures the projection, not float32 storage of the parameters."""
    import copy

    _, spec = setup
    model = copy.deepcopy(setup[0]).double()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    d = sum(p.numel() for p in theta0.values())
    V = _orthonormal(d, 5)
    eng = SimulatedLocalSGD(model, LOSS, mnist_small["x_train"].double(), mnist_small["y_train"], spec,
                            theta=theta0, update_transform=lambda u: project(u, V, keep_inside))
    for s in range(spec.tau):
        eng.local_step(s)
    moves = flatten(eng.params, batch_dims=1) - flatten(theta0)
    inside = (moves @ V) @ V.T
    assert moves.norm() > 1e-3
    leak = (moves - inside) if keep_inside else inside
    assert leak.abs().max() < 1e-8


def test_empty_basis_bulk_equals_plain_local_sgd(setup, mnist_small):
    model, spec = setup
    x, y = mnist_small["x_train"], mnist_small["y_train"]
    plain = SimulatedLocalSGD(model, LOSS, x, y, spec)
    bulk = SimulatedLocalSGD(model, LOSS, x, y, spec, update_transform=lambda u: project(u, None, False))
    loop = LoopLocalSGD(model, LOSS, x, y, spec, update_transform=lambda u: project(u, None, False))
    loop_plain = LoopLocalSGD(model, LOSS, x, y, spec)
    for s in range(6):
        for e in (plain, bulk, loop, loop_plain):
            e.local_step(s)
    assert torch.equal(flatten(plain.params, 1), flatten(bulk.params, 1))
    assert torch.equal(flatten(loop.params, 1), flatten(loop_plain.params, 1))


def test_gap_subspace_restriction_with_synthetic_basis(setup, mnist_small):
    """Gap restriction uses the same projection: a synthetic U behaves like V."""
    model, spec = setup
    d = sum(p.numel() for p in model.parameters())
    U = _orthonormal(d, 3, seed=5).float()
    x, y = mnist_small["x_train"], mnist_small["y_train"]
    fast = SimulatedLocalSGD(model, LOSS, x, y, spec, update_transform=lambda u: project(u, U, False))
    ref = LoopLocalSGD(model, LOSS, x, y, spec, update_transform=lambda u: project(u, U, False))
    for s in range(spec.tau):
        fast.local_step(s), ref.local_step(s)
    torch.testing.assert_close(flatten(fast.params, 1), flatten(ref.params, 1), atol=1e-6, rtol=0)
    _, gaps = fast.end_round()
    assert ((gaps.double() @ U.double())).abs().max() < 1e-5 * gaps.abs().max()


@pytest.fixture(scope="module")
def parent(tmp_path_factory, mnist_small):
    work = tmp_path_factory.mktemp("parent")
    model = models.build_model("fc_tanh", mnist_small["meta"], seed=0, widths=(24, 24))
    spec = RunSpec(K=4, tau=3, b=25, lr=0.1, rounds=12, window=2, seed=0, checkpoints=(6, 12))
    train_run(Objective.from_subset(model, LOSS, mnist_small), spec, work, progress=False)
    return model, spec, work


def _branch(parent, mode, tmp, **kw):
    model, spec, work = parent
    ck = torch.load(checkpoint_path(work / CKPT_DIR, 6), weights_only=False)
    rs = RestrictSpec(mode=mode, rounds=6, refresh=3, eval_every=3, k=10, m=4, window=2, **kw)
    return restricted_run(_objective(model, rs), rs, ck, spec, tmp, progress=False)


class parent_subset:
    s = None


def _objective(model, rs: RestrictSpec) -> Objective:
    """The parent run's objective with the restricted spec's Hessian sample."""
    return Objective.from_subset(model, LOSS, parent_subset.s, hessian_examples=rs.hessian_examples)


@pytest.fixture(autouse=True)
def _subset(mnist_small):
    parent_subset.s = mnist_small


def test_none_mode_continues_the_parent_run_bit_for_bit(parent, tmp_path):
    _branch(parent, "none", tmp_path)
    theta = flatten(torch.load(tmp_path / "state.pt", weights_only=False)["theta"])
    assert torch.equal(theta, torch.load(checkpoint_path(parent[2] / CKPT_DIR, 12), weights_only=False)["theta"])


@pytest.mark.parametrize("mode", ["dom", "bulk", "gapdom", "gapbulk", "graddom", "gradbulk"])
def test_modes_run_and_account_their_cost(parent, tmp_path, mode):
    df = _branch(parent, mode, tmp_path)
    assert list(df["round"]) == [0, 3, 6]
    last = df.iloc[-1]
    if mode in ("dom", "bulk"):
        assert last.n_hvp > 0 and last.probe_steps == 0
    else:
        assert last.n_hvp == 0 and last.probe_steps == 2 * 2 * 3  # 2 refreshes x window 2 x tau 3
    assert last.refreshes == 2


def test_restricted_resume_is_bitwise(parent, tmp_path):
    full = _branch(parent, "bulk", tmp_path / "full")
    model, spec, work = parent
    ck = torch.load(checkpoint_path(work / CKPT_DIR, 6), weights_only=False)
    rs = RestrictSpec(mode="bulk", rounds=6, refresh=3, eval_every=3, k=10, m=4, window=2)
    restricted_run(_objective(model, rs), rs, ck, spec, tmp_path / "cut", stop_after_round=4, progress=False)
    resumed = restricted_run(_objective(model, rs), rs, ck, spec, tmp_path / "cut", progress=False)
    cols = ["round", "train_loss", "test_loss", "train_acc", "n_hvp"]
    assert full[cols].equals(resumed[cols])


def test_random_control_with_an_empty_basis_is_plain_local_sgd_bit_for_bit(parent, tmp_path):
    """random-Bulk with a 0-dim random subspace (k = 0) runs the projection path and still equals `none`."""
    _branch(parent, "none", tmp_path / "none")
    model, spec, work = parent
    ck = torch.load(checkpoint_path(work / CKPT_DIR, 6), weights_only=False)
    rs = RestrictSpec(mode="randbulk", rounds=6, refresh=3, eval_every=3, k=0)
    df = restricted_run(_objective(model, rs), rs, ck, spec, tmp_path / "rand", progress=False)
    a = flatten(torch.load(tmp_path / "none" / "state.pt", weights_only=False)["theta"])
    b = flatten(torch.load(tmp_path / "rand" / "state.pt", weights_only=False)["theta"])
    assert df.iloc[-1].refreshes == 2 and torch.equal(a, b)


@pytest.mark.parametrize("mode", ["randdom", "randbulk"])
def test_random_modes_are_seeded_random_subspaces_of_doms_dimension(parent, mnist_small, mode):
    from sharpgaps.studies.restricted import Restricted

    model, spec, work = parent
    theta = dict(model.named_parameters())
    rs = RestrictSpec(mode=mode, rounds=6, refresh=3, k=10)
    bases = []
    for _ in range(2):
        ctl = Restricted(rs, Objective.from_subset(model, LOSS, mnist_small, hessian_examples=rs.hessian_examples), spec)
        ctl.refresh(theta)
        first = ctl.basis.clone()
        ctl.refresh(theta)
        bases.append((first, ctl.basis.clone()))
    (a1, a2), (b1, b2) = bases
    d = sum(p.numel() for p in model.parameters())
    assert a1.shape == (d, 10) and torch.allclose(a1.T @ a1, torch.eye(10), atol=1e-5)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)  # same seed, same subspaces
    assert (a1.T @ a2).abs().max() < 0.2  # a fresh draw at each refresh
    u = torch.randn(4, d, generator=torch.Generator().manual_seed(3))
    out = ctl.transform(u)
    inside = (out @ b2) @ b2.T
    leak = (out - inside) if mode == "randdom" else inside
    assert leak.abs().max() < 1e-4 * u.abs().max()


def test_gradient_history_modes_use_gap_doms_probe_gradients(parent, mnist_small):
    """graddom/gradbulk: S = the gradient-history estimator of the probe rounds' last K*W minibatch gradients,
    from the very probe gap-Dom runs (same batches, so the gap and gradient subspaces are paired); the probe's
    recording leaves its trajectory (the gaps) unchanged bit for bit."""
    from sharpgaps.core import seeds
    from sharpgaps.core.specs import RunSpec
    from sharpgaps.studies.estimators import gradient_estimate, replay
    from sharpgaps.studies.restricted import Restricted

    model, spec, work = parent
    x, y = mnist_small["x_train"], mnist_small["y_train"]
    theta = {n: p.detach() for n, p in model.named_parameters()}
    rs = dict(rounds=6, refresh=3, k=10, m=4, window=2)
    grad = Restricted(RestrictSpec(mode="graddom", **rs), Objective(model, LOSS, x, y), spec)
    gap = Restricted(RestrictSpec(mode="gapdom", **rs), Objective(model, LOSS, x, y), spec)
    grad.refresh(theta)
    gap.refresh(theta)
    assert grad.basis.shape == (flatten(theta).numel(), 4) and grad.probe_steps == gap.probe_steps == 2 * spec.tau
    # the same probe replayed by hand: the workers' gradients of its last window=2 local steps (K*W = 2K rows)
    probe = RunSpec(K=spec.K, tau=spec.tau, b=spec.b, lr=spec.lr, rounds=1, window=1,
                    seed=seeds.offset(spec.seed, seeds.PROBE), checkpoints=())
    out = replay(Objective(model, LOSS, x, y), probe, flatten(theta), 0, 2, grad_steps=2)
    assert out["grads"].shape[0] == 2 * spec.K
    S = gradient_estimate(out["grads"])[:, :4].to(torch.float32)
    assert torch.allclose((grad.basis.T @ S).abs(), torch.eye(4), atol=1e-4)
    assert (gap.basis.T @ grad.basis).norm() ** 2 < 4 - 1e-3  # a different subspace from the gaps'
    u = torch.randn(3, grad.basis.shape[0], generator=torch.Generator().manual_seed(1))
    assert torch.allclose(grad.transform(u), (u @ grad.basis) @ grad.basis.T)


def test_every_mode_has_one_table_entry():
    from sharpgaps.core.specs import ALL_MODES
    from sharpgaps.studies.restricted import MODE_TABLE

    assert set(MODE_TABLE) == set(ALL_MODES)
    for name, mode in MODE_TABLE.items():
        assert (mode.source is None) == (name == "none")
        assert name == "none" or mode.keep_inside == name.endswith("dom")
        assert mode.eigensolves == (name in ("dom", "bulk"))


def test_setting_scope_branches_every_seed_on_the_mean_chi_k():
    """Seeds whose own rules pick different rounds (here 8 and 32) share one branch round: the mean's."""
    import pandas as pd

    from sharpgaps.core.specs import BranchSpec
    from sharpgaps.pipeline.jobs import mean_chi_k

    def table(chi):
        return pd.DataFrame({"round": list(chi), "metric": "chi_k", "value": list(chi.values())})

    seeds = [{4: 0.5, 8: 0.95, 16: 0.96, 32: 0.97}, {4: 0.4, 8: 0.7, 16: 0.93, 32: 0.95}]
    own = [BranchSpec(branch_scope="seed").choose([4, 8, 16, 32], 32, c)[0] for c in seeds]
    assert own == [16, 32]
    mean = mean_chi_k([table(c) for c in seeds])
    assert mean == pytest.approx({4: 0.45, 8: 0.825, 16: 0.945, 32: 0.96})
    assert BranchSpec().choose([4, 8, 16, 32], 32, mean) == (32, "chi_k >= 0.9 at 2 checkpoints in a row")
    # a round one table lacks is left out, so the rule names it instead of averaging fewer seeds
    short = mean_chi_k([table(seeds[0]), table({r: v for r, v in seeds[1].items() if r != 32})])
    with pytest.raises(ValueError, match="no chi_k at checkpoint rounds \\[32\\]"):
        BranchSpec().choose([4, 8, 16, 32], 32, short)

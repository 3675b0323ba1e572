import math

import pytest
import torch

from sharpgaps.core.specs import RunSpec
from sharpgaps.data.subsets import make_subset
from sharpgaps.engine import losses, models
from sharpgaps.engine.localsgd import SimulatedLocalSGD, evaluate

META = {
    "fc_tanh": {"n_classes": 10, "input_shape": [1, 28, 28]},
    "cnn_relu": {"n_classes": 10, "input_shape": [3, 32, 32]},
    "transformer": {"n_classes": 2, "input_shape": [12], "vocab_size": 50, "max_len": 12},
}


def _inputs(name, n=6):
    g = torch.Generator().manual_seed(0)
    if name == "transformer":
        x = torch.randint(2, 50, (n, 12), generator=g)
        x[:, 8:] = 0  # padding
        return x
    return torch.randn(n, *META[name]["input_shape"], generator=g)


def test_parameter_counts_match_design():
    assert sum(p.numel() for p in models.build_model("fc_tanh", META["fc_tanh"], 0).parameters()) == 199_210
    assert sum(p.numel() for p in models.build_model("cnn_relu", META["cnn_relu"], 0).parameters()) == 30_634
    tf = models.build_model("transformer", {**META["transformer"], "vocab_size": 7824, "max_len": 50}, 0)
    # 7824*64 embedding + 2 x (qkv 12480 + proj 4160 + ff 2*64*2048+2048+64 + 2 LayerNorms 256) + head 130
    assert sum(p.numel() for p in tf.parameters()) == 7824 * 64 + 2 * (12480 + 4160 + 264256 + 256) + 130


@pytest.mark.parametrize("name", list(META))
def test_output_shape_and_seeded_init(name):
    a, b = models.build_model(name, META[name], 7), models.build_model(name, META[name], 7)
    x = _inputs(name)
    assert a(x).shape == (6, META[name]["n_classes"])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_transformer_ignores_padding():
    m = models.build_model("transformer", META["transformer"], 0)
    x = _inputs("transformer")
    y = x.clone()
    y[:, 10:] = 0  # more padding beyond the real tokens (already pad) changes nothing
    assert torch.allclose(m(x), m(y))
    short = x[:, :8]  # dropping the padded positions changes nothing either
    assert torch.allclose(m(x), m(short), atol=1e-6)


def test_transformer_gives_finite_outputs_and_gradients_for_an_empty_text():
    """An all-padding row gets the output bias (nothing pooled) with finite gradients, and the other rows' outputs are
    what they are without it (an empty row used to make the whole loss NaN)."""
    m = models.build_model("transformer", META["transformer"], 0)
    x = _inputs("transformer")
    with_empty = torch.cat([x, torch.zeros_like(x[:1])])
    out = m(with_empty)
    assert torch.isfinite(out).all() and torch.allclose(out[-1], m.out.bias)
    assert torch.equal(out[:-1], m(x)) or torch.allclose(out[:-1], m(x), atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), list(m.parameters()), allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


def _ragged(n=40, seed=1):
    """Token rows of random real lengths 1..12 (trailing padding), in random order."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, 50, (n, 12), generator=g)
    lengths = torch.randint(1, 13, (n,), generator=g)  # >= 1 (an empty row has its own test above)
    x[torch.arange(12)[None, :] >= lengths[:, None]] = 0
    return x, lengths, torch.randint(0, 2, (n,), generator=g)


def test_length_sorted_trimmed_chunks_keep_full_set_means():
    """evaluate and FullBatchHVP sort padded text by length and trim each chunk's all-padding columns: the loss,
    accuracy, gradient and HVP equal the untrimmed ones (float rounding aside); models without padding are
    untouched."""
    from sharpgaps.engine.localsgd import evaluate
    from sharpgaps.engine.objective import FullBatchHVP

    m = models.build_model("transformer", META["transformer"], 0, ff=64)  # trimming does not depend on the width
    x, lengths, y = _ragged()
    assert torch.equal(m.real_lengths(x), lengths)
    order = models.length_order(m, x)
    assert torch.equal(lengths[order], lengths.sort(stable=True).values)
    assert models.trim_padding(m, x[order][:10]).shape[1] == max(1, int(lengths[order][:10].max()))
    assert models.trim_padding(m, torch.zeros(3, 12, dtype=torch.long)).shape == (3, 1)  # all padding: keep one
    fc = models.build_model("fc_tanh", META["fc_tanh"], 0)
    img = _inputs("fc_tanh")
    assert models.length_order(fc, img) is None and models.trim_padding(fc, img) is img
    loss_fn = losses.get_loss("mse")
    theta = dict(m.named_parameters())
    with torch.no_grad():
        logits = m(x)
    ref_loss, ref_acc = float(loss_fn(logits, y)), float((logits.argmax(-1) == y).sum()) / len(y)
    got_loss, got_acc = evaluate(m, theta, loss_fn, x, y, chunk=7)
    assert got_loss == pytest.approx(ref_loss, rel=1e-5) and got_acc == ref_acc

    class Untrimmed(torch.nn.Module):  # the same transformer, seen without the trimming hooks
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, t):
            return self.inner(t)

    plain = Untrimmed(m)
    pp = {f"inner.{n}": p for n, p in theta.items()}
    for cache in (True, False):
        a = FullBatchHVP(m, loss_fn, x, y, params=theta, chunk_size=8, cache_graph=cache)
        b = FullBatchHVP(plain, loss_fn, x, y, params=pp, chunk_size=8, cache_graph=cache)
        assert a.x.shape == x.shape and not torch.equal(a.x, x)  # sorted inside
        assert torch.allclose(a.gradient(), b.gradient(), rtol=1e-4, atol=1e-6)
        v = torch.randn(a.dim, generator=torch.Generator().manual_seed(2))
        assert torch.allclose(a.hvp(v), b.hvp(v), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", list(META))
def test_double_backward(name):
    """Hessian-vector products need double backward (the transformer's attention is hand-written)."""
    m = models.build_model(name, META[name], 0)
    y = torch.arange(6) % META[name]["n_classes"]
    loss = losses.mse_onehot(m(_inputs(name)), y)
    params = list(m.parameters())
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    hv = torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v)), params)
    assert all(torch.isfinite(h).all() for h in hv)
    assert sum(float(h.abs().sum()) for h in hv) > 0


def test_cnn_channels_last_matches_the_nchw_reference():
    """The CNN runs channels-last with the pool before the ReLU; the NCHW conv -> ReLU -> pool it replaces gives
    the same outputs and gradients to float32 rounding (both orders are exact: max and ReLU are monotone)."""
    import torch.nn.functional as F

    m = models.build_model("cnn_relu", META["cnn_relu"], 0)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(16) % 10

    def nchw(x):
        h = F.max_pool2d(F.relu(m.conv1(x)), 2)
        h = F.max_pool2d(F.relu(m.conv2(h)), 2)
        return m.out(h.flatten(start_dim=1))

    params = list(m.parameters())
    out, ref = m(x), nchw(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    ga = torch.autograd.grad(losses.mse_onehot(out, y), params)
    gb = torch.autograd.grad(losses.mse_onehot(ref, y), params)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_losses():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    # 0.5 * ((2-1)^2 + 0^2) = 0.5 and 0.5 * (0 + 0) = 0 -> mean 0.25
    assert losses.mse_onehot(logits, y).item() == pytest.approx(0.25)
    assert losses.get_loss("ce")(logits, y).item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item())
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get_loss("hinge")


def test_embedding_multiplier_is_the_same_function_at_init_and_an_m2_step_on_the_embedding():
    """E = m * phi with phi = E / m: identical outputs at initialisation; one SGD step of lr on phi moves E by
    m^2 * lr * dL/dE, while every other parameter takes the same step as without the multiplier."""
    plain = models.build_model("transformer", META["transformer"], 3)
    scaled = models.build_model("transformer", META["transformer"], 3, emb_mult=10.0)
    x, y = _inputs("transformer"), torch.tensor([0, 1, 1, 0, 1, 0])
    torch.testing.assert_close(scaled(x), plain(x), rtol=1e-5, atol=1e-6)
    loss = losses.get_loss("mse")
    g_plain = dict(zip([n for n, _ in plain.named_parameters()],
                       torch.autograd.grad(loss(plain(x), y), list(plain.parameters()))))
    g_scaled = dict(zip([n for n, _ in scaled.named_parameters()],
                        torch.autograd.grad(loss(scaled(x), y), list(scaled.parameters()))))
    # dL/dphi = m dL/dE, so a step lr on phi changes E = m phi by m^2 lr dL/dE
    torch.testing.assert_close(g_scaled["embed.weight"], 10.0 * g_plain["embed.weight"], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(g_scaled["out.weight"], g_plain["out.weight"], rtol=1e-4, atol=1e-7)


def test_default_embedding_multiplier_is_bit_for_bit_the_plain_model():
    a = models.build_model("transformer", META["transformer"], 5)
    b = models.build_model("transformer", META["transformer"], 5, emb_mult=1)
    x = _inputs("transformer")
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("name, arch, message", [
    ("cnn_relu", {"ff": 256}, "unknown key 'ff' for model 'cnn_relu' (known: channels)"),
    ("transformer", {"emb_mul": 100}, "unknown key 'emb_mul'"),
    ("transformer", {"emb_mult": 0}, "emb_mult must be a positive number, got 0"),
])
def test_bad_architecture_keys_are_named(name, arch, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        models.build_model(name, META[name], 0, **arch)


def test_embedding_multiplier_leaves_the_loss_plateau_where_plain_sgd_does_not(data_dir):
    """Real SST-2 (1,000 sentences), Local SGD with plain-SGD workers (K=4, tau=4, b=25, lr 0.05, 100 local steps):
    with the N(0, 1) embedding trained at the common step the loss stays near the best constant prediction (the
    class prior); with emb_mult 100 it falls far below it."""
    sub = make_subset("sst2", data_dir, n_train=1000, seed=0, test_cap=200, max_len=24, min_freq=1)
    x, y = sub["x_train"], sub["y_train"]
    prior = float(y.float().mean())
    constant = prior * (1 - prior)  # one-hot MSE of predicting the class prior
    loss_fn = losses.get_loss("mse")
    final = {}
    for mult in (1.0, 100.0):
        model = models.build_model("transformer", sub["meta"], seed=0, ff=64, emb_mult=mult)
        spec = RunSpec(K=4, tau=4, b=25, lr=0.05, rounds=25, window=1, seed=0, checkpoints=())
        sim = SimulatedLocalSGD(model, loss_fn, x, y, spec)
        for r in range(spec.rounds):
            for t in range(spec.tau):
                sim.local_step(r * spec.tau + t)
            theta, _ = sim.end_round()
        final[mult] = evaluate(model, theta, loss_fn, x, y)[0]
    assert final[1.0] > constant - 0.05, (final, constant)  # the plateau: within 0.05 of the constant loss
    assert final[100.0] < 0.5 * constant, (final, constant)  # left it: below half the constant loss


def test_constant_loss_is_the_class_priors_loss():
    y = torch.tensor([0] * 558 + [1] * 442)
    p = 0.558
    assert losses.constant_loss(losses.mse_onehot, y) == pytest.approx(p * (1 - p))  # 0.5 * 2p(1-p)
    assert losses.constant_loss(losses.cross_entropy, y) == pytest.approx(-(p * math.log(p) + (1 - p) * math.log(1 - p)))
    # no constant output does better: the prior minimises both losses
    for c in (0.5, 0.6):
        out = torch.tensor([c, 1 - c], dtype=torch.float64).expand(len(y), -1)
        assert float(losses.mse_onehot(out, y)) > losses.constant_loss(losses.mse_onehot, y)
    assert math.isnan(losses.constant_loss(losses.mse_onehot, torch.randn(5)))

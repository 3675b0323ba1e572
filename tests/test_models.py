import pytest
import torch

from sharpgaps import losses, models

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


def test_losses():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    # 0.5 * ((2-1)^2 + 0^2) = 0.5 and 0.5 * (0 + 0) = 0 -> mean 0.25
    assert losses.mse_onehot(logits, y).item() == pytest.approx(0.25)
    assert losses.get_loss("ce")(logits, y).item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item())
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get_loss("hinge")

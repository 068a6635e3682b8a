import pytest
import torch

from transgan.errors import ConfigError
from transgan.registry import build_discriminator, build_generator

SMALL = {"channel_base": 64, "channel_max": 8}


@pytest.mark.parametrize("res", [16, 32, 64, 128, 256])
def test_shapes_and_range_at_every_resolution(res):
    G = build_generator({"name": "cwgan_gp", **SMALL}, res, 3, 5)
    D = build_discriminator({"name": "cwgan_gp", **SMALL}, res, 3, 5)
    z, c = torch.randn(2, G.z_dim), torch.tensor([0, 4])
    x = G(z, c)
    assert x.shape == (2, 3, res, res) and x.abs().max() <= 1
    assert D(x, c).shape == (2,)
    assert (G.z_dim, G.num_classes, G.img_resolution, G.img_channels) == (64, 5, res, 3)


@pytest.mark.parametrize("res", [8, 48, 512])
def test_bad_resolution_is_refused(res):
    with pytest.raises(ConfigError, match="power of two"):
        build_generator({"name": "cwgan_gp"}, res, 1, 10)
    with pytest.raises(ConfigError, match="power of two"):
        build_discriminator({"name": "cwgan_gp"}, res, 1, 10)


def test_unknown_option_is_refused():
    with pytest.raises(ConfigError, match="widht"):
        build_generator({"name": "cwgan_gp", "widht": 3}, 32, 1, 10)


@pytest.mark.parametrize("g_input,d_input", [("onehot", "planes"), ("embedding", "projection")])
def test_conditioning_changes_outputs(g_input, d_input):
    torch.manual_seed(0)
    G = build_generator({"name": "cwgan_gp", "class_input": g_input, **SMALL}, 16, 1, 10).eval()
    D = build_discriminator({"name": "cwgan_gp", "class_input": d_input, **SMALL}, 16, 1, 10)
    z = torch.randn(1, G.z_dim).repeat(2, 1)
    c = torch.tensor([1, 7])
    x = G(z, c)
    assert not torch.allclose(x[0], x[1])
    same = x[:1].repeat(2, 1, 1, 1)
    d = D(same, c)
    assert not torch.allclose(d[0], d[1])


def test_conditional_model_needs_labels():
    G = build_generator({"name": "cwgan_gp", **SMALL}, 16, 1, 10)
    with pytest.raises(ValueError, match="labels"):
        G(torch.randn(2, G.z_dim))


def test_unconditional_ignores_labels():
    G = build_generator({"name": "cwgan_gp", **SMALL}, 16, 1, 0)
    assert G(torch.randn(2, G.z_dim)).shape == (2, 1, 16, 16)


@pytest.mark.parametrize("norm", ["layer", "instance", "none", "batch"])
def test_gradients_and_double_backward_through_critic(norm):
    torch.manual_seed(0)
    G = build_generator({"name": "cwgan_gp", **SMALL}, 16, 1, 3)
    D = build_discriminator({"name": "cwgan_gp", "norm": norm, **SMALL}, 16, 1, 3)
    c = torch.tensor([0, 1, 2, 0])
    x = G(torch.randn(4, G.z_dim), c)
    (D(x, c).sum()).backward()
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    real = torch.randn(4, 1, 16, 16, requires_grad=True)
    (g,) = torch.autograd.grad(D(real, c).sum(), real, create_graph=True)
    D.zero_grad()
    g.square().sum().backward()
    assert sum(p.grad.abs().sum() for p in D.parameters() if p.grad is not None) > 0


def test_critic_norm_is_per_sample_except_batch():
    # With layer/instance/none a sample's value must not depend on the rest of the batch.
    torch.manual_seed(0)
    x = torch.randn(4, 1, 16, 16)
    c = torch.tensor([0, 1, 2, 0])
    for norm, independent in [("layer", True), ("instance", True), ("none", True), ("batch", False)]:
        D = build_discriminator({"name": "cwgan_gp", "norm": norm, **SMALL}, 16, 1, 3).train()
        alone = D(x[:1], c[:1])
        together = D(x, c)[:1]
        assert torch.allclose(alone, together, atol=1e-5) == independent, norm

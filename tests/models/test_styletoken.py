"""Token-style generator (transgan/models/styletoken.py): contract, attention modulation, style behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from transgan.errors import ConfigError
from transgan.losses import GANLoss, PhaseInputs
from transgan.models.stylegan2 import StyleGAN2Discriminator
from transgan.models.styletoken import StyleTokenGenerator, TokenStyleLayer
from transgan.nn.style import StyleTokenAttention
from transgan.registry import build_discriminator, build_generator

SMALL = dict(z_dim=16, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32, num_style_tokens=4, head_dim=8)


def small_G(resolution: int = 16, num_classes: int = 10, **kw) -> StyleTokenGenerator:
    torch.manual_seed(0)
    return StyleTokenGenerator(resolution, 1, num_classes, **{**SMALL, **kw})


def test_generator_follows_the_generator_contract():
    G = small_G()
    z, c = torch.randn(3, 16), torch.tensor([0, 5, 9])
    assert G(z, c).shape == (3, 1, 16, 16)
    assert (G.z_dim, G.num_classes, G.img_resolution, G.img_channels, G.num_ws) == (16, 10, 16, 1, 6)
    ws = G.mapping(z, c)
    assert torch.allclose(G.synthesis(ws, noise_mode="const"), G(z, c, noise_mode="const"), atol=1e-6)


def test_every_synthesis_layer_is_modulated_by_style_token_attention():
    G = small_G()
    layers = [m for m in G.synthesis.modules() if isinstance(m, TokenStyleLayer)]
    assert len(layers) == 1 + 2 * 2                      # 4x4: one layer; 8x8, 16x16: two each
    assert all(isinstance(layer.modulation, StyleTokenAttention) for layer in layers)
    # Heads: channels / head_dim; tokens: one per pixel; upsampling layers blur.
    first_up = next(layer for layer in layers if layer.up)
    assert first_up.modulation.num_heads == 32 // 8 and first_up.modulation.num_tokens == 8 * 8
    assert first_up.blur is not None


def test_layer_output_is_conv_of_normalized_content_times_retrieved_style():
    layer = TokenStyleLayer(8, 4, w_dim=6, resolution=4, num_style_tokens=3, head_dim=4).eval()
    x, w = torch.randn(2, 8, 4, 4), torch.randn(2, 6)
    tokens = x.flatten(2).transpose(1, 2)
    modulated = layer.modulation(tokens, w).transpose(1, 2).reshape(2, 8, 4, 4)
    conv = F.conv2d(modulated, layer.conv.weight * layer.conv.weight_gain, padding=1)
    expected = F.leaky_relu(conv + layer.bias.reshape(1, -1, 1, 1), 0.2) * 2 ** 0.5   # noise strength 0
    assert torch.allclose(layer(x, w), expected, atol=1e-5)


def test_truncation_psi_zero_gives_identical_images_for_one_class():
    G = small_G()
    with torch.no_grad():
        for _ in range(3):
            G.train()(torch.randn(40, 16), torch.arange(40) % 10)
    G.eval()
    z = torch.randn(4, 16)
    same = G(z, torch.full((4,), 2), truncation_psi=0.0, noise_mode="const")
    assert torch.allclose(same, same[:1].expand_as(same), atol=1e-6)
    assert not torch.allclose(G(z, torch.full((4,), 8), truncation_psi=0.0, noise_mode="const")[0], same[0],
                              atol=1e-3)


@pytest.mark.parametrize("crossover", [1, 4])
def test_layers_before_the_crossover_see_only_the_first_w(crossover):
    G = small_G().eval()
    z, c = torch.randn(3, 16), torch.tensor([1, 2, 3])
    first = G.mapping(z, c)[:, 0]
    seen, handles = [], []
    for m in G.synthesis.modules():
        if hasattr(m, "w_index"):
            handles.append(m.affine.register_forward_hook(
                lambda mod, args, out, i=m.w_index: seen.append((i, args[0].detach().clone()))))
    _, ws = G(z, c, style_mixing_prob=1.0, style_mixing_crossover=crossover, return_ws=True)
    for h in handles:
        h.remove()
    assert sorted({i for i, _ in seen}) == list(range(G.num_ws))
    for i, w in seen:
        assert torch.equal(w, first if i < crossover else ws[:, -1]), i
    assert not torch.allclose(ws[:, -1], first)


def test_path_length_regularization_runs_through_attention():
    # The penalty differentiates G's gradient: attention must take its twice-differentiable path.
    G = small_G()
    loss = GANLoss("ns", pl_weight=2.0, pl_interval=4, style_mixing_prob=0.9)
    total, stats = loss.g_reg(G, None, PhaseInputs(z=torch.randn(4, 16), c_fake=torch.tensor([0, 1, 2, 3])))
    total.backward()
    keys = [layer.modulation.keys for layer in G.synthesis.modules() if isinstance(layer, TokenStyleLayer)]
    assert all(k.grad is not None and k.grad.abs().sum() > 0 for k in keys)
    assert stats["pl_mean"] > 0


def test_default_model_pairs_it_with_the_stylegan2_discriminator(repo_root: Path):
    model = OmegaConf.load(repo_root / "configs" / "model" / "styletoken.yaml")
    assert list(model.defaults) == [{"generator": "styletoken"}, {"discriminator": "stylegan2"}, "_self_"]
    g_cfg = OmegaConf.load(repo_root / "configs" / "model" / "generator" / "styletoken.yaml")
    d_cfg = OmegaConf.load(repo_root / "configs" / "model" / "discriminator" / "stylegan2.yaml")
    G = build_generator(g_cfg, img_resolution=model.resolution, img_channels=1, num_classes=10)
    D = build_discriminator(d_cfg, img_resolution=model.resolution, img_channels=1, num_classes=10)
    assert isinstance(G, StyleTokenGenerator) and type(D) is StyleGAN2Discriminator
    z, c = torch.randn(2, G.z_dim), torch.tensor([3, 7])
    assert D(G(z, c), c).shape == (2,)


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="power of two"):
        small_G(resolution=24)
    with pytest.raises(ConfigError, match="head"):
        small_G(head_dim=12)
    with pytest.raises(ConfigError, match="num_style_tokens"):
        small_G(num_style_tokens=0)

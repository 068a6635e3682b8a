"""Style machinery (transgan/nn/style.py and its layers) against formulas written out here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from transgan.nn.layers import EqualizedLinear, MinibatchStd, NoiseInjection, apply_spectral_norm, EqualizedConv2d
from transgan.nn.style import (
    MappingNetwork,
    ModulatedConv2d,
    SelfModulatedLayerNorm,
    StyleTokenAttention,
    TokenAdaIN,
    draw_crossover,
    mix_styles,
    modulated_conv2d,
    normalize_2nd_moment,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def per_sample_reference(x, weight, styles, demodulate, padding):
    """The definition: sample b is convolved with W * s_b, divided by its norm per output channel."""
    out = []
    for b in range(x.shape[0]):
        w_b = weight * styles[b].reshape(1, -1, 1, 1)
        if demodulate:
            w_b = w_b / torch.sqrt(w_b.pow(2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        out.append(F.conv2d(x[b:b + 1], w_b, padding=padding))
    return torch.cat(out)


# ----------------------------------------------------------------------------- modulated convolution

@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("kernel", [3, 1])
def test_fused_and_non_fused_modulated_conv_agree(demodulate, kernel):
    x = torch.randn(5, 8, 9, 9, generator=gen(0))
    weight = torch.randn(6, 8, kernel, kernel, generator=gen(1))
    styles = torch.randn(5, 8, generator=gen(2)) + 1
    fused = modulated_conv2d(x, weight, styles, demodulate, padding=kernel // 2, fused=True)
    plain = modulated_conv2d(x, weight, styles, demodulate, padding=kernel // 2, fused=False)
    assert fused.shape == plain.shape == (5, 6, 9, 9)
    assert torch.allclose(fused, plain, atol=1e-5, rtol=0)


def test_modulated_conv_module_fused_and_non_fused_agree_and_default_is_non_fused_on_cpu():
    conv = ModulatedConv2d(8, 4, w_dim=16)
    x, w = torch.randn(3, 8, 6, 6, generator=gen(0)), torch.randn(3, 16, generator=gen(1))
    with torch.no_grad():
        a, b, default = conv(x, w, fused=True), conv(x, w, fused=False), conv(x, w)
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    assert torch.equal(default, b)


@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_equals_per_sample_loop_of_conv2d(demodulate):
    x = torch.randn(4, 5, 7, 7, generator=gen(3), dtype=torch.float64)
    weight = torch.randn(3, 5, 3, 3, generator=gen(4), dtype=torch.float64)
    styles = torch.randn(4, 5, generator=gen(5), dtype=torch.float64)
    expected = per_sample_reference(x, weight, styles, demodulate, padding=1)
    for fused in (False, True):
        got = modulated_conv2d(x, weight, styles, demodulate, padding=1, fused=fused)
        assert torch.allclose(got, expected, atol=1e-12, rtol=1e-10), fused


@pytest.mark.parametrize("kernel", [3, 1])
def test_modulated_conv_up_is_the_conv_of_the_zero_inserted_input(kernel):
    """up=True (stride-2 transposed conv) equals the modulated conv of x with zeros inserted, fully padded."""
    x = torch.randn(2, 5, 6, 6, generator=gen(6), dtype=torch.float64)
    weight = torch.randn(3, 5, kernel, kernel, generator=gen(7), dtype=torch.float64)
    styles = torch.randn(2, 5, generator=gen(8), dtype=torch.float64)
    zeros = x.new_zeros(2, 5, 11, 11)
    zeros[:, :, ::2, ::2] = x
    expected = per_sample_reference(zeros, weight, styles, True, padding=kernel - 1)
    for fused in (False, True):
        got = modulated_conv2d(x, weight, styles, True, fused=fused, up=True)
        assert got.shape == expected.shape == (2, 3, 10 + kernel, 10 + kernel)
        assert torch.allclose(got, expected, atol=1e-12, rtol=1e-10), fused


def test_demodulated_output_has_unit_variance_per_output_channel():
    # Unit-variance i.i.d. input: each output is <W''_o, patch> with ||W''_o|| = 1, so its variance is 1.
    # Valid convolution (no padding) keeps zero borders out; 32 x 30 x 30 outputs per channel.
    x = torch.randn(32, 16, 32, 32, generator=gen(6))
    weight = torch.randn(8, 16, 3, 3, generator=gen(7)) * torch.linspace(0.1, 3.0, 8).reshape(8, 1, 1, 1)
    styles = torch.randn(32, 16, generator=gen(8)) * 2 + 0.5
    out = modulated_conv2d(x, weight, styles, demodulate=True, padding=0)
    var = out.transpose(0, 1).flatten(1).var(dim=1)
    assert torch.allclose(var, torch.ones(8), atol=0.1), var
    # Without demodulation the scale follows the weights and styles: far from 1.
    raw = modulated_conv2d(x, weight, styles, demodulate=False, padding=0).transpose(0, 1).flatten(1).var(dim=1)
    assert (raw - 1).abs().max() > 10


def test_modulated_conv_rejects_mismatched_styles():
    with pytest.raises(ValueError, match="styles"):
        modulated_conv2d(torch.zeros(2, 4, 5, 5), torch.zeros(3, 4, 3, 3), torch.zeros(2, 5))


# ----------------------------------------------------------------------------- mapping network

def test_normalize_2nd_moment_gives_unit_mean_square():
    x = torch.randn(6, 10, generator=gen(9)) * 5
    assert torch.allclose(normalize_2nd_moment(x).pow(2).mean(dim=1), torch.ones(6), atol=1e-5)


def test_equalized_linear_effective_weight_and_lr_multiplier():
    layer = EqualizedLinear(4, 3, bias_init=0.5, lr_multiplier=0.01)
    x = torch.randn(2, 4, generator=gen(10))
    expected = x @ (layer.weight * 0.01 / math.sqrt(4)).t() + layer.bias * 0.01
    assert torch.allclose(layer(x), expected)
    assert torch.allclose(layer.bias * 0.01, torch.full((3,), 0.5))          # effective initial bias
    assert torch.allclose((layer.weight * 0.01).std(), torch.tensor(1.0), atol=0.6)  # N(0, 1) effective


def test_mapping_output_shape_and_class_dependence():
    m = MappingNetwork(z_dim=8, w_dim=6, num_ws=5, num_classes=3, num_layers=2).eval()
    z = torch.randn(4, 8, generator=gen(11))
    ws = m(z, torch.tensor([0, 1, 2, 0]))
    assert ws.shape == (4, 5, 6)
    assert torch.equal(ws[:, 0], ws[:, 4])          # one w broadcast to every layer
    other = m(z, torch.tensor([1, 1, 2, 0]))
    assert not torch.allclose(ws[0], other[0]) and torch.equal(ws[1:], other[1:])


def test_mapping_tracks_a_per_class_w_avg():
    m = MappingNetwork(z_dim=8, w_dim=6, num_ws=2, num_classes=3, num_layers=2, w_avg_beta=0.9)
    z, c = torch.randn(5, 8, generator=gen(12)), torch.tensor([0, 0, 2, 2, 2])
    with torch.no_grad():
        w = m.eval()(z, c)[:, 0]
        m.train()(z, c)
    # w_avg[k] <- lerp(mean of class k, w_avg[k] = 0, 0.9) = 0.1 * mean; class 1 absent: unchanged.
    assert torch.allclose(m.w_avg[0], 0.1 * w[:2].mean(0), atol=1e-6)
    assert torch.allclose(m.w_avg[2], 0.1 * w[2:].mean(0), atol=1e-6)
    assert torch.equal(m.w_avg[1], torch.zeros(6))
    before = m.w_avg.clone()
    with torch.no_grad():
        m.eval()(z, c)                                # eval mode: no update
        m.train()(z, c, update_w_avg=False)           # nor when asked not to
    assert torch.equal(m.w_avg, before)


def test_truncation_pulls_first_cutoff_ws_toward_the_class_average():
    m = MappingNetwork(z_dim=8, w_dim=6, num_ws=4, num_classes=3, num_layers=2).eval()
    m.w_avg.copy_(torch.randn(3, 6, generator=gen(13)))
    z, c = torch.randn(3, 8, generator=gen(14)), torch.tensor([2, 0, 1])
    ws = m(z, c)
    got = m(z, c, truncation_psi=0.7, truncation_cutoff=2)
    avg = m.w_avg[c][:, None]
    assert torch.allclose(got[:, :2], avg + 0.7 * (ws[:, :2] - avg), atol=1e-6)
    assert torch.equal(got[:, 2:], ws[:, 2:])
    zero = m(z, c, truncation_psi=0.0)
    assert torch.allclose(zero, m.w_avg[c][:, None].expand(-1, 4, -1))


def test_mapping_bad_labels_are_refused():
    m = MappingNetwork(z_dim=8, w_dim=6, num_ws=2, num_classes=3, num_layers=1)
    with pytest.raises(ValueError, match="conditional"):
        m(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="integer"):
        m(torch.zeros(2, 8), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\[B, 8\]"):
        m(torch.zeros(2, 7), torch.zeros(2, dtype=torch.long))


# ----------------------------------------------------------------------------- style mixing

def test_mix_styles_takes_ws_from_the_crossover_on_from_the_second_latent():
    a, b = torch.zeros(2, 6, 3), torch.ones(2, 6, 3)
    mixed = mix_styles(a, b, 4)
    assert torch.equal(mixed[:, :4], a[:, :4]) and torch.equal(mixed[:, 4:], b[:, 4:])
    assert torch.equal(mix_styles(a, b, torch.tensor(6)), a)


def test_draw_crossover_probability_and_range():
    torch.manual_seed(0)
    never = {int(draw_crossover(6, 0.0)) for _ in range(50)}
    always = [int(draw_crossover(6, 1.0)) for _ in range(200)]
    assert never == {6}
    assert set(always) == {1, 2, 3, 4, 5}
    assert {int(draw_crossover(6, 1.0, crossover=3)) for _ in range(10)} == {3}
    with pytest.raises(ValueError):
        draw_crossover(6, 1.5)


# ----------------------------------------------------------------------------- token modulation

def test_token_adain_normalizes_each_channel_over_tokens_then_applies_the_style():
    m = TokenAdaIN(dim=4, w_dim=5)
    x, w = torch.randn(2, 9, 4, generator=gen(15)) * 3 + 1, torch.randn(2, 5, generator=gen(16))
    mean, var = x.mean(dim=1, keepdim=True), x.var(dim=1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * m.style.scale(w)[:, None] + m.style.shift(w)[:, None]
    assert torch.allclose(m(x, w), expected, atol=1e-5)


def test_self_modulated_layer_norm_normalizes_each_token_then_applies_the_style():
    m = SelfModulatedLayerNorm(dim=4, w_dim=5)
    x, w = torch.randn(2, 9, 4, generator=gen(17)) * 3 + 1, torch.randn(2, 5, generator=gen(18))
    mean, var = x.mean(dim=2, keepdim=True), x.var(dim=2, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * m.style.scale(w)[:, None] + m.style.shift(w)[:, None]
    assert torch.allclose(m(x, w), expected, atol=1e-5)


def test_style_token_attention_matches_softmax_formula():
    m = StyleTokenAttention(dim=8, w_dim=5, num_tokens=6, num_style_tokens=3, num_heads=2)
    x, w = torch.randn(2, 6, 8, generator=gen(19)), torch.randn(2, 5, generator=gen(20))
    h = F.layer_norm(x, (8,))
    q = m.to_q(h + m.pos)                                # [B, N, 8]
    S = m.style_tokens(w)                                # [B, 3, 8]
    out = torch.empty_like(x)
    for head in range(2):
        d = slice(4 * head, 4 * head + 4)
        scores = q[..., d] @ m.keys[:, d].t() / math.sqrt(4)      # keys: learned, [3, 4]
        out[..., d] = scores.softmax(dim=-1) @ S[..., d]          # values: the style tokens
    assert torch.allclose(m(x, w), h * out, atol=1e-5)


def test_style_token_attention_with_identical_style_tokens_is_a_global_style():
    # A convex combination of equal values is that value: every token gets the same style.
    m = StyleTokenAttention(dim=8, w_dim=5, num_tokens=6, num_style_tokens=4, num_heads=2)
    with torch.no_grad():
        m.affine.weight.zero_()
        m.affine.bias.copy_(torch.arange(8.0).repeat(4) / m.affine.bias_gain)
    x, w = torch.randn(2, 6, 8, generator=gen(21)), torch.randn(2, 5, generator=gen(22))
    assert torch.allclose(m(x, w), F.layer_norm(x, (8,)) * torch.arange(8.0), atol=1e-5)


# ----------------------------------------------------------------------------- layers

def test_minibatch_std_matches_group_formula():
    x = torch.randn(8, 6, 3, 3, generator=gen(23), dtype=torch.float64)
    out = MinibatchStd(group_size=4, num_channels=2)(x)
    assert out.shape == (8, 8, 3, 3) and torch.equal(out[:, :6], x)
    for b in range(8):
        group = x[b % 2::2]                              # groups hold samples j, j+2, j+4, j+6
        for f in range(2):
            feats = group[:, 3 * f:3 * f + 3]
            std = torch.sqrt(feats.var(dim=0, unbiased=False) + 1e-8).mean()
            assert torch.allclose(out[b, 6 + f], std.expand(3, 3))


def test_noise_injection_modes():
    noise = NoiseInjection(4)
    x = torch.randn(2, 3, 4, 4, generator=gen(24))
    assert torch.equal(noise(x), x)                       # strength starts at 0
    with torch.no_grad():
        noise.strength.fill_(0.5)
    assert torch.equal(noise(x, "const"), x + 0.5 * noise.noise_const)
    assert torch.equal(noise(x, "none"), x)
    tokens = x.flatten(2).transpose(1, 2)
    assert torch.equal(noise(tokens, "const"), tokens + 0.5 * noise.noise_const.reshape(1, 16, 1))
    with pytest.raises(ValueError, match="noise_mode"):
        noise(x, "fixed")


def test_spectral_norm_gives_unit_largest_singular_value():
    torch.manual_seed(0)  # weights and power-iteration vector: a random matrix with close top singular values
    conv = apply_spectral_norm(EqualizedConv2d(4, 6, 3))  # would need more iterations than any fixed count
    for _ in range(100):
        conv(torch.randn(1, 4, 5, 5))                    # power iterations run in training mode
    sigma = torch.linalg.matrix_norm(conv.weight.detach().reshape(6, -1), ord=2)
    assert float(sigma) == pytest.approx(1.0, abs=0.02)
    assert conv.weight_gain == 1.0

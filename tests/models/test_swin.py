"""Swin-GAN (StyleSwin): double attention against two window attentions built here with timm's
window helpers, the sinusoidal encoding and Haar transform against their formulas, the
generator through the generic style code, and shapes of every preset."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import get_relative_position_index
from timm.models.swin_transformer import window_partition as timm_window_partition
from timm.models.swin_transformer import window_reverse as timm_window_reverse

from transgan.models import swin as S


def _tokens(B: int, R: int, C: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, R * R, C, generator=torch.Generator().manual_seed(seed))


def _randomize(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Non-trivial values in every parameter (the rel-pos tables start near zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


# ----------------------------------------------------------------------------- reference double attention

def swin_mask(R: int, w: int, s: int) -> torch.Tensor:
    """Swin's shifted-window mask written out: label the 3x3 regions the cyclic roll by -s glues
    together, then forbid attention between tokens of different regions. [nW, w*w, w*w]."""
    labels = torch.zeros(R, R)
    edges = [0, R - w, R - s, R]
    for i in range(3):
        for j in range(3):
            labels[edges[i]:edges[i + 1], edges[j]:edges[j + 1]] = 3 * i + j
    per_window = timm_window_partition(labels[None, :, :, None], (w, w)).reshape(-1, w * w)
    same = per_window[:, :, None] == per_window[:, None, :]
    return torch.zeros(same.shape).masked_fill(~same, float("-inf"))


def window_attention(q, k, v, heads: int, w: int, bias: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Plain multi-head attention inside w x w windows of maps [B, R, R, c] (timm's partitioning)."""
    B, R, _, c = q.shape
    d, n = c // heads, w * w
    qw, kw, vw = (timm_window_partition(t, (w, w)).reshape(-1, n, heads, d).transpose(1, 2) for t in (q, k, v))
    scores = qw @ kw.transpose(-2, -1) * d ** -0.5 + bias        # [B*nW, heads, n, n]
    if mask is not None:
        scores = (scores.reshape(B, -1, heads, n, n) + mask[None, :, None]).reshape(-1, heads, n, n)
    out = (scores.softmax(-1) @ vw).transpose(1, 2).reshape(-1, w, w, c)
    return timm_window_reverse(out, (w, w), R, R)


def reference_double_attention(attn: S.DoubleWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """StyleSwin's double attention as two separate window attentions on channel halves."""
    B, N, C = x.shape
    R, w, s, h = attn.resolution, attn.window, attn.shift, attn.num_heads
    qkv = F.linear(x, attn.attn.qkv.weight, attn.attn.qkv.bias).reshape(B, R, R, 3 * C)
    q, k, v = qkv.split(C, dim=-1)
    n = w * w
    bias = attn.rel_pos.table[get_relative_position_index(w, w).reshape(-1)].reshape(n, n, h).permute(2, 0, 1)
    first = window_attention(q[..., :C // 2], k[..., :C // 2], v[..., :C // 2], h // 2, w, bias[:h // 2], None)
    rolled = [torch.roll(t[..., C // 2:], shifts=(-s, -s), dims=(1, 2)) for t in (q, k, v)]
    second = window_attention(*rolled, h // 2, w, bias[h // 2:], swin_mask(R, w, s))
    second = torch.roll(second, shifts=(s, s), dims=(1, 2))
    out = torch.cat([first, second], dim=-1).reshape(B, N, C)
    return F.linear(out, attn.attn.proj.weight, attn.attn.proj.bias)


@pytest.mark.parametrize("R,window,heads", [(16, 8, 4), (16, 4, 2), (8, 4, 6)])
def test_double_attention_equals_two_window_attentions(R, window, heads):
    C = 8 * heads
    attn = _randomize(S.DoubleWindowAttention(C, heads, resolution=R, window=window))
    assert attn.shift == window // 2
    x = _tokens(2, R, C)
    torch.testing.assert_close(attn(x), reference_double_attention(attn, x), atol=2e-5, rtol=1e-4)


def test_map_that_fits_one_window_gets_full_attention():
    R, C, heads = 8, 32, 4
    attn = _randomize(S.DoubleWindowAttention(C, heads, resolution=R, window=8))
    assert (attn.window, attn.shift) == (8, 0)
    small = S.DoubleWindowAttention(C, heads, resolution=4, window=8)
    assert (small.window, small.shift) == (4, 0)
    x = _tokens(2, R, C)
    q, k, v = F.linear(x, attn.attn.qkv.weight, attn.attn.qkv.bias).reshape(2, R * R, 3, heads, C // heads).permute(
        2, 0, 3, 1, 4)
    n = R * R
    bias = attn.rel_pos.table[get_relative_position_index(R, R).reshape(-1)].reshape(n, n, heads).permute(2, 0, 1)
    full = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5 + bias).softmax(-1) @ v
    expected = F.linear(full.transpose(1, 2).reshape(2, n, C), attn.attn.proj.weight, attn.attn.proj.bias)
    torch.testing.assert_close(attn(x), expected, atol=2e-5, rtol=1e-4)


def test_rolling_the_input_by_one_window_only_rolls_the_regular_half():
    """torch.roll by a whole window along H and W permutes the regular windows: that half is
    equivariant. The shifted half is not: the roll moves the masked border windows."""
    R, w, C = 16, 8, 32
    attn = _randomize(S.DoubleWindowAttention(C, 4, resolution=R, window=w))
    x = _tokens(2, R, C).reshape(2, R, R, C)

    def heads(m: torch.Tensor) -> torch.Tensor:
        return attn.head_outputs(m.reshape(2, R * R, C)).reshape(2, R, R, C)

    for shifts in [(w, 0), (0, w), (w, w)]:
        rolled_after = torch.roll(heads(x), shifts=shifts, dims=(1, 2))
        rolled_before = heads(torch.roll(x, shifts=shifts, dims=(1, 2)))
        torch.testing.assert_close(rolled_before[..., :C // 2], rolled_after[..., :C // 2], atol=1e-5, rtol=1e-5)
        assert (rolled_before[..., C // 2:] - rolled_after[..., C // 2:]).abs().max() > 1e-2
    # Half a window is not a symmetry of the regular windows.
    half = heads(torch.roll(x, shifts=(w // 2, w // 2), dims=(1, 2)))[..., :C // 2]
    assert (half - torch.roll(heads(x), shifts=(w // 2, w // 2), dims=(1, 2))[..., :C // 2]).abs().max() > 1e-2


def test_double_attention_rejects_odd_heads_and_bad_windows():
    with pytest.raises(ValueError, match="even"):
        S.DoubleWindowAttention(24, 3, resolution=16, window=8)
    with pytest.raises(ValueError, match="divisible"):
        S.DoubleWindowAttention(32, 4, resolution=16, window=6)
    with pytest.raises(ValueError, match="tokens"):
        S.DoubleWindowAttention(32, 4, resolution=16, window=8)(torch.zeros(1, 100, 32))


# ----------------------------------------------------------------------------- SPE and upsampling

@pytest.mark.parametrize("y,x", [(0, 0), (2, 5), (6, 1)])
def test_spe_values_at_known_positions(y, x):
    H, W, dim = 7, 9, 16
    spe = S.sinusoidal_position_encoding(H, W, dim).reshape(H, W, dim)
    k = dim // 4
    expected = []
    for p in (x + 1, y + 1):  # columns first, then rows; positions count from 1
        freqs = [10000 ** (-i / (k - 1)) for i in range(k)]
        expected += [math.sin(p * f) for f in freqs] + [math.cos(p * f) for f in freqs]
    torch.testing.assert_close(spe[y, x], torch.tensor(expected), atol=1e-6, rtol=1e-5)


def test_spe_rejects_too_few_channels():
    with pytest.raises(ValueError, match="divisible by 4"):
        S.sinusoidal_position_encoding(4, 4, 6)


def test_token_upsample_is_bilinear_norm_reduction_plus_scaled_spe():
    r, dim, out = 4, 16, 8
    up = _randomize(S.TokenUpsample(r, dim, out))
    with torch.no_grad():
        up.spe_gain.fill_(0.7)
    x = _tokens(2, r, dim)
    img = x.reshape(2, r, r, dim).permute(0, 3, 1, 2)
    big = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    expected = F.linear(F.layer_norm(big, (dim,), up.norm.weight, up.norm.bias), up.reduction.weight)
    expected = expected.reshape(2, 4 * r * r, out) + 0.7 * S.sinusoidal_position_encoding(2 * r, 2 * r, out)
    torch.testing.assert_close(up(x), expected, atol=1e-5, rtol=1e-5)
    assert S.TokenUpsample(r, dim, out).spe_gain.item() == 0.0  # StyleSwin starts the SPE gain at 0


# ----------------------------------------------------------------------------- Haar wavelets

def test_haar_dwt_matches_the_two_by_two_formulas_and_inverts():
    x = torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(3))
    a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    expected = torch.cat([(a + b + c + d) / 2, (a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2], dim=1)
    y = S.haar_dwt(x)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(S.haar_idwt(y), x, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(y.square().sum(), x.square().sum())  # orthonormal
    with pytest.raises(ValueError, match="even"):
        S.haar_dwt(torch.zeros(1, 1, 5, 4))


# ----------------------------------------------------------------------------- generator

def small_generator(**overrides) -> S.SwinGenerator:
    kw = dict(img_resolution=16, img_channels=1, num_classes=10, z_dim=16, w_dim=16, mapping_layers=2,
              channel_base=256, channel_max=16, head_dim=4, min_heads=2, mlp_ratio=2.0, window=4)
    kw.update(overrides)
    return S.SwinGenerator(**kw)


def test_generator_contract_and_layout():
    torch.manual_seed(0)
    G = small_generator()
    assert (G.z_dim, G.num_classes, G.img_resolution, G.img_channels) == (16, 10, 16, 1)
    assert G.num_ws == 2 * 3  # two blocks per stage, stages 4, 8, 16
    assert [(s.resolution, s.blocks[0].attn.window, s.blocks[0].attn.shift) for s in G.stages] == [
        (4, 4, 0), (8, 4, 2), (16, 4, 2)]
    assert [s.upsample is None for s in G.stages] == [False, False, True]
    z, c = torch.randn(3, 16), torch.tensor([0, 5, 9])
    img = G(z, c)
    assert img.shape == (3, 1, 16, 16) and torch.isfinite(img).all()
    ws = G.mapping(z, c)
    assert ws.shape == (3, G.num_ws, 16)
    torch.testing.assert_close(G.synthesis(ws), G(z, c))  # no noise inputs: deterministic


def test_each_block_reads_its_own_w():
    torch.manual_seed(0)
    G = small_generator()
    seen = []
    hooks = [b.register_forward_hook(lambda m, args, out: seen.append(args[1])) for s in G.stages for b in s.blocks]
    ws = torch.randn(2, G.num_ws, 16)
    G.synthesis(ws)
    for h in hooks:
        h.remove()
    assert len(seen) == G.num_ws
    for i, w in enumerate(seen):
        assert torch.equal(w, ws[:, i])


def test_truncation_to_the_class_average_through_the_generic_code():
    torch.manual_seed(0)
    G = small_generator()
    with torch.no_grad():  # as if trained: one average w per class
        G.mapping.w_avg.copy_(torch.randn(10, 16))
    G.eval()
    z = torch.randn(4, 16)
    same_class = torch.full((4,), 3)
    img = G(z, same_class, truncation_psi=0.0)
    for i in range(1, 4):
        torch.testing.assert_close(img[i], img[0])
    assert (G(z, same_class) - img).abs().max() > 1e-4  # psi=1 keeps the latents apart
    other = G(z, torch.full((4,), 7), truncation_psi=0.0)
    assert (other[0] - img[0]).abs().max() > 1e-4  # each class has its own average


def test_style_mixing_through_the_loss_reaches_the_blocks():
    """GANLoss(style_mixing_prob=1) with a fixed crossover: blocks before it see the first z's w."""
    from transgan.losses import GANLoss, PhaseInputs

    torch.manual_seed(0)
    G = small_generator()
    seen = []
    for s in G.stages:
        for b in s.blocks:
            b.register_forward_hook(lambda m, args, out: seen.append(args[1].detach()))
    z, c = torch.randn(4, 16), torch.tensor([1, 2, 3, 4])
    w_first = G.mapping(z, c)[:, 0]
    crossover = 3
    G(z, c, style_mixing_prob=1.0, style_mixing_crossover=crossover)
    for i, w in enumerate(seen):
        if i < crossover:
            torch.testing.assert_close(w, w_first)
        else:
            assert (w - w_first).abs().max() > 1e-3
            torch.testing.assert_close(w, seen[crossover])  # one second latent for every later block
    # The loss calls G with its style_mixing_prob: with p = 1 some block always sees a second w.
    loss = GANLoss(adversarial="ns", style_mixing_prob=1.0)
    seen.clear()
    from transgan.models.stylegan2 import StyleGAN2Discriminator

    loss.g_main(G, StyleGAN2Discriminator(16, 1, 10, channel_base=64, channel_max=16), PhaseInputs(z=z, c_fake=c))
    assert torch.allclose(seen[0], w_first)
    assert any((w - w_first).abs().max() > 1e-3 for w in seen[1:])


def test_path_length_through_swin_generator_with_gradient_checkpointing():
    """The generic path-length penalty differentiates twice through the blocks, checkpointed or not."""
    from transgan.losses import GANLoss, PhaseInputs

    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        G = small_generator(img_resolution=8, gradient_checkpointing=checkpointing)
        loss = GANLoss(adversarial="ns", pl_weight=2.0, pl_interval=4, pl_batch_shrink=1)
        torch.manual_seed(1)
        value, stats = loss.g_reg(G, None, PhaseInputs(z=torch.randn(4, 16), c_fake=torch.tensor([0, 1, 2, 3])))
        value.backward()
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in G.parameters()]
        results.append((value.detach(), grads))
        assert torch.isfinite(value) and stats["pl_length"] > 0
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-4)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)
    assert any(g.abs().sum() > 0 for g in results[0][1])


def test_gradient_checkpointing_gives_the_same_output_and_gradients():
    outs = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        G = small_generator(img_resolution=8, gradient_checkpointing=checkpointing)
        z, c = torch.randn(2, 16), torch.tensor([3, 4])
        img = G(z, c)
        img.square().mean().backward()
        outs.append((img.detach(), [p.grad.clone() for p in G.parameters() if p.grad is not None]))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    assert len(outs[0][1]) == len(outs[1][1]) > 0
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_generator_rejects_bad_configuration():
    from transgan.errors import ConfigError

    with pytest.raises(ConfigError, match="power of two"):
        small_generator(img_resolution=48)
    with pytest.raises(ConfigError, match="even count"):
        small_generator(head_dim=4, min_heads=3, channel_base=384, channel_max=12)
    with pytest.raises(ConfigError, match="positional encoding"):
        small_generator(channel_base=64, channel_max=16)
    with pytest.raises(ValueError, match="ws"):
        small_generator().synthesis(torch.zeros(2, 3, 16))


# ----------------------------------------------------------------------------- wavelet discriminator

def test_wavelet_discriminator_feeds_wavelet_bands_at_every_scale():
    torch.manual_seed(0)
    D = S.WaveletDiscriminator(32, 3, 10, channel_base=256, channel_max=32)
    assert (D.img_resolution, D.img_channels) == (32, 3)
    assert D.fromrgb.in_channels == 12 and len(D.blocks) == len(D.from_wavelets) == 2  # 16 -> 8 -> 4
    x, c = torch.randn(4, 3, 32, 32), torch.arange(4)
    assert D(x, c).shape == (4,)
    # Every scale looks at the image: the wavelet bands of the image downsampled to 8x8 and 4x4
    # reach the features through their own 1x1 convs.
    feats = D.features(x)
    with torch.no_grad():
        D.from_wavelets[-1].weight.zero_()
        D.from_wavelets[-1].bias.fill_(0.5)
    changed = D.features(x)
    assert (feats - changed).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\]"):
        D(torch.randn(2, 3, 16, 16), c[:2])


def test_wavelet_discriminator_spectral_norm_covers_the_wavelet_inputs():
    D = S.WaveletDiscriminator(32, 1, 0, channel_base=256, channel_max=32, spectral_norm=True)
    from torch.nn.utils import parametrize

    assert all(parametrize.is_parametrized(m, "weight") for m in D.from_wavelets)
    assert parametrize.is_parametrized(D.fromrgb, "weight")
    assert D(torch.randn(2, 1, 32, 32)).shape == (2,)


# ----------------------------------------------------------------------------- presets

REDUCED = {  # the presets' architecture at test-sized widths
    "generator": dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=2048, channel_max=16, head_dim=4,
                      min_heads=2),
    "discriminator": dict(channel_base=1024, channel_max=16),
}


def compose_model(preset: str, reduced: bool = True, *overrides: str):
    from hydra import compose, initialize_config_dir

    from tests.conftest import ROOT

    overrides = [f"model.{part}.{k}={v}" for part, kv in REDUCED.items() for k, v in kv.items()
                 if reduced] + list(overrides)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name=f"model/{preset}", overrides=overrides).model


PRESETS = [("swin_gan", 32, 1, 10), ("swin_gan_32", 32, 3, 0), ("swin_gan_64", 64, 3, 0),
           ("swin_gan_128", 128, 3, 0), ("swin_gan_256", 256, 3, 5)]


def build_preset(model, resolution: int, channels: int, classes: int):
    from transgan.registry import build_discriminator, build_generator

    shape = dict(img_resolution=resolution, img_channels=channels, num_classes=classes)
    return build_generator(model.generator, **shape), build_discriminator(model.discriminator, **shape)


@pytest.mark.parametrize("preset,resolution,channels,classes", PRESETS)
def test_every_preset_at_full_width_wires_up(preset, resolution, channels, classes):
    """Published widths, on the meta device: shapes propagate through every layer, nothing is computed.

    (Spectral norm is off here: its power iterations are slow on meta tensors and change no shape.)
    """
    model = compose_model(preset, False, "model.discriminator.spectral_norm=false")
    assert model.resolution == resolution and model.generator.name == "swin_gan"
    with torch.device("meta"):
        G, D = build_preset(model, resolution, channels, classes)
        G.eval()  # no w_avg update (its per-class counts have no meta kernel)
        c = torch.arange(2) % classes if classes else None
        img = G(torch.randn(2, G.z_dim), c)
        assert img.shape == (2, channels, resolution, resolution)
        assert D(img, c).shape == (2,)
    stages = int(math.log2(resolution)) - 1
    assert G.num_ws == 2 * stages
    assert [s.blocks[0].attn.window for s in G.stages] == [min(2 ** (i + 2), model.generator.window)
                                                           for i in range(stages)]


@pytest.mark.parametrize("preset,resolution,channels,classes", [PRESETS[0], PRESETS[2]])
def test_presets_at_reduced_width_generate_finite_images(preset, resolution, channels, classes):
    model = compose_model(preset, reduced=preset != "swin_gan")
    torch.manual_seed(0)
    G, D = build_preset(model, resolution, channels, classes)
    c = torch.arange(2) % classes if classes else None
    with torch.no_grad():
        img = G(torch.randn(2, G.z_dim), c)
        logits = D(img, c)
    assert img.shape == (2, channels, resolution, resolution) and torch.isfinite(img).all()
    assert logits.shape == (2,) and torch.isfinite(logits).all()


def test_paper_presets_use_the_published_architecture():
    model = compose_model("swin_gan_256", reduced=False)
    g, d = model.generator, model.discriminator
    assert (g.z_dim, g.w_dim, g.mapping_layers, g.mapping_lr_multiplier) == (512, 512, 8, 0.01)
    assert (g.window, g.head_dim, g.min_heads, g.depth, g.mlp_ratio, g.spe) == (8, 32, 4, 2, 4.0, True)
    # StyleSwin 256 widths (G_channel_multiplier 2): 512 up to 64x64, then 256, 128.
    from transgan.models.common import stage_channels

    assert [stage_channels(r, g.channel_base, g.channel_max) for r in (4, 8, 16, 32, 64, 128, 256)] == [
        512, 512, 512, 512, 512, 256, 128]
    assert [S.stage_heads(c, g.head_dim, g.min_heads) for c in (512, 256, 128)] == [16, 8, 4]
    assert d.name == "stylegan2_wavelet" and d.spectral_norm


def test_styleswin_recipe_composes_with_the_published_values():
    from transgan.losses import build_loss
    from transgan.errors import ConfigError
    from transgan.train.config import compose_config

    def compose(*overrides: str):
        error = None
        for prefix in ("", "+"):  # `experiment=` once config.yaml lists the group, `+experiment=` before
            try:
                return compose_config([f"{prefix}experiment=styleswin_paper", *overrides])[0]
            except ConfigError as e:
                error = e
        raise error

    cfg = compose()
    assert cfg.model.resolution == 256 and cfg.model.discriminator.spectral_norm
    t = cfg.train
    assert (t.lr_g, t.lr_d, tuple(t.betas_g), tuple(t.betas_d)) == (5e-5, 2e-4, (0.0, 0.99), (0.0, 0.99))
    assert (t.n_critic, t.batch_size, t.ema_kimg, t.ema_rampup) == (1, 32, 10.0, None)
    loss = build_loss(cfg.loss)
    # gamma 10 on ImageNet-normalized images = 10 * 4 * mean(std^2) = 2.04 on [-1, 1] images
    assert (loss.adversarial, loss.r1_gamma, loss.d_reg_interval) == ("ns", 2.04, 16)
    assert (t.grad_clip, t.grad_clip_d_main) == (None, 5.0)  # D's main step only, as StyleSwin
    assert cfg.model.generator.adain_scale_init == 0.0 and not cfg.dataset.augment.hflip
    assert loss.style_mixing_prob == 0 and loss.pl_weight == 0 and loss.g_reg_interval is None
    assert compose("model=swin_gan_64").model.resolution == 64  # other sizes keep the recipe

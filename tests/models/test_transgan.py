"""TransGAN: the CIFAR preset against the public code's sizes (parameter and FLOP formulas
written out here), every preset's token/grid arithmetic and shapes, grid attention's locality,
projection conditioning against its formula, clear errors for bad configs, the gradient
penalty on the double-backward-safe kernel against the math kernel, and hybrid pairs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from transgan.errors import ConfigError
from transgan.losses import GANLoss, PhaseInputs, gradient_penalty, ns_d_loss, r1_penalty, wgan_d_loss
from transgan.models import transgan as T
from transgan.nn import attention as A
from transgan.registry import build_discriminator, build_generator

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
PRESETS = (32, 64, 128, 256)


def preset(kind: str, name: str) -> dict:
    """A generator/discriminator yaml of configs/model as a plain dict (with its ``name``)."""
    return OmegaConf.to_container(OmegaConf.load(CONFIGS / kind / f"{name}.yaml"))


def small_G(num_classes: int = 10, **kw) -> T.TransGANGenerator:
    opts = dict(z_dim=16, embed_dim=32, bottom_resolution=4, depths=(1, 1, 1), num_heads=2,
                global_attention_tokens=64, grid_size=4)
    return T.TransGANGenerator(16, 1, num_classes, **{**opts, **kw})


SMALL_D = dict(patch_size=2, embed_dims=(12, 4), depths=(1, 1), num_heads=2, global_attention_tokens=32, grid_size=4)


def small_D(num_classes: int = 10, **kw) -> T.TransGANDiscriminator:
    return T.TransGANDiscriminator(16, 1, num_classes, **{**SMALL_D, **kw})


# ----------------------------------------------------------------------------- the CIFAR preset vs the public code

def public_block_params(d: int, heads: int, rel_window: int, mlp_ratio: int = 4) -> int:
    """One block of the public code: 2 LayerNorms, qkv (no bias), proj, MLP d-4d-d, rel-pos table."""
    h = mlp_ratio * d
    params = 2 * 2 * d + 3 * d * d + (d * d + d) + (d * h + h) + (h * d + d)
    return params + ((2 * rel_window - 1) ** 2 * heads if rel_window else 0)


def test_cifar_preset_has_the_public_models_parameter_count():
    # exps/cifar_train.py: latent 256, gf_dim 1024, bottom 8, g_depth 5,4,2; df_dim 384, patch 2, d_depth 3.
    g_public = (256 * 64 * 1024 + 64 * 1024                          # l1
                + 64 * 1024 + 256 * 256 + 1024 * 64                  # pos_embed_1..3
                + 5 * public_block_params(1024, 4, 8) + 4 * public_block_params(256, 4, 16)
                + 2 * public_block_params(64, 4, 32)
                + 64 * 3 + 3)                                        # deconv (1x1)
    d_public = (3 * 4 * 288 + 288 + 3 * 16 * 96 + 96                 # fRGB_1 (k2), fRGB_2 (k4)
                + 384 + 256 * 288 + 64 * 384                         # cls token, pos_embed_1, pos_embed_2
                + 3 * public_block_params(288, 4, 16) + 3 * public_block_params(384, 4, 8)
                + public_block_params(384, 4, 0)                     # last block (no rel-pos)
                + 2 * 384 + 384 + 1)                                 # norm, head
    with torch.device("meta"):
        G = build_generator(preset("generator", "transgan_32"), 32, 3, 0)
        D = build_discriminator(preset("discriminator", "transgan_32"), 32, 3, 0)
    assert g_public == 83_312_495
    assert sum(p.numel() for p in G.parameters()) == g_public
    assert sum(p.numel() for p in D.parameters()) == d_public  # public: + 7 noise strengths


def transgan_generator_flops(z_dim: int, stages: list[tuple[int, int, int, int]], channels: int) -> int:
    """Forward FLOPs (2 per multiply-add) of one image: stages (side, width, depth, attention window side)."""
    side0, d0 = stages[0][:2]
    flops = 2 * z_dim * side0 * side0 * d0                              # z -> bottom tokens
    for side, d, depth, window in stages:
        n = side * side
        linear = 2 * n * (3 * d * d + d * d + 8 * d * d)                # qkv, proj, MLP
        attention = 2 * 2 * n * window * window * d                     # q k^T and a v
        flops += depth * (linear + attention)
    side, d = stages[-1][:2]
    return flops + 2 * side * side * d * channels                       # 1x1 conv to the image


def test_model_stats_tool_reports_cifar_parameters_and_flops(repo_root, capsys):
    spec = importlib.util.spec_from_file_location("model_stats_tool", repo_root / "tools" / "model_stats.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    stats = tool.model_stats(["model=transgan_32", "dataset.channels=3"], num_classes=0)
    G = stats["generator"]
    assert G["parameters"] == 83_312_495
    expected = transgan_generator_flops(256, [(8, 1024, 5, 8), (16, 256, 4, 16), (32, 64, 2, 32)], 3)
    assert G["flops_per_image"] == expected == 10_788_143_104
    assert G["attention_flops_per_image"] == 4 * (5 * 64 * 64 * 1024 + 4 * 256 * 256 * 256 + 2 * 1024 * 1024 * 64)
    assert [s["attention"] for s in G["stages"]] == ["global"] * 3
    assert tool.main(["model=transgan_32", "dataset.channels=3", "--classes", "0"]) == 0
    assert "83,312,495" in capsys.readouterr().out


def test_paper_recipe_preset_sets_the_papers_training_recipe(repo_root):
    from transgan.train.config import compose_config

    # `experiment=` once configs/config.yaml lists `experiment: null` in its defaults, `+experiment=` before.
    listed = "experiment" in str(OmegaConf.load(repo_root / "configs" / "config.yaml").defaults)
    select = "experiment=transgan_paper" if listed else "+experiment=transgan_paper"
    cfg, _ = compose_config([select])
    t, loss = cfg.train, cfg.loss
    assert (loss.adversarial, loss.gp_weight, loss.drift_weight) == ("wgan", 10.0, 1e-3)
    assert (t.lr_g, t.lr_d, tuple(t.betas_g), tuple(t.betas_d)) == (1e-4, 1e-4, (0.0, 0.99), (0.0, 0.99))
    assert (t.n_critic, t.grad_clip, t.ema_rampup) == (4, 5.0, 0.1)
    # the public code's DiffAugment: translation by 1/5, batch-wise clipped cutout (p 0.3), color
    assert t.augment == "diffaugment"
    assert t.diffaugment.split(",") == ["translation_transgan", "cutout_transgan", "color"]
    assert cfg.model.resolution == 32 and list(cfg.model.generator.depths) == [5, 4, 2]
    cfg, _ = compose_config([select, "model=transgan_64", "train.n_critic=5"])  # the command line wins
    assert cfg.model.resolution == 64 and cfg.train.n_critic == 5 and cfg.loss.drift_weight == 1e-3


# ----------------------------------------------------------------------------- presets: token arithmetic, shapes

# (side, width, attention, window side) per stage, from the preset comments.
EXPECTED_G = {
    32: [(8, 1024, "global", 8), (16, 256, "global", 16), (32, 64, "global", 32)],
    64: [(8, 1024, "global", 8), (16, 1024, "global", 16), (32, 256, "global", 32), (64, 64, "grid", 16)],
    128: [(8, 1024, "global", 8), (16, 1024, "global", 16), (32, 1024, "global", 32), (64, 256, "grid", 16),
          (128, 64, "grid", 16)],
    256: [(8, 1024, "global", 8), (16, 1024, "global", 16), (32, 1024, "global", 32), (64, 256, "grid", 16),
          (128, 64, "grid", 16), (256, 16, "grid", 16)],
}
EXPECTED_D = {
    32: [(16, 288, "global", 16), (8, 384, "global", 8)],
    64: [(32, 96, "global", 32), (16, 192, "global", 16), (8, 384, "global", 8)],
    128: [(32, 96, "global", 32), (16, 192, "global", 16), (8, 384, "global", 8)],
    256: [(64, 96, "grid", 8), (32, 192, "global", 32), (16, 384, "global", 16)],
}


@pytest.mark.parametrize("R", PRESETS)
def test_preset_builds_with_its_token_grid_layout_and_shapes(R):
    with torch.device("meta"):  # full-size networks, nothing allocated
        G = build_generator(preset("generator", f"transgan_{R}"), R, 3, 10)
        D = build_discriminator(preset("discriminator", f"transgan_{R}"), R, 3, 10)
        c = torch.zeros(2, dtype=torch.long)
        x = G(torch.zeros(2, G.z_dim), c)
        logits = D(x, c)
    assert [(s.resolution, s.dim, s.attention, s.window) for s in G.stages_plan] == EXPECTED_G[R]
    assert [(s.resolution, s.dim, s.attention, s.window) for s in D.stages_plan] == EXPECTED_D[R]
    for s in G.stages_plan + D.stages_plan:
        assert s.resolution % s.window == 0 and (s.window * s.window <= 1024)  # no attention over > 1,024 tokens
    assert x.shape == (2, 3, R, R) and logits.shape == (2,)


@pytest.mark.parametrize("R, upsample", [(128, ["bicubic", "bicubic", "pixel_shuffle", "pixel_shuffle"]),
                                         (256, ["bicubic", "bicubic", "pixel_shuffle", "pixel_shuffle",
                                                "pixel_shuffle"])])
def test_high_resolution_layouts_run_at_reduced_width(R, upsample):
    # The presets' stage layout at width 64 (blocks only from the 32x32 stage on, to stay cheap).
    depths = [0, 0, 1, 1, 1] + [0] * (len(upsample) - 4)
    G = T.TransGANGenerator(R, 3, 4, z_dim=8, embed_dim=64, bottom_resolution=8, depths=depths,
                            num_heads=[4, 4, 4, 4] + [1] * (len(upsample) - 3), upsample=upsample, grid_size=16,
                            global_attention_tokens=1024)
    D = T.TransGANDiscriminator(R, 3, 4, patch_size=4, embed_dims=(8, 8, 16), depths=(1, 1, 1), num_heads=2,
                                grid_size=8, global_attention_tokens=1024)
    c = torch.tensor([3])
    x = G(torch.randn(1, 8), c)
    assert x.shape == (1, 3, R, R) and x.abs().max() <= 1
    assert [s.attention for s in G.stages_plan][2:5] == ["global", "grid", "grid"]
    D(x, c).sum().backward()
    assert all(p.grad is not None for p in G.parameters())


def test_digits_default_is_small_and_conditional():
    G = build_generator(preset("generator", "transgan"), 32, 1, 10)
    D = build_discriminator(preset("discriminator", "transgan"), 32, 1, 10)
    c = torch.arange(4)
    x = G(torch.randn(4, G.z_dim), c)
    assert x.shape == (4, 1, 32, 32) and D(x, c).shape == (4,)
    assert sum(p.numel() for p in G.parameters()) + sum(p.numel() for p in D.parameters()) < 2_000_000


# ----------------------------------------------------------------------------- blocks

def test_grid_attention_stays_inside_its_cells_and_global_attention_does_not():
    torch.manual_seed(0)
    side, cell = 8, 4
    grid = T.TransformerBlock(16, 2, resolution=side, window=cell)
    full = T.TransformerBlock(16, 2, resolution=side, window=side)
    x = torch.randn(1, side * side, 16)
    y = x.clone()
    y[0, 0] += torch.randn(16)                      # change token (0, 0): top-left cell only
    in_cell = torch.zeros(side, side, dtype=torch.bool)
    in_cell[:cell, :cell] = True
    in_cell = in_cell.flatten()
    changed = (grid(x) - grid(y)).abs().amax(-1)[0] > 1e-6
    assert changed[in_cell].all() and not changed[~in_cell].any()
    assert ((full(x) - full(y)).abs().amax(-1)[0] > 1e-6).all()


def test_block_is_pre_norm_attention_then_mlp():
    torch.manual_seed(0)
    block = T.TransformerBlock(8, 2, resolution=None)
    x = torch.randn(2, 5, 8)
    q, k, v = block.attn.qkv(block.norm1(x)).reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) / 2.0).softmax(-1) @ v            # scale 1/sqrt(4)
    h = x + block.attn.proj(attn.transpose(1, 2).reshape(2, 5, 8))
    expected = h + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(h))))
    torch.testing.assert_close(block(x), expected)


def test_sinusoidal_positions_are_fixed_and_learned_ones_train():
    G = small_G(pos_embed="sinusoidal", embed_dim=64)
    assert not any("pos_embeds" in n for n, _ in G.named_parameters())
    assert sum("pos_embeds" in n for n, _ in small_G().named_parameters()) == 3


def test_pixel_norm_option_normalizes_each_token_by_its_rms():
    block = T.TransformerBlock(8, 2, resolution=None, norm="pixel")
    x = torch.randn(2, 5, 8) * 3
    torch.testing.assert_close(block.norm1(x), x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-8))
    assert not list(block.norm1.parameters())


def test_discriminator_pools_the_fine_stage_and_concatenates_the_coarse_patches():
    torch.manual_seed(0)
    D = small_D(num_classes=0)
    x = torch.randn(2, 1, 16, 16)
    # Stage 1 by hand: 2x2 patches -> 8x8 x 12 tokens, + positions, one block.
    fine = D.stages[0][0](D.pos_embeds[0](D.patch_embeds[0](x).flatten(2).transpose(1, 2)))
    pooled = F.avg_pool2d(fine.transpose(1, 2).reshape(2, 12, 8, 8), 2).flatten(2).transpose(1, 2)
    coarse = D.patch_embeds[1](x).flatten(2).transpose(1, 2)               # 4x4 patches -> 4x4 x 4
    h = D.stages[1][0](D.pos_embeds[1](torch.cat([pooled, coarse], dim=-1)))
    h = D.last_blocks[0](torch.cat([D.cls_token.expand(2, -1, -1), h], dim=1))
    torch.testing.assert_close(D(x), D.head(D.norm(h[:, 0])).squeeze(1))


# ----------------------------------------------------------------------------- conditioning

def test_class_labels_change_generator_outputs():
    torch.manual_seed(0)
    G = small_G()
    z = torch.randn(3, 16).repeat(2, 1)
    x = G(z, torch.tensor([0, 1, 2, 3, 4, 5]))
    assert (x[:3] - x[3:]).abs().amax(dim=(1, 2, 3)).min() > 1e-4


def test_discriminator_projection_conditioning_formula():
    torch.manual_seed(0)
    D = small_D()
    with torch.no_grad():
        D.class_embed.weight.normal_()
    x, c = torch.randn(4, 1, 16, 16), torch.tensor([0, 3, 3, 9])
    h = D.features(x)
    expected = D.head(h).squeeze(1) + (D.class_embed.weight[c] * h).sum(1)
    torch.testing.assert_close(D(x, c), expected)
    assert (D(x, c) - D(x, (c + 1) % 10)).abs().min() > 1e-6


def test_class_embedding_starts_at_glorot_scale_like_the_conv_critics_projection():
    # Glorot-uniform: std sqrt(2 / (fan_in + fan_out)); ViT's 0.02 left the class term ~0.1 of a logit
    # (docs/ablation.md, "ViT critic conditioning: measured").
    torch.manual_seed(0)
    D = build_discriminator(OmegaConf.to_container(OmegaConf.load(CONFIGS / "discriminator/transgan.yaml")),
                            32, 1, 10, attention="math")
    n, dim = D.class_embed.weight.shape
    assert D.class_embed.weight.std().item() == pytest.approx((2 / (n + dim)) ** 0.5, rel=0.15)
    assert D.class_embed.weight.abs().max().item() <= (6 / (n + dim)) ** 0.5


def test_conditioning_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"is conditional \(10 classes\)"):
        small_G()(torch.randn(2, 16))
    with pytest.raises(ValueError, match="unconditional"):
        small_D(num_classes=0)(torch.randn(2, 1, 16, 16), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, 1, 16, 16\]"):
        small_D()(torch.randn(2, 3, 16, 16), torch.zeros(2, dtype=torch.long))


# ----------------------------------------------------------------------------- bad configs

@pytest.mark.parametrize("kind, options, message", [
    ("generator", dict(global_attention_tokens=64, grid_size=12), "not divisible by grid_size=12"),
    ("generator", dict(embed_dim=1024, num_heads=3), "not divisible by num_heads=3"),
    ("generator", dict(depths=[5, 4]), "gives 16x16 images"),
    ("generator", dict(upsample="nearest"), "upsample"),
    ("generator", dict(embed_dim=1026), "not divisible by 4"),
    ("generator", dict(num_heads=[4, 4]), "num_heads has 2 entries"),
    ("generator", dict(pos_embed="rope"), "pos_embed"),
    ("generator", dict(attention_kernel="flash"), "attention kernel must be one of"),
    ("discriminator", dict(patch_size=3), "divisible by 6"),
    ("discriminator", dict(embed_dims=[288, 97]), "not divisible by num_heads=4"),
    ("discriminator", dict(global_attention_tokens=64, grid_size=5), "not divisible by grid_size=5"),
    ("discriminator", dict(depths=[3]), "depths"),
])
def test_bad_config_fails_at_construction_with_a_clear_message(kind, options, message):
    cfg = {**preset(kind, "transgan_32"), **options}
    build = build_generator if kind == "generator" else build_discriminator
    with torch.device("meta"), pytest.raises(ConfigError, match=message):
        build(cfg, 32, 3, 0)


# ----------------------------------------------------------------------------- gradient penalty kernels

def test_gradient_penalty_runs_on_the_safe_kernel_and_matches_the_math_kernel(monkeypatch):
    torch.manual_seed(0)
    D_auto = small_D(attention_kernel=None)   # null: the default setting, auto
    D_math = small_D(attention_kernel="math")
    D_math.load_state_dict(D_auto.state_dict())
    real, fake = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)
    c, eps = torch.tensor([1, 2, 3, 4]), torch.rand(4)

    chunked_calls = []
    original = A.chunked_attention

    def counting_chunked(*args, **kwargs):
        chunked_calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(A, "chunked_attention", counting_chunked)

    def gp_grads(D):
        gp = gradient_penalty(D, real, fake, c, eps=eps).mean()
        grads = torch.autograd.grad(gp, list(D.parameters()), allow_unused=True)  # e.g. the head bias
        return gp, [torch.zeros_like(p) if g is None else g for p, g in zip(D.parameters(), grads)]

    assert D_auto.attention_kernel == "auto"
    assert A.resolve_kernel(D_auto.attention_kernel, torch.randn(1, 2, 4, 4)) == "sdpa"  # outside the penalty
    gp_auto, grads_auto = gp_grads(D_auto)
    n_attention = sum(len(s) for s in D_auto.stages) + len(D_auto.last_blocks)
    assert len(chunked_calls) == n_attention      # every attention of the penalty pass ran chunked
    chunked_calls.clear()
    gp_math, grads_math = gp_grads(D_math)
    assert not chunked_calls                      # the explicit math kernel stays math
    torch.testing.assert_close(gp_auto, gp_math, rtol=0, atol=1e-5)
    assert max(g.abs().max() for g in grads_math) > 1e-3
    for g_auto, g_math in zip(grads_auto, grads_math):
        torch.testing.assert_close(g_auto, g_math, rtol=0, atol=1e-5)


def _penalized_d_loss(D, penalty: str, real, fake, c, eps):
    """The discriminator's loss of one step: WGAN + gradient penalty, or non-saturating + R1."""
    if penalty == "wgan_gp":
        return wgan_d_loss(D(real, c), D(fake, c)) + 10.0 * gradient_penalty(D, real, fake, c, eps=eps).mean()
    return ns_d_loss(D(real, c), D(fake, c)) + 0.5 * r1_penalty(D, real, c).mean()


@pytest.mark.parametrize("penalty", ["wgan_gp", "r1"])
@pytest.mark.parametrize("kernel", A.KERNELS)   # xformers runs as sdpa off CUDA
def test_activation_checkpointing_trains_like_the_plain_discriminator_under_penalties(kernel, penalty):
    """The recomputation re-enters the penalty pass's kernel choice, so the saved tensors match."""
    torch.manual_seed(0)
    plain = build_discriminator({"name": "transgan", **SMALL_D}, 16, 1, 10, attention=kernel)
    checkpointed = build_discriminator({"name": "transgan", **SMALL_D, "gradient_checkpointing": True}, 16, 1, 10,
                                       attention=kernel)
    assert plain.attention_kernel == checkpointed.attention_kernel == kernel
    checkpointed.load_state_dict(plain.state_dict())
    optimizers = [torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.99)) for D in (plain, checkpointed)]
    for _ in range(2):
        real, fake = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)
        c, eps = torch.randint(0, 10, (4,)), torch.rand(4)
        grads = []
        for D, opt in zip((plain, checkpointed), optimizers):
            opt.zero_grad()
            _penalized_d_loss(D, penalty, real, fake, c, eps).backward()
            grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in D.parameters()])
            opt.step()
        assert max(g.abs().max() for g in grads[0]) > 1e-4
        for g_plain, g_checkpointed in zip(*grads):
            torch.testing.assert_close(g_checkpointed, g_plain, rtol=1e-5, atol=1e-7)
    for p_plain, p_checkpointed in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p_checkpointed, p_plain, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- hybrids

def _train_a_few_steps(G, D, num_classes: int, steps: int = 3) -> None:
    loss = GANLoss("wgan", gp_weight=10.0, drift_weight=1e-3)
    opt_G = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.99))
    opt_D = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.99))
    before_G = [p.detach().clone() for p in G.parameters()]
    before_D = [p.detach().clone() for p in D.parameters()]
    for _ in range(steps):
        real = torch.rand(4, G.img_channels, G.img_resolution, G.img_resolution) * 2 - 1
        c = torch.randint(0, num_classes, (4,))
        d_loss, stats = loss.d_main(G, D, PhaseInputs(real, c, torch.randn(4, G.z_dim), c))
        opt_D.zero_grad()
        d_loss.backward()
        opt_D.step()
        g_loss, _ = loss.g_main(G, D, PhaseInputs(z=torch.randn(4, G.z_dim), c_fake=c))
        opt_G.zero_grad()
        g_loss.backward()
        opt_G.step()
        assert torch.isfinite(d_loss) and torch.isfinite(g_loss) and stats["gp"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before_G, G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_D, D.parameters()))


@pytest.mark.parametrize("g_name, d_name", [("transgan", "cwgan_gp"), ("cwgan_gp", "transgan")])
def test_hybrid_pairs_train_with_wgan_gp(g_name, d_name):
    torch.manual_seed(0)
    G = build_generator(preset("generator", g_name), 32, 1, 10)
    D = build_discriminator(preset("discriminator", d_name), 32, 1, 10)
    _train_a_few_steps(G, D, 10, steps=2)


def test_training_tool_refuses_a_bad_transgan_config_before_writing(repo_root, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_tool", repo_root / "tools" / "train.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    run_dir = tmp_path / "run"
    code = tool.main(["model=transgan", "model.generator.grid_size=12", f"hydra.run.dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 2 and "grid_size=12" in err
    assert not run_dir.exists()

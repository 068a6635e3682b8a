"""The attention kernel travels with the network: the registry's builders give every attention of a
backbone the run's ``model.attention`` at construction, a network config's own ``attention_kernel``
wins, and forward passes run that kernel (spied at the dispatcher)."""

from __future__ import annotations

import pytest
import torch

from transgan.nn import attention as A
from transgan.nn.style import StyleTokenAttention
from transgan.errors import ConfigError
from transgan.registry import build_discriminator, build_generator

# (builder, config, resolution) of tiny networks of every backbone that has attention.
BACKBONES = {
    "transgan G": (build_generator, dict(name="transgan", z_dim=16, embed_dim=32, bottom_resolution=4,
                                         depths=[1, 1, 1], num_heads=2, global_attention_tokens=64, grid_size=4), 16),
    "transgan D": (build_discriminator, dict(name="transgan", patch_size=2, embed_dims=[12, 4], depths=[1, 1],
                                             num_heads=2, global_attention_tokens=32, grid_size=4), 16),
    "swin_gan": (build_generator, dict(name="swin_gan", z_dim=16, w_dim=16, mapping_layers=2, channel_base=128,
                                       channel_max=16, head_dim=4, min_heads=2, mlp_ratio=2.0, window=4), 8),
    "styletoken": (build_generator, dict(name="styletoken", z_dim=16, w_dim=16, mapping_layers=2, channel_base=256,
                                         channel_max=16, num_style_tokens=4, head_dim=8), 16),
}


def _kernels(net: torch.nn.Module) -> set[str]:
    """The kernel settings of every attention in ``net``."""
    return {m.kernel for m in net.modules() if isinstance(m, (A.Attention, StyleTokenAttention))}


def _forward(net: torch.nn.Module, resolution: int) -> None:
    if hasattr(net, "z_dim"):
        net(torch.randn(2, net.z_dim), None)
    else:
        net(torch.randn(2, 1, resolution, resolution), None)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_attention_of_a_backbone_gets_the_runs_kernel_and_runs_it(backbone, kernels_run):
    build, cfg, resolution = BACKBONES[backbone]
    calls = kernels_run
    net = build(cfg, resolution, 1, 0, attention="math")
    assert net.attention_kernel == "math" and _kernels(net) == {"math"}
    _forward(net, resolution)
    assert calls and set(calls) == {"math"}

    calls.clear()
    net = build(cfg, resolution, 1, 0)  # no run setting: the default, auto (sdpa on CPU)
    assert net.attention_kernel == "auto" and _kernels(net) == {"auto"}
    _forward(net, resolution)
    assert calls and set(calls) == {"sdpa"}

    # The network's own setting wins over the run's.
    net = build({**cfg, "attention_kernel": "chunked"}, resolution, 1, 0, attention="math")
    assert net.attention_kernel == "chunked" and _kernels(net) == {"chunked"}


def test_backbones_without_attention_take_the_setting_but_a_bad_name_is_refused():
    from transgan.train.config import compose_config

    G = build_generator({"name": "cwgan_gp"}, 16, 1, 0, attention="math")
    assert not hasattr(G, "attention_kernel")
    # model.attention is checked once, by the config schema, whatever the backbone
    with pytest.raises(ConfigError, match=r"model.attention must be one of .*'flash'"):
        compose_config(["model=cwgan_gp", "model.attention=flash"])
    # a backbone's own attention_kernel by the attention layers that take it
    with pytest.raises(ConfigError, match=r"attention kernel must be one of .*'flash'"):
        build_generator({**BACKBONES["styletoken"][1], "attention_kernel": "flash"}, 16, 1, 0)

"""Small generators for the generation and serving tests: real run directories written by the Trainer,
and a tiny StyleGAN2 built through the registry.

Each run is made once per test session and shared by tests/eval and tests/serve: two training
steps of a 16x16 cwgan_gp on digits (about 10 s on two cores), and one step of a 16x16 TransGAN
trained with ``model.attention=math`` (about 5 s), whose kernel evaluation, generation and
serving must rebuild (the ``kernels_run`` fixture of tests/conftest.py records the kernels that ran).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

_RUNS: dict[str, Path] = {}

TINY_RUN = ["model=cwgan_gp", "dataset=digits", "model.resolution=16", "train.batch_size=16", "train.n_critic=1",
            "train.max_steps=2", "train.log_every=1", "train.cpu_threads=1"]


MATH_RUN = ["model=transgan", "model.attention=math", "dataset=digits", "model.resolution=16",
            "model.generator.bottom_resolution=4", "train.batch_size=8", "train.n_critic=1", "train.max_steps=1",
            "train.log_every=1", "train.cpu_threads=1"]


def _train_once(key: str, overrides: list[str], tmp_path_factory) -> Path:
    """A tools/train.py run directory (config.yaml + checkpoint) for ``overrides``, made once per session."""
    if key not in _RUNS:
        from transgan.train.config import compose_config
        from transgan.train.build import build_trainer

        run = tmp_path_factory.mktemp(f"tiny_{key}_run") / "run"
        cfg, _ = compose_config([*overrides, f"hydra.run.dir={run}"])
        threads = torch.get_num_threads()
        try:
            build_trainer(cfg, str(run)).train()
        finally:
            torch.set_num_threads(threads)  # the Trainer sets torch's threads; leave other tests as they were
        _RUNS[key] = run
    return _RUNS[key]


def tiny_digits_run(tmp_path_factory) -> Path:
    """A run directory of a conditional digits model (cwgan_gp), made once."""
    return _train_once("digits", TINY_RUN, tmp_path_factory)


def tiny_math_attention_run(tmp_path_factory) -> Path:
    """A run directory of a conditional digits TransGAN trained with ``model.attention=math``, made once."""
    return _train_once("math_attention", MATH_RUN, tmp_path_factory)


STYLE_CONFIG = {"name": "stylegan2", "z_dim": 16, "w_dim": 16, "mapping_layers": 2, "channel_base": 256,
                "channel_max": 16}


def tiny_style_generator(num_classes: int = 4, resolution: int = 16, channels: int = 3) -> nn.Module:
    """A StyleGAN2 of a few thousand weights, with non-trivial w_avg and noise strengths (as after training)."""
    from transgan.registry import build_generator

    torch.manual_seed(0)
    G = build_generator(STYLE_CONFIG, img_resolution=resolution, img_channels=channels, num_classes=num_classes)
    with torch.no_grad():
        G.mapping.w_avg.normal_()  # a fresh table is all zeros: truncation toward it would hide a lost buffer
        for name, p in G.named_parameters():
            if name.endswith("strength"):
                p.fill_(0.3)  # noise on: a sample that drew random noise would not repeat
    return G.eval().requires_grad_(False)

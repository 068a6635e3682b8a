"""Small generators for the generation and serving tests: a real run directory written by the Trainer,
and a tiny StyleGAN2 built through the registry.

The run is made once per test session (two training steps of a 16x16 cwgan_gp on digits, about
10 s on two cores) and shared by tests/eval/test_generate.py and tests/serve/.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

_RUNS: dict[str, Path] = {}

TINY_RUN = ["model=cwgan_gp", "dataset=digits", "model.resolution=16", "train.batch_size=16", "train.n_critic=1",
            "train.max_steps=2", "train.log_every=1", "train.cpu_threads=1"]


def tiny_digits_run(tmp_path_factory) -> Path:
    """A tools/train.py run directory (config.yaml + checkpoint) of a conditional digits model, made once."""
    if "digits" not in _RUNS:
        from transgan.train.config import compose_config
        from transgan.train.trainer import Trainer

        run = tmp_path_factory.mktemp("tiny_digits_run") / "run"
        cfg, _ = compose_config([*TINY_RUN, f"hydra.run.dir={run}"])
        threads = torch.get_num_threads()
        try:
            Trainer(cfg, str(run)).train()
        finally:
            torch.set_num_threads(threads)  # the Trainer sets torch's threads; leave other tests as they were
        _RUNS["digits"] = run
    return _RUNS["digits"]


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

"""A few training steps of small configurations that together run every phase, recorded as tensors.

``python -m tests.train.golden_runs`` (run from the repository root, 1 thread) writes
``tests/fixtures/golden_training/<name>.safetensors`` and the checkpoint ``<name>.pt`` from the
code of the day; tests/train/test_golden_training.py trains the same configurations with the code
of today and compares. Recorded at commit d2894a4 (before the training state got one owner).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "golden_training"

# NCHW, as they were recorded (the CPU default then; NHWC rounds convolutions otherwise).
COMMON = ["dataset=digits", "model.resolution=16", "train.channels_last=false", "train.batch_size=8",
          "train.log_every=1", "train.sample_every=1000", "train.eval_every=1000", "train.ckpt_every=1000",
          "train.cpu_threads=1", "dataset.num_workers=0", "eval.metrics=[]", "seed=3"]

NARROW_CONV = ["model.generator.channel_max=16", "model.discriminator.channel_max=16"]

# name -> overrides: WGAN-GP with n_critic 2 and a BatchNorm G; ADA with gradient accumulation and G's own
# batch; StyleGAN2 with lazy R1 and lazy path length (all four phases) and style mixing.
CONFIGS = {
    "conv_wgan_gp": ["model=cwgan_gp", *NARROW_CONV, "loss=wgan_gp", "train.n_critic=2", "train.max_steps=3"],
    "conv_ada_accum": ["model=cwgan_gp", *NARROW_CONV, "loss=hinge", "train.n_critic=1", "train.grad_accum=2",
                       "train.batch_size_g=16", "train.augment=ada", "train.ada_target=0.0", "train.ada_interval=1",
                       "train.ada_kimg=0.1", "train.max_steps=3"],
    "style_lazy": ["model=stylegan2", "model.generator.channel_base=256", "model.generator.channel_max=16",
                   "model.discriminator.channel_base=256", "model.discriminator.channel_max=16", "loss=ns_r1_pl",
                   "loss.r1_interval=2", "loss.pl_interval=2", "loss.style_mixing_prob=0.9", "train.n_critic=1",
                   "train.max_steps=4"],
}


def train(name: str, run_dir: Path) -> dict:
    """Train CONFIGS[name] into ``run_dir``; return its final checkpoint."""
    from transgan.runs.checkpoint import latest_checkpoint, load_checkpoint
    from transgan.train.config import compose_config
    from transgan.train.build import build_trainer

    cfg, _ = compose_config([*CONFIGS[name], *COMMON, f"hydra.run.dir={run_dir}"])
    threads = torch.get_num_threads()
    try:
        build_trainer(cfg, str(run_dir)).train()
    finally:
        torch.set_num_threads(threads)
    return load_checkpoint(latest_checkpoint(run_dir))


def tensors(state: dict) -> dict[str, torch.Tensor]:
    """The networks' weights and buffers and the loss state of a checkpoint, flat."""
    out = {f"{net}.{k}": v.contiguous() for net in ("G", "D", "G_ema") for k, v in state[net].items()}
    out.update({f"loss.{k}": v.contiguous() for k, v in state["loss"].items()})
    return out


def main() -> None:
    """Record every configuration (tensors and the checkpoint itself)."""
    import shutil
    import tempfile

    from safetensors.torch import save_file

    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name in CONFIGS:
        with tempfile.TemporaryDirectory() as tmp:
            state = train(name, Path(tmp) / "run")
            save_file(tensors(state), str(FIXTURES / f"{name}.safetensors"))
            if name == "conv_wgan_gp":  # a checkpoint as the code of the day wrote it
                shutil.copy(sorted((Path(tmp) / "run" / "checkpoints").glob("step-*.pt"))[-1],
                            FIXTURES / f"{name}.pt")
        print(f"wrote {FIXTURES / name}")


if __name__ == "__main__":
    sys.exit(main())

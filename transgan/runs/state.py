"""The training state and the one definition of the checkpoint layout.

:class:`TrainingState` holds G, D, G_ema, both optimizers, the loss (with the augmentation it
sees through), ADA's p controller and the progress counters. It is built from a run's config
(:meth:`TrainingState.build`), and alone turns itself into a checkpoint (:meth:`state_dict`) and
back (:meth:`load_state_dict`). The trainer, the converter of official checkpoints and the
loaders of eval/generate/serve all go through this module, so a converted run and a trained run
have the same keys (``CHECKPOINT_KEYS``).

It lives in ``transgan/runs`` (not ``transgan/train``) because the loaders of eval, generate and
serve read checkpoints too and must not import the trainer; it imports the losses, augmentation
and registry below it, nothing above.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from transgan.augment import ADAPipeline, AdaptiveAugment, DiffAugment
from transgan.losses import GANLoss, build_loss, lazy_regularization_hparams
from transgan.registry import build_discriminator, build_generator
from transgan.runs.checkpoint import FORMAT

CHECKPOINT_KEYS = ("format", "progress", "G", "D", "G_ema", "opt_G", "opt_D", "scaler", "loss", "augment", "rng",
                   "model", "class_names", "config")


@dataclasses.dataclass
class Progress:
    """Counters that define where training is; saved in every checkpoint."""

    step: int = 0            # G steps done
    d_steps: int = 0         # D steps done
    images_seen: int = 0     # real images shown to D
    data_position: int = 0   # global dataset indices consumed
    elapsed_s: float = 0.0   # training wall-clock time, summed over resumes
    overhead_s: float = 0.0  # part of elapsed_s spent on sample grids, evaluation and checkpoints
    skipped_steps: int = 0     # optimizer steps skipped for a non-finite loss or gradient
    nonfinite_in_row: int = 0  # training steps in a row, up to now, with such a skip


def model_signature(cfg: DictConfig, num_classes: int) -> dict[str, Any]:
    """What a checkpoint must agree with to be loadable into this run's networks."""
    return {
        "num_classes": int(num_classes),  # also lets eval/generate rebuild G without the dataset
        "generator": OmegaConf.to_container(cfg.model.generator),
        "discriminator": OmegaConf.to_container(cfg.model.discriminator),
        "resolution": int(cfg.model.resolution),
        "channels": int(cfg.dataset.channels),
    }


def build_augment(train: DictConfig, ada: Optional[AdaptiveAugment]) -> nn.Module:
    """What D sees through (``train.augment``): ADA's pipeline driven by ``ada``, DiffAugment, or nothing."""
    if train.augment == "ada":
        return ADAPipeline(controller=ada)
    if train.augment == "diffaugment":
        return DiffAugment(train.diffaugment)
    return nn.Identity()


@dataclasses.dataclass
class TrainingState:
    """Everything a run trains or counts; the one owner of the checkpoint layout."""

    cfg: DictConfig
    G: nn.Module
    D: nn.Module
    G_ema: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    loss: GANLoss
    ada: Optional[AdaptiveAugment]
    progress: Progress
    num_classes: int
    class_names: list[str]

    @classmethod
    def build(cls, cfg: DictConfig, num_classes: int, class_names: Sequence[str] = (),
              networks: Optional[tuple[nn.Module, nn.Module, Optional[nn.Module]]] = None,
              channels_last: bool = False, fused: bool = True) -> "TrainingState":
        """A fresh state for a validated run config: new networks from ``cfg.seed`` (or the given
        ``networks`` = (G, D, G_ema or None)), optimizers with the lazy-regularization correction."""
        t = cfg.train
        # ADA's p controller (train.augment=ada): its state is checkpointed with the run.
        ada = (AdaptiveAugment(p=t.ada_p, target=t.ada_target, interval=t.ada_interval,
                               speed_images=max(1, round(t.ada_kimg * 1000))) if t.augment == "ada" else None)
        loss = build_loss(cfg.loss, augment=build_augment(t, ada))
        G_ema = None
        if networks is None:
            shape = dict(img_resolution=int(cfg.model.resolution), img_channels=int(cfg.dataset.channels),
                         num_classes=num_classes)
            torch.manual_seed(cfg.seed)  # identical initial weights on every process
            # The networks carry the run's attention kernel from construction (penalty passes switch to
            # a twice-differentiable one inside nn.attention.double_backward_safe).
            attention = cfg.model.get("attention")
            G = build_generator(cfg.model.generator, **shape, attention=attention)
            D = build_discriminator(cfg.model.discriminator, **shape, attention=attention)
        else:
            G, D, G_ema = networks
        if channels_last:
            # NHWC convolutions run on tensor cores without layout transposes. Converted before the
            # optimizers exist, so their state is created in the same layout.
            G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
        if G_ema is None:
            G_ema = copy.deepcopy(G)
        G_ema.eval().requires_grad_(False)
        lr_g, betas_g = lazy_regularization_hparams(t.lr_g, tuple(t.betas_g), loss.g_reg_interval)
        lr_d, betas_d = lazy_regularization_hparams(t.lr_d, tuple(t.betas_d), loss.d_reg_interval)
        # Fused Adam where torch has it: a few kernels per step instead of ~7 per parameter tensor.
        opt_G = torch.optim.Adam(G.parameters(), lr=lr_g, betas=betas_g, fused=fused)
        opt_D = torch.optim.Adam(D.parameters(), lr=lr_d, betas=betas_d, fused=fused)
        names = [str(n) for n in class_names] if num_classes else []
        return cls(cfg, G, D, G_ema, opt_G, opt_D, loss, ada, Progress(), int(num_classes), names)

    def state_dict(self, rng: list[dict[str, Any]], scaler: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """The checkpoint: this state plus every process's RNG states and the grad scaler's."""
        return {
            "format": FORMAT,
            "progress": dataclasses.asdict(self.progress),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "scaler": scaler,
            "loss": self.loss.state_dict(),
            "augment": self.ada.state_dict() if self.ada is not None else {},
            "rng": rng,
            "model": model_signature(self.cfg, self.num_classes),
            "class_names": list(self.class_names),
            "config": OmegaConf.to_yaml(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's networks, optimizers, loss state, ADA state and progress."""
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        _match_param_layouts(self.opt_G)
        _match_param_layouts(self.opt_D)
        self.loss.load_state_dict(state["loss"])
        self.progress = Progress(**state["progress"])
        if self.ada is not None and state.get("augment"):  # a run that turns ADA on later starts at ada_p
            self.ada.load_state_dict(state["augment"])


def saved_config(state: dict[str, Any]) -> DictConfig:
    """The config a checkpoint was written with (as saved: keys added since are absent)."""
    return OmegaConf.create(state["config"])


def saved_progress(state: dict[str, Any]) -> Progress:
    """The progress counters of a checkpoint."""
    return Progress(**state["progress"])


def saved_channels_last(state: dict[str, Any]) -> Optional[bool]:
    """Whether a checkpoint's networks were trained in NHWC (None when no convolution weight tells)."""
    for value in [*state["D"].values(), *state["G"].values()]:  # torch.save keeps strides
        if value.dim() == 4 and not (value.is_contiguous() and value.is_contiguous(memory_format=torch.channels_last)):
            return not value.is_contiguous()
    return None


def saved_num_classes(state: dict[str, Any]) -> Optional[int]:
    """The class count a checkpoint records (None for files from before it was recorded)."""
    recorded = state.get("model", {}).get("num_classes")
    return None if recorded is None else int(recorded)


def _match_param_layouts(opt: torch.optim.Optimizer) -> None:
    """Put loaded optimizer state in its parameter's memory layout (strides)."""
    # A checkpoint may come from a run with another channels_last, and fused Adam pairs a
    # parameter's elements with its state's by memory position: mismatched strides corrupt silently.
    for p, state in opt.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)

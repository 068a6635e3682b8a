"""A Trainer from a validated config: the data, the accelerator, the training state, a resume.

Everything that can refuse the config (the dataset, the networks' options, batch sizes, a
checkpoint of other networks, a run directory that already holds a run) is checked here,
before the run directory exists; :meth:`transgan.train.trainer.Trainer.train` creates it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import psutil
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from omegaconf import DictConfig, OmegaConf

from transgan.data import build_dataset
from transgan.errors import ConfigError
from transgan.registry import channels_last_on_cpu
from transgan.runs import checkpoint as ckpt
from transgan.runs.state import TrainingState, model_signature, saved_channels_last
from transgan.train.batches import BatchSource
from transgan.train.trainer import Evaluator, Trainer

log = logging.getLogger("transgan.train")


def build_trainer(cfg: DictConfig, run_dir_pattern: str, resume_from: Optional[Path] = None,
                  build_evaluator: Optional[Callable[[DictConfig], Optional[Evaluator]]] = None) -> Trainer:
    """The Trainer of a run: fresh, or continuing the checkpoint ``resume_from``; writes nothing yet.

    ``build_evaluator(cfg)`` makes the run's training-time metrics (the trainer imports no evaluation
    code); it is called once the data and networks have been accepted, so their errors come first.
    """
    t = cfg.train
    dataset = build_dataset(cfg.dataset, resolution=int(cfg.model.resolution))
    num_classes = dataset.num_classes if cfg.dataset.get("conditional", False) else 0
    acc = Accelerator(mixed_precision=t.mixed_precision, cpu=t.device == "cpu")
    if acc.device.type == "cpu":
        torch.set_num_threads(t.cpu_threads or max(1, _physical_cores() // acc.num_processes))
    else:
        torch.backends.cudnn.benchmark = True  # shapes repeat every step: let cuDNN pick its fastest kernels
    for key in ("batch_size", "batch_size_g"):
        if (t[key] or t.batch_size) % (acc.num_processes * t.grad_accum):
            raise ConfigError(f"train.{key}={t[key]} must be divisible by processes x grad_accum "
                              f"= {acc.num_processes} x {t.grad_accum}")
    if len(dataset) < t.batch_size:
        raise ConfigError(f"dataset has {len(dataset)} images, fewer than one batch ({t.batch_size})")
    saved = None if resume_from is None else ckpt.load_resume_checkpoint(resume_from, model_signature(cfg, num_classes))
    channels_last = t.channels_last
    if channels_last is None and saved is not None:
        channels_last = saved_channels_last(saved)  # continue in the layout it was trained in: bit for bit
    if channels_last is None:  # CUDA: for the tensor cores; CPU: oneDNN's NHWC convolutions, where faster
        channels_last = acc.device.type == "cuda" or channels_last_on_cpu(cfg.model)
    state = TrainingState.build(cfg, num_classes, dataset.class_names, channels_last=channels_last,
                                fused=acc.device.type in ("cuda", "cpu"))
    if any(p.needs_reals for p in state.loss.phases() if p.trains == "G") and (t.batch_size_g or t.batch_size) % t.batch_size:
        raise ConfigError(f"loss.adversarial={cfg.loss.adversarial} pairs each generated image with a real one in "
                          f"the G step too (drawn as whole batches): train.batch_size_g={t.batch_size_g} must be null "
                          f"or a multiple of train.batch_size={t.batch_size}")
    evaluator = build_evaluator(cfg) if build_evaluator is not None else None
    if saved is not None:
        with ckpt.unfit_state_is_refused(resume_from):
            state.load_state_dict(saved)

    # One run directory for all processes: the main process names it, the others hear it.
    name = [_resolve_run_dir(run_dir_pattern) if acc.is_main_process else None]
    broadcast_object_list(name)
    run_dir = Path(name[0])
    if saved is None and ckpt.list_checkpoints(run_dir):
        raise ConfigError(f"{run_dir} already holds a run; continue it with resume={run_dir} "
                          "or choose another hydra.run.dir")
    if saved is not None and acc.is_main_process:
        log.info("resuming from %s (step %d)", resume_from, state.progress.step)
    if t.compile:
        # In place, so state_dict keys and unwrap_model stay as they are. Regularization passes
        # run eagerly (transgan/losses.py): compiled graphs have no double backward.
        state.G.compile()
        state.D.compile()
    data = BatchSource(dataset, t.batch_size, cfg.seed, acc.process_index, acc.num_processes, acc.device,
                       num_workers=int(cfg.dataset.get("num_workers", 2)), position=state.progress.data_position)
    trainer = Trainer(cfg, acc, state, data, run_dir, evaluator, channels_last)
    if saved is not None and saved["scaler"] is not None and acc.scaler is not None:
        acc.scaler.load_state_dict(saved["scaler"])
    set_seed(cfg.seed + acc.process_index)  # each process draws its own z, augmentations, ...
    if saved is not None:
        ckpt.restore_rng_state(saved["rng"][acc.process_index])
    return trainer


def _physical_cores() -> int:
    """Physical CPU cores (logical ones where the count is unknown)."""
    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def _resolve_run_dir(pattern: str) -> str:
    """Resolve ``${now:...}`` in the run-dir pattern once, on the main process."""
    if not OmegaConf.has_resolver("now"):
        OmegaConf.register_new_resolver("now", lambda fmt: datetime.now().strftime(fmt))
    return str(OmegaConf.create({"d": pattern}).d)

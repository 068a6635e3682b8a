"""The Accelerate trainer: phases, lazy regularization, EMA, checkpoints, logging.

One training *step* is ``n_critic`` discriminator steps followed by one generator step
(WGAN-GP's schedule; ``n_critic=1`` gives StyleGAN2's). Lazy regularization is a phase
with its own interval (StyleGAN2-ADA): the D reg phase runs every ``loss.d_reg_interval``
D steps and the G reg phase every ``loss.g_reg_interval`` G steps, with the optimizer
lr/betas corrected for the interval. The loss object owns the mathematics; this file owns
only the schedule. It knows no backbone by name.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, Sequence

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from transgan.errors import ConfigError
from transgan.registry import build_discriminator, build_generator
from transgan.runs import checkpoint as ckpt
from transgan.train import faults
from transgan.train.batches import BatchSource
from transgan.train.config import (check_choices_match_run, compose_config, is_choice, model_signature,
                                   validate_config)
from transgan.models.common import recompute_norm_statistics
from transgan.train.ema import copied_buffers, ema_beta, update_ema

log = logging.getLogger("transgan.train")


@dataclass
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


def resolve_run(argv: Sequence[str]) -> tuple[DictConfig, str, Optional[Path]]:
    """Turn command-line overrides into (config, run-dir pattern, checkpoint to resume).

    With ``resume=<run dir>`` the run's saved config.yaml is the base and plain
    ``key=value`` overrides (e.g. ``train.max_steps=4000``) apply on top. The original
    command's group choices (``model=...``) and ``hydra.run.dir`` may be repeated; a choice
    that would change the run is refused.
    """
    resume = [a for a in argv if a.startswith("resume=")]
    if not resume or resume[-1] in ("resume=", "resume=null"):
        cfg, run_dir = compose_config([a for a in argv if not a.startswith("resume=")])
        return cfg, run_dir, None
    run_dir = Path(resume[-1].split("=", 1)[1]).expanduser()
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ckpt.CheckpointError(f"cannot resume from {run_dir}: no config.yaml there (is it a transgan run directory?)")
    latest = ckpt.latest_checkpoint(run_dir)
    base = OmegaConf.load(saved)
    rest = []
    for override in argv:
        key = override.split("=", 1)[0]
        if override.startswith("resume="):
            continue
        if key == "hydra.run.dir":  # the original command names the run's own directory
            given = Path(override.split("=", 1)[1]).expanduser()
            if given.resolve() != run_dir.resolve():
                raise ConfigError(f"on resume, hydra.run.dir={given} differs from the run's directory {run_dir}")
            continue
        rest.append(override)
        key = key.lstrip("+~")
        if not is_choice(override) and ("=" not in override or "." not in key or key.startswith("hydra")):
            raise ConfigError(f"on resume only key=value overrides of existing keys and the run's own group "
                              f"choices are allowed, not {override!r}")
    OmegaConf.set_struct(base, True)
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist([o for o in rest if not is_choice(o)]))
    except Exception as e:
        raise ConfigError(f"bad override on resume: {e}") from e
    with_resume = OmegaConf.to_container(cfg)
    with_resume["resume"] = str(run_dir)
    cfg = validate_config(OmegaConf.create(with_resume))
    check_choices_match_run(cfg, rest)
    return cfg, str(run_dir), latest


class Evaluator(Protocol):
    """The training-time metrics a Trainer is handed (it imports no evaluation code).

    Called with G_ema on every process at every evaluation point (it may be collective);
    returns the same ``{key: value}`` on every process. ``best_metric`` names the key that
    picks ``checkpoints/best.pt`` (None: none kept), ``lower_is_better`` its direction.
    """

    best_metric: Optional[str]
    lower_is_better: bool

    def __call__(self, G: nn.Module, step: int) -> dict[str, float]: ...


class Trainer:
    """Builds everything a run needs from a validated config, then trains."""

    def __init__(self, cfg: DictConfig, run_dir_pattern: str, resume_from: Optional[Path] = None,
                 evaluator: Optional[Evaluator] = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import broadcast_object_list, set_seed

        from transgan.augment import ADAPipeline, AdaptiveAugment, DiffAugment
        from transgan.data import build_dataset
        from transgan.losses import build_loss, lazy_regularization_hparams

        self.cfg, t = cfg, cfg.train
        # Everything that can refuse the config runs before the run directory exists.
        self.dataset = build_dataset(cfg.dataset, resolution=int(cfg.model.resolution))
        self.loss = build_loss(cfg.loss)
        # ADA's p controller (train.augment=ada); its state is checkpointed with the run.
        self.ada = (AdaptiveAugment(p=t.ada_p, target=t.ada_target, interval=t.ada_interval,
                                    speed_images=max(1, round(t.ada_kimg * 1000))) if t.augment == "ada" else None)
        self.num_classes = self.dataset.num_classes if cfg.dataset.get("conditional", False) else 0
        shape = dict(img_resolution=int(cfg.model.resolution), img_channels=self.dataset.channels,
                     num_classes=self.num_classes)
        torch.manual_seed(cfg.seed)  # identical initial weights on every process
        # The networks carry the run's attention kernel from construction (penalty passes switch to
        # a twice-differentiable one inside nn.attention.double_backward_safe).
        attention = cfg.model.get("attention")
        G = build_generator(cfg.model.generator, **shape, attention=attention)
        D = build_discriminator(cfg.model.discriminator, **shape, attention=attention)
        state = None
        if resume_from is not None:
            state = ckpt.load_resume_checkpoint(resume_from, model_signature(cfg, self.num_classes))

        self.accelerator = Accelerator(mixed_precision=t.mixed_precision, cpu=t.device == "cpu")
        acc = self.accelerator
        if acc.device.type == "cpu":
            torch.set_num_threads(t.cpu_threads or max(1, _physical_cores() // acc.num_processes))
        else:
            torch.backends.cudnn.benchmark = True  # shapes repeat every step: let cuDNN pick its fastest kernels
        self.channels_last = acc.device.type == "cuda" if t.channels_last is None else bool(t.channels_last)
        if self.channels_last:
            # NHWC convolutions run on tensor cores without layout transposes. Converted before the
            # optimizers exist, so their state is created in the same layout.
            G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
        for key in ("batch_size", "batch_size_g"):
            if (t[key] or t.batch_size) % (acc.num_processes * t.grad_accum):
                raise ConfigError(f"train.{key}={t[key]} must be divisible by processes x grad_accum "
                                  f"= {acc.num_processes} x {t.grad_accum}")
        if len(self.dataset) < t.batch_size:
            raise ConfigError(f"dataset has {len(self.dataset)} images, fewer than one batch ({t.batch_size})")

        # One run directory for all processes: the main process names it, the others hear it.
        name = [_resolve_run_dir(run_dir_pattern) if acc.is_main_process else None]
        broadcast_object_list(name)
        self.run_dir = Path(name[0])
        if state is None and ckpt.list_checkpoints(self.run_dir):
            raise ConfigError(f"{self.run_dir} already holds a run; continue it with resume={self.run_dir} "
                              "or choose another hydra.run.dir")

        self.G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        lr_d, betas_d = lazy_regularization_hparams(t.lr_d, tuple(t.betas_d), self.loss.d_reg_interval)
        lr_g, betas_g = lazy_regularization_hparams(t.lr_g, tuple(t.betas_g), self.loss.g_reg_interval)
        # Fused Adam where torch has it: a few kernels per step instead of ~7 per parameter tensor.
        fused = acc.device.type in ("cuda", "cpu")
        opt_G = torch.optim.Adam(G.parameters(), lr=lr_g, betas=betas_g, fused=fused)
        opt_D = torch.optim.Adam(D.parameters(), lr=lr_d, betas=betas_d, fused=fused)
        self.progress = Progress()
        if state is not None:
            with ckpt.unfit_state_is_refused(resume_from):
                G.load_state_dict(state["G"])
                D.load_state_dict(state["D"])
                self.G_ema.load_state_dict(state["G_ema"])
                opt_G.load_state_dict(state["opt_G"])
                opt_D.load_state_dict(state["opt_D"])
                self.loss.load_state_dict(state["loss"])
                self.progress = Progress(**state["progress"])
                if self.ada is not None and state.get("augment"):
                    self.ada.load_state_dict(state["augment"])
            _match_param_layouts(opt_G)
            _match_param_layouts(opt_D)
            if acc.is_main_process:
                log.info("resuming from %s (step %d)", resume_from, self.progress.step)
        if t.compile:
            # In place, so state_dict keys and unwrap_model stay as they are. Regularization passes
            # run eagerly (transgan/losses.py): compiled graphs have no double backward.
            G.compile()
            D.compile()
        self.G, self.D, self.opt_G, self.opt_D = acc.prepare(G, D, opt_G, opt_D)
        # Autocast is entered per phase (acc.autocast() in _run_phase), so the loss can turn it off
        # for regularization passes; Accelerate's autocast wrapper around every forward would turn
        # it back on inside each network (and detach G's returned ws from its images), so it goes.
        for model in (self.G, self.D):
            acc.unwrap_model(model, keep_fp32_wrapper=False)
        self.G_ema.to(acc.device)
        # After every .to(): moving a module replaces its buffer tensors.
        self._ema_buffers = copied_buffers(self.G_ema, acc.unwrap_model(self.G), t.ema_norm_stats)
        self._ema_stats_step: Optional[int] = None  # the step G_ema's norm statistics were computed at
        if state is not None and state["scaler"] is not None and acc.scaler is not None:
            acc.scaler.load_state_dict(state["scaler"])

        if t.augment == "ada":
            self.loss.augment = ADAPipeline(self.ada.p)
        elif t.augment == "diffaugment":
            self.loss.augment = DiffAugment(t.diffaugment)
        else:
            self.loss.augment = nn.Identity()
        self._monitor_batches: Optional[dict] = None  # fixed train / held-out reals, built at the first evaluation
        self.data_augment = dict(cfg.dataset.get("augment", {}))
        self.data = BatchSource(self.dataset, t.batch_size, cfg.seed, acc.process_index, acc.num_processes,
                                acc.device, num_workers=int(cfg.dataset.get("num_workers", 2)),
                                position=self.progress.data_position)
        set_seed(cfg.seed + acc.process_index)  # each process draws its own z, augmentations, ...
        if state is not None:
            ckpt.restore_rng_state(state["rng"][acc.process_index])
        self.writer = None
        self.evaluator = evaluator
        self.best: Optional[dict] = None  # the record of checkpoints/best.pt (main process)
        self._log_now = False
        # Non-finite bookkeeping lives on the device (read only at sync points, see _check_numerics).
        self._skipped = torch.tensor(self.progress.skipped_steps, device=acc.device)
        self._in_row = torch.tensor(self.progress.nonfinite_in_row, device=acc.device)
        self._step_bad = torch.zeros((), dtype=torch.bool, device=acc.device)
        # Buffers a skipped phase puts back; listed once, after prepare() has put them on the device.
        self._running = faults.running_buffers(acc.unwrap_model(self.G), acc.unwrap_model(self.D))
        self._stop_group = _control_group(acc)
        self.stopped_by: Optional[str] = None  # signal name when a stop request ended train()

    # ------------------------------------------------------------------ phases
    def _sample_z(self, n: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        G = self.accelerator.unwrap_model(self.G)
        z = torch.randn(n, G.z_dim, device=self.accelerator.device)
        c = torch.randint(0, self.num_classes, (n,), device=z.device) if self.num_classes else None
        return z, c

    def _real_batch(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        from transgan.data.transforms import random_augment

        x, c = self.data.next()
        if any(self.data_augment.values()):
            x = random_augment(x, **self.data_augment)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, (c if self.num_classes else None)

    def _run_phase(self, phase: str, model: nn.Module, opt: torch.optim.Optimizer, micro_batches: list) -> dict:
        """Accumulate the phase's loss over micro-batches, clip, step; return its stats."""
        acc, t = self.accelerator, self.cfg.train
        opt.zero_grad(set_to_none=True)
        # Both networks run forward in every phase (G makes D's fakes; D judges G's images).
        running_before = [b.clone() for b in self._running]
        loss_before = self.loss.running_state()  # replaced, never modified in place: no copy needed
        stats: dict[str, torch.Tensor] = {}
        finite = torch.ones((), dtype=torch.bool, device=acc.device)
        for i, args in enumerate(micro_batches):
            sync = i == len(micro_batches) - 1
            with (acc.no_sync(model) if not sync else nullcontext()), acc.autocast():
                loss, s = getattr(self.loss, phase)(*args)
            acc.backward(loss / len(micro_batches))
            finite &= torch.isfinite(loss.detach())
            for k, v in s.items():
                stats[k] = stats.get(k, 0) + v.detach().float() / len(micro_batches)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        clip = t.grad_clip_d_main if phase == "d_main" and t.grad_clip_d_main is not None else t.grad_clip
        if clip is not None:
            norm = acc.clip_grad_norm_(model.parameters(), clip)
        else:
            norm = torch.nn.utils.get_total_norm(grads)
        if clip is not None or self._log_now:
            stats[f"grad_norm_{phase}"] = norm
        # A non-finite loss or gradient skips this optimizer step. The norm is the same on every
        # process (gradients are all-reduced), the loss is not: the processes agree on the verdict.
        finite &= torch.isfinite(norm)
        finite = _all_processes_agree(finite, acc)
        faults.step_if_finite(opt.optimizer, opt.step, finite, grads, acc.scaler)
        # A skipped phase changes nothing: neither weights nor running statistics.
        faults.restore_unless(finite, self._running, running_before)
        self.loss.restore_running_state({k: torch.where(finite, v, loss_before[k].to(v.device))
                                         for k, v in self.loss.running_state().items()})
        self._skipped += ~finite
        self._step_bad |= ~finite
        return stats

    def _adapt_augment(self, r_t: torch.Tensor, n_local: int) -> None:
        """Feed one D step's r_t (this process's mean of sign(D(real))) to ADA's controller; set the new p."""
        acc = self.accelerator
        if acc.num_processes > 1:  # one p for every process: the controller sees the global batch
            r_t = acc.reduce(r_t, reduction="mean")
        n = n_local * acc.num_processes
        # r_t * n is the batch's sign sum (an integer; rounded against float32 averaging error)
        self.ada.observe_signs((r_t.double() * n).round(), n)
        self.loss.augment.p = self.ada.p

    @property
    def schedule_period(self) -> int:
        """G steps after which the phase schedule (which steps run lazy regularization) repeats."""
        d_interval, g_interval = self.loss.d_reg_interval, self.loss.g_reg_interval
        # d_reg runs when d_steps % d_interval == 0, and each G step adds n_critic D steps.
        d_period = d_interval // math.gcd(d_interval, self.cfg.train.n_critic) if d_interval else 1
        return math.lcm(d_period, g_interval or 1)

    def train_step(self) -> dict[str, torch.Tensor]:
        """One G step preceded by n_critic D steps (and any lazy regularization due)."""
        t, k = self.cfg.train, self.cfg.train.grad_accum
        G_plain = self.accelerator.unwrap_model(self.G)
        D_plain = self.accelerator.unwrap_model(self.D)
        stats: dict[str, torch.Tensor] = {}
        self._step_bad = torch.zeros((), dtype=torch.bool, device=self.accelerator.device)
        self.D.requires_grad_(True)
        for _ in range(t.n_critic):
            real, c_real = self._real_batch()
            reals = list(zip(real.chunk(k), *([c_real.chunk(k)] if c_real is not None else [[None] * k])))
            micro = []
            for r, cr in reals:
                z, cf = self._sample_z(r.shape[0])
                micro.append((G_plain, self.D, r, cr, z, cf))
            stats.update(self._run_phase("d_main", self.D, self.opt_D, micro))
            if self.ada is not None and self.ada.target is not None:
                self._adapt_augment(stats["r_t"], real.shape[0])
            self.progress.d_steps += 1
            self.progress.images_seen += real.shape[0] * self.accelerator.num_processes
            interval = self.loss.d_reg_interval
            if interval and self.progress.d_steps % interval == 0:
                stats.update(self._run_phase("d_reg", self.D, self.opt_D, [(self.D, r, cr) for r, cr in reals]))
        # G phase: D is used, not trained; its weights need no gradient.
        self.D.requires_grad_(False)
        per = (t.batch_size_g or t.batch_size) // self.accelerator.num_processes // k
        micro = [(self.G, D_plain, *self._sample_z(per)) for _ in range(k)]
        stats.update(self._run_phase("g_main", self.G, self.opt_G, micro))
        interval = self.loss.g_reg_interval
        if interval and (self.progress.step + 1) % interval == 0:
            micro = [(self.G, *self._sample_z(per)) for _ in range(k)]
            stats.update(self._run_phase("g_reg", self.G, self.opt_G, micro))
        self.D.requires_grad_(True)
        self._in_row = (self._in_row + 1) * self._step_bad  # consecutive steps with a skip
        self.progress.step += 1
        self.progress.data_position = self.data.position
        beta = ema_beta(t.batch_size, self.progress.images_seen, t.ema_kimg, t.ema_rampup, fixed=t.ema_beta)
        update_ema(self.G_ema, G_plain, beta, self._ema_buffers)
        return stats

    def _own_ema_statistics(self) -> None:
        """Give G_ema normalization statistics of its own before anything reads it (once per step)."""
        t = self.cfg.train
        if t.ema_norm_stats == "recompute" and self._ema_stats_step != self.progress.step:
            # Batches of the size G's own norm layers see in a D step, so both averages are alike.
            batch = max(1, t.batch_size // self.accelerator.num_processes // t.grad_accum)
            recompute_norm_statistics(self.G_ema, t.ema_norm_batches, batch, seed=int(self.cfg.seed))
            self._ema_stats_step = self.progress.step

    # ------------------------------------------------------------------ outputs
    def _fixed_latents(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The same z (and one row per class) for every sample grid of the run."""
        cols = self.cfg.train.sample_grid_cols
        rows = min(self.num_classes, 16) if self.num_classes else cols
        g = torch.Generator().manual_seed(self.cfg.seed)
        z = torch.randn(rows * cols, self.G_ema.z_dim, generator=g).to(self.accelerator.device)
        c = torch.arange(rows).repeat_interleave(cols).to(z.device) if self.num_classes else None
        return z, c

    @torch.no_grad()
    def save_samples(self) -> None:
        """Sample grid from G_ema with fixed latents, one row per class."""
        self._own_ema_statistics()
        z, c = self._fixed_latents()
        images = torch.cat([self.G_ema(zz, cc) for zz, cc in zip(z.split(64), (c.split(64) if c is not None else [None] * len(z.split(64))))])
        self.writer.samples(self.progress.step, images, nrow=self.cfg.train.sample_grid_cols)

    def evaluate(self) -> dict[str, float]:
        """The metrics the Trainer was handed, of G_ema (on every process: evaluation is spread over them)."""
        if self.evaluator is None:
            return {}
        self._own_ema_statistics()
        return self.evaluator(self.G_ema, self.progress.step)

    def _new_best(self, metrics: dict[str, float]) -> Optional[dict]:
        """The best.json record when ``metrics`` beat the best so far by the chosen metric, else None."""
        key = self.evaluator.best_metric if self.evaluator is not None else None
        value = metrics.get(key) if key else None
        if value is None or not math.isfinite(value):
            return None
        old = self.best["value"] if self.best is not None else None
        lower = self.evaluator.lower_is_better
        if old is not None and not (value < old if lower else value > old):
            return None
        return {"step": self.progress.step, "metric": key, "value": value,
                "direction": "lower is better" if lower else "higher is better"}

    @torch.no_grad()
    def overfitting_monitor(self) -> dict[str, float]:
        """Mean D output (no augmentation) on a fixed batch of training reals and of held-out reals, and the gap.

        A discriminator that memorizes its training set scores training reals above unseen reals of the
        same distribution; the gap grows with overfitting (Karras et al. 2020, Fig. 1). Empty where the
        dataset has no held-out split (or ``train.heldout_images=0``). Main process only.
        """
        n = self.cfg.train.heldout_images
        if n == 0:
            return {}
        if self._monitor_batches is None:
            self._monitor_batches = self._build_monitor_batches(n)
        if not self._monitor_batches:
            return {}
        D = self.accelerator.unwrap_model(self.D)
        means = {}
        for key, (x, c) in self._monitor_batches.items():
            with self.accelerator.autocast():
                means[key] = D(x, c).float().mean().item()
        return {"d_train_real": means["train"], "d_heldout_real": means["heldout"],
                "d_overfit_gap": means["train"] - means["heldout"]}

    def _build_monitor_batches(self, n: int) -> dict:
        """{"train": (x, c), "heldout": (x, c)}: fixed seeded subsets of equal size, or {} without a held-out split."""
        from transgan.data import build_heldout_dataset
        from transgan.data.datasets import max_images_indices

        try:
            heldout = build_heldout_dataset(self.cfg.dataset, int(self.cfg.model.resolution))
        except ConfigError as e:  # e.g. the held-out files are not on disk: the run goes on without the gap
            log.warning("overfitting monitor off: the held-out split cannot be loaded (%s)", e)
            return {}
        if heldout is None:
            return {}
        n = min(n, len(heldout), len(self.dataset))
        batches = {}
        for key, ds in (("train", self.dataset), ("heldout", heldout)):
            items = [ds[int(i)] for i in max_images_indices(len(ds), n)]
            x = torch.stack([img for img, _ in items]).to(self.accelerator.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            c = torch.tensor([label for _, label in items], device=x.device) if self.num_classes else None
            batches[key] = (x, c)
        return batches

    def save_checkpoint(self, regular: bool = True, best: Optional[dict] = None) -> None:
        """Every process contributes its RNG state; the main process writes the step file and/or best.pt."""
        acc = self.accelerator
        self._own_ema_statistics()
        rng = ckpt.gather_rng_states()
        if acc.is_main_process:
            state = {
                "format": ckpt.FORMAT,
                "progress": vars(self.progress).copy(),
                "G": acc.unwrap_model(self.G).state_dict(),
                "D": acc.unwrap_model(self.D).state_dict(),
                "G_ema": self.G_ema.state_dict(),
                "opt_G": self.opt_G.optimizer.state_dict(),
                "opt_D": self.opt_D.optimizer.state_dict(),
                "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                "loss": self.loss.state_dict(),
                "augment": self.ada.state_dict() if self.ada is not None else {},
                "rng": rng,
                "model": model_signature(self.cfg, self.num_classes),
                "class_names": list(self.dataset.class_names) if self.num_classes else [],
                "config": OmegaConf.to_yaml(self.cfg),
            }
            if regular:
                ckpt.save_atomic(state, ckpt.checkpoint_path(self.run_dir, self.progress.step))
                ckpt.prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints)
            if best is not None:  # best.pt is not a step-*.pt file: pruning and resume never touch it
                ckpt.save_best(state, self.run_dir, best)
                self.best = best
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ loop
    def _out_of_time(self) -> bool:
        """True once ``train.max_seconds`` of training time (outputs excluded) have passed on the main process."""
        limit, p, acc = self.cfg.train.max_seconds, self.progress, self.accelerator
        if limit is None:
            return False
        done = p.elapsed_s - p.overhead_s >= limit
        if acc.num_processes == 1:
            return done
        from accelerate.utils import broadcast  # one clock decides, or the processes would part mid-collective

        return bool(broadcast(torch.tensor(float(done), device=acc.device)).item())

    def _check_numerics(self) -> None:
        """Bring the non-finite counters to the host; warn about new skips; stop after too many in a row."""
        p, limit = self.progress, self.cfg.train.max_nonfinite_in_row
        skipped, in_row = torch.stack([self._skipped, self._in_row]).tolist()
        if skipped > p.skipped_steps and self.accelerator.is_main_process:
            log.warning("step %d: %d optimizer step(s) skipped for a non-finite loss or gradient "
                        "(%d in this run so far; %d training step(s) in a row)",
                        p.step, skipped - p.skipped_steps, skipped, in_row)
        p.skipped_steps, p.nonfinite_in_row = skipped, in_row
        if in_row >= limit:
            kept = ckpt.list_checkpoints(self.run_dir)
            raise faults.NonFiniteError(
                f"stopped at step {p.step}: {in_row} training steps in a row had a non-finite loss or gradient "
                f"(train.max_nonfinite_in_row={limit}); no checkpoint was written during them, the last good one "
                f"is {kept[-1] if kept else 'none (the run never wrote one)'}. Lower the learning rates, set "
                "train.grad_clip, or look for bad data")

    def _stop_requested(self, signals: faults.StopSignals) -> Optional[str]:
        """The stop signal's name once any process received one; every process gets the same answer."""
        if self.accelerator.num_processes == 1:
            return signals.received
        import torch.distributed as dist

        # On the host (a gloo group), so asking every step waits for no device work.
        flag = torch.tensor([int(signals.received is not None)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._stop_group)
        return (signals.received or "a stop signal (on another process)") if flag.item() else None

    def train(self) -> Path:
        """Train until ``train.max_steps`` (or ``train.max_seconds``, or SIGTERM/SIGINT); return the run directory."""
        from tqdm import tqdm

        from transgan.train.outputs import RunWriter

        acc, t, p = self.accelerator, self.cfg.train, self.progress
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(self.cfg))
            self.writer = RunWriter(self.run_dir)
            log.info("run directory: %s", self.run_dir)
            self.best = ckpt.read_best(self.run_dir)  # a resumed run keeps beating its own best
            stale = ckpt.remove_partial_writes(self.run_dir)
            if stale:
                log.info("removed %d partial checkpoint write(s) of an interrupted run", stale)
        bar = tqdm(total=t.max_steps, initial=p.step, disable=not acc.is_main_process, dynamic_ncols=True,
                   desc="train", unit="step")
        try:
            with faults.StopSignals() as signals:
                self._loop(bar, signals)
            acc.wait_for_everyone()
        finally:
            bar.close()
            if acc.is_main_process and self.writer is not None:
                self.writer.close()
            # Also on an error: a gloo group left to interpreter teardown can abort the process
            # with SIGABRT instead of the error's message and exit code (pytorch/pytorch#190489).
            acc.end_training()
        return self.run_dir

    def _loop(self, bar: "tqdm", signals: faults.StopSignals) -> None:  # noqa: F821
        """Steps, logs and outputs until done; returns early, with a checkpoint, on a stop request."""
        acc, t, p = self.accelerator, self.cfg.train, self.progress
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=acc.device))
        count, t0, images0 = 0, time.perf_counter(), p.images_seen
        start = time.perf_counter() - p.elapsed_s
        time_up = self._out_of_time()
        ckpt_due = False
        while p.step < t.max_steps and not time_up:
            self._log_now = (p.step + 1) % t.log_every == 0 or p.step + 1 == t.max_steps
            for k, v in self.train_step().items():
                sums[k] += v
            count += 1
            p.elapsed_s = time.perf_counter() - start
            bar.update(1)
            time_up = self._out_of_time()
            last = p.step == t.max_steps or time_up
            stop = self._stop_requested(signals)
            ckpt_due = ckpt_due or p.step % t.ckpt_every == 0
            # Reading the counters syncs with the device: on CUDA only where a sync happens anyway.
            if acc.device.type == "cpu" or self._log_now or ckpt_due or last or stop:
                self._check_numerics()
            if self._log_now:
                dt = time.perf_counter() - t0
                record = {k: (v / count).item() for k, v in sums.items() if not k.startswith("grad_norm")}
                record.update({k: v.item() for k, v in sums.items() if k.startswith("grad_norm")})
                record.update(images_seen=p.images_seen, images_per_s=(p.images_seen - images0) / max(dt, 1e-9),
                              time_s=p.elapsed_s, lr_g=self.opt_G.param_groups[0]["lr"],
                              lr_d=self.opt_D.param_groups[0]["lr"], skipped_steps=p.skipped_steps)
                if self.ada is not None:
                    record["ada_p"] = self.ada.p
                if acc.device.type == "cuda":
                    record["peak_mem_bytes"] = torch.cuda.max_memory_allocated(acc.device)
                if acc.is_main_process:
                    self.writer.scalars(p.step, record)
                    bar.set_postfix(loss_d=f"{record.get('loss_d', math.nan):.3f}",
                                    loss_g=f"{record.get('loss_g', math.nan):.3f}",
                                    img_s=f"{record['images_per_s']:.0f}")
                sums.clear()
                count, t0, images0 = 0, time.perf_counter(), p.images_seen
            outputs_start = time.perf_counter()
            if stop:  # pre-emption leaves little time: the checkpoint only, no samples or evaluation
                self.save_checkpoint()
                p.overhead_s += time.perf_counter() - outputs_start
                self.stopped_by = stop
                if acc.is_main_process:
                    log.warning("%s: stopped at step %d with a checkpoint; continue with resume=%s",
                                stop, p.step, self.run_dir)
                return
            if acc.is_main_process and (p.step % t.sample_every == 0 or last):
                with ckpt.preserved_rng_state():
                    self.save_samples()
            best = None
            if p.step % t.eval_every == 0 or last:
                with ckpt.preserved_rng_state():  # metrics must not shift the training stream
                    metrics = dict(self.evaluate())  # every process generates and embeds its share
                    if acc.is_main_process:
                        metrics.update(self.overfitting_monitor())
                if acc.is_main_process and metrics:
                    self.writer.scalars(p.step, {**metrics, "images_seen": p.images_seen, "time_s": p.elapsed_s,
                                                  "train_s": p.elapsed_s - p.overhead_s},
                                        group="eval")
                    bar.write(f"step {p.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
                    best = self._new_best(metrics)
                best = _from_main(best, acc)  # the main process holds the record; all join the write
            # A checkpoint falls due every ckpt_every steps and waits for a step without a non-finite
            # skip, so a run that goes bad never replaces its good checkpoints with ones from the streak.
            regular = last or (ckpt_due and p.nonfinite_in_row == 0)
            if regular or best is not None:
                self.save_checkpoint(regular=regular, best=best)
                ckpt_due = ckpt_due and not regular
            p.overhead_s += time.perf_counter() - outputs_start


def _match_param_layouts(opt: torch.optim.Optimizer) -> None:
    """Put loaded optimizer state in its parameter's memory layout (strides)."""
    # A checkpoint may come from a run with another channels_last, and fused Adam pairs a
    # parameter's elements with its state's by memory position: mismatched strides corrupt silently.
    for p, state in opt.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _all_processes_agree(ok: torch.Tensor, acc: "Accelerator") -> torch.Tensor:  # noqa: F821
    """``ok`` (a 0-dim bool) and-ed over processes; a device-side collective, no host sync."""
    if acc.num_processes == 1:
        return ok
    import torch.distributed as dist

    flag = ok.to(torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag.bool()


def _from_main(value: object, acc: "Accelerator") -> object:  # noqa: F821
    """The main process's ``value`` on every process."""
    if acc.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _control_group(acc: "Accelerator") -> Optional[object]:  # noqa: F821
    """A host-side (gloo) process group for small agreements; None where the default group is one."""
    if acc.num_processes == 1:
        return None
    import torch.distributed as dist

    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def _physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def _resolve_run_dir(pattern: str) -> str:
    """Resolve ``${now:...}`` in the run-dir pattern once, on the main process."""
    if not OmegaConf.has_resolver("now"):
        from datetime import datetime

        OmegaConf.register_new_resolver("now", lambda fmt: datetime.now().strftime(fmt))
    return str(OmegaConf.create({"d": pattern}).d)

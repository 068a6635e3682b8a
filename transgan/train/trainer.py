"""The Accelerate trainer: a table of phases, the schedule that runs them, and the loop's outputs.

One training *step* is ``n_critic`` discriminator steps followed by one generator step
(WGAN-GP's schedule; ``n_critic=1`` gives StyleGAN2's). Each network step runs the loss's
phases for that network (:meth:`transgan.losses.GANLoss.phases`): the main phase every step,
a lazy regularization phase every ``interval``-th step with its optimizer lr/betas corrected
for the interval (StyleGAN2-ADA's "Setup training phases"). The table is built once; a
regularizer that is off is not in it. The loss owns the mathematics; this file owns the
schedule. It knows no backbone by name; :func:`transgan.train.build.build_trainer` makes one.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol

import torch
import torch.distributed as dist
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import broadcast, broadcast_object_list
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from transgan.data import build_heldout_dataset
from transgan.data.datasets import max_images_indices
from transgan.data.transforms import random_augment
from transgan.errors import ConfigError, OutputError
from transgan.losses import PhaseInputs, PhaseSpec, lazy_regularization_hparams
from transgan.models.common import recompute_norm_statistics
from transgan.runs import checkpoint as ckpt
from transgan.runs.state import TrainingState
from transgan.train import faults
from transgan.train.batches import BatchSource
from transgan.train.ema import copied_buffers, ema_beta, update_ema
from transgan.train.outputs import RunWriter
from transgan.train.schedules import cosine_value

log = logging.getLogger("transgan.train")


class Evaluator(Protocol):
    """The training-time metrics a Trainer is handed (it imports no evaluation code).

    Called with G_ema on every process at every evaluation point (it may be collective);
    returns the same ``{key: value}`` on every process. ``best_metric`` names the key that
    picks ``checkpoints/best.pt`` (None: none kept), ``lower_is_better`` its direction.
    """

    best_metric: Optional[str]
    lower_is_better: bool

    def __call__(self, G: nn.Module, step: int) -> dict[str, float]: ...


@dataclass(frozen=True)
class Phase:
    """One row of the phase table: the loss's phase with the network it trains and how."""

    spec: PhaseSpec
    G: nn.Module                  # as the phase calls it: prepared (DDP) if it trains G, plain if not
    D: nn.Module
    trained: nn.Module            # the prepared network whose optimizer steps
    opt: torch.optim.Optimizer    # Accelerate's wrapper of the state's optimizer
    clip: Optional[float]         # max gradient norm (None: not clipped)
    after: Optional[Callable[[dict[str, torch.Tensor], int], None]] = None  # e.g. ADA reads r_t

    def due(self, count: int) -> bool:
        """Whether the phase runs on the ``count``-th (1-based) step of the network it trains."""
        return count % self.spec.interval == 0


class Trainer:
    """Trains a :class:`TrainingState` on a stream of real batches; writes the run's outputs."""

    def __init__(self, cfg: DictConfig, accelerator: Accelerator, state: TrainingState, data: BatchSource,
                 run_dir: Path, evaluator: Optional[Evaluator] = None, channels_last: bool = False) -> None:
        self.cfg, self.accelerator, self.state, self.data = cfg, accelerator, state, data
        self.run_dir, self.evaluator = Path(run_dir), evaluator
        acc, t = accelerator, cfg.train
        self.G, self.D, self.opt_G, self.opt_D = acc.prepare(state.G, state.D, state.opt_G, state.opt_D)
        # Autocast is entered per phase (acc.autocast() in _run_phase), so the loss can turn it off
        # for regularization passes; Accelerate's autocast wrapper around every forward would turn
        # it back on inside each network (and detach G's returned ws from its images), so it goes.
        for model in (self.G, self.D):
            acc.unwrap_model(model, keep_fp32_wrapper=False)
        state.G_ema.to(acc.device)
        self.channels_last = channels_last  # real batches in the layout the networks were built in
        self.phases_d, self.phases_g = self._phase_table()
        self._ema_kimg = t.ema_kimg  # the G_ema half-life (train.cosine may schedule it)
        self._gammas = {"r1": state.loss.r1_gamma, "r2": state.loss.r2_gamma}  # where scheduled gammas start
        # After every .to(): moving a module replaces its buffer tensors.
        self._ema_buffers = copied_buffers(state.G_ema, state.G, t.ema_norm_stats)
        self._ema_stats_step: Optional[int] = None  # the step G_ema's norm statistics were computed at
        self.num_classes = state.num_classes
        self.data_augment = dict(cfg.dataset.get("augment", {}))
        self._monitor_batches: Optional[dict] = None  # fixed train / held-out reals, built at the first evaluation
        self.writer: Optional[RunWriter] = None
        self.best: Optional[dict] = None  # the record of checkpoints/best.pt (main process)
        self._log_now = False
        # Non-finite bookkeeping lives on the device (read only at sync points, see _check_numerics).
        p = state.progress
        self._skipped = torch.tensor(p.skipped_steps, device=acc.device)
        self._in_row = torch.tensor(p.nonfinite_in_row, device=acc.device)
        self._step_bad = torch.zeros((), dtype=torch.bool, device=acc.device)
        # Buffers a skipped phase puts back; listed once, after prepare() has put them on the device.
        self._running = faults.running_buffers(state.G, state.D)
        self._stop_group = _control_group(acc)
        self.stopped_by: Optional[str] = None  # signal name when a stop request ended train()

    # ------------------------------------------------------------------ the phase table
    @property
    def progress(self):  # noqa: ANN201 (transgan.runs.state.Progress)
        """Where training is (the state's counters)."""
        return self.state.progress

    @property
    def loss(self):  # noqa: ANN201 (transgan.losses.GANLoss)
        """The state's loss object."""
        return self.state.loss

    @property
    def G_ema(self) -> nn.Module:
        """The state's moving average of G."""
        return self.state.G_ema

    def _phase_table(self) -> tuple[list[Phase], list[Phase]]:
        """(D phases, G phases) in running order, each with its network, optimizer and clipping."""
        t, state = self.cfg.train, self.state
        rows: dict[str, list[Phase]] = {"D": [], "G": []}
        for spec in state.loss.phases():
            trains_d = spec.trains == "D"
            clip = t.grad_clip_d_main if spec.name == "d_main" and t.grad_clip_d_main is not None else t.grad_clip
            adapt = self._adapt_augment if spec.name == "d_main" and state.ada is not None \
                and state.ada.target is not None else None
            rows[spec.trains].append(Phase(
                spec, G=state.G if trains_d else self.G, D=self.D if trains_d else state.D,
                trained=self.D if trains_d else self.G, opt=self.opt_D if trains_d else self.opt_G,
                clip=clip, after=adapt))
        return rows["D"], rows["G"]

    @property
    def schedule_period(self) -> int:
        """G steps after which the phase schedule (which steps run lazy regularization) repeats."""
        n_critic = self.cfg.train.n_critic
        # A D phase of interval k runs when d_steps % k == 0, and each G step adds n_critic D steps.
        periods = [p.spec.interval // math.gcd(p.spec.interval, n_critic) for p in self.phases_d]
        return math.lcm(*periods, *(p.spec.interval for p in self.phases_g))

    # ------------------------------------------------------------------ inputs
    def _sample_z(self, n: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        z = torch.randn(n, self.state.G.z_dim, device=self.accelerator.device)
        c = torch.randint(0, self.num_classes, (n,), device=z.device) if self.num_classes else None
        return z, c

    def _real_batch(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        x, c = self.data.next()
        if any(self.data_augment.values()):
            x = random_augment(x, **self.data_augment)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, (c if self.num_classes else None)

    def _network_step(self, phases: list[Phase], count: int, batch_size: int,
                      counts_images: bool, real_batches: int = 1) -> dict[str, torch.Tensor]:
        """Run the ``phases`` due on the ``count``-th step of their network; return their stats.

        Reals are drawn once for the step (its phases share them) when a due phase reads them:
        ``real_batches`` loader batches (a paired G step with a G batch of several D batches);
        each phase that reads latents draws its own. ``batch_size`` is this process's batch;
        ``counts_images``: the reals count in ``images_seen`` (those of D steps do).
        """
        due = [p for p in phases if p.due(count)]
        k = self.cfg.train.grad_accum
        reals: list[tuple[torch.Tensor, Optional[torch.Tensor]]] = []
        n_real = 0
        if any(p.spec.needs_reals for p in due):
            drawn = [self._real_batch() for _ in range(real_batches)]
            real, c_real = drawn[0] if real_batches == 1 else (
                torch.cat([x for x, _ in drawn]), None if drawn[0][1] is None else torch.cat([c for _, c in drawn]))
            n_real = real.shape[0]
            reals = list(zip(real.chunk(k), c_real.chunk(k) if c_real is not None else [None] * k))
            if counts_images:
                self.progress.images_seen += n_real * self.accelerator.num_processes
        stats: dict[str, torch.Tensor] = {}
        for phase in due:
            micro = []
            for i in range(k):
                r, cr = reals[i] if phase.spec.needs_reals else (None, None)
                n = r.shape[0] if r is not None else batch_size // k
                z, cf = self._sample_z(n) if phase.spec.needs_latents else (None, None)
                micro.append(PhaseInputs(r, cr, z, cf))
            out = self._run_phase(phase, micro)
            if phase.after is not None:
                phase.after(out, n_real)
            stats.update(out)
        return stats

    # ------------------------------------------------------------------ schedules
    def _follow_schedules(self) -> None:
        """Set the values ``train.cosine`` schedules (R3GAN) from the real images seen before this step."""
        t, c, loss = self.cfg.train, self.cfg.train.cosine, self.loss
        if c.images is None:
            return
        n = self.progress.images_seen

        def value(start: float, end: Optional[float]) -> float:
            return start if end is None else cosine_value(n, start, end, c.images)

        for opt, lr, betas, lr_end, interval in ((self.opt_D, t.lr_d, t.betas_d, c.lr_d_end, loss.d_reg_interval),
                                                  (self.opt_G, t.lr_g, t.betas_g, c.lr_g_end, loss.g_reg_interval)):
            lr, betas = lazy_regularization_hparams(value(lr, lr_end), (betas[0], value(betas[1], c.beta2_end)),
                                                    interval)
            for group in opt.param_groups:
                group["lr"], group["betas"] = lr, betas
        if c.gamma_end is not None:
            loss.set_penalty_weights(*(value(self._gammas[k], c.gamma_end) if self._gammas[k] > 0 else 0.0
                                       for k in ("r1", "r2")))
        if c.ada_p_end is not None:
            self.state.ada.p = value(t.ada_p, c.ada_p_end)
        self._ema_kimg = value(t.ema_kimg, c.ema_kimg_end)

    # ------------------------------------------------------------------ phases
    def _run_phase(self, phase: Phase, micro_batches: list[PhaseInputs]) -> dict:
        """Accumulate the phase's loss over micro-batches, clip, step; return its stats."""
        acc, model, opt = self.accelerator, phase.trained, phase.opt
        opt.zero_grad(set_to_none=True)
        # Both networks run forward in every phase (G makes D's fakes; D judges G's images).
        running_before = [b.clone() for b in self._running]
        loss_before = self.loss.running_state()  # replaced, never modified in place: no copy needed
        stats: dict[str, torch.Tensor] = {}
        finite = torch.ones((), dtype=torch.bool, device=acc.device)
        for i, inputs in enumerate(micro_batches):
            sync = i == len(micro_batches) - 1
            with (acc.no_sync(model) if not sync else nullcontext()), acc.autocast():
                loss, s = phase.spec.run(phase.G, phase.D, inputs)
            acc.backward(loss / len(micro_batches))
            finite &= torch.isfinite(loss.detach())
            for k, v in s.items():
                stats[k] = stats.get(k, 0) + v.detach().float() / len(micro_batches)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if phase.clip is not None:
            norm = acc.clip_grad_norm_(model.parameters(), phase.clip)
        else:
            norm = torch.nn.utils.get_total_norm(grads)
        if phase.clip is not None or self._log_now:
            stats[f"grad_norm_{phase.spec.name}"] = norm
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

    def _adapt_augment(self, stats: dict[str, torch.Tensor], n_local: int) -> None:
        """Feed one D step's r_t (this process's mean of sign(D(real))) to ADA's controller."""
        acc, r_t = self.accelerator, stats["r_t"]
        if acc.num_processes > 1:  # one p for every process: the controller sees the global batch
            r_t = acc.reduce(r_t, reduction="mean")
        n = n_local * acc.num_processes
        # r_t * n is the batch's sign sum (an integer; rounded against float32 averaging error);
        # the augmentation reads the controller's p at its next call.
        self.state.ada.observe_signs((r_t.double() * n).round(), n)

    def train_step(self) -> dict[str, torch.Tensor]:
        """One G step preceded by n_critic D steps (and any lazy regularization due)."""
        t, p, procs = self.cfg.train, self.progress, self.accelerator.num_processes
        stats: dict[str, torch.Tensor] = {}
        self._step_bad = torch.zeros((), dtype=torch.bool, device=self.accelerator.device)
        self.D.requires_grad_(True)
        self._follow_schedules()
        for _ in range(t.n_critic):
            stats.update(self._network_step(self.phases_d, p.d_steps + 1, t.batch_size // procs, True))
            p.d_steps += 1
        # G phases: D is used, not trained; its weights need no gradient.
        self.D.requires_grad_(False)
        g_batch = t.batch_size_g or t.batch_size
        stats.update(self._network_step(self.phases_g, p.step + 1, g_batch // procs, False,
                                        real_batches=max(1, g_batch // t.batch_size)))
        self.D.requires_grad_(True)
        self._in_row = (self._in_row + 1) * self._step_bad  # consecutive steps with a skip
        p.step += 1
        p.data_position = self.data.position
        beta = ema_beta(t.batch_size, p.images_seen, self._ema_kimg, t.ema_rampup, fixed=t.ema_beta)
        update_ema(self.G_ema, self.state.G, beta, self._ema_buffers)
        return stats

    # ------------------------------------------------------------------ outputs
    def _own_ema_statistics(self) -> None:
        """Give G_ema normalization statistics of its own before anything reads it (once per step)."""
        t = self.cfg.train
        if t.ema_norm_stats == "recompute" and self._ema_stats_step != self.progress.step:
            # Batches of the size G's own norm layers see in a D step, so both averages are alike.
            batch = max(1, t.batch_size // self.accelerator.num_processes // t.grad_accum)
            recompute_norm_statistics(self.G_ema, t.ema_norm_batches, batch, seed=int(self.cfg.seed))
            self._ema_stats_step = self.progress.step

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
        labels = c.split(64) if c is not None else [None] * len(z.split(64))
        images = torch.cat([self.G_ema(zz, cc) for zz, cc in zip(z.split(64), labels)])
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
                "direction": "lower is better" if lower else "higher is better",
                "num_samples": self.evaluator.protocol.num_samples, "protocol": self.evaluator.preset}

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
        means = {}
        for key, (x, c) in self._monitor_batches.items():
            with self.accelerator.autocast():
                means[key] = self.state.D(x, c).float().mean().item()
        return {"d_train_real": means["train"], "d_heldout_real": means["heldout"],
                "d_overfit_gap": means["train"] - means["heldout"]}

    def _build_monitor_batches(self, n: int) -> dict:
        """{"train": (x, c), "heldout": (x, c)}: fixed seeded subsets of equal size, or {} without a held-out split."""
        try:
            heldout = build_heldout_dataset(self.cfg.dataset, int(self.cfg.model.resolution))
        except ConfigError as e:  # e.g. the held-out files are not on disk: the run goes on without the gap
            log.warning("overfitting monitor off: the held-out split cannot be loaded (%s)", e)
            return {}
        if heldout is None:
            return {}
        dataset = self.data.dataset
        n = min(n, len(heldout), len(dataset))
        batches = {}
        for key, ds in (("train", dataset), ("heldout", heldout)):
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
        failure: Optional[OSError] = None
        if acc.is_main_process:
            state = self.state.state_dict(rng, acc.scaler.state_dict() if acc.scaler is not None else None)
            try:
                if regular:
                    ckpt.save_atomic(state, ckpt.checkpoint_path(self.run_dir, self.progress.step))
                    ckpt.prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints)
                if best is not None:  # best.pt is not a step-*.pt file: pruning and resume never touch it
                    ckpt.save_best(state, self.run_dir, best)
                    self.best = best
            except OSError as e:  # every process hears of it, or the others would wait at the next collective
                failure = e
        if _from_main(failure is not None, acc):
            raise failure if failure is not None else OSError("the main process could not write the checkpoint")
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
        # One clock decides, or the processes would part mid-collective.
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
        # On the host (a gloo group), so asking every step waits for no device work.
        flag = torch.tensor([int(signals.received is not None)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._stop_group)
        return (signals.received or "a stop signal (on another process)") if flag.item() else None

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn a failed write of the run's outputs (a full disk, a read-only folder) into one clear OutputError.

        Checkpoints are written atomically, so the ones before stay complete and loadable; the run stops
        rather than training on without being able to save its progress.
        """
        try:
            yield
        except OSError as e:
            kept = ckpt.list_checkpoints(self.run_dir)
            last = f"the last complete checkpoint is {kept[-1]}" if kept else "no checkpoint was written yet"
            raise OutputError(f"stopped at step {self.progress.step}: cannot write {what} in {self.run_dir} "
                              f"({e.strerror or e}); {last}. Free some space and continue with "
                              f"resume={self.run_dir}") from e

    def train(self) -> Path:
        """Train until ``train.max_steps`` (or ``train.max_seconds``, or SIGTERM/SIGINT); return the run directory."""
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

    def _loop(self, bar: tqdm, signals: faults.StopSignals) -> None:
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
                with self._writing("a metrics line"):
                    self._log(sums, count, time.perf_counter() - t0, p.images_seen - images0, bar)
                sums.clear()
                count, t0, images0 = 0, time.perf_counter(), p.images_seen
            outputs_start = time.perf_counter()
            if stop:  # pre-emption leaves little time: the checkpoint only, no samples or evaluation
                with self._writing("a checkpoint"):
                    self.save_checkpoint()
                p.overhead_s += time.perf_counter() - outputs_start
                self.stopped_by = stop
                if acc.is_main_process:
                    log.warning("%s: stopped at step %d with a checkpoint; continue with resume=%s",
                                stop, p.step, self.run_dir)
                return
            if acc.is_main_process and (p.step % t.sample_every == 0 or last):
                with ckpt.preserved_rng_state(), self._writing("a sample grid"):
                    self.save_samples()
            with self._writing("the evaluation's metrics line"):
                best = self._evaluate_and_log(bar) if p.step % t.eval_every == 0 or last else None
            # A checkpoint falls due every ckpt_every steps and waits for a step without a non-finite
            # skip, so a run that goes bad never replaces its good checkpoints with ones from the streak.
            regular = last or (ckpt_due and p.nonfinite_in_row == 0)
            if regular or best is not None:
                with self._writing("a checkpoint"):
                    self.save_checkpoint(regular=regular, best=best)
                ckpt_due = ckpt_due and not regular
            p.overhead_s += time.perf_counter() - outputs_start

    def _log(self, sums: dict[str, torch.Tensor], count: int, seconds: float, images: int, bar: tqdm) -> None:
        """One training record: the mean of each stat since the last one (grad norms: the last), rates, lr."""
        acc, p = self.accelerator, self.progress
        record = {k: (v / count).item() for k, v in sums.items() if not k.startswith("grad_norm")}
        record.update({k: v.item() for k, v in sums.items() if k.startswith("grad_norm")})
        record.update(images_seen=p.images_seen, images_per_s=images / max(seconds, 1e-9),
                      time_s=p.elapsed_s, lr_g=self.opt_G.param_groups[0]["lr"],
                      lr_d=self.opt_D.param_groups[0]["lr"], skipped_steps=p.skipped_steps)
        if self.cfg.train.cosine.images is not None:
            record.update(beta2_g=self.opt_G.param_groups[0]["betas"][1], beta2_d=self.opt_D.param_groups[0]["betas"][1],
                          r1_gamma=self.loss.r1_gamma, r2_gamma=self.loss.r2_gamma, ema_kimg=self._ema_kimg)
        if self.state.ada is not None:
            record["ada_p"] = self.state.ada.p
        if acc.device.type == "cuda":
            record["peak_mem_bytes"] = torch.cuda.max_memory_allocated(acc.device)
        if acc.is_main_process:
            self.writer.scalars(p.step, record)
            bar.set_postfix(loss_d=f"{record.get('loss_d', math.nan):.3f}",
                            loss_g=f"{record.get('loss_g', math.nan):.3f}", img_s=f"{record['images_per_s']:.0f}")

    def _evaluate_and_log(self, bar: tqdm) -> Optional[dict]:
        """Evaluate G_ema (every process takes part), log the numbers; the best.json record if they beat the best."""
        acc, p = self.accelerator, self.progress
        best = None
        with ckpt.preserved_rng_state():  # metrics must not shift the training stream
            metrics = dict(self.evaluate())  # every process generates and embeds its share
            if acc.is_main_process:
                metrics.update(self.overfitting_monitor())
        if acc.is_main_process and metrics:
            # Every row names how many samples its numbers come from (a 10k FID is not a 50k one); so do
            # the TensorBoard tags (eval@10k/fid).
            samples = self.evaluator.protocol.num_samples if self.evaluator is not None else None
            self.writer.scalars(p.step, {**metrics, "num_samples": samples, "images_seen": p.images_seen,
                                          "time_s": p.elapsed_s, "train_s": p.elapsed_s - p.overhead_s},
                                group=f"eval@{_count_label(samples)}" if samples else "eval")
            bar.write(f"step {p.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            best = self._new_best(metrics)
        return _from_main(best, acc)  # the main process holds the record; all join the write


def _count_label(n: int) -> str:
    """10000 -> '10k', 50000 -> '50k', 64 -> '64': a sample count as metric names carry it (FID-10k)."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _all_processes_agree(ok: torch.Tensor, acc: Accelerator) -> torch.Tensor:
    """``ok`` (a 0-dim bool) and-ed over processes; a device-side collective, no host sync."""
    if acc.num_processes == 1:
        return ok
    flag = ok.to(torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag.bool()


def _from_main(value: object, acc: Accelerator) -> object:
    """The main process's ``value`` on every process."""
    if acc.num_processes == 1:
        return value
    return broadcast_object_list([value])[0]


def _control_group(acc: Accelerator) -> Optional[object]:
    """A host-side (gloo) process group for small agreements; None where the default group is one."""
    if acc.num_processes == 1:
        return None
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

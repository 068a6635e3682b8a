"""Train a GAN: ``accelerate launch --config_file accelerate.yaml tools/train.py model=<name> ...``.

``transgan-train`` (an installed transgan) takes the same arguments.

Arguments are Hydra overrides of configs/config.yaml (``key=value``, ``group=option``);
``resume=<run dir>`` continues a run from its newest checkpoint. Every value is checked
before the run directory is created; a bad one exits with status 2 and a message.
SIGTERM or SIGINT stops at the next step boundary with a checkpoint, exit status 0; too
many non-finite steps in a row (train.max_nonfinite_in_row) stop with status 3.
"""

from __future__ import annotations

import logging
import sys

from transgan.cli import CommandLine, console_entry, run_cli


def command_line() -> CommandLine:
    """tools/train.py's arguments: Hydra overrides only (checked against the configs when composed)."""
    # deferred: start-up (see transgan/commands/__init__.py)
    from transgan.train.config import run_config_keys

    return CommandLine("tools/train.py", __doc__, run_config_keys(), any_key=True)


def main(argv: list[str]) -> int:
    """Compose the config, build the run, train; return the exit status."""
    cli = command_line()

    def run() -> None:
        # deferred: start-up (see transgan/commands/__init__.py)
        from transgan.eval.training import training_evaluator
        from transgan.train.build import build_trainer
        from transgan.train.config import resolve_run

        _, overrides = cli.parse(argv)
        cfg, run_dir, resume_from = resolve_run(overrides)
        # The composition root: the evaluation protocol is built from here (a missing weights file is
        # refused before the run directory exists) and handed to the Trainer, which imports no
        # evaluation code (docs/architecture.md). Bad data and networks are refused first.
        trainer = build_trainer(cfg, run_dir, resume_from, training_evaluator)
        if trainer.evaluator is not None and trainer.accelerator.is_main_process:
            logging.getLogger("transgan.train").info(trainer.evaluator.describe())
        out = trainer.train()
        if trainer.accelerator.is_main_process and trainer.stopped_by:
            print(f"stopped by {trainer.stopped_by} at step {trainer.progress.step}, checkpoint saved; "
                  f"continue with resume={out}")
        elif trainer.accelerator.is_main_process:
            print(f"done: {out}")

    return run_cli(run, usage=cli, argv=argv)


entry = console_entry(main)  # the ``transgan-train`` console script; tools/train.py runs it too


if __name__ == "__main__":
    sys.exit(entry())

"""Parameter counts and FLOPs per image of a model preset's generator and discriminator.

    python tools/model_stats.py model=transgan_32 dataset.channels=3 dataset.conditional=false
    python tools/model_stats.py model=swin_gan --classes 10 --json

Arguments are the Hydra overrides of tools/train.py (the same configs compose). The class count
is the trainer's: 0 unless ``dataset.conditional``, else the dataset's (read from the data, so
the data must be there; ``--classes N`` sets it without data). ``--json`` prints one JSON object
instead of the table.

FLOPs are those of one forward pass on one image, counted by ``torch.utils.flop_counter``
(a multiply-add = 2 FLOPs; MACs = FLOPs / 2); see transgan/eval/complexity.py, which does the
counting (tools/ablate.py uses it too).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional, Sequence

from transgan.cli import CommandLine, console_entry, run_cli
from transgan.errors import ConfigError
from transgan.eval.complexity import count_parameters, dataset_classes, forward_flops, measure_models  # noqa: F401


def model_stats(overrides: Sequence[str], num_classes: Optional[int] = None) -> dict[str, Any]:
    """Compose the run config from ``overrides``, build G and D (meta device) and measure them."""
    # deferred: start-up (see transgan/commands/__init__.py)
    from transgan.train.config import compose_config

    cfg, _ = compose_config(list(overrides))
    resolution, channels = int(cfg.model.resolution), int(cfg.dataset.channels)
    if num_classes is None:
        num_classes = dataset_classes(cfg.dataset, resolution)
    if num_classes < 0:
        raise ConfigError(f"--classes must be >= 0, got {num_classes}")
    return measure_models(cfg.model.generator, cfg.model.discriminator, resolution, channels, num_classes)


def format_stats(stats: dict[str, Any]) -> str:
    """The human-readable table of :func:`model_stats`."""
    lines = [f"resolution {stats['resolution']}, {stats['channels']} channels, {stats['num_classes']} classes",
             f"{'':<14} {'name':<20} {'parameters':>14} {'GFLOPs/image':>13} {'attention':>10} {'GMACs/image':>12}"]
    for key in ("generator", "discriminator"):
        e = stats[key]
        lines.append(f"{key:<14} {e['name']:<20} {e['parameters']:>14,} {e['flops_per_image'] / 1e9:>13.3f} "
                     f"{e['attention_flops_per_image'] / 1e9:>10.3f} {e['flops_per_image'] / 2e9:>12.3f}")
    for key in ("generator", "discriminator"):
        for i, s in enumerate(stats[key].get("stages", [])):
            where = f"  {key[0].upper()} stage {i + 1}: {s['resolution']}x{s['resolution']} x {s['dim']}, "
            if not s["depth"]:
                lines.append(where + "no blocks")
                continue
            cells = f" in {s['window']}x{s['window']} cells" if s["attention"] == "grid" else ""
            blocks = f"{s['depth']} block{'s' if s['depth'] > 1 else ''}"
            heads = f"{s['heads']} head{'s' if s['heads'] > 1 else ''}"
            lines.append(where + f"{blocks}, {heads}, {s['attention']} attention{cells}")
    return "\n".join(lines)


def command_line() -> CommandLine:
    """tools/model_stats.py's arguments: tools/train.py's overrides, --classes and --json."""
    # deferred: start-up (see transgan/commands/__init__.py)
    from transgan.train.config import run_config_keys

    cli = CommandLine("tools/model_stats.py", __doc__, run_config_keys(), any_key=True)
    cli.parser.add_argument("--classes", type=int, default=None, help="class count (default: from the dataset config)")
    cli.parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return cli


def main(argv: Sequence[str]) -> int:
    """Print the stats of the composed model; exit status 2 on a bad configuration."""
    cli = command_line()

    def job() -> None:
        flags, overrides = cli.parse(list(argv))
        stats = model_stats(overrides, num_classes=flags.classes)
        print(json.dumps(stats, indent=2) if flags.json else format_stats(stats))

    return run_cli(job, usage=cli, argv=argv)


entry = console_entry(main, None)  # the ``transgan-model-stats`` console script; tools/model_stats.py runs it too


if __name__ == "__main__":
    sys.exit(entry())

"""``transgan-convert`` (= ``python tools/convert.py``): an official checkpoint in, a transgan run directory out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from transgan.cli import CommandLine, console_entry, run_cli
from transgan.convert.common import Converted
from transgan.convert.r3gan import convert_r3gan, is_r3gan
from transgan.convert.stylegan2_ada import convert_stylegan2_ada
from transgan.convert.styleswin import convert_styleswin
from transgan.convert.transgan_official import convert_transgan
from transgan.convert.unpickle import ConvertError, PersistentObject, load_official

__all__ = ["USAGE", "detect", "default_overrides", "convert_file", "main", "entry"]

USAGE = """Convert an official checkpoint into a transgan run directory (no pickled code is run).

    python tools/convert.py <checkpoint> --out <run dir> [--verify] [overrides ...]

  <checkpoint>   TransGAN .pth (VITA-Group/TransGAN train_derived.py: gen/dis/avg_gen state dicts), or
                 a stylegan2-ada-pytorch network-snapshot-*.pkl (G, D, G_ema; conditional too),
                 read by a restricted unpickler that refuses anything but tensors and containers,
                 a StyleSwin .pt (g, g_ema, d), or an R3GAN network-snapshot-*.pkl (G, D, G_ema as
                 plainly pickled modules, either naming of the official code)
  --out <run dir>  an empty folder; receives config.yaml and checkpoints/step-000000000.pt
  --verify       after writing, print max abs differences: the golden fixture of the file's kind
                 (outputs of the official code) through this converter, and the written run against
                 the networks converted from your file, with the parameter counts; exit 2 if one fails
  overrides      Hydra overrides composed first (default: the paper preset of the checkpoint's
                 kind: experiment=transgan_paper dataset=cifar10, experiment=stylegan2_ada_cifar10 for
                 a 32x32 stylegan2-ada snapshot (--cfg=cifar), else experiment=stylegan2_ada_paper256
                 dataset=cifar10, experiment=styleswin_paper dataset=celeba, experiment=r3gan_cifar10;
                 give your dataset=...; conditional snapshots need dataset.conditional=true); the
                 converted networks replace the preset's model.

The run directory works with tools/eval.py, tools/generate.py, tools/serve.py and
resume=<run dir> (fine-tuning from the official weights).
"""

# kind -> (converter, the overrides that give that paper's recipe)
KINDS: dict[str, tuple[Callable[[Any], Converted], list[str]]] = {
    "transgan": (convert_transgan, ["experiment=transgan_paper", "dataset=cifar10"]),
    "stylegan2-ada": (convert_stylegan2_ada, ["experiment=stylegan2_ada_paper256", "dataset=cifar10"]),
    "styleswin": (convert_styleswin, ["experiment=styleswin_paper", "dataset=celeba"]),
    "r3gan": (convert_r3gan, ["experiment=r3gan_cifar10"]),
}


def detect(data: Any, path: Path) -> str:
    """Which official codebase wrote ``data`` (the loaded checkpoint), from its keys."""
    if isinstance(data, dict) and any(k in data for k in ("gen_state_dict", "avg_gen_state_dict")):
        return "transgan"
    if isinstance(data, dict) and any(is_r3gan(data.get(k)) for k in ("G", "G_ema", "D")):
        return "r3gan"
    if isinstance(data, dict) and any(isinstance(data.get(k), PersistentObject) for k in ("G", "G_ema", "D")):
        return "stylegan2-ada"
    if isinstance(data, dict) and any(isinstance(data.get(k), dict) for k in ("g_ema", "g")):
        return "styleswin"
    keys = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
    raise ConvertError(f"{path}: not a checkpoint this tool knows (TransGAN gen_state_dict/avg_gen_state_dict, "
                       f"stylegan2-ada G/D/G_ema network records, StyleSwin g/g_ema); "
                       f"found {keys}")


def default_overrides(kind: str, converted: Converted) -> list[str]:
    """The paper preset for a converted checkpoint (used when the command line gives no overrides)."""
    if kind == "stylegan2-ada" and converted.resolution == 32:
        return ["experiment=stylegan2_ada_cifar10"]  # --cfg=cifar: 32x32 and the 'orig' D
    return KINDS[kind][1]


def convert_file(path: Path) -> tuple[str, Converted]:
    """Load ``path`` safely, detect its kind, and convert it."""
    data = load_official(path)
    kind = detect(data, path)
    return kind, KINDS[kind][0](data)


def command_line() -> CommandLine:
    """tools/convert.py's arguments: the checkpoint, --out, and tools/train.py's overrides."""
    # deferred: start-up (see transgan/commands/__init__.py)
    from transgan.train.config import run_config_keys

    cli = CommandLine("tools/convert.py", USAGE, run_config_keys(), any_key=True)
    cli.parser.add_argument("checkpoint", nargs="?", help="the official checkpoint file")
    cli.parser.add_argument("--out", default=None, help="an empty folder for the run directory")
    cli.parser.add_argument("--verify", action="store_true", help="print parity checks after converting")
    return cli


def main(argv: Sequence[str]) -> int:
    """Entry point of tools/convert.py; returns the exit status."""
    # deferred: start-up (see transgan/commands/__init__.py)
    from transgan.convert.run import write_run
    from transgan.convert.verify import report

    cli = command_line()

    def job() -> None:
        flags, overrides = cli.parse(argv)
        if flags.checkpoint is None or flags.out is None:
            raise ConvertError("give one checkpoint file and --out <run dir> (see --help)")
        source = Path(flags.checkpoint).expanduser()
        data = load_official(source)
        kind = detect(data, source)
        conv = KINDS[kind][0](data)
        path = write_run(conv, Path(flags.out).expanduser(), overrides or default_overrides(kind, conv))
        print(f"{kind}: wrote {path}")
        if flags.verify:
            table, ok = report(kind, data, conv, Path(flags.out).expanduser())
            print(table)
            if not ok:
                raise ConvertError("--verify: a check failed (the table above); the run was written, do not trust it")

    return run_cli(job, usage=cli, argv=argv)


entry = console_entry(main)  # the ``transgan-convert`` console script; tools/convert.py runs it too


if __name__ == "__main__":
    sys.exit(entry())

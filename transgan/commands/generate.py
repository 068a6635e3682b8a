"""Images from a trained generator: class x seed grids, interpolation strips, style mixing, memorization
report, and export for serving.

    python tools/generate.py images  SOURCE [--classes 0,3|all] [--seeds 0-7] [--truncation T] [--out grid.png]
                                            [--per-image DIR] [--size PX]
    python tools/generate.py interp  SOURCE --seeds A,B [--class K] [--steps 9] [--method lerp|slerp|both]
                                            [--space z|w] [--truncation T] [--out strip.png]
    python tools/generate.py mixing  SOURCE [--rows 0-3] [--cols 10-14] [--class K] [--crossover N]
                                            [--truncation PSI] [--out mixing.png]          (style models)
    python tools/generate.py nn      SOURCE [--classes ...] [--seeds 0-3] [--k 5] [--features fd-digits|
                                            inception-v3-compat|pixels] [--weights FILE] [--dataset-root DIR]
                                            [--out nn.png]                                   (+ nn.json)
    python tools/generate.py export  SOURCE --out DIR [--network G_ema] [--force]

  SOURCE       a run directory of tools/train.py (its newest checkpoint), one checkpoint file, or an
               exported generator (a folder with generator.safetensors + generator.json, or the file)
  --truncation psi in w space for style generators (1 = none); for the others the |z| threshold
               beyond which latent entries are redrawn (default: none)
  --seeds      integers and ranges: 0-7,12. Every image is a function of (class, seed, truncation).
  model.attention=K  attention kernel (auto, sdpa, xformers, math, chunked) instead of the one the run
               was trained with (its model.attention, recorded in checkpoints and exports)
  --size       pixels per image side in the output, 1..4096
  --force      (export) replace an existing export in DIR; without it an existing one is refused

Exit status 2 with one `error:` line for bad input (unknown class, missing or corrupt files, a
checkpoint whose config does not fit its weights, an unavailable --device, an existing export).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from transgan.cli import ATTENTION_KEY, CommandLine, console_entry, overrides_as_dict, resolve_device, run_cli
from transgan.errors import ConfigError, OutputError

if TYPE_CHECKING:
    from transgan.runs.export import GeneratorInfo


def command_line() -> CommandLine:
    """The command line: one subcommand per product, ``model.attention=`` as in every command."""
    cli = CommandLine("tools/generate.py", __doc__, ATTENTION_KEY)
    sub = cli.parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("source", help="run directory, checkpoint file or exported generator")
        p.add_argument("--network", default="G_ema", choices=["G_ema", "G"], help="which weights of a checkpoint")
        p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
        return p

    p = command("images", "a grid of classes x seeds (or one file per image)")
    p.add_argument("--classes", default="all")
    p.add_argument("--seeds", default="0-7")
    p.add_argument("--truncation", type=float, default=None)
    p.add_argument("--size", type=int, default=None, help="pixels per image side in the output")
    p.add_argument("--out", default="samples.png")
    p.add_argument("--per-image", metavar="DIR", default=None, help="also write class<k>-seed<s>.png files here")

    p = command("interp", "latent interpolation strips between two seeds")
    p.add_argument("--seeds", required=True, help="two seeds: A,B")
    p.add_argument("--class", dest="class_", default=None)
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--method", default="both", choices=["lerp", "slerp", "both"])
    p.add_argument("--space", default="z", choices=["z", "w"])
    p.add_argument("--truncation", type=float, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--out", default="interpolation.png")

    p = command("mixing", "style-mixing grid (style generators)")
    p.add_argument("--rows", default="0-3", help="seeds of the coarse styles")
    p.add_argument("--cols", default="10-14", help="seeds of the fine styles")
    p.add_argument("--class", dest="class_", default=None)
    p.add_argument("--crossover", type=int, default=None, help="first w taken from the column seed")
    p.add_argument("--truncation", type=float, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--out", default="mixing.png")

    p = command("nn", "nearest-neighbour memorization report")
    p.add_argument("--classes", default="all")
    p.add_argument("--seeds", default="0-1")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--features", default=None, help="fd-digits, inception-v3-compat, vgg16 or pixels")
    p.add_argument("--weights", default=None, help="extractor weights file (Inception: see docs/evaluation.md)")
    p.add_argument("--truncation", type=float, default=None)
    p.add_argument("--dataset-root", default=None, help="where the training data is on this machine")
    p.add_argument("--max-reference", type=int, default=None, help="compare with the first N training images")
    p.add_argument("--out", default="nearest_neighbours.png")

    p = command("export", "G_ema as safetensors + JSON config, for tools/serve.py")
    p.add_argument("--out", required=True, help="folder to write generator.safetensors and generator.json into")
    p.add_argument("--force", action="store_true", help="replace an export already in --out")
    return cli


MAX_SIZE = 4096


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def check_output(args: argparse.Namespace) -> None:
    """Output options that can be refused before the model is loaded: --size, and --out (an image file of a
    format PIL writes, in a folder that can be written; export: a folder)."""
    # deferred: start-up (see transgan/commands/__init__.py)
    from transgan.runs.export import CONFIG_FILE, WEIGHTS_FILE

    size = getattr(args, "size", None)
    if size is not None and not 1 <= size <= MAX_SIZE:
        raise ConfigError(f"--size must be in 1..{MAX_SIZE} pixels, got {size}")
    if args.command != "export":
        out = Path(args.out).expanduser()
        if out.is_dir():
            raise ConfigError(f"--out {out} is a folder; give an image file, e.g. {out / 'grid.png'}")
        if out.suffix.lower() not in IMAGE_SUFFIXES:
            raise ConfigError(f"--out {out}: {out.suffix or 'no suffix'} is not an image format this tool writes; "
                              f"end the name with one of {', '.join(IMAGE_SUFFIXES)}")
        if out.exists() and not out.is_file():
            raise ConfigError(f"--out {out} exists and is not a regular file")
        folder = next((p for p in (out.parent, *out.parent.parents) if p.exists()), Path("."))
        if not os.access(folder, os.W_OK):
            raise ConfigError(f"--out {out}: {folder} cannot be written")
    if args.command == "export":
        out = Path(args.out).expanduser()
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file; export writes a folder (give a new or empty folder)")
        existing = [name for name in (WEIGHTS_FILE, CONFIG_FILE) if (out / name).exists()]
        if existing and not args.force:
            raise ConfigError(f"--out {out} already holds an export ({', '.join(existing)}); "
                              "add --force to replace it")


def run(argv: Sequence[str]) -> Path:
    """Do what the command line asks; return the main file or folder written."""
    # deferred: start-up (see transgan/commands/__init__.py)
    from transgan.eval import generate as gen
    from transgan.runs.export import export_generator
    from transgan.runs.load import load_source

    args, overrides = command_line().parse(argv)
    check_output(args)
    device = resolve_device(args.device)
    loaded = load_source(args.source, args.network, attention=overrides_as_dict(overrides).get("model.attention"))
    G, info = loaded.G.to(device), loaded.info
    print(gen.describe(info, G))
    out = Path(args.out).expanduser()

    if args.command == "export":
        try:
            export_generator(G.cpu(), info, out)
        except OSError as e:
            raise OutputError(f"cannot write the export to {out}: {e.strerror or e}") from e
        print(f"wrote {out}/generator.safetensors and generator.json")
        return out

    if args.command == "images":
        classes, seeds = gen.parse_classes(args.classes, info), gen.parse_seeds(args.seeds)
        images = gen.class_seed_grid(G, classes, seeds, args.truncation)
        if args.per_image:
            names = [f"{'' if c is None else f'class{c}-'}seed{s}.png" for c in classes for s in seeds]
            gen.save_images(images, names, Path(args.per_image), args.size)
            print(f"wrote {len(names)} images to {args.per_image}")
        _save(gen.image_grid(images, cols=len(seeds), size=args.size), out)
    elif args.command == "interp":
        seeds = gen.parse_seeds(args.seeds)
        if len(seeds) != 2:
            raise ConfigError(f"interp needs exactly two seeds (A,B), got {seeds}")
        methods = ["lerp", "slerp"] if args.method == "both" else [args.method]
        strips = gen.interpolation_strips(G, (seeds[0], seeds[1]), args.steps, methods, args.space,
                                          _class_or_first(args.class_, info), args.truncation)
        _save(gen.image_grid(strips, cols=args.steps, size=args.size), out)
        print(f"rows: {', '.join(methods)} in {args.space} space")
    elif args.command == "mixing":
        rows, cols = gen.parse_seeds(args.rows), gen.parse_seeds(args.cols)
        grid = gen.mixing_grid(G, rows, cols, _class_or_first(args.class_, info), args.crossover, args.truncation)
        _save(gen.image_grid(grid, cols=len(cols) + 1, size=args.size), out)
    elif args.command == "nn":
        overrides = {"root": args.dataset_root} if args.dataset_root else None
        report = gen.memorization_report(loaded, gen.parse_seeds(args.seeds), gen.parse_classes(args.classes, info),
                                         k=args.k, features=args.features, weights=args.weights,
                                         truncation=args.truncation, dataset_overrides=overrides,
                                         reference_limit=args.max_reference)
        try:
            png, meta = report.save(out)
        except OSError as e:
            raise OutputError(f"cannot write {out}: {e.strerror or e}") from e
        print(f"wrote {png} and {meta} ({report.features} features; rows: sample, then its {args.k} nearest "
              "training images)")
    return out


def _class_or_first(value: Optional[str], info: "GeneratorInfo") -> Optional[int]:
    """The named class; class 0 when a conditional model is given none (a strip or mixing grid shows one class)."""
    # deferred: start-up (see transgan/commands/__init__.py)
    from transgan.eval.generate import resolve_class

    if not info.num_classes:
        return resolve_class(value, info)
    return resolve_class(value if value is not None else 0, info)


def _save(image: Any, out: Path) -> None:
    """Write a PIL image, making the folder; a failed write (a full disk) is one OutputError."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        image.save(out)
    except OSError as e:
        raise OutputError(f"cannot write {out}: {e.strerror or e}") from e
    print(f"wrote {out}")


def main(argv: list[str]) -> int:
    """Run the tool; exit status 2 for bad input, with a message."""
    return run_cli(lambda: run(argv), usage=command_line(), argv=argv)


entry = console_entry(main)  # the ``transgan-generate`` console script; tools/generate.py runs it too


if __name__ == "__main__":
    sys.exit(entry())

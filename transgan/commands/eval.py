"""Evaluate a generator: FID, KID, IS, precision/recall (and intra-class FID) through torch-fidelity.

    python tools/eval.py <run dir | checkpoint.pt | image folder> [eval=<preset>] [key=value ...] [--out FILE]

  <run dir>        a tools/train.py run directory: its newest checkpoint, G_ema weights
  <checkpoint.pt>  one checkpoint of a run (checkpoints/step-<n>.pt)
  <image folder>   image files already generated (needs dataset=<name> for the reference)

Prints a table and writes every number with the full protocol (extractor, weights
file hash, number of samples, split, resize, seed, truncation) to eval.json. Missing
extractor weights fail at once, before any image is generated, naming the file to place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from transgan.cli import ATTENTION_KEY, CommandLine, console_entry, run_cli
from transgan.errors import ConfigError
from transgan.presets import load_option, option_names



KEYS = {
    "eval": f"a protocol from configs/eval/ ({', '.join(option_names('eval'))}); default: the dataset's own "
            "(digits, stacked_digits, ...), else the plain defaults (Inception, 50k samples, train split); "
            "eval=run: the protocol the run used during training (its metrics.jsonl numbers)",
    "eval.*": "one protocol key, e.g. eval.num_samples=10000, eval.network=G, eval.intra_fid=true, "
              "eval.metrics=[fid,kid], eval.inception_weights=/path/weights-inception-2015-12-05-6726825d.pth, "
              "eval.allow_unverified_weights=true, eval.cache_dir=..., eval.device=cpu",
    "dataset": "the reference dataset config from configs/dataset/ (default: the run's)",
    "dataset.*": "one key of the reference dataset config, e.g. dataset.root=/data/celeba",
    **ATTENTION_KEY,
}


def command_line() -> CommandLine:
    """tools/eval.py's arguments."""
    cli = CommandLine("tools/eval.py", __doc__, KEYS)
    cli.parser.add_argument("source", nargs="?", help="run directory, checkpoint file or folder of images")
    cli.parser.add_argument("--out", default=None, help="results file (default: <run dir>/eval.json, or ./eval.json "
                                                        "for a folder)")
    return cli


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    """Split the command line into the source, the preset, and the eval/dataset overrides and --out."""
    flags, overrides = command_line().parse(argv)
    if flags.source is None:
        raise ConfigError("give what to evaluate: a run directory, a checkpoint file or a folder of images")
    args: dict[str, Any] = {"source": flags.source, "preset": None, "dataset": None, "eval": [],
                            "dataset_overrides": [], "out": flags.out, "attention": None}
    for key, value in (o.split("=", 1) for o in overrides):
        if key == "eval":
            args["preset"] = value
        elif key == "dataset":
            args["dataset"] = value
        elif key == "model.attention":
            args["attention"] = value
        elif key.startswith("eval."):
            args["eval"].append(f"{key[5:]}={value}")
        else:
            args["dataset_overrides"].append(f"{key[8:]}={value}")
    return args


def load_dataset_config(name: str) -> Any:
    """A dataset config from configs/dataset/<name>.yaml."""
    return load_option("dataset", name, "dataset")


def run(argv: Sequence[str]) -> dict[str, Any]:
    """Evaluate what the command line names; print the table, write eval.json, return the results."""
    # deferred: start-up (see transgan/commands/__init__.py)
    from omegaconf import OmegaConf

    from transgan.eval.metrics import eval_config, evaluate, load_preset, protocol_weights
    from transgan.eval.training import training_evaluator
    from transgan.runs.checkpoint import load_checkpoint, run_dir_of
    from transgan.runs.load import find_checkpoint, load_generator
    from transgan.runs.state import saved_config, saved_progress
    from transgan.train.config import validate_config

    args = parse_args(argv)
    source = Path(args["source"]).expanduser()
    checkpoint = find_checkpoint(source)

    state = run_cfg = None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        run_cfg = saved_config(state)
    if args["dataset"]:
        dataset_cfg = load_dataset_config(args["dataset"])
        dataset_cfg.resolution = None  # the group's ${model.resolution}; the protocol gives the resolution
    elif run_cfg is not None:
        dataset_cfg = run_cfg.dataset
    else:
        raise ConfigError(f"{source} is a folder of images: name the reference with dataset=<name>")
    try:
        dataset_cfg = OmegaConf.merge(dataset_cfg, OmegaConf.from_dotlist(args["dataset_overrides"]))
        eval_overrides = OmegaConf.from_dotlist(args["eval"])
    except Exception as e:
        raise ConfigError(f"bad override: {e}") from e

    preset = args["preset"] or ("digits" if dataset_cfg.get("name") == "digits" else None)
    if preset == "run":  # the protocol the run evaluated itself with during training
        if run_cfg is None:
            raise ConfigError("eval=run needs a run directory or checkpoint: a folder of images has no run")
        evaluator = training_evaluator(validate_config(run_cfg))
        if evaluator is None:
            raise ConfigError("eval=run: this run evaluated nothing during training (eval.metrics=[])")
        base: Any = dataclasses.asdict(evaluator.protocol)
    else:
        base = load_preset(preset) if preset else None
    cfg = eval_config(base, **OmegaConf.to_container(eval_overrides))

    protocol_weights(cfg)  # a missing weights file fails now, before the checkpoint is even built
    info: dict[str, Any] = {"source": str(source), "preset": preset}
    if checkpoint is not None:
        target: Any = load_generator(state, cfg.network, attention=args["attention"])
        progress = saved_progress(state)
        info.update(checkpoint=str(checkpoint), step=progress.step, images_seen=progress.images_seen,
                    attention=getattr(target, "attention_kernel", None))
    else:
        target = source
    results = evaluate(target, dataset_cfg, cfg)
    results["protocol"].update(info)

    out = Path(args["out"]).expanduser() if args["out"] else (
        run_dir_of(checkpoint) / "eval.json"
        if checkpoint is not None else Path("eval.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_plain(results), indent=2) + "\n")
    print(format_table(results))
    print(f"wrote {out}")
    return results


def format_table(results: dict[str, Any]) -> str:
    """The metrics and the protocol's main facts as an aligned text table."""
    p = results["protocol"]
    # deferred: start-up (see transgan/commands/__init__.py)
    from transgan.eval.metric_registry import result_keys

    rows = [(k, f"{results[k]:.4f}") for k in result_keys() if k in results and k != "f_score"]
    rows += [("extractor", str(p["extractor"])),
             ("weights sha256", (p["weights_sha256"] or "(no weights file)")[:16]),
             ("samples", str(p["num_samples"])),
             ("reference", f"{p['dataset']} / {p['split']} ({p['reference_images']} images)"),
             ("resolution", f"{p['resolution']}x{p['resolution']}"),
             ("seed", str(p["seed"])),
             ("truncation", str(p["truncation_psi"]))]
    if p.get("checkpoint"):
        rows.append(("checkpoint", f"{p['checkpoint']} ({p.get('network')})"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _plain(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become strings."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def main(argv: list[str]) -> int:
    """Run the evaluation; return the exit status (2 for bad input, with a message)."""
    return run_cli(lambda: run(argv), usage=command_line(), argv=argv)


entry = console_entry(main)  # the ``transgan-eval`` console script; tools/eval.py runs it too


if __name__ == "__main__":
    sys.exit(entry())

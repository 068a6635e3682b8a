"""Train the digits judge shipped with transgan (CPU, deterministic, about a minute).

    python tools/train_digits_judge.py [--seed 0] [--epochs 30] [--out transgan/assets/digits_judge.safetensors]

Writes the weights (safetensors) and, beside them, a .json with the held-out accuracy of the
stratified split at several resolutions, the seed and the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transgan.eval.digits_judge import (  # noqa: E402
    JUDGE_WEIGHTS, SPLIT_SEED, SPLIT_TEST_SIZE, digits_split, judge_accuracy, train_digits_judge,
)

EVAL_RESOLUTIONS = (8, 16, 32, 64, 128, 256)


def main(argv: list[str] | None = None) -> dict:
    """Train, evaluate on the held-out split, write weights + json; returns the json record."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (fixed, for identical results)")
    parser.add_argument("--out", type=Path, default=JUDGE_WEIGHTS)
    args = parser.parse_args(argv)

    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    start = time.time()
    judge = train_digits_judge(seed=args.seed, epochs=args.epochs)
    seconds = time.time() - start

    images, labels = digits_split("test")
    accuracy = {str(r): judge_accuracy(judge, images, labels, resolution=r) for r in EVAL_RESOLUTIONS}
    record = {
        "held_out_accuracy": accuracy,
        "held_out_images": len(labels),
        "split": f"sklearn train_test_split(test_size={SPLIT_TEST_SIZE}, random_state={SPLIT_SEED}, "
                 f"stratify=target) of load_digits(); see transgan.eval.digits_judge.digits_split",
        "resize": "test digits upsampled from 8x8 with bilinear interpolation",
        "seed": args.seed,
        "epochs": args.epochs,
        "threads": args.threads,
        "command": shlex.join(["python", "tools/train_digits_judge.py", *(argv if argv is not None else sys.argv[1:])]),
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(args.out))
    args.out.chmod(0o644)  # safetensors writes owner-only; the file ships in the package
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()

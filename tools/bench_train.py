"""Training throughput, peak memory and model-FLOPs utilization of each backbone's real training step.

    python tools/bench_train.py --models swin_gan transgan --resolutions 64 256 \\
        --precisions fp32 bf16 --compile off on --batch 32 --json bench_train.json
    python tools/bench_train.py --tiny --json /tmp/tiny.json   # CPU, the small digits presets, seconds
    python tools/bench_train.py --count-only --device cpu --batch 2 --models swin_gan --resolutions 256
    python tools/bench_train.py --tiny --baseline-dir /tmp/base --repeats 3   # this tree against another

``--baseline-dir DIR`` runs every case also from DIR's code (its own tools/bench_train.py, in a fresh
process, with the same arguments), alternating with this tree's run ``--repeats`` times, and
prints the ratio of the medians (``vs_baseline`` = this tree's images/s over the baseline's): a
change is judged against the code before it on the same machine in the same minutes.

One case is (model, resolution, precision, compile). Each runs in a fresh process (its own
Accelerate state, memory high-water mark and compile cache), which builds the real Trainer
on the synthetic dataset (configs/dataset/synthetic.yaml: noise images held on the device, so
data loading costs nothing) with the backbone's training recipe (configs/recipes/<family>.yaml, as tools/train.py adds it;
``--override experiment=<preset>`` measures a paper recipe instead) and calls
``Trainer.train_step()``, the step tools/train.py runs: n_critic D steps, the G step, and lazy
regularization when due. Warm-up and timed windows are whole schedule periods
(``Trainer.schedule_period``), so lazy regularization is amortized exactly.

``--models`` names model presets (configs/model/); with ``--resolutions`` a preset ``<model>_<R>``
is used where it exists, else ``<model>`` with ``model.resolution=R``. ``fp32`` is float32 with
PyTorch's defaults (matmuls in true fp32, convolutions in TF32); ``bf16`` is Accelerate's
bfloat16 autocast with the regularization passes in bfloat16 too (``loss.reg_precision=bf16``;
``--reg-precision float32`` keeps them float32).

Columns (JSON keys):
  images_per_s    real images shown to D per second: n_critic x batch per step, the trainer's own
                  images_per_s (and the unit of kimg budgets)
  peak_mem_bytes  CUDA: torch.cuda.max_memory_allocated over the timed steps (weights, optimizer
                  state and data included); CPU: the resident-set high-water mark over the timed
                  steps minus the resident set before the trainer was built (peak_mem_kind says which)
  flops_per_step  FLOPs counted by torch.utils.flop_counter over one schedule period of eager steps,
                  divided by its length: forward, backward and double backward of the whole step
                  (G and D, regularization passes included; matmul, convolution and attention ops)
  mfu             flops_per_step / step time / the device's peak: on CUDA its dense bf16 peak
                  (PEAK_BF16_FLOPS, or --peak-flops; null for devices not in the table); on CPU the
                  sustained float32 GEMM rate measured in the same process at the case's thread
                  count (cpu_gemm_flops: 1024 x 1024 matmuls for ~0.5 s), so 100% is what the CPU
                  does on the best-shaped work there is
  ops_per_step    ATen operators other than views that one eager step dispatches (counted in the
                  same pass as the FLOPs): on a GPU each is a kernel launch, unless compiled
  us_per_op       step time / ops_per_step (eager cases). Eager PyTorch spends some 10-30 us of host
                  time per operator, so a value in that range means the step is launch-bound:
                  fewer operators (torch.compile, fusion), not fewer FLOPs, make it faster
  host_syncs_per_step  .item() / bool() reads and nonzero calls per step: each stalls the host
                  until the device catches up; the training step should have none
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as `python tools/bench_train.py` from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tools.bench_memory import peak_rss_bytes, reset_peak_rss, status_bytes  # noqa: E402
from transgan.eval.complexity import OpCounter  # noqa: E402
from transgan.presets import CONFIG_DIR  # noqa: E402
from transgan.train.config import RECIPE_DIR, recipe_overrides  # noqa: E402

KEYS = ("model", "resolution", "precision", "compile", "batch", "device", "images_per_s", "peak_mem_bytes",
        "flops_per_step", "mfu")

# Backbone families measured when --models is not given.
FAMILIES = ["transgan", "swin_gan", "stylegan2", "styletoken", "cwgan_gp"]

# Dense (no sparsity) bfloat16 tensor-core peaks from the vendors' data sheets, FLOP/s. The first
# entry whose key is in torch.cuda.get_device_name() wins, so specific names come first.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("GH200", 989e12), ("H200", 989e12), ("H100", 989e12),
    ("H800", 989e12), ("B200", 2250e12), ("B100", 1750e12), ("A100", 312e12), ("A800", 312e12),
    ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12),
    ("RTX 4090", 165e12), ("RTX 6000 Ada", 364e12), ("A6000", 155e12),
]

TINY = dict(models=["cwgan_gp", "stylegan2", "styletoken", "swin_gan", "transgan"], batch=4, steps=1, warmup=1,
            precisions=["fp32", "bf16"], compile=["off"], threads=1,
            # Short lazy-regularization intervals keep one schedule period to two steps.
            overrides=["loss.r1_interval=2", "loss.pl_interval=2"])


def peak_bf16_flops(device_name: str) -> Optional[float]:
    """Dense bf16 peak FLOP/s of a CUDA device, from its name; None if not in the table."""
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in device_name), None)


def cpu_gemm_flops(seconds: float = 0.5, n: int = 1024) -> float:
    """Sustained float32 FLOP/s of n x n matmuls on this process's CPU threads (the CPU's practical peak)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool, caches
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        reps += 1
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def recipe(model: str, overrides: list[str]) -> list[str]:
    """The training recipe (configs/recipes/<family>.yaml) of the longest family name the preset starts
    with, less the lines ``overrides`` decide (as tools/train.py applies it); none if there is none."""
    families = [p.stem for p in (CONFIG_DIR / RECIPE_DIR).glob("*.yaml")]
    family = max((f for f in families if model.startswith(f)), key=len, default=None)
    return recipe_overrides("auto", {"model": family}, overrides, CONFIG_DIR) if family else []


def model_overrides(model: str, resolution: Optional[int]) -> tuple[list[str], str]:
    """Hydra overrides selecting the model at a resolution, and the preset's name."""
    if resolution is None:
        return [f"model={model}"], model
    sized = f"{model}_{resolution}"
    if (CONFIG_DIR / "model" / f"{sized}.yaml").is_file():
        return [f"model={sized}"], sized
    return [f"model={model}", f"model.resolution={resolution}"], model


def case_overrides(case: dict[str, Any]) -> tuple[list[str], str]:
    """Every Hydra override of one case (recipe, model, data, schedule, precision), and the preset."""
    chosen, preset = model_overrides(case["model"], case["resolution"])
    bf16 = case["precision"] == "bf16"
    out = [*chosen, "recipe=none",  # the family's recipe is added explicitly below, also for sized presets
           "dataset=synthetic", "dataset.channels=3", "dataset.conditional=false",
           f"dataset.size={max(2 * case['batch'], 16)}",
           f"train.batch_size={case['batch']}", f"train.mixed_precision={'bf16' if bf16 else 'no'}",
           f"train.compile={str(case['compile']).lower()}"]
    if bf16:
        out.append(f"loss.reg_precision={case['reg_precision']}")
    if case["device"] == "cpu":
        out.append("train.device=cpu")
        if case["threads"]:
            out.append(f"train.cpu_threads={case['threads']}")
    out += list(case["overrides"])
    return recipe(case["model"], out) + out, preset


class _NoModuleAttribution:
    """Stands in for FlopCounterMode's module tracker: every FLOP is attributed to "Global" only."""

    parents = {"Global"}

    def __enter__(self) -> "_NoModuleAttribution":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def count_step_work(trainer: Any, steps: int) -> dict[str, int]:
    """FLOPs, ATen kernel calls and host syncs per step over ``steps`` eager training steps.

    Compiled graphs run eagerly here, so the operator counts are those of the eager step.
    """
    from torch.utils.flop_counter import FlopCounterMode

    flops = FlopCounterMode(display=False)
    # Per-module attribution hooks the backward of every module (register_multi_grad_hook), and
    # torch.autograd.grad -- the GP / R1 / path-length passes -- refuses such hooks on leaves.
    # The total needs no attribution.
    flops.mod_tracker = _NoModuleAttribution()
    ops = OpCounter()
    with torch.compiler.set_stance("force_eager"), flops, ops:
        for _ in range(steps):
            trainer.train_step()
    return {"flops_per_step": int(flops.get_total_flops()) // steps, "ops_per_step": ops.kernels // steps,
            "host_syncs_per_step": ops.syncs / steps}


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Build the trainer of one case, time whole schedule periods, count FLOPs; return its record."""
    from transgan.train.config import compose_config
    from transgan.train.build import build_trainer

    overrides, preset = case_overrides(case)
    cfg, _ = compose_config(overrides)
    cuda = case["device"] == "cuda"
    rss_before = None if cuda else status_bytes("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:  # the trainer names a run directory; nothing is written
        trainer = build_trainer(cfg, str(Path(tmp) / "run"))
    period = trainer.schedule_period
    timing = not case.get("count_only")
    warmup = period * math.ceil(max(case["warmup"], 1) / period) if timing else 0
    timed = period * math.ceil(max(case["steps"], 1) / period) if timing else 0
    elapsed, images, peak_mem, mem_kind = time_steps(trainer, warmup, timed, rss_before) if timed else (None,) * 4
    work = count_step_work(trainer, period)
    flops = work["flops_per_step"]
    step_time = elapsed / timed if timed else None
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    gemm = cpu_gemm_flops() if timed and not cuda else None  # at the thread count the trainer set
    peak = case["peak_flops"] or (peak_bf16_flops(device_name) if cuda else gemm)
    return {
        "model": case["model"], "resolution": int(cfg.model.resolution), "precision": case["precision"],
        "compile": bool(case["compile"]), "batch": case["batch"], "device": device_name,
        "images_per_s": images / elapsed if timed else None, "peak_mem_bytes": peak_mem, "flops_per_step": flops,
        "mfu": flops / step_time / peak if peak and timed else None,
        # Extras: what exactly ran, and where the time goes.
        "ops_per_step": work["ops_per_step"], "host_syncs_per_step": work["host_syncs_per_step"],
        "us_per_op": step_time / work["ops_per_step"] * 1e6 if timed and not case["compile"] else None,
        "preset": preset, "step_time_s": step_time, "timed_steps": timed, "warmup_steps": warmup,
        "schedule_period": period, "n_critic": int(cfg.train.n_critic), "loss": str(cfg.loss.name),
        "reg_precision": str(cfg.loss.reg_precision), "channels_last": trainer.channels_last,
        "peak_mem_kind": mem_kind, "peak_flops": peak, "cpu_gemm_flops": gemm, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "error": None,
    }


def time_steps(trainer: Any, warmup: int, timed: int, rss_before: Optional[int]) -> tuple[float, int, int, str]:
    """Run ``warmup`` steps, then time ``timed``: (seconds, images shown to D, peak memory bytes, its kind)."""
    cuda = trainer.accelerator.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        trainer.train_step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        reset = reset_peak_rss()
    images0 = trainer.progress.images_seen
    start = time.perf_counter()
    for _ in range(timed):
        trainer.train_step()
    sync()
    elapsed = time.perf_counter() - start
    if cuda:
        return elapsed, trainer.progress.images_seen - images0, torch.cuda.max_memory_allocated(), "cuda_max_allocated"
    peak = max(0, peak_rss_bytes(reset) - rss_before)
    return elapsed, trainer.progress.images_seen - images0, peak, "cpu_rss_delta"


def _child(case: dict[str, Any], conn: Any) -> None:
    """Process body: run one case and send its record (or the error) back."""
    try:
        conn.send(run_case(case))
    except Exception as e:  # reported in the table, not raised: one case must not stop the others
        first = (str(e).strip().splitlines() or [""])[0]
        conn.send({"error": "out of memory" if isinstance(e, torch.OutOfMemoryError)
                   else f"{type(e).__name__}: {first[:160]}"})
    finally:
        conn.close()


def measure(case: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Run one case in a fresh process; a failed case gets null measurements and its error."""
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(case, child))
    proc.start()
    child.close()
    result = None
    try:
        result = parent.recv()
    except EOFError:
        result = {"error": f"process died (exit code {proc.exitcode}; out of memory?)"}
    finally:  # the benchmark itself was interrupted: no case outlives it
        if result is None:
            proc.terminate()
    proc.join()
    if result.get("error"):
        result = {**{k: None for k in KEYS}, "model": case["model"], "resolution": case["resolution"],
                  "precision": case["precision"], "compile": bool(case["compile"]), "batch": case["batch"],
                  "device": case["device"], "error": result["error"]}
    return result


def add_speedups(records: list[dict[str, Any]]) -> None:
    """images_per_s relative to the fp32 eager case of the same model, resolution and batch."""
    base = {(r["model"], r["resolution"], r["batch"]): r["images_per_s"] for r in records
            if r["precision"] == "fp32" and not r["compile"] and r["images_per_s"]}
    for r in records:
        b = base.get((r["model"], r["resolution"], r["batch"]))
        r["speedup_vs_fp32_eager"] = r["images_per_s"] / b if b and r["images_per_s"] else None


def baseline_args(case: dict[str, Any], json_path: Path) -> list[str]:
    """The command line that runs ``case`` with another checkout's tools/bench_train.py."""
    args = ["--models", case["model"], "--precisions", case["precision"], "--compile",
            "on" if case["compile"] else "off", "--batch", str(case["batch"]), "--steps", str(case["steps"]),
            "--warmup", str(case["warmup"]), "--device", case["device"], "--json", str(json_path)]
    overrides = list(case["overrides"])
    if case["resolution"] is None:  # --tiny's case: the preset at its own size, with --tiny's overrides
        args.append("--tiny")
        overrides = [o for o in overrides if o not in TINY["overrides"]]
    else:
        args += ["--resolutions", str(case["resolution"])]
    if case["threads"]:
        args += ["--threads", str(case["threads"])]
    if case.get("count_only"):  # counted, not timed, in both trees
        args.append("--count-only")
    if case.get("reg_precision"):
        args += ["--reg-precision", str(case["reg_precision"])]
    if case.get("peak_flops"):
        args += ["--peak-flops", str(case["peak_flops"])]
    if overrides:
        args += ["--override", *overrides]
    return args


def measure_baseline(case: dict[str, Any], baseline: Path) -> dict[str, Any]:
    """Run ``case`` with the code of the checkout at ``baseline`` (its own bench, a fresh process)."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "baseline.json"
        done = subprocess.run([sys.executable, str(baseline / "tools" / "bench_train.py"), *baseline_args(case, out)],
                              cwd=baseline, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return {"images_per_s": None, "error": f"baseline failed: {tail[:160]}"}
        return json.loads(out.read_text())[0]


def _median(values: list[float]) -> Optional[float]:
    values = sorted(v for v in values if v)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def compare(case: dict[str, Any], ctx: Any, baseline: Path, repeats: int) -> dict[str, Any]:
    """This tree's and the baseline's runs of ``case``, alternating ``repeats`` times; the record of this
    tree's median run with the baseline's median images/s and the ratio."""
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(measure(case, ctx))
        theirs.append(measure_baseline(case, baseline))
    speed = _median([r["images_per_s"] for r in ours])
    record = min(ours, key=lambda r: abs((r["images_per_s"] or 0) - (speed or 0)))
    base = _median([r.get("images_per_s") for r in theirs])
    record = {**record, "images_per_s_runs": [r["images_per_s"] for r in ours],
              "baseline_images_per_s": base, "baseline_images_per_s_runs": [r.get("images_per_s") for r in theirs],
              "baseline_dir": str(baseline), "vs_baseline": speed / base if speed and base else None}
    if case.get("count_only"):  # nothing timed: compare what one step dispatches
        counted = next((r for r in theirs if r.get("ops_per_step")), {})
        record.update(baseline_ops_per_step=counted.get("ops_per_step"),
                      baseline_flops_per_step=counted.get("flops_per_step"),
                      ops_vs_baseline=(record["ops_per_step"] / counted["ops_per_step"]
                                       if counted and record.get("ops_per_step") else None))
        base = counted.get("ops_per_step")
    if record.get("error") is None and base is None:
        record["baseline_error"] = next((r.get("error") for r in theirs if r.get("error")), None)
    return record


def format_table(records: list[dict[str, Any]]) -> str:
    """The human-readable table of the records."""
    head = (f"{'model':<12} {'res':>4} {'prec':<5} {'compile':<7} {'batch':>5} {'images/s':>10} {'step ms':>9} "
            f"{'x fp32':>6} {'peak MiB':>9} {'GFLOP/step':>11} {'MFU':>6} {'kops/step':>9} {'us/op':>6}")
    compared = any("vs_baseline" in r for r in records)
    if compared:
        head += f" {'baseline img/s':>14} {'x baseline':>10}"
    lines = [head]
    for r in records:
        key = (f"{r['model']:<12} {str(r['resolution']):>4} {r['precision']:<5} {'on' if r['compile'] else 'off':<7} "
               f"{r['batch']:>5}")
        if r.get("error"):
            lines.append(f"{key} {r['error']}")
            continue
        if r["images_per_s"] is None:  # --count-only
            line = (f"{key} {'-':>10} {'-':>9} {'-':>6} {'-':>9} {r['flops_per_step'] / 1e9:>11.1f} {'-':>6} "
                    f"{r['ops_per_step'] / 1e3:>9.1f} {'-':>6}")
            if compared:  # the baseline's operators per step (thousands) and ours over theirs
                base, ratio = r.get("baseline_ops_per_step"), r.get("ops_vs_baseline")
                line += (f" {base / 1e3:>11.1f} ops {ratio:>10.2f}" if base and ratio else
                         f" {'-':>14} {r.get('baseline_error') or '-':>10}")
            lines.append(line)
            continue
        speed, mfu = r.get("speedup_vs_fp32_eager"), r["mfu"]
        speed_cell = f"{speed:.2f}" if speed else "-"
        mfu_cell = f"{mfu:.1%}" if mfu is not None else "-"
        us_cell = f"{r['us_per_op']:.1f}" if r.get("us_per_op") is not None else "-"
        line = (f"{key} {r['images_per_s']:>10.1f} {r['step_time_s'] * 1e3:>9.1f} {speed_cell:>6} "
                f"{r['peak_mem_bytes'] / 2**20:>9.0f} {r['flops_per_step'] / 1e9:>11.1f} {mfu_cell:>6} "
                f"{r['ops_per_step'] / 1e3:>9.1f} {us_cell:>6}")
        if compared:
            base, ratio = r.get("baseline_images_per_s"), r.get("vs_baseline")
            line += (f" {base:>14.1f} {ratio:>10.2f}" if base and ratio else
                     f" {'-':>14} {r.get('baseline_error') or '-':>10}")
        lines.append(line)
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """Parse arguments, run every case, print the table, write JSON; return the records."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true",
                   help="CPU smoke run: the digits-sized presets of every backbone, batch 4, one timed step")
    p.add_argument("--models", nargs="+", help="model presets (default: all five backbone families)")
    p.add_argument("--resolutions", type=int, nargs="+",
                   help="default 64 256 (--tiny: each preset's own resolution)")
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), help="default fp32 bf16")
    p.add_argument("--compile", nargs="+", choices=("off", "on"), help="torch.compile settings (default off)")
    p.add_argument("--batch", type=int, help="global batch size (default 32; --tiny 4)")
    p.add_argument("--steps", type=int, help="timed steps, rounded up to whole schedule periods (default 16)")
    p.add_argument("--warmup", type=int, help="warm-up steps, rounded up likewise (default 4)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--count-only", action="store_true",
                   help="count FLOPs, ATen ops and host syncs of one schedule period; time nothing (any device)")
    p.add_argument("--threads", type=int, help="CPU threads per case (default: the trainer's)")
    p.add_argument("--reg-precision", choices=("bf16", "float32"), default="bf16",
                   help="precision of the GP / R1 / path-length passes of bf16 cases")
    p.add_argument("--peak-flops", type=float, help="peak FLOP/s for MFU on a device not in the table")
    p.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE",
                   help="extra Hydra overrides for every case, e.g. train.channels_last=false")
    p.add_argument("--json", type=Path, help="write the records here")
    p.add_argument("--baseline-dir", type=Path, metavar="DIR",
                   help="also run every case from this checkout's code (alternating) and print the ratio")
    p.add_argument("--repeats", type=int, default=1, help="runs per case and tree with --baseline-dir (median)")
    args = p.parse_args(argv)
    if args.baseline_dir is not None and not (args.baseline_dir / "tools" / "bench_train.py").is_file():
        p.error(f"--baseline-dir {args.baseline_dir}: no tools/bench_train.py there (a checkout of this project)")
    if args.repeats < 1:
        p.error("--repeats must be positive")

    tiny = TINY if args.tiny else {}
    device = "cpu" if args.tiny else args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    models = args.models or tiny.get("models") or FAMILIES
    resolutions = args.resolutions or ([None] if args.tiny else [64, 256])
    precisions = args.precisions or tiny.get("precisions") or ["fp32", "bf16"]
    compiles = [c == "on" for c in (args.compile or tiny.get("compile") or ["off"])]
    batch = args.batch or tiny.get("batch") or 32
    steps, warmup = args.steps or tiny.get("steps") or 16, args.warmup or tiny.get("warmup") or 4
    if min(batch, steps, warmup) < 1:
        p.error("--batch, --steps and --warmup must be positive")

    # Fresh processes forked from a server that imported torch and transgan once (not CUDA: a
    # process that initialized CUDA cannot fork usable children).
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "transgan.train.trainer", "transgan.models", "transgan.losses"])
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    window = ("counting one schedule period per case, nothing timed" if args.count_only else
              f"{steps} timed + {warmup} warm-up steps (rounded up to schedule periods)")
    print(f"training benchmark on {name}: batch {batch}, {window}, torch {torch.__version__}", flush=True)
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    for model in models:
        for resolution in resolutions:
            for precision in precisions:
                for compiled in compiles:
                    case = dict(model=model, resolution=resolution, precision=precision, compile=compiled,
                                batch=batch, steps=steps, warmup=warmup, device=device,
                                threads=args.threads or tiny.get("threads"), reg_precision=args.reg_precision,
                                peak_flops=args.peak_flops, count_only=args.count_only,
                                overrides=[*tiny.get("overrides", []), *args.override])
                    record = (compare(case, ctx, args.baseline_dir.resolve(), args.repeats) if args.baseline_dir
                              else measure(case, ctx))
                    records.append(record)
                    print(format_table([record]).splitlines()[1], flush=True)
                    if args.json:  # after every case, so a run cut short keeps what it measured
                        _write_json(records, args.json)
    add_speedups(records)
    print("\n" + format_table(records))
    print(f"\n({time.perf_counter() - start:.0f} s)")
    if args.json:
        _write_json(records, args.json)
        print(f"wrote {len(records)} records to {args.json}")
    return records


def _write_json(records: list[dict[str, Any]], path: Path) -> None:
    """Write the records (a temporary file renamed, so a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(path)


if __name__ == "__main__":
    # SIGTERM (a scheduler's kill) unwinds like Ctrl-C, so the running case's process ends too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    main()

"""Time and peak memory of each attention kernel for forward, forward+backward and the R1 pattern.

    python tools/bench_attention.py                       # CPU: N = 256..4096, about 2-3 minutes
    python tools/bench_attention.py --json bench.json     # also write the records as JSON
    python tools/bench_attention.py --device cuda         # GPU: N = 256..16384 by default

Patterns (q, k, v are leaves [batch, heads, N, head_dim]; w is a fixed random cotangent):
    fwd       out = attention(q, k, v) under no_grad
    fwd_bwd   (out * w).sum().backward()
    r1        g = grad((out * w).sum(), (q, k, v), create_graph=True); sum(|g|^2).backward()

Peak memory is the growth over the memory held before the pattern starts (inputs included
there): on CPU the resident-set high-water mark of a fresh process per case (reset through
/proc/self/clear_refs), on CUDA torch.cuda.max_memory_allocated. Time is the best of several
runs after one warm-up run. A kernel that cannot run a pattern (the fused sdpa kernels have no
double backward) gets time_s = peak_bytes = null.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python tools/bench_attention.py` from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tools.bench_memory import peak_rss_bytes, reset_peak_rss, status_bytes  # noqa: E402
from transgan.nn import attention as A  # noqa: E402

PATTERNS = ("fwd", "fwd_bwd", "r1")


def _run_pattern(pattern: str, kernel: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 w: torch.Tensor) -> None:
    """Run one pattern once."""
    for t in (q, k, v):
        t.grad = None
    if pattern == "fwd":
        with torch.no_grad():
            A.scaled_dot_product(q, k, v, kernel=kernel)
        return
    out = A.scaled_dot_product(q, k, v, kernel=kernel)
    if pattern == "fwd_bwd":
        (out * w).sum().backward()
        return
    grads = torch.autograd.grad((out * w).sum(), (q, k, v), create_graph=True)
    sum(g.square().sum() for g in grads).backward()


def _inputs(n: int, batch: int, heads: int, head_dim: int, device: str, dtype: torch.dtype):
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v, w = (torch.randn(batch, heads, n, head_dim, generator=g, device=device, dtype=dtype) for _ in range(4))
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), w


def _timed(fn, sync, repeats: int, min_seconds: float = 0.5, max_runs: int = 20) -> float:
    """Best time of at least ``repeats`` runs (more for fast cases, up to ``min_seconds``)."""
    best, spent, runs = math.inf, 0.0, 0
    while runs < repeats or (spent < min_seconds and runs < max_runs):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        elapsed = time.perf_counter() - start
        best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
    return best


def _cpu_case(case: dict, conn) -> None:
    """Child process: measure one CPU case and send (time_s, peak_bytes, error) back."""
    try:
        torch.set_num_threads(case["threads"])
        # One tiny run first, so one-time costs (thread pools, lazy init) stay out of the peak.
        small = _inputs(min(case["n"], 32), case["batch"], case["heads"], case["head_dim"], "cpu", case["dtype"])
        _run_pattern(case["pattern"], case["kernel"], *small)
        del small
        q, k, v, w = _inputs(case["n"], case["batch"], case["heads"], case["head_dim"], "cpu", case["dtype"])
        base = status_bytes("VmRSS")
        reset = reset_peak_rss()  # the high-water mark starts at the current resident set
        _run_pattern(case["pattern"], case["kernel"], q, k, v, w)  # also the warm-up
        peak = max(0, peak_rss_bytes(reset) - base)
        best = _timed(lambda: _run_pattern(case["pattern"], case["kernel"], q, k, v, w), lambda: None,
                      case["repeats"])
        conn.send((best, peak, None))
    except Exception as e:  # reported, not raised: a kernel may not support a pattern
        conn.send((None, None, f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"))
    finally:
        conn.close()


def measure_cpu(case: dict, ctx) -> tuple[float | None, int | None, str | None]:
    """Run one case in a fresh process (so its memory high-water mark is its own)."""
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_cpu_case, args=(case, child))
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        result = (None, None, f"process died (exit code {proc.exitcode}; out of memory?)")
    proc.join()
    return result


def measure_cuda(case: dict) -> tuple[float | None, int | None, str | None]:
    """Run one case on the current CUDA device."""
    q, k, v, w = _inputs(case["n"], case["batch"], case["heads"], case["head_dim"], "cuda", case["dtype"])
    run = lambda: _run_pattern(case["pattern"], case["kernel"], q, k, v, w)  # noqa: E731
    try:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        best = _timed(run, torch.cuda.synchronize, case["repeats"])
        return best, peak, None
    except torch.OutOfMemoryError:
        return None, None, "out of memory"
    except Exception as e:
        return None, None, f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"
    finally:
        del q, k, v, w
        torch.cuda.empty_cache()


def _slope(records: list[dict], kernel: str, pattern: str, n0: int, n1: int) -> float | None:
    peaks = {r["n"]: r["peak_bytes"] for r in records if r["kernel"] == kernel and r["pattern"] == pattern}
    if not peaks.get(n0) or not peaks.get(n1):
        return None
    return math.log(peaks[n1] / peaks[n0]) / math.log(n1 / n0)


def print_table(records: list[dict], notes: dict[tuple, str], kernels: list[str]) -> None:
    """One block per pattern: rows N, columns time / peak memory per kernel, ratios to math."""
    header = " ".join(f"{k:>24}" for k in kernels)
    for pattern in PATTERNS:
        rows = [r for r in records if r["pattern"] == pattern]
        if not rows:
            continue
        print(f"\n{pattern}: time (s) / peak memory (MiB)" + ("   [x math: time, memory]" if "math" in kernels else ""))
        print(f"{'N':>6} {header}")
        for n in sorted({r["n"] for r in rows}):
            by_kernel = {r["kernel"]: r for r in rows if r["n"] == n}
            math_rec = by_kernel.get("math")
            cells = []
            for kernel in kernels:
                r = by_kernel.get(kernel)
                if r is None or r["time_s"] is None:
                    note = notes.get((kernel, pattern, n), "n/a")
                    cells.append(f"{note[:24]:>24}")
                    continue
                cell = f"{r['time_s']:.3f} / {r['peak_bytes'] / 2**20:.0f}"
                if kernel != "math" and math_rec and math_rec["time_s"] and math_rec["peak_bytes"]:
                    cell += f" [{r['time_s'] / math_rec['time_s']:.1f},{r['peak_bytes'] / math_rec['peak_bytes']:.2f}]"
                cells.append(f"{cell:>24}")
            print(f"{n:>6} " + " ".join(cells))


def print_summary(records: list[dict]) -> None:
    """The R1 memory claims: slope of peak memory in N, and chunked vs math at the largest N."""
    ns = sorted({r["n"] for r in records if r["pattern"] == "r1"})
    if not ns:
        return
    n0, n1 = (1024, 4096) if {1024, 4096} <= set(ns) else (ns[0], ns[-1])
    if n0 == n1:
        return
    print(f"\nr1 peak-memory log-log slope, N={n0}..{n1}:")
    for kernel in sorted({r["kernel"] for r in records}):
        s = _slope(records, kernel, "r1", n0, n1)
        if s is not None:
            print(f"  {kernel:>9}: {s:.2f}")
    by = {(r["kernel"], r["n"]): r for r in records if r["pattern"] == "r1"}
    c, m = by.get(("chunked", n1)), by.get(("math", n1))
    if c and m and c["time_s"] and m["time_s"]:
        print(f"r1 at N={n1}: chunked / math peak memory = {c['peak_bytes'] / m['peak_bytes']:.3f}, "
              f"time = {c['time_s'] / m['time_s']:.2f}x")


def main(argv: list[str] | None = None) -> list[dict]:
    """Parse arguments, run every case, print the table, write JSON; return the records."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--n", type=int, nargs="+", help="sequence lengths (default 256..4096 CPU, ..16384 CUDA)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--kernels", nargs="+", choices=[k for k in A.KERNELS if k != "auto"],
                   help="default: math sdpa chunked (+ xformers on CUDA when usable)")
    p.add_argument("--patterns", nargs="+", choices=PATTERNS, default=list(PATTERNS))
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                   help="default float32 on CPU, float16 on CUDA")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per case after the warm-up (best is kept)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads per case")
    p.add_argument("--json", type=Path, help="write the records here")
    args = p.parse_args(argv)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    ns = args.n or ([256, 512, 1024, 2048, 4096] + ([8192, 16384] if device == "cuda" else []))
    dtype = getattr(torch, args.dtype or ("float16" if device == "cuda" else "float32"))
    kernels = args.kernels or (["math", "sdpa"] + (["xformers"] if device == "cuda" and A.xformers_available()
                                                   else []) + ["chunked"])
    if any(n < 1 for n in ns) or min(args.batch, args.heads, args.head_dim, args.repeats) < 1:
        p.error("sizes and --repeats must be positive")

    ctx = None
    if device == "cpu":
        # Fresh processes forked from a server that already imported torch: a clean memory
        # high-water mark per case without paying the import each time.
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "transgan.nn.attention"])
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"attention benchmark on {name}: batch={args.batch} heads={args.heads} head_dim={args.head_dim} "
          f"dtype={str(dtype).removeprefix('torch.')} threads={args.threads if device == 'cpu' else '-'}")

    records, notes = [], {}
    start = time.perf_counter()
    for pattern in args.patterns:
        for n in ns:
            for kernel in kernels:
                case = dict(kernel=kernel, pattern=pattern, n=n, batch=args.batch, heads=args.heads,
                            head_dim=args.head_dim, dtype=dtype, repeats=args.repeats, threads=args.threads)
                t, peak, err = measure_cpu(case, ctx) if device == "cpu" else measure_cuda(case)
                if err:
                    notes[(kernel, pattern, n)] = ("no double backward" if "derivative for" in err else err)
                records.append({"kernel": kernel, "device": device, "pattern": pattern, "n": n,
                                "batch": args.batch, "heads": args.heads, "head_dim": args.head_dim,
                                "time_s": t, "peak_bytes": peak})
    print_table(records, notes, kernels)
    print_summary(records)
    print(f"\n({time.perf_counter() - start:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1))
        print(f"wrote {len(records)} records to {args.json}")
    return records


if __name__ == "__main__":
    main()

"""Blocked GEMM with a fused epilogue against plain numpy, float32.

    python benchmarks/gemm_cpu.py [--sizes 256 1024 2048] [--threads N] [--out benchmarks/results]

ours:     ep_cpu.gemm.gemm(a, pack_b(b), bias, "Relu")   (B packed once, outside the timing)
baseline: numpy.maximum(a @ b + bias, 0)                 (numpy's BLAS, its own threads)

Both run in the same process, alternated in blocks of calls so machine noise hits both alike
(each block starts after an idle gap, `machine.SETTLE_S`: OpenBLAS's threads spin ~0.1 s after
numpy's call and would hold a core that ours need; its first call is not timed); medians are reported. Acceptance (issue): speedup = baseline / ours >= 1.0 at every size.
Writes `gemm_cpu_<date>_<machine>.{json,md}` into the output folder.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import SETTLE_S, machine_info, machine_tag, wait_for_idle  # noqa: E402
from ep_cpu import gemm as G  # noqa: E402

DATE = datetime.date.today().isoformat()  # the day the figures were measured


def bench_size(n: int, threads: int, min_runs: int, budget_s: float,
               idle_load: float | None = None) -> dict:
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    bias = rng.standard_normal(n, dtype=np.float32)
    packed = G.pack_b(b)

    def ours():
        return G.gemm(a, packed, bias, "Relu", num_threads=threads)

    def ours_unpacked():
        return G.gemm(a, b, bias, "Relu", num_threads=threads)

    def baseline():
        return np.maximum(a @ b + bias, 0)

    wait_for_idle(idle_load)
    ref = baseline()
    err = float(np.abs(ours() - ref).max() / np.abs(ref).max())
    fns = {"ours": ours, "ours_unpacked": ours_unpacked, "numpy": baseline}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():   # warm-up (page faults, BLAS thread start)
        fn()
        fn()
    start = time.perf_counter()
    i = 0
    while i < min_runs or (time.perf_counter() - start < budget_s and i < 20 * min_runs):
        order = list(fns.items())
        if i % 2:
            order.reverse()
        for k, fn in order:
            time.sleep(SETTLE_S)   # the previous variant's spinning BLAS workers go idle
            fn()   # untimed: caches and thread wake-up
            for _ in range(3):
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        i += 1
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    row = {"n": n, "dtype": "float32", "runs": 3 * i,
           "ours_ms": round(med["ours"], 4), "ours_unpacked_ms": round(med["ours_unpacked"], 4),
           "numpy_ms": round(med["numpy"], 4), "speedup": round(med["numpy"] / med["ours"], 3),
           "speedup_unpacked": round(med["numpy"] / med["ours_unpacked"], 3),
           "gflops_ours": round(2 * n ** 3 / (med["ours"] * 1e-3) / 1e9, 1),
           "panels": len(packed.panels), "max_rel_error": err}
    print(f"n={n:5d}  ours {med['ours']:9.3f} ms  (unpacked {med['ours_unpacked']:9.3f})  "
          f"numpy {med['numpy']:9.3f} ms  speedup {row['speedup']:.2f}x  ({3 * i} runs)", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[256, 1024, 2048])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--min-runs", type=int, default=5, help="blocks of 3 timed calls")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of timing per size (cap)")
    ap.add_argument("--idle-load", type=float, default=None,
                    help="wait until the 1-min load average is below this before each size")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    G.set_num_threads(args.threads)
    rows = [bench_size(n, args.threads, args.min_runs, args.budget, args.idle_load) for n in args.sizes]
    info = machine_info(args.threads)
    ok = all(r["speedup"] >= 1.0 for r in rows)
    doc = {"benchmark": "gemm_cpu", "date": DATE, "machine": info,
           "ours": 'gemm(a, pack_b(b), bias, "Relu")', "baseline": "numpy.maximum(a @ b + bias, 0)",
           "tuning": {"PANEL_BYTES": G.PANEL_BYTES, "MC_MIN": G.MC_MIN, "TILE_BYTES": G.TILE_BYTES, "KC": G.KC,
                      "PAR_MIN_MACS": G.PAR_MIN_MACS},
           "results": rows, "acceptance": "speedup >= 1.0 at every size", "accepted": ok}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"gemm_cpu_{DATE}_{machine_tag()}"
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=2))
    lines = [f"# Blocked GEMM + fused bias/Relu vs numpy ({DATE})", "",
             f"Machine: {info['cpu']} ({info['cores']} cores), {args.threads} threads, numpy "
             f"{info['numpy']} ({info['blas']}). float32, square n x n, medians of blocks of calls alternated between the variants.",
             "", "| n | ours: gemm(a, pack_b(b), bias, 'Relu') (ms) | ours, B unpacked (ms) | "
                 "numpy.maximum(a @ b + bias, 0) (ms) | speedup | GFLOP/s (ours) |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['n']} | {r['ours_ms']:.3f} | {r['ours_unpacked_ms']:.3f} | {r['numpy_ms']:.3f} | "
              f"{r['speedup']:.2f}x | {r['gflops_ours']} |" for r in rows]
    lines += ["", f"Acceptance (speedup >= 1.0 everywhere): {'met' if ok else 'NOT met'}."]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / stem}.json/.md")


if __name__ == "__main__":
    main()

"""`python -m ep_core warmup`: compile the CPU provider's kernels for this machine ahead of time."""
from __future__ import annotations

import argparse
import time

from .common import EXIT_OK, print_json


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "warmup", help="compile the CPU provider's kernels for this machine (an install or image build step)",
        description="Run one small model per compiled CPU path (convolutions, pools, products, "
                    "recurrent layers, activations, linear ML ops) so that numba compiles them now "
                    "and caches them on disk: the first session later (in a fresh container from "
                    "an image built with this step, say) loads them instead of compiling.")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of the probe sessions "
                   "(default 2: the parallel runners compile too)")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ep_cpu import warmup
    t0 = time.perf_counter()
    report = warmup.warm_up(args.threads)
    total = round(time.perf_counter() - t0, 3)
    if args.json:
        print_json({"probes": report, "seconds": total})
        return EXIT_OK
    for r in report:
        print(f"{r['name']:<14}{r['seconds']:>8.2f} s  {r['what']}")
    print(f"{'total':<14}{total:>8.2f} s  (kernels cached on disk: later sessions load them)")
    return EXIT_OK

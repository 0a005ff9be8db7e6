"""`python -m ep_core bench MODEL`: latency percentiles and throughput; optionally onnxruntime
side by side (alternating run by run in this process) and a PNG plot."""
from __future__ import annotations

import argparse
import time

import numpy as np

from .common import (EXIT_OK, CliError, EXIT_FAIL, add_model_arguments, describe_feeds, latency_stats,
                     make_feeds, open_session, print_json, progress, pyplot, run_checked, session_options)


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="latency percentiles (p50/p90/p99/mean) and throughput",
        description="Time MODEL on random inputs (or --input files): after --warmup runs, --runs "
                    "timed runs; prints p50/p90/p99/mean latency and throughput. "
                    "--compare-onnxruntime times onnxruntime's CPU provider on the same inputs, "
                    "alternating run by run, as a baseline.")
    add_model_arguments(p)
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="value of one input from a .npy file (the others random); repeatable")
    p.add_argument("--seed", type=int, default=0, help="random inputs' seed")
    p.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--compare-onnxruntime", action="store_true",
                   help="also time onnxruntime (CPUExecutionProvider, same thread count), alternating")
    p.add_argument("--plot", metavar="OUT.png", help="write a PNG of the latencies per run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _onnxruntime_runner(path: str, threads: int, feeds: dict):
    try:
        import onnxruntime as ort
    except ImportError:
        raise CliError("--compare-onnxruntime needs onnxruntime: pip install onnxruntime", EXIT_FAIL) from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    except Exception as e:   # onnxruntime's own exception types
        raise CliError(f"onnxruntime cannot load {path}: {e}", EXIT_FAIL) from None
    return lambda: sess.run(None, feeds), ort.__version__


def run(args: argparse.Namespace) -> int:
    if args.runs < 1 or args.warmup < 0:
        raise CliError("--runs must be >= 1 and --warmup >= 0", 2)
    session = open_session(args.model, args.providers, session_options(args.threads))
    feeds = make_feeds(args, session)
    runners = {"ep_core": lambda: session.run(None, feeds)}
    versions = {}
    if args.compare_onnxruntime:
        runners["onnxruntime"], versions["onnxruntime"] = _onnxruntime_runner(args.model, args.threads, feeds)
    run_checked(session, feeds)   # an untimed first run: feed errors become usage errors here
    for _ in range(args.warmup):
        for fn in runners.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    order = list(runners)
    with progress(args.runs, "bench", enabled=not (args.no_progress or args.json)) as bar:
        for i in range(args.runs):
            # Alternate who goes first, so neither always follows the other's warm caches/threads.
            for name in (order if i % 2 == 0 else order[::-1]):
                t = time.perf_counter()
                runners[name]()
                times[name].append((time.perf_counter() - t) * 1e3)
            bar.update()
    stats = {k: latency_stats(v) for k, v in times.items()}
    doc = {"model": args.model, "providers": session.get_providers(), "threads": args.threads,
           "inputs": describe_feeds(feeds), "warmup": args.warmup, "stats": stats,
           "times_ms": times, "versions": versions}
    if "onnxruntime" in stats:
        doc["ratio_p50_ep_core_over_onnxruntime"] = stats["ep_core"]["p50_ms"] / stats["onnxruntime"]["p50_ms"]
    if args.plot:
        _plot(args.plot, times, args.model)
        doc["plot"] = args.plot
    if args.json:
        print_json(doc)
        return EXIT_OK
    print(f"model: {args.model}   providers: {session.get_providers()}   "
          f"threads: {args.threads or 'all cores'}   runs: {args.runs} (+{args.warmup} warm-up)")
    print(f"{'runtime':<14}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'mean ms':>10}{'runs/s':>10}")
    for k, s in stats.items():
        print(f"{k:<14}{s['p50_ms']:>10.3f}{s['p90_ms']:>10.3f}{s['p99_ms']:>10.3f}{s['mean_ms']:>10.3f}"
              f"{s['throughput_per_s']:>10.1f}")
    if "onnxruntime" in stats:
        print(f"ep_core / onnxruntime (p50): {doc['ratio_p50_ep_core_over_onnxruntime']:.2f}  "
              f"(alternating run by run in one process)")
    if args.plot:
        print(f"plot: {args.plot}")
    return EXIT_OK


def _plot(path: str, times: dict[str, list[float]], title: str) -> None:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, ts in times.items():
        ax1.plot(np.arange(1, len(ts) + 1), ts, marker=".", label=name)
        ax2.hist(ts, bins=min(30, max(5, len(ts) // 3)), alpha=0.6, label=name)
    ax1.set(xlabel="run", ylabel="latency (ms)", title="latency per run")
    ax2.set(xlabel="latency (ms)", ylabel="runs", title="distribution")
    ax1.legend()
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise CliError(f"--plot {path}: {e}", 2) from None
    finally:
        plt.close(fig)

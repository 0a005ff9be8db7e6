"""`python -m ep_core profile MODEL`: the session's Chrome trace plus a per-op-type time table."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

from .common import (EXIT_OK, CliError, EXIT_USAGE, add_model_arguments, make_feeds, open_session,
                     print_json, progress, pyplot, run_checked, session_options)


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "profile", help="Chrome trace and per-op-type time table (SessionOptions.enable_profiling)",
        description="Run MODEL --runs times with the session's profiler on (the first, untimed run "
                    "is left out), write the Chrome trace (--trace) and print the time per op type: "
                    "total ms over the profiled runs, % of the runs' time, node executions.")
    add_model_arguments(p)
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="value of one input from a .npy file (the others random); repeatable")
    p.add_argument("--seed", type=int, default=0, help="random inputs' seed")
    p.add_argument("--runs", type=int, default=10, help="profiled runs (default 10)")
    p.add_argument("--trace", metavar="OUT.json", help="where to write the Chrome trace "
                   "(default: ep_core_profile_<date>_<time>.json in the current directory)")
    p.add_argument("--plot", metavar="OUT.png", help="write a PNG bar plot of the time per op type")
    p.add_argument("--top", type=int, default=0, help="print only the N most expensive op types")
    p.set_defaults(func=run)
    return p


def op_type_table(events: list[dict]) -> tuple[list[dict], float, int]:
    """Per op type: total ms, % of the runs' time, node count; plus the runs' total ms and count."""
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    run_ms = sum(e["dur"] for e in runs) / 1e3
    by_op: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node":
            op = e.get("args", {}).get("op_name", e.get("name", "?"))
            acc = by_op.setdefault(op, [0.0, 0])
            acc[0] += e["dur"] / 1e3
            acc[1] += 1
    rows = [{"op_type": op, "total_ms": ms, "percent": 100.0 * ms / run_ms if run_ms else 0.0,
             "count": n} for op, (ms, n) in by_op.items()]
    rows.sort(key=lambda r: -r["total_ms"])
    return rows, run_ms, len(runs)


def run(args: argparse.Namespace) -> int:
    if args.runs < 1:
        raise CliError("--runs must be >= 1", EXIT_USAGE)
    # The first run is profiled too but left out of the table (it carries kernel compilation).
    tmp = tempfile.mkdtemp(prefix="ep_core_profile_")
    try:
        opts = session_options(args.threads, enable_profiling=True,
                               profile_file_prefix=os.path.join(tmp, "ep_core_profile"))
        session = open_session(args.model, args.providers, opts)
        feeds = make_feeds(args, session)
        run_checked(session, feeds)
        with progress(args.runs, "profile", enabled=not args.json) as bar:
            for _ in range(args.runs):
                session.run(None, feeds)
                bar.update()
        path = session.end_profiling()
        with open(path) as f:
            events = json.load(f)["traceEvents"]
        first = min((e["ts"] for e in events if e.get("name") == "model_run"), default=None)
        # Drop the first (warm-up) run: its nodes and its model_run event.
        first_run = next((e for e in events if e.get("name") == "model_run" and e["ts"] == first), None)
        if first_run is not None and args.runs:
            end = first_run["ts"] + first_run["dur"]
            events = [e for e in events if not (e.get("cat") in ("Node", "Session") and
                                                e.get("ts", 0) >= first_run["ts"] and e.get("ts", 0) < end)]
        trace = args.trace or os.path.basename(path)
        try:
            if os.path.dirname(trace):
                os.makedirs(os.path.dirname(trace), exist_ok=True)
            shutil.copyfile(path, trace)
        except OSError as e:
            raise CliError(f"--trace {trace}: {e}", EXIT_USAGE) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows, run_ms, n_runs = op_type_table(events)
    if args.plot:
        _plot(args.plot, rows, args.model, n_runs)
    shown = rows[:args.top] if args.top > 0 else rows
    if args.json:
        print_json({"model": args.model, "providers": session.get_providers(), "trace": trace,
                    "runs": n_runs, "run_total_ms": run_ms, "op_types": rows, "plot": args.plot})
        return EXIT_OK
    print(f"model: {args.model}   providers: {session.get_providers()}   profiled runs: {n_runs} "
          f"(mean {run_ms / max(n_runs, 1):.3f} ms per run)")
    print(f"{'op type':<28}{'total ms':>10}{'% of run':>10}{'count':>8}")
    for r in shown:
        print(f"{r['op_type']:<28}{r['total_ms']:>10.3f}{r['percent']:>9.1f}%{r['count']:>8}")
    other = 100.0 - sum(r["percent"] for r in rows)
    print(f"{'(between nodes)':<28}{'':>10}{other:>9.1f}%")
    print(f"trace: {trace}")
    if args.plot:
        print(f"plot: {args.plot}")
    return EXIT_OK


def _plot(path: str, rows: list[dict], title: str, runs: int) -> None:
    plt = pyplot()
    top = rows[:20][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(top) + 1.5))
    ax.barh([r["op_type"] for r in top], [r["total_ms"] / max(runs, 1) for r in top])
    ax.set(xlabel="ms per run", title=f"{title}: time per op type ({runs} runs)")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise CliError(f"--plot {path}: {e}", EXIT_USAGE) from None
    finally:
        plt.close(fig)

"""`python -m ep_core run MODEL`: run a model once on given or random inputs; print output stats."""
from __future__ import annotations

import argparse
import os
import re

import numpy as np

from .common import (EXIT_OK, CliError, EXIT_USAGE, add_model_arguments, array_stats, describe_feeds,
                     make_feeds, open_session, print_json, run_checked, session_options)


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "run", help="run a model on given or random inputs and print each output's statistics",
        description="Run MODEL once. Inputs come from --input NAME=FILE.npy; inputs not given are "
                    "random with --random (or when no --input is given at all), symbolic dims 1 "
                    "unless --dim NAME=VALUE. Prints each output's name, shape, dtype, min/max/mean "
                    "and NaN count.")
    add_model_arguments(p)
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="value of one input from a .npy file; repeatable")
    p.add_argument("--random", action="store_true", help="random values for the inputs not given")
    p.add_argument("--seed", type=int, default=0, help="random inputs' seed (default 0)")
    p.add_argument("--save", metavar="DIR", help="write each output as DIR/<name>.npy")
    p.set_defaults(func=run)
    return p


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "output"


def run(args: argparse.Namespace) -> int:
    session = open_session(args.model, args.providers, session_options(args.threads))
    feeds = make_feeds(args, session, random_rest=args.random or not args.input)
    outputs = run_checked(session, feeds)
    names = [o.name for o in session.get_outputs()]
    stats = {n: array_stats(v) for n, v in zip(names, outputs)}
    saved = {}
    if args.save:
        try:
            os.makedirs(args.save, exist_ok=True)
        except OSError as e:
            raise CliError(f"--save {args.save}: {e}", EXIT_USAGE) from None
        for n, v in zip(names, outputs):
            if isinstance(v, np.ndarray):
                saved[n] = os.path.join(args.save, _file_name(n) + ".npy")
                np.save(saved[n], v)
    if args.json:
        print_json({"model": args.model, "providers": session.get_providers(),
                    "inputs": describe_feeds(feeds), "outputs": stats, "saved": saved})
        return EXIT_OK
    print(f"model: {args.model}   providers: {session.get_providers()}")
    for k, v in describe_feeds(feeds).items():
        print(f"input  {k}: shape {v['shape']} {v['dtype']}")
    print(f"{'output':<24}{'shape':<20}{'dtype':<10}{'min':>12}{'max':>12}{'mean':>12}{'NaN':>6}")
    for n, s in stats.items():
        if "shape" not in s:
            print(f"{n:<24}{s['type']} (length {s['length']})")
            continue
        cells = [f"{s[k]:>12.5g}" if s.get(k) is not None else f"{'-':>12}" for k in ("min", "max", "mean")]
        print(f"{n:<24}{str(s['shape']):<20}{s['dtype']:<10}{''.join(cells)}{s.get('nan_count', '-'):>6}")
    for n, path in saved.items():
        print(f"saved {n} -> {path}")
    return EXIT_OK

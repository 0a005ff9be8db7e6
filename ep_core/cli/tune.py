"""`python -m ep_core tune MODEL`: find the fastest configuration on this machine (ep_core.tune)."""
from __future__ import annotations

import argparse
import sys

from .common import (EXIT_MODEL, EXIT_OK, EXIT_USAGE, CliError, check_model_path, load_input_files,
                     open_session, parse_dims, parse_providers, print_json, random_feeds)


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "tune", help="try provider orders, threads, execution mode, optimization level, provider "
                     "options; write the fastest configuration as JSON",
        description="Tune MODEL on this machine: a staged search from the defaults (provider order, "
                    "intra-op threads, execution mode with inter-op threads, optimization level, "
                    "CUDA options where CUDA is available), each stage timing its trials alternately "
                    "in short blocks after idle gaps; a trial replaces the current best only when its median is faster by "
                    "more than the measured noise. Prints each trial's median and p90. Results are "
                    "cached (--cache-dir, $EP_CORE_TUNE_CACHE, default ~/.cache/ep_core/tune): the "
                    "same model, inputs, machine and version are not measured twice.")
    p.add_argument("model", help="path of an .onnx file")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="value of one input from a .npy file (the others random); repeatable")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE",
                   help="value of a symbolic input dimension for random inputs (default 1)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per trial per stage (default 20)")
    p.add_argument("--providers", type=parse_providers, default=None, metavar="P1,P2",
                   help="providers whose orders to try (default: every available provider)")
    p.add_argument("--out", metavar="CONFIG.json", help="write the chosen configuration here")
    p.add_argument("--plot", metavar="OUT.png", help="write a PNG of every trial's median and p90")
    p.add_argument("--cache-dir", help="the tuner's cache folder")
    p.add_argument("--no-cache", action="store_true", help="measure even when a cached result exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import ep_core
    from ep_core import errors

    if args.runs < 1:
        raise CliError("--runs must be >= 1", EXIT_USAGE)
    check_model_path(args.model)
    session = open_session(args.model, ["cpu"])
    feeds = load_input_files(args.input, session)
    feeds.update(random_feeds(session, parse_dims(args.dim), 0, skip=feeds))
    del session
    try:
        result = ep_core.tune(args.model, feeds, runs=args.runs, cache_dir=args.cache_dir,
                              progress=not (args.no_progress or args.json), use_cache=not args.no_cache,
                              providers=args.providers)
    except errors.InvalidArgument as e:
        raise CliError(f"the inputs do not match the model: {e}", EXIT_USAGE) from None
    except (errors.InvalidGraph, errors.InvalidProtobuf, errors.NotImplemented) as e:
        raise CliError(f"cannot load model {args.model}: {e}", EXIT_MODEL) from None
    if args.out:
        try:
            result.save(args.out)
        except OSError as e:
            raise CliError(f"--out {args.out}: {e}", EXIT_USAGE) from None
    if args.plot:
        try:
            result.plot(args.plot)
        except ImportError as e:
            raise CliError(str(e)) from None
    if args.json:
        print_json(result.to_dict() | {"out": args.out, "plot": args.plot})
        return EXIT_OK
    if result.cached:
        print(f"cached result (nothing measured): {result.cache_path}")
    print(f"{'stage':<20}{'trial':<36}{'median ms':>11}{'p90 ms':>10}")
    for r in result.trials:
        if r.error:
            print(f"{r.stage:<20}{r.trial.name:<36}{'failed: ' + r.error[:60]:>21}")
        else:
            print(f"{r.stage:<20}{r.trial.name:<36}{r.median_ms:>11.3f}{r.p90_ms:>10.3f}")
    print(f"chosen: {result.best.name}   median {result.chosen.median_ms:.3f} ms vs defaults "
          f"{result.default.median_ms:.3f} ms ({result.speedup:.2f}x, final alternating round)")
    cfg = result.config()
    print(f"providers: {cfg['providers']}   provider_options: {cfg['provider_options']}   "
          f"session_options: {cfg['session_options']}")
    if args.out:
        print(f"config: {args.out}  (ep_core.InferenceSession(model, **load_config(path)), "
              f"from ep_core.tune_config)")
    if args.plot:
        print(f"plot: {args.plot}")
    sys.stdout.flush()
    return EXIT_OK

"""The command line: `python -m ep_core [SUBCOMMAND] ...` (docs/cli.md).

Each subcommand lives in its own module exposing `register(subparsers) -> argparse.ArgumentParser`;
the parser it returns sets `func=callable(args) -> int` (the exit code). SUBCOMMANDS lists them
in the order `--help` shows them. An entry of OPTIONAL names a module that needs an optional
dependency: when that dependency is missing the subcommand still exists and says what to install
(exit 1); when the module itself is not part of this build it is left out.

Exit codes: 0 ok, 1 runtime failure, 2 usage error (bad arguments, --input files that do not
exist or do not match the model), 3 model missing, invalid or unloadable.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ep_core.errors import EPError

from .common import EXIT_FAIL, EXIT_MODEL, EXIT_OK, EXIT_USAGE, CliError  # noqa: F401 - the codes, for callers
from . import main_job

SUBCOMMANDS: tuple[str, ...] = (
    "ep_core.cli.run",
    "ep_core.cli.bench",
    "ep_core.cli.profile",
    "ep_core.cli.inspect",
    "ep_core.cli.tune",
    "ep_core.cli.warmup",
)

# (module, subcommand name, what to install when an import inside the module fails)
OPTIONAL: tuple[tuple[str, str, str], ...] = (
    ("ep_core.cli_batch", "batch", "Ray Data: pip install 'ep-runtime[ray]' (or 'ray[data]')"),
    ("ep_core.quantization.cli", "quantize", "the quantization extra's dependencies"),
)


def _register_unavailable(subparsers, name: str, module: str, hint: str, error: BaseException):
    message = (f"the '{name}' subcommand needs an optional dependency that is not installed "
               f"({error}); install {hint}")
    p = subparsers.add_parser(name, add_help=False, help=f"(unavailable: {error})", description=message)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def unavailable(args=None) -> int:
        print(f"ep_core {name}: {message}", file=sys.stderr)
        return EXIT_FAIL
    p.set_defaults(func=unavailable)
    p.unavailable = unavailable   # main() answers any arguments (--help too) with the message
    return p


def _module_absent(module: str, error: ModuleNotFoundError) -> bool:
    """True when the subcommand's own module (or its package) is not part of this build."""
    missing = error.name or ""
    return missing == module or module.startswith(missing + ".")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ep_core",
        description="ep_core command line. Without a subcommand: the main job (an embedded CNN on "
                    "['cuda', 'cpu'] against ['cpu']).",
        epilog="exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 model missing/invalid. "
               "`python -m ep_core SUBCOMMAND --help` for each subcommand.")
    main_job.add_arguments(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    parser.unavailable = {}
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(subparsers)
    for module, name, hint in OPTIONAL:
        try:
            importlib.import_module(module).register(subparsers)
        except ModuleNotFoundError as e:
            if not _module_absent(module, e):
                parser.unavailable[name] = _register_unavailable(subparsers, name, module, hint, e).unavailable
        except ImportError as e:
            parser.unavailable[name] = _register_unavailable(subparsers, name, module, hint, e).unavailable
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]), run the subcommand, return its exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in parser.unavailable:
        return parser.unavailable[argv[0]]()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:   # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    func = getattr(args, "func", None) or main_job.run
    try:
        return int(func(args))
    except CliError as e:
        print(f"ep_core {args.command or ''}: error: {e}".replace("  ", " "), file=sys.stderr)
        return e.code
    except EPError as e:   # a runtime failure no subcommand mapped to a more specific code
        print(f"ep_core {args.command or ''}: error: {type(e).__name__}: {e}".replace("  ", " "), file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAIL

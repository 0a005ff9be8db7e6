"""What the subcommands share: exit codes, opening a model, feeds, statistics, progress, plots."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_MODEL = 0, 1, 2, 3


class CliError(Exception):
    """An error the command line reports as one line on stderr with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


# --- arguments shared by several subcommands ----------------------------------------------------

def add_model_arguments(p: argparse.ArgumentParser, threads: bool = True) -> None:
    p.add_argument("model", help="path of an .onnx file")
    p.add_argument("--providers", type=parse_providers, default=None,
                   help="comma-separated provider priority list, e.g. cuda,cpu (default: every "
                        "available built-in provider)")
    if threads:
        p.add_argument("--threads", type=int, default=0, help="intra_op_num_threads (0: all cores)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE",
                   help="value of a symbolic input dimension for random inputs (default 1); repeatable")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def parse_providers(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of provider names")
    return names


def parse_dims(pairs: Sequence[str]) -> dict[str, int]:
    dims = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            dims[name] = int(value)
            if not sep or not name or dims[name] < 0:
                raise ValueError
        except ValueError:
            raise CliError(f"--dim {pair!r}: expected NAME=VALUE with a non-negative integer VALUE",
                           EXIT_USAGE) from None
    return dims


# --- opening a model ----------------------------------------------------------------------------

def check_model_path(path: str) -> None:
    if not os.path.isfile(path):
        raise CliError(f"model file not found: {path}", EXIT_MODEL)


def open_session(path: str, providers: Sequence | None = None, options: Any = None):
    """An InferenceSession, with loading/validation errors turned into exit code 3."""
    import ep_core
    from ep_core import errors

    check_model_path(path)
    try:
        return ep_core.InferenceSession(path, options, providers=providers)
    except (errors.NoSuchFile, errors.InvalidProtobuf, errors.InvalidGraph, errors.NotImplemented,
            errors.IncompatiblePlugin) as e:
        raise CliError(f"cannot load model {path}: {type(e).__name__}: {e}", EXIT_MODEL) from None
    except errors.InvalidArgument as e:
        raise CliError(f"{path}: {e}", EXIT_USAGE) from None


def session_options(threads: int = 0, **fields: Any):
    import ep_core
    opts = ep_core.SessionOptions()
    opts.intra_op_num_threads = int(threads or 0)
    for k, v in fields.items():
        setattr(opts, k, v)
    return opts


# --- feeds --------------------------------------------------------------------------------------

_TYPE_STRINGS = {"float": np.float32, "double": np.float64, "float16": np.float16, "int8": np.int8,
                 "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8,
                 "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "bool": np.bool_}


def dtype_of(type_string: str) -> np.dtype:
    """numpy dtype of an onnxruntime type string 'tensor(float)'."""
    inner = type_string[len("tensor("):-1] if type_string.startswith("tensor(") else ""
    if inner not in _TYPE_STRINGS:
        raise CliError(f"random inputs of type {type_string} are not supported; pass this input "
                       f"with --input NAME=FILE.npy", EXIT_USAGE)
    return np.dtype(_TYPE_STRINGS[inner])


def resolve_shape(name: str, shape: Sequence | None, dims: dict[str, int]) -> list[int]:
    """Static dims kept, symbolic dims from `dims` (default 1), unknown dims 1."""
    if shape is None:
        raise CliError(f"input '{name}' has no declared rank; pass it with --input {name}=FILE.npy",
                       EXIT_USAGE)
    return [d if isinstance(d, int) else dims.get(str(d), 1) for d in shape]


def random_value(dtype: np.dtype, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    # Integer inputs are most often indices (token ids, axes): small non-negative values are safe.
    return rng.integers(0, 2, shape).astype(dtype)


def random_feeds(session, dims: dict[str, int] | None = None, seed: int = 0,
                 skip: Iterable[str] = ()) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    skip = set(skip)
    return {a.name: random_value(dtype_of(a.type), resolve_shape(a.name, a.shape, dims or {}), rng)
            for a in session.get_inputs() if a.name not in skip}


def load_input_files(pairs: Sequence[str], session) -> dict[str, np.ndarray]:
    """`NAME=FILE.npy` pairs -> feeds; unknown names and unreadable files are usage errors."""
    known = {a.name for a in session.get_inputs()} | {a.name for a in session.get_overridable_initializers()}
    feeds = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise CliError(f"--input {pair!r}: expected NAME=FILE.npy", EXIT_USAGE)
        if name not in known:
            raise CliError(f"--input {pair!r}: the model has no input '{name}'; its inputs are "
                           f"{sorted(known)}", EXIT_USAGE)
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CliError(f"--input {pair!r}: cannot read {path}: {e}", EXIT_USAGE) from None
    return feeds


# --- statistics ---------------------------------------------------------------------------------

def latency_stats(times_ms: Sequence[float]) -> dict[str, float]:
    t = np.asarray(times_ms, dtype=np.float64)
    if not t.size:
        return {"runs": 0}
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    mean = float(t.mean())
    return {"runs": int(t.size), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": mean, "min_ms": float(t.min()), "max_ms": float(t.max()),
            "throughput_per_s": 1e3 / mean if mean > 0 else float("inf")}


def array_stats(value: Any) -> dict[str, Any]:
    """Shape, dtype, min/max/mean and NaN count of one output (a type name for non-tensors)."""
    if not isinstance(value, np.ndarray):
        return {"type": type(value).__name__, "length": len(value) if hasattr(value, "__len__") else None}
    out: dict[str, Any] = {"shape": list(value.shape), "dtype": str(value.dtype)}
    if value.dtype.kind in "fiub" and value.size:
        v = value.astype(np.float64)
        finite = v[np.isfinite(v)] if value.dtype.kind == "f" else v
        out.update(min=float(finite.min()) if finite.size else None,
                   max=float(finite.max()) if finite.size else None,
                   mean=float(finite.mean()) if finite.size else None,
                   nan_count=int(np.isnan(v).sum()))
    return out


# --- output -------------------------------------------------------------------------------------

def print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def progress(total: int, desc: str, enabled: bool = True) -> "Progress":
    return Progress(total, desc, enabled)


class Progress:
    """A progress bar on stderr: tqdm when installed, else a plain line updated in place."""

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.total, self.desc, self.enabled, self.n = total, desc, enabled, 0
        self._bar = None
        self._last = 0.0
        if enabled:
            try:
                from tqdm import tqdm
                self._bar = tqdm(total=total, desc=desc, unit="run", leave=False, file=sys.stderr)
            except ImportError:
                pass

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
        elif time.monotonic() - self._last > 0.5 or self.n >= self.total:
            self._last = time.monotonic()
            sys.stderr.write(f"\r{self.desc}: {self.n}/{self.total}")
            sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.n:
            sys.stderr.write("\n")

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def pyplot():
    """matplotlib.pyplot with a file-only backend; a clear error when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install matplotlib (or the project's dev extra)",
                       EXIT_FAIL) from None
    return plt


def timed(fn: Callable[[], Any]) -> float:
    """Milliseconds one call of `fn` took."""
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def run_checked(session, feeds: dict[str, Any]) -> list[Any]:
    """session.run(None, feeds) with feed mismatches as usage errors and failures as exit 1."""
    from ep_core import errors
    try:
        return session.run(None, feeds)
    except errors.InvalidArgument as e:
        raise CliError(f"the inputs do not match the model: {e}", EXIT_USAGE) from None
    except errors.EPError as e:
        raise CliError(f"run failed: {type(e).__name__}: {e}", EXIT_FAIL) from None


def make_feeds(args: argparse.Namespace, session, random_rest: bool = True) -> dict[str, np.ndarray]:
    """Feeds from --input files; the remaining inputs random (symbolic dims from --dim)."""
    given = load_input_files(getattr(args, "input", None) or [], session)
    missing = [a.name for a in session.get_inputs() if a.name not in given]
    if missing and not random_rest:
        raise CliError(f"no value for input(s) {missing}: pass --input NAME=FILE.npy or --random",
                       EXIT_USAGE)
    given.update(random_feeds(session, parse_dims(args.dim), getattr(args, "seed", 0), skip=given))
    return given


def describe_feeds(feeds: dict[str, Any]) -> dict[str, Any]:
    return {k: {"shape": list(np.shape(v)), "dtype": str(np.asarray(v).dtype)} for k, v in feeds.items()}

"""Tiered compilation: a compiled kernel missing from numba's disk cache compiles on a background
thread while its callers run their numpy/BLAS path.

numba compiles a kernel on first use and caches the machine code on disk. On a machine (or a
fresh container) whose cache is empty, the first ResNet-50 run compiled for ~16 s before
returning (thin convs' microkernel ~5 s, Winograd's transforms ~4 s, ...), 5x a warm first
session. Now the first caller of a kernel family asks `ready(name, build)`: `build` (compile, or
load from the cache: milliseconds) runs on one background thread, the caller waits up to
`WAIT_S` for it, which a cache load meets, and otherwise takes its fallback path this time.
Later calls only look whether it has finished; once a wait has run out (`cold`: the cache is
empty), first requests of other families do not wait either. LLVM releases the GIL while it
optimizes, so the run goes on beside the compile.

Where a caller keeps a path decision (a conv's geometry, a plan on its kernel) it keys it
with `generation`, bumped whenever a build finishes, so the decision is taken again then.

`EP_CPU_JIT=sync` (the test suite sets it) or a `synchronous()` block (the warm-up) compiles on
the calling thread instead: the first call waits and the compiled path is always the one taken.
`wait()` blocks until every requested build has finished (warm-up, benchmarks). A build that
fails is reported once as a RuntimeWarning and its callers keep their fallback path.
"""
from __future__ import annotations

import atexit
import os
import threading
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

WAIT_S = 0.25          # a disk-cache load of a kernel family takes ~5-100 ms
# The wait of a caller that knows its family is in the disk cache (`ready(on_disk=True)`): the
# blocked convs' 35 tiles load in 0.31-0.35 s (AMD EPYC), past WAIT_S, and a session built
# meanwhile stayed in NCHW for good
LOAD_WAIT_S = 2.0
generation = 0         # builds finished so far (callers key cached path choices with it)
# A first request's wait ran out: the disk cache is empty here (a fresh machine), so later
# families compile too and their first callers do not wait for them (ResNet-50's cold first
# run waited WAIT_S for each of six families).
cold = False

_builds: dict[str, "_Build"] = {}
_lock = threading.RLock()   # (a build may ask for another family: re-entrant in sync mode)
_queue: list["_Build"] = []
_wake = threading.Condition(_lock)
_worker: threading.Thread | None = None
_in_flight: "_Build | None" = None   # the build the background thread runs now
EXIT_WAIT_S = 120.0   # at most this long, at interpreter exit, for the build in flight


class _Build:
    __slots__ = ("name", "fn", "done", "ok")

    def __init__(self, name: str, fn: Callable[[], Any]) -> None:
        self.name, self.fn, self.done, self.ok = name, fn, threading.Event(), False


_sync_depth = 0        # open `synchronous()` blocks


def sync() -> bool:
    """Whether builds run on the calling thread (EP_CPU_JIT=sync, or inside `synchronous()`)."""
    return _sync_depth > 0 or os.environ.get("EP_CPU_JIT", "").strip().lower() == "sync"


@contextmanager
def synchronous() -> Iterator[None]:
    """Builds requested inside run on the calling thread (the warm-up's probes)."""
    global _sync_depth
    with _lock:
        _sync_depth += 1
    try:
        yield
    finally:
        with _lock:
            _sync_depth -= 1


def ready(name: str, build: Callable[[], Any], on_disk: bool = False) -> bool:
    """Whether kernel family `name` is compiled (or loaded) and may run now. The first request
    starts `build` (it compiles every kernel of the family, e.g. by calling them on tiny
    inputs); called by any thread, cheap once it has finished. `on_disk`: the caller found the
    family in numba's disk cache, so this is a load: wait up to LOAD_WAIT_S for it, whatever
    `cold` says."""
    global cold
    b = _builds.get(name)
    if b is not None and b.done.is_set():
        return b.ok
    if sync():
        with _lock:
            b = _builds.get(name)
            if b is None or not b.done.is_set():
                b = _builds[name] = _Build(name, build)
                _run(b)
        return b.ok
    b, first = _request(name, build)
    if on_disk:
        return b.done.wait(LOAD_WAIT_S) and b.ok
    if not first or cold:
        return b.done.is_set() and b.ok
    if b.done.wait(WAIT_S):
        return b.ok
    cold = True
    return False


def start(name: str, build: Callable[[], Any]) -> bool:
    """Whether family `name` is built and may run now; if it was never requested, its build
    starts on the background thread without waiting for it (callers that can decide later).
    In sync mode it is built here, as `ready` does."""
    b = _builds.get(name)
    if b is not None and b.done.is_set():
        return b.ok
    if sync():
        return ready(name, build)
    _request(name, build)
    return False


def _request(name: str, build: Callable[[], Any]) -> tuple[_Build, bool]:
    """(family `name`'s build, whether this call queued it for the background thread)."""
    with _lock:
        b = _builds.get(name)
        if b is not None:
            return b, False
        b = _builds[name] = _Build(name, build)
        _queue.append(b)
        _start_worker()
        _wake.notify()
        return b, True


def wait(timeout: float | None = None) -> bool:
    """Block until every requested build has finished; False if `timeout` ran out first."""
    for b in list(_builds.values()):
        if not b.done.wait(timeout):
            return False
    return True


def _run(b: _Build) -> None:
    global generation
    try:
        b.fn()
        b.ok = True
    except Exception as e:  # noqa: BLE001 - the callers' fallback path runs instead
        if sync():
            raise
        warnings.warn(f"ep_cpu: compiling {b.name} failed ({type(e).__name__}: {e}); its "
                      f"numpy path runs instead", RuntimeWarning, stacklevel=2)
    finally:
        b.done.set()
        generation += 1


def _start_worker() -> None:
    global _worker
    if _worker is None or not _worker.is_alive():
        # A daemon: a process that ends does not wait for the builds still queued (`_at_exit`
        # waits for the one in flight only; numba writes each cache file whole).
        _worker = threading.Thread(target=_serve, name="ep_cpu_jit", daemon=True)
        _worker.start()


def _serve() -> None:
    global _in_flight
    while True:
        with _lock:
            while not _queue:
                _in_flight = None
                _wake.wait()
            b = _in_flight = _queue.pop(0)
        _run(b)


@atexit.register
def _at_exit() -> None:
    """At interpreter exit the queued builds are dropped (their callers are gone) and the one
    in flight is waited for: numba compiling on the daemon thread while the interpreter tore
    down ended a short script on an empty cache with a segfault or an LLVM assertion (exit
    status 139 / 134) after its work was done."""
    with _lock:
        dropped, _queue[:] = list(_queue), []
        b = _in_flight
    for d in dropped:
        d.done.set()   # (not ok: nothing will run it)
    if b is not None and threading.current_thread() is not _worker:
        b.done.wait(EXIT_WAIT_S)

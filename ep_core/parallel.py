"""Running a plan: sequential or parallel executor, intra-op thread limits, profiling observer.

`ORT_PARALLEL` runs every step whose inputs are ready on a pool of `inter_op_num_threads`
threads (numpy releases the GIL inside BLAS and most ufuncs, so independent branches overlap).
Each kernel computes exactly what it computes sequentially, so outputs are identical.
`intra_op_num_threads` caps the threads each kernel uses, through each provider's
`limit_threads` hook (the CPU provider: its GEMM tiling threads and the BLAS library's).
"""
from __future__ import annotations

import contextvars
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .executor import current_run
from .options import ExecutionMode

def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


_PARALLEL = ExecutionMode.ORT_PARALLEL   # (an enum member's lookup costs ~0.1 us a run)

# np.errstate(all="ignore") for a run as numpy 2 keeps it: its context variable set to one
# prebuilt value. np.errstate builds that value on every entry: ~2.5 us of a streaming model's
# ~90 us run. numpy 1.x (or a numpy that moved these) takes np.errstate.
try:
    from numpy._core._ufunc_config import _extobj_contextvar as _fp_errors
    from numpy._core._ufunc_config import _make_extobj
    _FP_IGNORED = _make_extobj(all="ignore")
except (ImportError, AttributeError, TypeError):   # pragma: no cover - numpy 1.x
    _fp_errors = None


def run_plan(plan: Any, feeds: dict, fetch_slots: list[int], options: Any, profiler: Any = None,
             only_fetches: bool = False, run_tag: str = "") -> list:
    """Run `plan` with the session's execution mode, thread limits and profiler.

    `only_fetches` runs just the steps the fetches depend on (sequentially)."""
    parallel = getattr(options, "execution_mode", 0) == _PARALLEL
    intra = int(getattr(options, "intra_op_num_threads", 0) or 0)
    if (not parallel and not only_fetches and (profiler is None or not profiler.enabled)
            and len(plan.providers) == 1):
        # The common run (sequential, one provider, profiling off: no observer, no event)
        # without an ExitStack.
        if _fp_errors is None:
            with np.errstate(all="ignore"), plan.providers[0].limit_threads(intra):
                return plan.run(feeds, fetch_slots)
        token = _fp_errors.set(_FP_IGNORED)
        try:
            with plan.providers[0].limit_threads(intra):
                return plan.run(feeds, fetch_slots)
        finally:
            _fp_errors.reset(token)
    observer = profiler.node_observer() if profiler is not None else None
    t0 = time.perf_counter()
    threads = 1
    if parallel:   # sched_getaffinity is a system call (~15 us): only the parallel executor asks
        cores = _cores()
        threads = int(getattr(options, "inter_op_num_threads", 0) or 0) or cores
    if parallel and threads > 1 and intra <= 0:
        # Kernels running side by side share the cores: unlimited BLAS threads in each would
        # oversubscribe them (OpenBLAS threads spin), so split the cores between the inter-op threads.
        intra = max(1, cores // threads)
    with ExitStack() as stack:
        # IEEE results (log(0) = -inf, 0/0 = NaN, overflow = inf) are what ONNX asks for: numpy's
        # warnings about them are noise; set once per run (numpy keeps it in a context variable,
        # which the parallel executor copies into its workers) instead of in every kernel call.
        stack.enter_context(np.errstate(all="ignore"))
        for p in plan.providers:
            stack.enter_context(p.limit_threads(intra))
        if only_fetches:
            parallel = False
            out = plan.run(feeds, fetch_slots, observer, plan.steps_for(fetch_slots))
        elif parallel:
            out = run_parallel(plan, feeds, fetch_slots, threads, observer)
        elif observer is not None:
            out = plan.run(feeds, fetch_slots, observer=observer)
        else:
            out = plan.run(feeds, fetch_slots)
    if profiler is not None:
        args = {"execution_mode": "parallel" if parallel else "sequential"}
        if run_tag:
            args["run_tag"] = run_tag
        profiler.add("model_run", "Session", t0, time.perf_counter(), args)
    return out


# --- the parallel executor ---------------------------------------------------------------------

@dataclass
class _Schedule:
    """Step dependencies of a plan, computed once per plan."""
    deps: list[int]                 # number of producing steps each step waits for
    dependents: list[list[int]]     # steps to notify when a step finishes
    readers: dict[int, int]         # slot -> number of steps reading it


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _schedule(plan: Any) -> _Schedule:
    if plan.schedule is not None:
        return plan.schedule
    producer: dict[int, int] = {}
    for k, st in enumerate(plan.steps):
        for s in st.outputs:
            if s is not None:
                producer[s] = k
    deps = [0] * len(plan.steps)
    dependents: list[list[int]] = [[] for _ in plan.steps]
    readers: dict[int, int] = {}
    for k, st in enumerate(plan.steps):
        ups = {producer[s] for s in st.inputs if s is not None and s in producer}
        deps[k] = len(ups)
        for u in ups:
            dependents[u].append(k)
        for s in set(s for s in st.inputs if s is not None):
            readers[s] = readers.get(s, 0) + 1
    plan.schedule = _Schedule(deps, dependents, readers)
    return plan.schedule


def _pool(threads: int) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = ThreadPoolExecutor(max_workers=threads,
                                                        thread_name_prefix="ep_core_inter_op")
        return pool


def run_parallel(plan: Any, feeds: dict, fetch_slots: list[int], threads: int,
                 observer: Callable | None = None) -> list:
    """Run independent steps concurrently; a value is dropped once every reader has run."""
    if threads <= 1 or len(plan.steps) <= 1:
        return plan.run(feeds, fetch_slots, observer=observer)
    sched = _schedule(plan)
    slots = plan.initial_slots(feeds)
    keep = set(plan.constants) | set(fetch_slots) | set(plan.output_slots)
    remaining = dict(sched.readers)
    waiting = list(sched.deps)
    pool = _pool(threads)
    running: dict[Any, int] = {}
    control = current_run.get()

    def submit(k: int) -> None:
        if control is not None:
            control.check()
        st = plan.steps[k]
        args = [slots[s] if s is not None else None for s in st.inputs]
        # Bodies run by a step must see this run's control: run it in a copy of our context.
        running[pool.submit(contextvars.copy_context().run, st.execute, args, observer)] = k

    for k, n in enumerate(waiting):
        if n == 0:
            submit(k)
    try:
        while running:
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                k = running.pop(fut)
                st = plan.steps[k]
                outs = fut.result()  # re-raises the kernel's error (already a Fail)
                for s, v in zip(st.outputs, outs):
                    if s is not None:
                        slots[s] = v
                        if s not in keep and not remaining.get(s):
                            slots[s] = None   # nobody reads it
                for s in set(s for s in st.inputs if s is not None):
                    remaining[s] -= 1
                    if remaining[s] == 0 and s not in keep:
                        slots[s] = None
                for d in sched.dependents[k]:
                    waiting[d] -= 1
                    if waiting[d] == 0:
                        submit(d)
    except BaseException:
        for fut in running:
            fut.cancel()
        wait(list(running))
        raise
    return [slots[s] for s in fetch_slots]

"""Worker threads that spin between the compiled drivers' parallel calls, as onnxruntime's do.

numba's TBB workers take 15-40 us to join a parallel call here (2-vCPU Xeon): two 15 us parts
ran in 31 us on two threads, the same as one after the other, and after a 1 ms pause two 44 us
parts took 86 us. A CNN at 2 threads is mostly such calls (MobileNetV2's 1x1 convs on 14x14
maps: 30-70 us each), so the second thread did little. Here each worker is a Python thread
that runs a compiled loop without the GIL: it polls one word of a shared int64 array for a new
job and claims parts of it with a compare-and-swap, for `SPIN_S` after its last part, and then
sleeps on a futex until the next call wakes it. A worker never takes the GIL after it starts (a
worker that slept on a Python condition needed it to wake, and the session's thread then waited
for it, up to the 5 ms switch interval). The calling thread claims parts from the same word, so
a call never waits for a worker that is not there: it runs every part itself.

The word is (generation << 32) | (parts << 16) | next part: a claim made against an older job
fails its compare-and-swap, and the job's fields, written before the word, stay as they are
until every part has counted itself done. A worker that finds itself on the CPU its caller
posted from moves off it (`_leave_cpu`): after an idle pause the scheduler often woke it there
and left the two taking turns on one core for whole blocks of runs. A call that wakes sleeping
workers yields its CPU once before claiming parts, so that a worker placed there runs (and moves)
while parts are left. One call at a time owns the pool (`OWNER`); a call from another thread
meanwhile is refused (`native_call.run_ranges` then gives it to TBB).
"""
from __future__ import annotations

import atexit
import ctypes
import functools
import os
import platform
import sys
import threading
import time

import numpy as np

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None

# Seconds a worker polls after its last part before it sleeps: longer than the gaps between a
# CNN's parallel calls within a run and between back-to-back runs (~10-100 us), short enough
# that an idle session costs a core for 2 ms at most.
SPIN_S = 0.002
# Seconds of polling after which a worker yields its core on every poll (another thread of the
# process, or another process, may need it more).
YIELD_S = 0.0002

# slots of the state array, each on its own 64-byte line
WORD, DONE, FN, ARGS, COLS, ROWS, BY_COLUMNS, OWNER, STOP, SPIN, YIELD, SYSCALL = (
    0, 8, 16, 17, 18, 19, 20, 24, 32, 40, 41, 42)
SEQ, SLEEPERS = 48, 56   # the futex word (its low 32 bits) bumped by every job; workers asleep
NAP = 64                 # set: the workers sleep now (numba's TBB threads are about to run)
CALLER_CPU = 72          # the CPU the job's caller posted it from
STATE_SIZE = 80
# Linux x86-64: syscall numbers of futex(2), sched_setaffinity(2), sched_getaffinity(2); futex ops
SYS_FUTEX, SYS_SETAFFINITY, SYS_GETAFFINITY = 202, 203, 204
FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE = 128, 129
MASK_WORDS = 16   # CPU masks of up to 1024 CPUs
MAX_PARTS = 0xFFFF


if numba is not None:
    from ep_cpu.native_call import _slot, call_void, yield_address
    from ep_cpu.native_call import atomic_add as _add, atomic_load as _load
    from ep_cpu.native_call import atomic_store as _store, compare_swap as _swap

    @intrinsic
    def _pause(typingctx):
        """The CPU's spin-wait hint, then the time-stamp counter."""
        def codegen(context, builder, signature, args):
            mod = builder.module
            builder.call(mod.declare_intrinsic("llvm.x86.sse2.pause",
                                               fnty=ir.FunctionType(ir.VoidType(), [])), [])
            return builder.call(mod.declare_intrinsic("llvm.readcyclecounter",
                                                      fnty=ir.FunctionType(ir.IntType(64), [])), [])
        return types.int64(), codegen

    @intrinsic
    def _cpu(typingctx):
        """The CPU this thread runs on (rdtscp's TSC_AUX, which Linux sets to it)."""
        def codegen(context, builder, signature, args):
            fnty = ir.FunctionType(ir.LiteralStructType([ir.IntType(64), ir.IntType(32)]), [])
            pair = builder.call(builder.module.declare_intrinsic("llvm.x86.rdtscp", fnty=fnty), [])
            cpu = builder.and_(builder.extract_value(pair, 1), ir.Constant(ir.IntType(32), 0xFFF))
            return builder.zext(cpu, ir.IntType(64))
        return types.int64(), codegen

    @numba.njit(nogil=True, cache=True)
    def _leave_cpu(state, cpu):  # pragma: no cover - compiled
        """Move this thread off `cpu`: its affinity without that CPU for one system call (the
        kernel migrates it then), then the affinity it had, under which it stays where it went."""
        mask = np.zeros(MASK_WORDS, dtype=np.uint64)
        size = np.int64(MASK_WORDS * 8)
        call_void(state[SYSCALL], (np.int64(SYS_GETAFFINITY), np.int64(0), size,
                                   np.int64(mask.ctypes.data), np.int64(0), np.int64(0), np.int64(0)))
        word, bit = cpu // 64, np.uint64(1) << np.uint64(cpu % 64)
        if word >= MASK_WORDS or mask[word] & bit == 0:
            return
        others = mask.copy()
        others[word] &= ~bit
        if not np.any(others):
            return   # the only CPU it may run on
        call_void(state[SYSCALL], (np.int64(SYS_SETAFFINITY), np.int64(0), size,
                                   np.int64(others.ctypes.data), np.int64(0), np.int64(0), np.int64(0)))
        call_void(state[SYSCALL], (np.int64(SYS_SETAFFINITY), np.int64(0), size,
                                   np.int64(mask.ctypes.data), np.int64(0), np.int64(0), np.int64(0)))

    @numba.njit(nogil=True, cache=True)
    def _run_part(state, part, parts):  # pragma: no cover - compiled
        fn, at, cols, rows = state[FN], state[ARGS], state[COLS], state[ROWS]
        # (ceil-sized ranges: the last parts may be empty, e.g. 5 rows in 4 parts of 2)
        if state[BY_COLUMNS]:
            step = (cols + parts - 1) // parts
            if part * step < cols:
                call_void(fn, (at, part * step, min(cols, (part + 1) * step), np.int64(0), rows))
        else:
            step = (rows + parts - 1) // parts
            if part * step < rows:
                call_void(fn, (at, np.int64(0), cols, part * step, min(rows, (part + 1) * step)))

    @numba.njit(nogil=True, cache=True)
    def _claim_parts(state):  # pragma: no cover - compiled
        """Run parts of the posted job until none is left to claim."""
        while True:
            w = _load(state, WORD)
            nxt, parts = w & 0xFFFF, (w >> 16) & 0xFFFF
            if nxt >= parts:
                return
            if _swap(state, WORD, w, w + 1):
                _run_part(state, nxt, parts)
                _add(state, DONE, 1)

    @intrinsic
    def _slot_address(typingctx, state, index):
        def codegen(context, builder, signature, args):
            return builder.ptrtoint(_slot(context, builder, signature, args), ir.IntType(64))
        return types.int64(state, types.int64), codegen

    @numba.njit(nogil=True, cache=True)
    def _serve(state, sched_yield):  # pragma: no cover - compiled
        """A worker: run parts as jobs come; poll for SPIN cycles after the last one (or until
        NAP), then sleep on the futex until a job is posted; return at STOP."""
        idle_from = _pause()
        while True:
            w = _load(state, WORD)
            if (w & 0xFFFF) < ((w >> 16) & 0xFFFF):
                if _cpu() == _load(state, CALLER_CPU):
                    # Woken onto the caller's CPU, the two would take turns on it (after an
                    # idle pause the scheduler left them so for whole 20 ms blocks of runs:
                    # two 150 us parts took 297 us)
                    _leave_cpu(state, _cpu())
                _claim_parts(state)
                idle_from = _pause()
                continue
            if _load(state, STOP):
                return
            idle = _pause() - idle_from
            if idle > state[SPIN] or _load(state, NAP):
                seq = _load(state, SEQ)
                _add(state, SLEEPERS, 1)
                w = _load(state, WORD)
                if (w & 0xFFFF) >= ((w >> 16) & 0xFFFF) and not _load(state, STOP):
                    # returns at once where SEQ moved on since it was read
                    call_void(state[SYSCALL], (np.int64(SYS_FUTEX), _slot_address(state, SEQ),
                                               np.int64(FUTEX_WAIT_PRIVATE), seq & 0xFFFFFFFF,
                                               np.int64(0), np.int64(0), np.int64(0)))
                _add(state, SLEEPERS, -1)
                idle_from = _pause()
            elif idle > state[YIELD]:
                call_void(sched_yield, ())

    @numba.njit(nogil=True, cache=True)
    def _wake_all(state):  # pragma: no cover - compiled
        """Bump the futex word; wake the workers asleep on it. True where any was asleep."""
        _add(state, SEQ, 1)
        if _load(state, SLEEPERS) > 0:
            call_void(state[SYSCALL], (np.int64(SYS_FUTEX), _slot_address(state, SEQ),
                                       np.int64(FUTEX_WAKE_PRIVATE), np.int64(0x7FFFFFFF),
                                       np.int64(0), np.int64(0), np.int64(0)))
            return True
        return False

    @numba.njit(nogil=True, cache=True)
    def _dispatch(state, fn, at, cols, rows, parts, by_columns, sched_yield):  # pragma: no cover
        """Post a job of `parts` parts, run parts of it until none is left, wait for the others.
        False (nothing ran) where another thread's call owns the pool."""
        if not _swap(state, OWNER, 0, 1):
            return False
        state[FN], state[ARGS], state[COLS], state[ROWS] = fn, at, cols, rows
        state[BY_COLUMNS] = by_columns
        _store(state, CALLER_CPU, _cpu())
        _store(state, NAP, 0)
        _store(state, DONE, 0)
        generation = ((_load(state, WORD) >> 32) + 1) & 0xFFFFFFFF
        _store(state, WORD, (generation << 32) | (parts << 16))
        if _wake_all(state):
            # A worker woken from its sleep may have been put on this CPU (the kernel places
            # a wakee near its waker): it would run only when this thread yields, after it had
            # claimed every part alone, call after call (256^3 at two threads ran one
            # thread's 335 us for ~2 ms after an idle pause). Yield once, so that it runs now,
            # finds parts left and moves off (`_serve`); elsewhere this returns at once.
            call_void(sched_yield, ())
        _claim_parts(state)
        spins = 0
        while _load(state, DONE) < parts:
            _pause()
            spins += 1
            if spins > 256:   # the worker holding the last part was descheduled
                call_void(sched_yield, ())
        _store(state, OWNER, 0)
        return True

    @numba.njit(nogil=True, cache=True)
    def _ticks():  # pragma: no cover - compiled
        return _pause()


def compile_kernels() -> None:
    """Compile (or load from the disk cache) the workers' loop and the dispatcher, for
    `native_call.compile_runner` (an `ep_cpu.jit_tier` build): a worker started before would
    compile its loop holding the GIL."""
    state = types.Array(types.int64, 1, "C")
    _serve.compile((state, types.int64))
    _dispatch.compile((state,) + (types.int64,) * 5 + (types.boolean, types.int64))
    _wake_all.compile((state,))
    _ticks.compile(())


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Linux on x86-64 (the futex call and the pause instruction); elsewhere `native_call`
    keeps numba's TBB threads."""
    return numba is not None and sys.platform.startswith("linux") and platform.machine() in (
        "x86_64", "AMD64")


@functools.lru_cache(maxsize=None)
def cpus() -> int:
    """CPUs this process may run on (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):   # pragma: no cover - Linux has it
        return max(1, os.cpu_count() or 1)


class SpinPool:
    """The process's spinning workers: `run` posts a job to them (see the module docstring)."""

    def __init__(self) -> None:
        self.state = np.zeros(STATE_SIZE, dtype=np.int64)
        ticks = _ticks_per_second()
        self.state[SPIN], self.state[YIELD] = int(SPIN_S * ticks), int(YIELD_S * ticks)
        self.state[SYSCALL] = ctypes.cast(ctypes.CDLL(None).syscall, ctypes.c_void_p).value
        self._yield = yield_address()
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def ensure(self, workers: int) -> None:
        """At least `workers` worker threads (started on first need, kept for the process)."""
        if len(self.threads) >= workers:
            return
        with self._lock:
            while len(self.threads) < workers:
                t = threading.Thread(target=_serve, args=(self.state, self._yield), daemon=True,
                                     name=f"ep_cpu-spin-{len(self.threads)}")
                self.threads.append(t)
                t.start()

    def run(self, fn: int, args_at: int, cols: int, rows: int, parts: int,
            by_columns: bool) -> bool:
        """fn(args_at, c0, c1, r0, r1) over `parts` ranges of columns (or rows), each
        `native_call.range_step` long, on the calling thread and the workers; returns when all
        have run. A sleeping worker is woken and joins if it arrives in time. False (nothing
        ran) where another thread's call holds the pool, or for more than MAX_PARTS parts."""
        if parts > MAX_PARTS:
            return False
        return _dispatch(self.state, fn, args_at, cols, rows, parts, by_columns, self._yield)

    def nap(self) -> None:
        """Send the polling workers to sleep now, until the next `run`: numba's TBB threads
        are about to run a parallel region (an LSTM's two directions), and a worker polling
        on a core would share it with them (LSTM at 2 threads 5.6 -> 5.8 ms)."""
        self.state[NAP] = 1

    def stop(self) -> None:
        """End the workers (at the process's exit: none is left polling while it ends)."""
        self.state[STOP] = 1
        _wake_all(self.state)
        for t in self.threads:
            t.join(timeout=1.0)


def _ticks_per_second() -> float:
    _ticks()   # (loaded or compiled before the clock starts)
    c0, t0 = _ticks(), time.perf_counter()
    time.sleep(0.01)
    return (_ticks() - c0) / (time.perf_counter() - t0)


def nap() -> None:
    """`SpinPool.nap` on the process's pool, where there is one."""
    if _pool is not None:
        _pool.nap()


_pool: SpinPool | None = None
_pool_lock = threading.Lock()


def pool() -> SpinPool:
    """The process's pool (made on first use: its clock is calibrated over 10 ms; a forked
    child makes its own)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = SpinPool()
                atexit.register(_pool.stop)
    return _pool


def _forget_after_fork() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)

"""Compiled C callbacks over ranges, their packed arguments, and the parallel runner over them.

The compiled drivers (`ep_cpu.microkernel`'s conv and GEMM, `ep_cpu.conv_thin`,
`ep_cpu.depthwise_direct`) are numba `cfunc`s with one signature, `RANGE_SIG`:

    void fn(int64 args, int64 c0, int64 c1, int64 r0, int64 r1)

`args` is the address of a float64 array of the driver's leading arguments (`pack`): sizes,
flags and array addresses are integers below 2^53 and floats are float32 values, all exact in
float64. One signature means one compiled runner (`run_parts`: numba compiles a function once
per argument types, ~1.5 s each for a parallel one, paid by the first session on a machine),
and a 5-argument ctypes call (~1 us; 19 arguments took ~3 us). Callbacks travel into jitted code
as their integer `address` (`call_void`): a cfunc object passed as a first-class function cost
~15 us per call in numba's argument typing, and a caller compiled this way does not embed the
callee's code, so its disk-cached machine code stays valid when the callee's source changes.
"""
from __future__ import annotations

import ctypes
import functools
import os
import threading
from typing import Callable

import numpy as np

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None

_ARG_COUNTS: dict[int, int] = {}
_COMPILED: dict = {}
_COMPILE_LOCK = threading.Lock()


_char_view = ctypes.c_char.from_buffer
_address_of = ctypes.addressof


def address(a: np.ndarray) -> int:
    """The address of a C-contiguous array's first element: ~0.3 us where `a.ctypes.data`
    takes ~1 us (it builds a ctypes helper object each time; a conv of a streaming model reads
    four). Read-only and empty arrays take the slow path."""
    if a.flags.writeable:   # (a read-only array raised below: ~1 us)
        try:
            return _address_of(_char_view(a))
        except (TypeError, ValueError, BufferError):
            pass
    return a.ctypes.data


def pack(*values) -> np.ndarray:
    """A driver's leading arguments as the float64 array whose address it takes."""
    return np.array(values, dtype=np.float64)


def expect(callback, count: int):
    """Record that `callback` reads `count` packed arguments (checked by `check_args`)."""
    _ARG_COUNTS[callback.address] = count
    return callback


def callback(py_function, count: int | None = None, sig=None):
    """The numba C callback of a module-level Python function, compiled (or loaded from the disk
    cache) on first use and kept: `sig` RANGE_SIG unless given; `count` packed arguments it
    reads (checked by `check_args`)."""
    fn = _COMPILED.get(py_function)
    if fn is None:
        with _COMPILE_LOCK:
            fn = _COMPILED.get(py_function)
            if fn is None:
                fn = numba.cfunc(RANGE_SIG if sig is None else sig, nogil=True, cache=True)(py_function)
                if count is not None:
                    expect(fn, count)
                _COMPILED[py_function] = fn
    return fn


def check_args(callback, args: np.ndarray) -> None:
    """TypeError unless `args` is a float64 array of as many values as `callback` reads."""
    want = _ARG_COUNTS.get(callback.address)
    if not isinstance(args, np.ndarray) or args.dtype != np.float64 or args.ndim != 1:
        raise TypeError("packed arguments must be a 1-D float64 array (native_call.pack)")
    if want is not None and args.size != want:
        raise TypeError(f"{args.size} packed arguments for a callback that reads {want}")


if numba is not None:
    RANGE_SIG = types.void(types.int64, types.int64, types.int64, types.int64, types.int64)

    def _pointer_intrinsic(llvm_type, numba_type):
        @intrinsic
        def at(typingctx, addr):
            def codegen(context, builder, signature, args):
                return builder.inttoptr(args[0], llvm_type.as_pointer())
            return types.CPointer(numba_type)(addr), codegen
        return at

    f32_at = _pointer_intrinsic(ir.FloatType(), types.float32)
    f64_at = _pointer_intrinsic(ir.DoubleType(), types.float64)
    i64_at = _pointer_intrinsic(ir.IntType(64), types.int64)
    u16_at = _pointer_intrinsic(ir.IntType(16), types.uint16)

    @intrinsic
    def call_void(typingctx, addr, args):
        """void fn(*args) for the C function at integer address `addr`, the C types taken from
        the numba types of `args` (int64 for RANGE_SIG callbacks)."""
        if not isinstance(args, types.BaseTuple):
            return None
        sig = types.void(types.int64, args)

        def codegen(context, builder, signature, llargs):
            address, tup = llargs
            arg_types = signature.args[1].types
            fnty = ir.FunctionType(ir.VoidType(), [context.get_value_type(t) for t in arg_types])
            fn = builder.inttoptr(address, fnty.as_pointer())
            builder.call(fn, [builder.extract_value(tup, i) for i in range(len(arg_types))])
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def call_int(typingctx, addr):
        """int fn(void) for the C function at integer address `addr`."""
        def codegen(context, builder, signature, llargs):
            fn = builder.inttoptr(llargs[0], ir.FunctionType(ir.IntType(32), []).as_pointer())
            return builder.call(fn, [])
        return types.int32(types.int64), codegen

    @numba.njit(nogil=True, cache=True)
    def set_blas_threads(entries, before, threads):  # pragma: no cover - compiled
        """Each BLAS library's thread count into before[i], then set to `threads` where it
        differs. `entries`: [get, set, ...] C entry points (`blas_threads.blas_thread_controls`'
        addresses): int get(void), void set(int)."""
        for i in range(entries.size // 2):
            n = call_int(entries[2 * i])
            before[i] = n
            if n != threads:
                call_void(entries[2 * i + 1], (np.int32(threads),))

    @numba.njit(nogil=True, cache=True)
    def restore_blas_threads(entries, before):  # pragma: no cover - compiled
        """Each BLAS library's thread count back to before[i] where it differs (see
        `set_blas_threads`)."""
        for i in range(entries.size // 2):
            if call_int(entries[2 * i]) != before[i]:
                call_void(entries[2 * i + 1], (np.int32(before[i]),))

    def _slot(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.gep(arr.data, [args[1]])

    @intrinsic
    def claim(typingctx, flags, index):
        """flags[index] (int64) = 1 atomically; True for the one caller that found it 0."""
        def codegen(context, builder, signature, args):
            old = builder.atomic_rmw("xchg", _slot(context, builder, signature, args),
                                     ir.Constant(ir.IntType(64), 1), "seq_cst")
            return builder.icmp_signed("==", old, ir.Constant(ir.IntType(64), 0))
        return types.boolean(flags, types.int64), codegen

    @intrinsic
    def atomic_add(typingctx, counts, index, value):
        """counts[index] (int64) += value atomically (a release of what the caller wrote before)."""
        def codegen(context, builder, signature, args):
            builder.atomic_rmw("add", _slot(context, builder, signature, args), args[2], "seq_cst")
            return context.get_dummy_value()
        return types.void(counts, types.int64, types.int64), codegen

    @intrinsic
    def atomic_load(typingctx, values, index):
        """values[index] (int64), an atomic load (an acquire)."""
        def codegen(context, builder, signature, args):
            return builder.load_atomic(_slot(context, builder, signature, args), "seq_cst", 8)
        return types.int64(values, types.int64), codegen

    @intrinsic
    def atomic_store(typingctx, values, index, value):
        """values[index] (int64) = value, an atomic store (a release)."""
        def codegen(context, builder, signature, args):
            builder.store_atomic(args[2], _slot(context, builder, signature, args), "seq_cst", 8)
            return context.get_dummy_value()
        return types.void(values, types.int64, types.int64), codegen

    @intrinsic
    def compare_swap(typingctx, values, index, expected, value):
        """values[index] (int64) = value if it holds `expected`; True where it did."""
        def codegen(context, builder, signature, args):
            pair = builder.cmpxchg(_slot(context, builder, signature, args), args[2], args[3],
                                   "seq_cst", "seq_cst")
            return builder.extract_value(pair, 1)
        return types.boolean(values, types.int64, types.int64, types.int64), codegen

    @intrinsic
    def read_count(typingctx, counts, index):
        """counts[index] (int64), an atomic load (an acquire of what the counters' adders wrote
        before adding), with a spin-wait hint to the CPU (pause)."""
        def codegen(context, builder, signature, args):
            pause = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                   "llvm.x86.sse2.pause")
            builder.call(pause, [])
            return builder.load_atomic(_slot(context, builder, signature, args), "seq_cst", 8)
        return types.int64(counts, types.int64), codegen

    @numba.njit(nogil=True, cache=True, parallel=True)
    def run_parts(fn_addr, args_at, cols, rows, parts, by_columns):  # pragma: no cover - compiled
        """fn(args_at, c0, c1, r0, r1) over `parts` ranges of columns (or rows) on numba's
        threads (each `range_step` long)."""
        for p in numba.prange(parts):
            # (ceil-sized ranges: the last parts may be empty, e.g. 5 rows in 4 parts of 2)
            if by_columns:
                step = (cols + parts - 1) // parts
                if p * step < cols:
                    call_void(fn_addr, (args_at, p * step, min(cols, (p + 1) * step), np.int64(0),
                                        rows))
            else:
                step = (rows + parts - 1) // parts
                if p * step < rows:
                    call_void(fn_addr, (args_at, np.int64(0), cols, p * step,
                                        min(rows, (p + 1) * step)))


# --- threads for the callbacks ------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def yield_address() -> int:
    """The C library's sched_yield, for compiled spin-waits that outlast a few thousand pauses
    (the other thread descheduled on a busy machine)."""
    return ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value or 0


_parallel_state: dict = {"checked": False, "ok": False}
_parallel_lock = threading.Lock()


def _kernels_run_here() -> bool:
    from ep_cpu import microkernel   # (imports this module)
    return microkernel.available()


if numba is not None:
    @numba.njit(parallel=True, cache=True)
    def _parallel_probe(a):  # pragma: no cover - compiled
        for i in numba.prange(a.shape[0]):
            a[i] += 1.0


def _launch_threads() -> None:
    """Load numba's threading layer as its first parallel call would: its own loader (~20 ms),
    else by running a parallel function (compiling it took ~0.7 s of a cold first session)."""
    try:
        from numba.np.ufunc.parallel import _launch_threads as launch
    except ImportError:   # pragma: no cover - a numba without it
        _parallel_probe(np.zeros(2))
        return
    launch()


def parallel_ok() -> bool:
    """Whether the compiled drivers may run their parts on numba's own threads: only with the
    TBB threading layer (thread-safe under concurrent sessions and fork-safe; its workers wake
    in ~2 us where a hand-off to a Python pool thread took ~55 us here). A user's explicit
    NUMBA_THREADING_LAYER is respected; without TBB the callers use `ep_cpu.gemm`'s pool."""
    if _parallel_state["checked"]:
        return _parallel_state["ok"]
    with _parallel_lock:
        if not _parallel_state["checked"]:
            ok = False
            if numba is not None and _kernels_run_here():
                before = numba.config.THREADING_LAYER
                if before == "default" and "NUMBA_THREADING_LAYER" not in os.environ:
                    numba.config.THREADING_LAYER = "tbb"
                try:
                    _launch_threads()
                    ok = numba.threading_layer() == "tbb"
                except Exception:   # noqa: BLE001 - TBB missing or not loadable: our pool
                    numba.config.THREADING_LAYER = before
            _parallel_state["ok"] = ok
            _parallel_state["checked"] = True
    return _parallel_state["ok"]


# Multiply-adds that pay for a thread hand-off: a TBB worker wakes in ~2 us, a task on the Python
# pool in ~20-60 us (MobileNetV2's 3x3 depthwise on 960x7x7, 423K multiply-adds: 37 -> 30 us on
# two TBB threads; 192x28x28 stride 2, 339K: 77 -> 54 us)
HANDOFF_MACS_TBB = 1 << 17
HANDOFF_MACS_POOL = 1 << 20


def workers_for(threads: int, parts: int, macs: int) -> int:
    """Threads (of at most `threads`) for `macs` multiply-adds in `parts` independent pieces:
    one per hand-off's worth of work (TBB's or the pool's, whichever `run_ranges` will use)."""
    per = HANDOFF_MACS_TBB if parallel_ok() else HANDOFF_MACS_POOL
    return max(1, min(threads, parts, macs // per))


_threads_set = threading.local()


def set_threads(n: int) -> None:
    """The calling thread's numba thread count for the next parallel driver. numba's setter
    (~1 us) is called only when the count differs from the one this function last set on this
    thread: a parallel conv a few times a run (MobileNetV2, 2 threads, alternating processes:
    8.00 -> 7.81 ms). A count set with `numba.set_num_threads` by other code on a session's
    thread can then stay for the next runs: it decides how many of the driver's parts run at
    once, never the results."""
    spin_pool.nap()   # (numba's threads are about to run: the spinning workers make way)
    n = max(1, min(n, numba.config.NUMBA_NUM_THREADS))
    if getattr(_threads_set, "n", 0) != n:
        numba.set_num_threads(n)
        _threads_set.n = n


def run_blocks(fn: Callable, total: int, workers: int, args_before: tuple, args_after: tuple,
               pool: Callable) -> None:
    """fn(*args_before, i0, i1, *args_after) over [0, total) split into `workers` ranges: the
    Python-callable twin of `run_ranges` (a numba function compiled with nogil, or any call
    that releases the GIL), on `ep_cpu.gemm`'s pool (`pool(workers)`: an executor)."""
    if workers <= 1:
        fn(*args_before, 0, total, *args_after)
        return
    step = -(-total // workers)
    ranges = [(i0, min(total, i0 + step)) for i0 in range(0, total, step)]
    # (the spinning workers make way for the pool's threads: one polling a core shared it with
    # them, BERT-base's attention at 2 threads)
    spin_pool.nap()
    # The calling thread takes the first range: one hand-off fewer (~20-60 us each here).
    futs = [pool(workers - 1).submit(fn, *args_before, i0, i1, *args_after) for i0, i1 in ranges[1:]]
    try:
        fn(*args_before, *ranges[0], *args_after)
    finally:
        for f in futs:
            f.result()


def run_images(callback, template: np.ndarray, x: np.ndarray, y_shape: tuple, x_slot: int,
               y_slot: int, workers: int, pool: Callable) -> np.ndarray:
    """A new float32 y of `y_shape` (N, C, ...) from x (N, ...; float32 C-contiguous, else
    copied) image by image: `callback` over the C channels [0, C) (`run_ranges`, by columns),
    with a copy of its packed arguments `template` holding the image's x and y addresses at
    x_slot and y_slot."""
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)
    n = y_shape[0]
    y = np.empty(y_shape, dtype=np.float32)
    x_at, y_at = address(x), address(y)
    image, out_size = x.size // max(n, 1), y.size // max(n, 1)
    for i in range(n):
        args = template.copy()
        args[x_slot], args[y_slot] = x_at + 4 * i * image, y_at + 4 * i * out_size
        run_ranges(callback, args, y_shape[1], 1, workers, True, pool)
    return y


def compile_runner() -> None:
    """Compile (or load) `run_parts` for the one signature `run_ranges` calls it with, and the
    threading-layer probe: for `ep_cpu.jit_tier` builds of kernels that run on it."""
    if numba is not None and parallel_ok():
        run_parts.compile((types.int64,) * 5 + (types.boolean,))
        if spin_pool.available():
            spin_pool.compile_kernels()


def range_step(total: int, workers: int) -> int:
    """The length of each of `run_ranges`' ranges (the last one may be shorter), as `run_parts`
    splits them too."""
    return -(-total // max(1, workers))


def last_range_holds_two(total: int, workers: int) -> bool:
    """Whether the last of `run_ranges`' `workers` ranges over [0, total) holds its last two
    indices (both run on one thread, in order)."""
    return workers <= 1 or (total - 1) % range_step(total, workers) != 0


def run_ranges(callback, args: np.ndarray, cols: int, rows: int, workers: int, by_columns: bool,
               pool: Callable) -> None:
    """callback(args, c0, c1, r0, r1) over columns [0, cols) and rows [0, rows), `args` its
    packed arguments (`pack`): on the calling thread, split into `workers` ranges of
    columns (or rows) on numba's TBB threads, or on `ep_cpu.gemm`'s Python pool
    (`pool(workers)`: an executor) where TBB is not loadable (the calling thread takes the first
    range). With TBB loadable the ranges go to `ep_cpu.spin_pool`'s workers (TBB's threads
    joined too late for parts of 10-40 us)."""
    at = address(args)
    if workers <= 1:
        callback.ctypes(at, 0, cols, 0, rows)
        return
    if parallel_ok():
        if spin_pool.available():
            pool_ = spin_pool.pool()
            # (more parts than CPUs run on one worker a CPU, each claiming parts as it frees:
            # polling workers beyond the CPUs took the cores from the others, MobileNetV2 at 4
            # intra-op threads on 2 CPUs 4.9 ms through TBB, 5.1-5.3 with a worker a part)
            pool_.ensure(min(workers, spin_pool.cpus()) - 1)
            if pool_.run(callback.address, at, cols, rows, workers, by_columns):
                return
        # (another thread's call holds the spinning workers, or there are none here)
        set_threads(workers)
        run_parts(callback.address, at, cols, rows, workers, by_columns)
        return
    total = cols if by_columns else rows
    step = range_step(total, workers)
    spans = [(c0, min(total, c0 + step), 0, rows) if by_columns else (0, cols, c0, min(total, c0 + step))
             for c0 in range(0, total, step)]
    fn = callback.ctypes
    futs = [pool(workers - 1).submit(fn, at, *span) for span in spans[1:]]
    try:
        fn(at, *spans[0])
    finally:
        for f in futs:
            f.result()


# (below everything it imports from this module)
from ep_cpu import spin_pool  # noqa: E402

"""The CPU execution provider: numpy kernels for every ONNX op."""
from __future__ import annotations

import threading
from contextlib import nullcontext

from ep_core.kernel import KernelRegistry
from ep_core.provider import HOST, ExecutionProvider

from . import host_memory
from .registry import registry


class _ThreadLimits:
    """Process-wide thread settings (our GEMM's tiling threads, the BLAS library's) changed
    while runs with an intra-op limit are active, restored when the last such run ends.

    Every run enters this, so it is cheap when the limit already holds: the BLAS libraries' own
    get/set entry points (a ctypes call each, see `gemm.blas_thread_controls`) instead of
    threadpoolctl's controller objects, and a library is set (and later restored) only when its
    count differs from the limit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._saved: tuple[int, list] | None = None   # (gemm threads, [(set, count before)])

    def limit(self, threads: int) -> "_Limit | nullcontext":
        gemm, microkernel, native_call = _modules()
        if not threads or threads <= 0:
            if not (native_call.parallel_ok() and microkernel.convs_beat_blas(gemm.get_num_threads())):
                return _NO_LIMIT
            threads = 0   # no intra-op limit, but BLAS still held to one thread (below)
        return _Limit(self, int(threads))

    def enter(self, threads: int) -> bool:
        """Set the limits for a run starting (`threads` intra-op threads, 0: all); returns
        whether BLAS is held to the calling thread for it (pass it to `exit`)."""
        gemm, microkernel, native_call = _modules()
        # With numba's TBB threads doing the parallel work (the compiled conv/GEMM drivers), the
        # BLAS library runs on the calling thread only: OpenBLAS's workers busy-wait ~0.1 s
        # after each threaded call and took the second core from every parallel conv after it
        # (ResNet-50 at 2 threads ran no faster than at 1). Where BLAS does the products (AVX2
        # at one thread: `microkernel.convs_beat_blas`) it gets the threads. While BLAS is held
        # (`gemm.blas_holds`), a large GEMM runs on `ep_cpu.gemm`'s tiles, one one-thread BLAS
        # call each.
        # (a one-thread run has BLAS on its one thread anyway: nothing to hold)
        n = threads if threads > 0 else gemm.get_num_threads()
        hold = n > 1 and native_call.parallel_ok() and microkernel.convs_beat_blas(n)
        blas_threads = 1 if hold else threads
        with self._lock:
            changed = []
            for get, put in gemm.blas_thread_controls():
                n = get()
                if n != blas_threads:
                    changed.append((put, n))
                    put(blas_threads)
            if self._active == 0:
                self._saved = (gemm.get_num_threads(), changed)
            self._active += 1
            if threads > 0 and threads != gemm.get_num_threads():
                gemm.set_num_threads(threads)
            if hold:   # counted last: a failure above leaves no hold behind
                gemm.blas_holds += 1
        return hold

    def exit(self, held: bool) -> None:
        """A run ends: `held` as its `enter` returned; the last run out restores the settings."""
        gemm = _modules()[0]
        with self._lock:
            if held:
                gemm.blas_holds -= 1
            self._active -= 1
            if self._active == 0 and self._saved is not None:
                gemm_threads, changed = self._saved
                if gemm_threads != gemm.get_num_threads():
                    gemm.set_num_threads(gemm_threads)
                for put, n in changed:
                    put(n)
                self._saved = None


_imported: list = []


def _modules() -> tuple:
    """(ep_cpu.gemm, ep_cpu.microkernel, ep_cpu.native_call), imported on the first run (numba
    with them), then kept: an import statement per run cost ~1 us."""
    if not _imported:
        from . import gemm, microkernel, native_call
        _imported[:] = [gemm, microkernel, native_call]
    return _imported[0], _imported[1], _imported[2]


class _Limit:
    __slots__ = ("limits", "threads", "held")

    def __init__(self, limits: _ThreadLimits, threads: int) -> None:
        self.limits, self.threads, self.held = limits, threads, False

    def __enter__(self) -> None:
        self.held = self.limits.enter(self.threads)

    def __exit__(self, *exc: object) -> None:
        self.limits.exit(self.held)


_NO_LIMIT = nullcontext()


_limits = _ThreadLimits()


class CPUExecutionProvider(ExecutionProvider):
    type = "cpu"
    device = HOST

    def __init__(self, **options) -> None:
        super().__init__(**options)
        # freed numpy blocks stay in the process for the next run (`ep_cpu.host_memory`)
        host_memory.keep_freed_memory()

    @classmethod
    def kernel_registry(cls) -> KernelRegistry:
        from . import kernels  # noqa: F401 - importing registers the kernels
        return registry

    def limit_threads(self, intra_op_threads: int):
        return _limits.limit(intra_op_threads)

"""BLAS's own threads, held to one while ours run.

OpenBLAS's thread count is read and set through its C entry points (found by threadpoolctl's
scan, redone when the process has imported modules since the last one), for `ep_cpu.gemm`'s
tiles, the kernels that issue many small products in a loop, and the CPU provider's per-run
thread limits (`ep_cpu.provider`, compiled through `native_call.set_blas_threads`).
"""
from __future__ import annotations

import ctypes
import sys
import threading
from typing import Any, Callable

import numpy as np


class _SingleThreadedBlas:
    """Limit BLAS to one thread while our own threads run (re-entrant across concurrent gemms)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: list[tuple[Callable[[int], Any], int]] = []
        self._libs: list | None = None
        self._addresses: np.ndarray | None = None
        self._modules_seen = -1

    def _controllers(self) -> list[tuple[Callable[[], int], Callable[[int], Any]]]:
        """(get, set) thread-count functions of each BLAS library loaded in the process.

        OpenBLAS's own C entry points are called directly (a ctypes call is ~0.3 us; going
        through threadpoolctl's controller objects cost ~10 us per gemm call). The scan (~2 ms)
        is redone when the process has imported modules since the last one: a new BLAS (scipy's,
        a custom op's library) arrives with an import, and a steady process never rescans."""
        if self._libs is None or len(sys.modules) != self._modules_seen:
            self._modules_seen = len(sys.modules)
            libs: list = []
            try:
                from threadpoolctl import ThreadpoolController
                for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
                    fast = None
                    if getattr(lib, "internal_api", "") == "openblas" and \
                            getattr(lib, "threading_layer", "") != "openmp":
                        try:
                            prefix, suffix = lib._find_affixes()
                            get = getattr(lib.dynlib, f"{prefix}openblas_get_num_threads{suffix}")
                            put = getattr(lib.dynlib, f"{prefix}openblas_set_num_threads{suffix}")
                            fast = (get, put)
                        except Exception:  # private threadpoolctl API moved: slow path below
                            fast = None
                    libs.append(fast or (lib.get_num_threads, lib.set_num_threads))
            except Exception:  # threadpoolctl missing or unable to introspect: nothing to limit
                libs = []
            self._libs = libs
            self._addresses = _entry_addresses(libs)
        return self._libs

    def addresses(self) -> np.ndarray | None:
        """[get, set, get, set, ...]: the C entry points of `_controllers` as an int64 array, for
        compiled code to call (`native_call.set_blas_threads`); None where one is not a C
        entry point (a BLAS threadpoolctl reaches another way)."""
        if self._libs is None or len(sys.modules) != self._modules_seen:
            self._controllers()
        return self._addresses

    def __enter__(self) -> "_SingleThreadedBlas":
        with self._lock:
            if self._depth == 0:
                self._saved = []
                for get, put in self._controllers():
                    n = get()
                    if n != 1:
                        self._saved.append((put, n))
                        put(1)
            self._depth += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for put, n in self._saved:
                    put(n)


def _entry_addresses(libs: list) -> np.ndarray | None:
    addresses = []
    for get, put in libs:
        if not (isinstance(get, ctypes._CFuncPtr) and isinstance(put, ctypes._CFuncPtr)):
            return None
        addresses += [ctypes.cast(get, ctypes.c_void_p).value, ctypes.cast(put, ctypes.c_void_p).value]
    return np.array(addresses, dtype=np.int64)


_blas_single = _SingleThreadedBlas()




def blas_thread_controls() -> list[tuple[Callable[[], int], Callable[[int], Any]]]:
    """(get, set) thread-count functions of each BLAS library numpy loaded (cheap to call)."""
    return _blas_single._controllers()


def blas_entry_points() -> np.ndarray | None:
    """`blas_thread_controls` as [get, set, get, set, ...] C entry points (int64), for
    `native_call.set_blas_threads`; None where one is not a C entry point."""
    return _blas_single.addresses()


def single_threaded_blas() -> _SingleThreadedBlas:
    """Context manager: BLAS calls run on the calling thread only, restored on exit.

    For kernels that issue many tiny products in a loop (RNN time steps, per-head attention):
    multi-threaded OpenBLAS costs more than it saves there and stalls badly when another process
    holds a core. Re-entrant and shared with gemm's own tiling threads.
    """
    return _blas_single

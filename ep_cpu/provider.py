"""The CPU execution provider: numpy kernels for every ONNX op."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from ep_core.kernel import KernelRegistry
from ep_core.provider import HOST, ExecutionProvider

from .registry import registry


class _ThreadLimits:
    """Process-wide thread settings (our GEMM's tiling threads, the BLAS library's) changed
    while runs with an intra-op limit are active, restored when the last such run ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._saved: tuple | None = None

    @contextmanager
    def limit(self, threads: int) -> Iterator[None]:
        if not threads or threads <= 0:
            yield
            return
        from . import gemm
        with self._lock:
            if self._active == 0:
                controller = _controller()
                self._saved = (gemm.get_num_threads(),
                               controller.info() if controller is not None else None)
            self._active += 1
            gemm.set_num_threads(threads)
            controller = _controller()
            if controller is not None:
                controller.limit(limits=int(threads))
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0 and self._saved is not None:
                    gemm_threads, blas = self._saved
                    gemm.set_num_threads(gemm_threads)
                    controller = _controller()
                    if controller is not None and blas is not None:
                        for lib in controller.lib_controllers:
                            before = [b for b in blas if b.get("filepath") == lib.filepath]
                            if before:
                                lib.set_num_threads(before[0]["num_threads"])
                    self._saved = None


_controller_obj = None


def _controller():
    """threadpoolctl's controller of the loaded BLAS libraries (None without threadpoolctl)."""
    global _controller_obj
    if _controller_obj is None:
        try:
            from threadpoolctl import ThreadpoolController
            _controller_obj = ThreadpoolController()
        except Exception:  # threadpoolctl missing or a BLAS it cannot drive: no limit
            _controller_obj = False
    return _controller_obj or None


_limits = _ThreadLimits()


class CPUExecutionProvider(ExecutionProvider):
    type = "cpu"
    device = HOST

    @classmethod
    def kernel_registry(cls) -> KernelRegistry:
        from . import kernels  # noqa: F401 - importing registers the kernels
        return registry

    def limit_threads(self, intra_op_threads: int):
        return _limits.limit(intra_op_threads)

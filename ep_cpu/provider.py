"""The CPU execution provider: numpy kernels for every ONNX op."""
from __future__ import annotations

from ep_core.kernel import KernelRegistry
from ep_core.provider import HOST, ExecutionProvider

from .registry import registry


class CPUExecutionProvider(ExecutionProvider):
    type = "cpu"
    device = HOST

    @classmethod
    def kernel_registry(cls) -> KernelRegistry:
        from . import kernels  # noqa: F401 - importing registers the kernels
        return registry

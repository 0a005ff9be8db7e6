"""CUDA execution provider: our own CUDA C kernels (kernels_cu/*.cu) compiled with NVRTC and
launched through CuPy, which supplies only memory, streams and the compiler binding.

Importing this package never imports CuPy, so the core can list the provider (and its kernels)
on machines without a GPU or without CuPy installed.
"""
from .provider import CUDAExecutionProvider

__all__ = ["CUDAExecutionProvider"]

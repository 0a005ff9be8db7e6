"""Launch helpers shared by the wrappers: lazy CuPy, C type names, strided-index blobs, grids,
and the `CudaKernel` base class that runs `forward` inside the provider's device/stream/allocator.

Nothing here imports CuPy at module import time: the registry must be listable without it.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from ep_core.kernel import Kernel

from . import loader

MAXD = 10      # must match EP_MAXD in kernels_cu/common.cuh
MAXOPS = 4     # must match EP_MAXOPS
BLOCK = 256
MAX_GRID = 1 << 18   # grid-stride loops cover the rest


class _LazyModule:
    """`cp.empty(...)` imports cupy on first use, so importing a wrapper never needs CuPy."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._mod = None

    def __getattr__(self, attr: str) -> Any:
        if self._mod is None:
            self._mod = importlib.import_module(self._name)
        return getattr(self._mod, attr)


cp = _LazyModule("cupy")

EMULATED = [False]   # True inside ep_cuda.emulator.enabled(): kernels run on the CPU


@dataclass
class Settings:
    """Provider options the kernels read (the provider's scope installs its own). Direct kernel
    calls without a provider (tests) get the defaults: exact fp32, NCHW, no tuning."""
    use_tf32: bool = False
    prefer_nhwc: bool = False
    tuner: Any = None                                   # ep_cuda.autotune.Tuner
    force: dict = field(default_factory=dict)           # tests: {"gemm": "tc:big", "conv": ...}


DEFAULT_SETTINGS = Settings()
_tls = threading.local()


def settings() -> Settings:
    return getattr(_tls, "settings", None) or DEFAULT_SETTINGS


@contextlib.contextmanager
def using(s: Settings) -> Iterator[Settings]:
    """Kernels launched inside see `s` (thread-local, nests)."""
    prev = getattr(_tls, "settings", None)
    _tls.settings = s
    try:
        yield s
    finally:
        _tls.settings = prev


_cc: dict[int, int] = {}


def device_cc() -> int:
    """Compute capability of the current device as an int (75, 80, 90, ...). The emulator
    reports EP_CUDA_EMU_CC (default 90), so the sm_80+ code paths are the ones emulated."""
    if EMULATED[0]:
        return int(os.environ.get("EP_CUDA_EMU_CC", "90"))
    import cupy
    dev = cupy.cuda.runtime.getDevice()
    cc = _cc.get(dev)
    if cc is None:
        cc = _cc[dev] = int(cupy.cuda.Device(dev).compute_capability)
    return cc


def is_capturing() -> bool:
    """Whether the current stream is being captured into a CUDA graph (no syncs, no timing)."""
    if EMULATED[0]:
        from .emulator import CAPTURING
        return CAPTURING[0]
    import cupy
    s = cupy.cuda.get_current_stream()
    return bool(s.ptr) and s.is_capturing()


# numpy dtype -> C type name used in name expressions (typedefs from common.cuh)
CTYPE = {
    np.dtype(np.float32): "float", np.dtype(np.float16): "half_t", np.dtype(np.float64): "double",
    np.dtype(np.int8): "signed char", np.dtype(np.uint8): "unsigned char",
    np.dtype(np.int16): "short", np.dtype(np.uint16): "unsigned short",
    np.dtype(np.int32): "int", np.dtype(np.uint32): "unsigned int",
    np.dtype(np.int64): "i64", np.dtype(np.uint64): "u64", np.dtype(np.bool_): "bool",
}
# element size -> unsigned storage type: data movement kernels copy bits, whatever the dtype
STORAGE = {1: "unsigned char", 2: "unsigned short", 4: "unsigned int", 8: "u64"}

FLOATS = (np.float32, np.float16)
INTS = (np.int32, np.int64)
# every dtype the data-movement kernels accept (no strings/objects: those stay on the CPU)
ALL_NUMERIC = (np.float32, np.float16, np.float64, np.int8, np.int16, np.int32, np.int64,
               np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)
INDEX = (np.int32, np.int64)


def ctype(dtype) -> str:
    return CTYPE[np.dtype(dtype)]


def storage(dtype) -> str:
    return STORAGE[np.dtype(dtype).itemsize]


def i64(v) -> np.int64:
    return np.int64(int(v))


def f32(v) -> np.float32:
    return np.float32(float(v))


def blob(values: Sequence[int]) -> np.ndarray:
    """int64 values packed as ONE by-value kernel argument (CuPy passes a size-1 ndarray's bytes)."""
    arr = np.ascontiguousarray(np.asarray(values, dtype=np.int64))
    return arr.view(np.dtype((np.void, arr.nbytes)))


def strided(shape: Sequence[int], strides: Sequence[Sequence[int]]) -> np.ndarray:
    """The `Strided` struct of common.cuh: iteration shape + element strides of each operand."""
    nd = len(shape)
    if nd > MAXD:
        raise NotImplementedError(f"{nd}-d strided kernel: at most {MAXD} dimensions after collapsing")
    if len(strides) > MAXOPS:
        raise ValueError("too many operands for one Strided struct")
    vals = np.zeros(1 + MAXD + MAXOPS * MAXD, dtype=np.int64)
    vals[0] = nd
    vals[1:1 + nd] = shape
    for k, st in enumerate(strides):
        base = 1 + MAXD + k * MAXD
        vals[base:base + nd] = st
    return blob(vals)


def elem_strides(a: Any) -> tuple[int, ...]:
    """Strides of an array in elements (CuPy/numpy report bytes)."""
    return tuple(s // a.itemsize for s in a.strides)


def broadcast_strides(shape: Sequence[int], estrides: Sequence[int], out_shape: Sequence[int]) -> list[int]:
    """Element strides of an operand of `shape` read in the index space of `out_shape`
    (numpy broadcasting: right-aligned, size-1 or missing dims get stride 0)."""
    pad = len(out_shape) - len(shape)
    if pad < 0:
        raise ValueError(f"cannot broadcast {tuple(shape)} to {tuple(out_shape)}")
    out = [0] * pad
    for d, (n, s) in enumerate(zip(shape, estrides)):
        o = out_shape[pad + d]
        if n == o:
            out.append(s if n != 1 else 0)
        elif n == 1:
            out.append(0)
        else:
            raise ValueError(f"cannot broadcast {tuple(shape)} to {tuple(out_shape)}")
    return out


def collapse(shape: Sequence[int], strides: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dims and merge neighbours that are contiguous for every operand.

    Dims d, d+1 merge when st[d] == st[d+1] * shape[d+1] for all operands; the result indexes the
    same elements in the same order with fewer dimensions (usually 1).
    """
    keep = [d for d, n in enumerate(shape) if n != 1]
    shp = [int(shape[d]) for d in keep]
    sts = [[int(s[d]) for d in keep] for s in strides]
    if not shp:
        return [1], [[0] for _ in strides]
    out_shape, out_st = [shp[-1]], [[s[-1]] for s in sts]
    for d in range(len(shp) - 2, -1, -1):
        inner = out_shape[0]
        if all(s[d] == o[0] * inner for s, o in zip(sts, out_st)):
            out_shape[0] *= shp[d]
        else:
            out_shape.insert(0, shp[d])
            for s, o in zip(sts, out_st):
                o.insert(0, s[d])
    return out_shape, out_st


def contiguous_strides(shape: Sequence[int]) -> list[int]:
    st, acc = [], 1
    for n in reversed(shape):
        st.append(acc)
        acc *= int(n)
    return st[::-1]


def grid(n: int, block: int = BLOCK) -> tuple[int]:
    return (int(max(1, min((n + block - 1) // block, MAX_GRID))),)


def launch(file: str, expr: str, n: int, args: tuple, block: int = BLOCK, shared: int = 0,
           grid_size: int | None = None) -> None:
    """Launch a grid-stride kernel covering n work items on the current stream (no-op if n == 0)."""
    if n <= 0:
        return
    fn = loader.get_kernel(file, expr)
    g = (int(grid_size),) if grid_size is not None else grid(n, block)
    fn(g, (block,), args, shared_mem=shared)


def pow2_block(n: int, lo: int = 32, hi: int = 256) -> int:
    """Smallest power of two >= n, clamped to [lo, hi] (block sizes of the reduction kernels)."""
    b = lo
    while b < n and b < hi:
        b *= 2
    return b


# ---------------------------------------------------------------------------- kernel base class
class CudaKernel(Kernel):
    """Base of CUDA kernels: `compute` enters the provider's scope (device, stream, allocator),
    so CuPy allocations and launches in `forward` use them. With ctx=None (direct calls in tests)
    the current CuPy device/stream/allocator are used."""

    def __init__(self, node, ctx) -> None:
        super().__init__(node, ctx)
        provider = getattr(ctx, "provider", None)
        self._scope = getattr(provider, "scope", None)

    def compute(self, *inputs):
        if self._scope is None:
            return self.forward(*inputs)
        with self._scope():
            return self.forward(*inputs)

    def forward(self, *inputs):  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def supports(cls, node) -> bool:
        """Attribute-level check at partition time; False leaves the node to another provider."""
        return True


def _host_only(v: Any, what: str) -> Any:
    """`v` when it lives in host memory; a device array is refused, never fetched quietly: the
    kernel must declare the input in `host_inputs` so the session delivers it on the host."""
    if isinstance(v, (np.ndarray, np.generic, int, float, bool, list, tuple)):
        return v
    raise TypeError(f"{what}: got a device array ({type(v).__name__}); a host-memory input must be "
                    f"declared in the kernel's host_inputs")


def host_ints(v) -> list[int]:
    """A host-memory input (shape, axes, pads...) as a list of Python ints."""
    if v is None:
        return []
    return [int(x) for x in np.asarray(_host_only(v, "host_ints")).reshape(-1)]


def to_host(v) -> np.ndarray:
    """A device (or host) array as numpy; synchronizes the current stream for device arrays."""
    if isinstance(v, np.ndarray):
        return v
    return v.get()


def host_scalar(v, default=None):
    """A host-memory scalar input (Clip bounds, Pad value...) as a Python number."""
    if v is None:
        return default
    a = np.asarray(_host_only(v, "host_scalar")).reshape(-1)
    return a[0].item() if a.size else default


nullscope = contextlib.nullcontext


# ---------------------------------------------------------------------------- strided copy
loader.declare("tensor", [f"copy_strided<{t}>" for t in STORAGE.values()])


def copy_into(dst: Any, src: Any) -> Any:
    """dst[...] = src with numpy broadcasting; either side may be any strided view (own kernel)."""
    if dst.size == 0:
        return dst
    src_st = broadcast_strides(src.shape, elem_strides(src), dst.shape)
    shape, (sd, ss) = collapse(dst.shape, [elem_strides(dst), src_st])
    launch("tensor", f"copy_strided<{storage(dst.dtype)}>", dst.size,
           (src, dst, i64(dst.size), strided(shape, [ss, sd])))
    return dst


def contiguous(x: Any) -> Any:
    """x itself when C-contiguous, else a C-contiguous copy made by our strided copy kernel."""
    if x.flags.c_contiguous:
        return x
    return copy_into(cp.empty(x.shape, x.dtype), x)


def empty(shape, dtype) -> Any:
    return cp.empty(tuple(int(d) for d in shape), dtype=dtype)

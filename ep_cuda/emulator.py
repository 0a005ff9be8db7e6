"""Run the CUDA kernels on the CPU, for testing without a GPU.

    with ep_cuda.emulator.enabled():
        y = SomeCudaKernel(node, ctx=None).compute(*numpy_inputs)

Inside `enabled()`, "device arrays" are `EmuArray`s (numpy memory that refuses host reads, as
CuPy arrays do) and `ep_cuda.loader.get_kernel` returns
kernels compiled from the same `kernels_cu/*.cu` text by the host C++ compiler after
`kernels_cu/host_emulation.cuh`, which maps blocks, threads, barriers, warp shuffles, shared
memory and atomics onto std::thread. Arguments are marshalled exactly as cuLaunchKernel reads
them (a pointer to each parameter's bytes), so a wrong scalar type shows up here as on a GPU.
Grids are clamped to 2 blocks per dimension, which also exercises every grid-stride loop.

This is a test tool: the provider never uses it. It needs g++ (C++20); `available()` says.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np

import kernels_cu

from . import launch, loader

CXX = os.environ.get("EP_CUDA_EMU_CXX", "g++")
CXXFLAGS = ("-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w")
MAX_BLOCKS_PER_DIM = 2
_lock = threading.Lock()
_libs: dict[tuple[str, tuple[str, ...]], Any] = {}
GARBAGE = 0xCD  # fresh "device" memory is filled with it so unwritten outputs are caught


def available() -> tuple[bool, str]:
    if shutil.which(CXX) is None:
        return False, f"no C++ compiler '{CXX}'"
    return True, ""


def _cache_dir() -> Path:
    d = Path(os.environ.get("EP_CUDA_EMU_CACHE", Path(tempfile.gettempdir()) / "ep_cuda_emu"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _build(file: str, exprs: tuple[str, ...], text: str | None = None) -> Any:
    """Shared library of `kernels_cu/<file>.cu` (or of the given source `text`, e.g. a generated
    fused kernel) with one C entry point per name expression."""
    shim = (kernels_cu.DIR / "host_emulation.cuh").read_text()
    body = [shim, kernels_cu.source(file) if text is None else text]
    for k, e in enumerate(exprs):
        body.append(f'extern "C" void ep_emu_{k}(const unsigned int* d, void** a) '
                    f'{{ emu_launch(&{e}, d, a); }}')
    text = "\n".join(body) + "\n"
    key = hashlib.sha256((text + " ".join(CXXFLAGS)).encode()).hexdigest()[:20]
    lib = _cache_dir() / f"{file}_{key}.so"
    if not lib.exists():
        src = lib.with_suffix(".cpp")
        src.write_text(text)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        r = subprocess.run([CXX, *CXXFLAGS, "-o", str(tmp), str(src)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"emulation build of kernels_cu/{file}.cu failed:\n{r.stderr[-4000:]}")
        os.replace(tmp, lib)
    return ctypes.CDLL(str(lib))


LAUNCH_LOG_ENV = "EP_CUDA_EMU_LAUNCH_LOG"   # file to which each first launch appends "file<TAB>expr"
_logged: set[tuple[str, str]] = set()


def _log_launch(file: str, expr: str) -> None:
    """Record that a declared instantiation ran (ep_cuda.kernel_coverage reads the log)."""
    path = os.environ.get(LAUNCH_LOG_ENV)
    if not path or (file, expr) in _logged:
        return
    _logged.add((file, expr))
    with open(path, "a") as f:   # one short line per write: safe across processes
        f.write(f"{file}\t{expr}\n")


class EmuKernel:
    """Callable like a cupy.RawKernel: fn(grid, block, args, shared_mem=0)."""

    def __init__(self, fn: Any, name: str, file: str | None = None) -> None:
        self.fn, self.name, self.file = fn, name, file
        self.max_dynamic_shared_size_bytes = 48 << 10   # settable, as on cupy.RawKernel

    def __call__(self, grid, block, args, shared_mem: int = 0, stream: Any = None) -> None:
        loader.LAUNCHES[0] += 1
        if self.file is not None:
            _log_launch(self.file, self.name)
        g = (list(grid) + [1, 1, 1])[:3]
        b = (list(block) + [1, 1, 1])[:3]
        g = [max(1, min(int(v), MAX_BLOCKS_PER_DIM)) for v in g]
        keep, ptrs = [], []
        for a in args:
            if a is None:
                buf = np.zeros(1, np.uint64)                      # NULL device pointer
            elif isinstance(a, np.ndarray) and a.dtype.kind == "V":
                buf = np.ascontiguousarray(a)                     # by-value struct blob
            elif isinstance(a, EmuArray):
                buf = np.array([a._a.ctypes.data], np.uint64)     # device array -> pointer
            elif isinstance(a, np.ndarray):
                raise TypeError(f"kernel {self.name}: a host numpy array ({a.dtype}{list(a.shape)}) "
                                f"passed where device memory is expected")
            elif isinstance(a, np.generic):
                buf = np.array(a)                                 # typed scalar by value
            else:
                raise TypeError(f"kernel {self.name}: untyped argument {a!r} ({type(a).__name__}); "
                                f"pass numpy scalars of the kernel's parameter types")
            keep.append(buf)
            ptrs.append(buf.ctypes.data)
        argv = (ctypes.c_void_p * max(len(ptrs), 1))(*ptrs)
        if shared_mem > max(self.max_dynamic_shared_size_bytes, 48 << 10):
            raise ValueError(f"kernel {self.name}: {shared_mem} bytes of dynamic shared memory above "
                             f"the limit set ({self.max_dynamic_shared_size_bytes})")
        dims = (ctypes.c_uint * 7)(*g, *b, int(shared_mem))
        self.fn(dims, argv)


def get_kernel(file: str, expr: str) -> EmuKernel:
    declared = loader._manifest.get(file, [])
    if expr not in declared:
        raise KeyError(f"kernel '{expr}' of kernels_cu/{file}.cu is not declared in the manifest")
    exprs = tuple(declared)
    with _lock:
        lib = _libs.get((file, exprs))
        if lib is None:
            lib = _libs[(file, exprs)] = _build(file, exprs)
    fn = getattr(lib, f"ep_emu_{exprs.index(expr)}")
    fn.restype = None
    return EmuKernel(fn, expr, file)


def get_source_kernel(key: str, text: str, expr: str) -> EmuKernel:
    """A kernel of generated source `text` (fused kernels), compiled for the host once per key."""
    with _lock:
        lib = _libs.get(("src:" + key, (expr,)))
        if lib is None:
            lib = _libs[("src:" + key, (expr,))] = _build(f"gen_{key}", (expr,), text)
    fn = getattr(lib, "ep_emu_0")
    fn.restype = None
    return EmuKernel(fn, expr)


CAPTURING = [False]   # set while GraphRegion "captures" in emulation: host reads are forbidden


class EmuArray:
    """Device memory of the emulator, with cupy.ndarray's host boundary: metadata and views
    work, `.get()` is the explicit (synchronizing) device->host copy, and any other host read
    (`np.asarray`, numpy math, `int()`, iteration) raises, as a CuPy array's implicit conversion
    does. So a kernel missing a host-memory declaration fails here, without a GPU. During an
    emulated CUDA-graph capture even `.get()` raises (a real capture cannot read back)."""
    __slots__ = ("_a",)
    __array_ufunc__ = None   # numpy math on a device array: TypeError

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    # ---- metadata (no data read)
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: self._a.flags)
    data = property(lambda self: _Pointer(self._a.ctypes.data))
    T = property(lambda self: EmuArray(self._a.T))

    @property
    def __cuda_array_interface__(self) -> dict:
        """Its memory described as CuPy describes device memory (v3; the pointer is a host
        address, meaningful to the emulator and to code that only passes pointers around)."""
        a = self._a
        return {"shape": a.shape, "typestr": a.dtype.str, "data": (a.ctypes.data, False),
                "strides": None if a.flags.c_contiguous else a.strides, "version": 3}

    def __len__(self) -> int:
        return len(self._a)

    def __repr__(self) -> str:
        return f"EmuArray(shape={self.shape}, dtype={self.dtype})"

    # ---- views and device-side copies
    def reshape(self, *shape, order: str = "C") -> "EmuArray":
        return EmuArray(self._a.reshape(*shape, order=order))

    def transpose(self, *axes) -> "EmuArray":
        return EmuArray(self._a.transpose(*axes))

    def swapaxes(self, a: int, b: int) -> "EmuArray":
        return EmuArray(self._a.swapaxes(a, b))

    def squeeze(self, axis=None) -> "EmuArray":
        return EmuArray(self._a.squeeze(axis))

    def view(self, dtype=None) -> "EmuArray":
        return EmuArray(self._a.view() if dtype is None else self._a.view(dtype))

    def ravel(self) -> "EmuArray":
        return EmuArray(self._a.ravel())

    def __getitem__(self, key) -> "EmuArray":
        return EmuArray(np.asarray(self._a[_device_key(key)]))

    def __setitem__(self, key, value) -> None:
        self._a[_device_key(key)] = value._a if isinstance(value, EmuArray) else value

    # ---- explicit transfers
    def get(self, stream: Any = None, out: np.ndarray | None = None) -> np.ndarray:
        if CAPTURING[0]:
            raise RuntimeError("device->host copy during CUDA graph capture (operation not "
                               "permitted when stream is capturing)")
        if out is not None:
            np.copyto(out, self._a)
            return out
        return np.array(self._a, copy=True)

    def set(self, arr: Any, stream: Any = None) -> None:
        np.copyto(self._a, np.asarray(arr))

    # ---- implicit host reads: refused
    def __array__(self, *args, **kwargs):
        raise TypeError("an emulated device array was read as a host array: a host-memory "
                        "declaration (host_inputs) or a device->host copy is missing")

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} on an emulated device array (device memory is "
                        f"not host memory)")

    def _refuse(self, *args):
        raise TypeError("an emulated device array was read on the host (use a host input)")

    __iter__ = __bool__ = __int__ = __float__ = __index__ = tolist = item = _refuse


class _Pointer:
    __slots__ = ("ptr",)

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr


def _device_key(key):
    if isinstance(key, EmuArray):
        return key._a
    if isinstance(key, tuple):
        return tuple(k._a if isinstance(k, EmuArray) else k for k in key)
    return key


def host_view(a: "EmuArray") -> np.ndarray:
    """The numpy array behind an emulated device array (test tools and the emulator only)."""
    return a._a


class _StrideTricks:
    @staticmethod
    def as_strided(a, shape=None, strides=None) -> EmuArray:
        return EmuArray(np.lib.stride_tricks.as_strided(a._a, shape, strides))


class _Lib:
    stride_tricks = _StrideTricks()


class _NumpyDevice:
    """The few CuPy entry points the wrappers use, backed by numpy memory wrapped in EmuArray."""
    ndarray = EmuArray
    lib = _Lib()

    @staticmethod
    def empty(shape, dtype=np.float32) -> EmuArray:
        a = np.empty(shape, dtype)
        a.reshape(-1).view(np.uint8)[:] = GARBAGE
        return EmuArray(a)

    @staticmethod
    def asarray(a, dtype=None) -> EmuArray:
        """Host data -> a device copy; another object describing "device" memory through
        __cuda_array_interface__ (e.g. a pointer an IOBinding was given) -> a view of it."""
        if isinstance(a, EmuArray):
            return a if dtype is None or np.dtype(dtype) == a.dtype else EmuArray(a._a.astype(dtype))
        iface = getattr(a, "__cuda_array_interface__", None)
        if iface is not None and not isinstance(a, np.ndarray):
            return EmuArray(_view_of(iface))
        return EmuArray(np.array(a, dtype=dtype, copy=True))


def _view_of(iface: dict) -> np.ndarray:
    dtype, shape = np.dtype(iface["typestr"]), tuple(iface["shape"])
    strides = iface.get("strides")
    count = int(np.prod(shape, dtype=np.int64))
    span = (max((n - 1) * abs(s) for n, s in zip(shape, strides)) + dtype.itemsize
            if strides and count else count * dtype.itemsize)
    buf = (ctypes.c_byte * max(span, 1)).from_address(int(iface["data"][0]))
    base = np.frombuffer(buf, dtype=np.uint8, count=span)
    return np.lib.stride_tricks.as_strided(base.view(dtype), shape, strides) if strides \
        else base.view(dtype).reshape(shape)


# ep_core.ortvalue finds a device's array library from the module of the arrays its allocator
# returns (cupy for the GPU): EmuArray's "module" is this stand-in for cupy.
_DEVICE_MODULE = "ep_cuda_emulated_device"
EmuArray.__module__ = _DEVICE_MODULE
sys.modules.setdefault(_DEVICE_MODULE, _NumpyDevice())   # type: ignore[arg-type]


@contextlib.contextmanager
def enabled() -> Iterator[None]:
    """Route wrapper launches to the emulator and device allocations to numpy."""
    saved = (launch.cp._mod, loader.get_kernel, loader.get_source_kernel, launch.EMULATED[0])
    launch.cp._mod = _NumpyDevice()
    loader.get_kernel = get_kernel
    loader.get_source_kernel = get_source_kernel
    launch.EMULATED[0] = True
    try:
        yield
    finally:
        (launch.cp._mod, loader.get_kernel, loader.get_source_kernel,
         launch.EMULATED[0]) = saved


def prebuild(files: list[str] | None = None) -> None:
    """Compile the emulation libraries of all (or some) kernel files up front."""
    man = loader.manifest()
    for f in files or sorted(man):
        get_kernel(f, man[f][0])

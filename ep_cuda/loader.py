"""Kernel loading: `kernels_cu/<category>.cu` compiled by NVRTC through `cupy.RawModule`.

Every launch wrapper declares, at import time, the `(file, name_expression)` pairs it may launch
(`declare`). That manifest serves two purposes:

* at run time a file is compiled once per process (and cached on disk by CuPy) with all of its
  declared template instantiations, the first time one of its kernels is needed;
* `python -m ep_cuda.check_kernels` compiles exactly the same instantiations through raw NVRTC,
  which needs no GPU, so CI proves every kernel the registry can launch compiles.

Asking for an undeclared expression is an error: the manifest must stay complete.
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Iterable

import kernels_cu

# Options shared by the runtime compile and check_kernels (CuPy adds -arch for the device).
NVRTC_OPTIONS: tuple[str, ...] = ("-std=c++17",)

_manifest: dict[str, list[str]] = {}
_lock = threading.Lock()
_modules: dict[tuple[int, str], tuple[Any, frozenset]] = {}   # (device, file) -> (RawModule, exprs)
_functions: dict[tuple[int, str, str], Any] = {}
LAUNCHES = [0]   # kernel launches through functions handed out here (benchmarks count them)


class Counted:
    """A RawKernel that counts its launches; attributes (e.g. max_dynamic_shared_size_bytes)
    pass through to the kernel."""
    __slots__ = ("fn",)

    def __init__(self, fn: Any) -> None:
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        LAUNCHES[0] += 1
        return self.fn(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.fn, name, value)


def declare(file: str, exprs: Iterable[str]) -> None:
    """Record that wrappers may launch these template instantiations of `kernels_cu/<file>.cu`."""
    lst = _manifest.setdefault(file, [])
    for e in exprs:
        if e not in lst:
            lst.append(e)


def manifest() -> dict[str, list[str]]:
    """file -> name expressions, after importing every wrapper module."""
    from . import kernels  # noqa: F401 - importing declares
    return {f: list(v) for f, v in _manifest.items()}


def get_kernel(file: str, expr: str) -> Any:
    """The compiled `cupy.RawKernel` for one declared instantiation, on the current device."""
    import cupy

    dev = cupy.cuda.runtime.getDevice()
    key = (dev, file, expr)
    fn = _functions.get(key)
    if fn is not None:
        return fn
    if expr not in _manifest.get(file, ()):
        raise KeyError(f"kernel '{expr}' of kernels_cu/{file}.cu is not declared in the manifest "
                       f"(call ep_cuda.loader.declare)")
    with _lock:
        mod, exprs = _modules.get((dev, file), (None, frozenset()))
        if mod is None or expr not in exprs:
            exprs = frozenset(_manifest[file])
            mod = cupy.RawModule(code=kernels_cu.source(file), options=NVRTC_OPTIONS,
                                 name_expressions=sorted(exprs))
            _modules[(dev, file)] = (mod, exprs)
        fn = Counted(mod.get_function(expr))
        _functions[key] = fn
    return fn


def cache_dir() -> Path:
    """Where generated kernel sources and autotuning results live (EP_CUDA_CACHE_DIR overrides)."""
    d = Path(os.environ.get("EP_CUDA_CACHE_DIR") or Path.home() / ".cache" / "ep_cuda")
    d.mkdir(parents=True, exist_ok=True)
    return d


def signature(text: str) -> str:
    return hashlib.sha256((text + " ".join(NVRTC_OPTIONS)).encode()).hexdigest()[:24]


_generated: dict[tuple[int, str, str], Any] = {}


def get_source_kernel(key: str, text: str, expr: str) -> Any:
    """A kernel of generated CUDA source (fused elementwise kernels). `key` is the caller's
    signature of the source; the text is stored as <cache_dir>/generated/<key>.cu (inspectable)
    and NVRTC's binary is cached on disk by CuPy under the same source hash, so a later process
    pays neither code generation nor compilation again."""
    import cupy

    dev = cupy.cuda.runtime.getDevice()
    k = (dev, key, expr)
    fn = _generated.get(k)
    if fn is not None:
        return fn
    with _lock:
        path = cache_dir() / "generated" / f"{key}.cu"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        mod = cupy.RawModule(code=text, options=NVRTC_OPTIONS, name_expressions=[expr])
        fn = _generated[k] = Counted(mod.get_function(expr))
    return fn

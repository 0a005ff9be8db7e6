"""Test support: run one ONNX node through a CUDA kernel (on a GPU, or on the CPU emulator) and
through the CPU provider, and compare.

    check("Softmax", [x], {"axis": 1}, backend="emu")

`backend="gpu"` uses CuPy arrays on the current device; `backend="emu"` runs the same wrappers
with numpy "device" arrays and kernels compiled for the host (ep_cuda.emulator).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ep_core.graph import Node, graph_from_proto
from ep_core.kernel import KernelContext
from ep_core.types import elem_type

Array = np.ndarray


def make_model(op: str, inputs: Sequence[Array | None], attrs: dict | None = None, opset: int = 17,
               n_outputs: int = 1, consts: Sequence[int] = (), domain: str = "") -> onnx.ModelProto:
    """A one-node model; `consts` input positions become initializers (host values)."""
    names = [f"in{k}" if v is not None else "" for k, v in enumerate(inputs)]
    outs = [f"out{k}" for k in range(n_outputs)]
    node = helper.make_node(op, names, outs, domain=domain, **(attrs or {}))
    graph_inputs, inits = [], []
    for k, (name, v) in enumerate(zip(names, inputs)):
        if v is None:
            continue
        v = np.asarray(v)
        if k in consts:
            inits.append(numpy_helper.from_array(v, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, elem_type(v.dtype), list(v.shape)))
    graph = helper.make_graph([node], "one_node", graph_inputs,
                              [helper.make_tensor_value_info(o, 0, None) for o in outs],
                              initializer=inits)
    imports = [helper.make_opsetid("", opset)]
    if domain:
        imports.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = min(model.ir_version, 10)
    inferred = onnx.shape_inference.infer_shapes(model)
    # keep the inferred output types (the registry checks output type constraints too)
    for o in inferred.graph.output:
        for mine in model.graph.output:
            if mine.name == o.name:
                mine.CopyFrom(o)
    return inferred


def node_of(model: onnx.ModelProto) -> Node:
    opsets = {o.domain: o.version for o in model.opset_import}
    return graph_from_proto(model.graph, opsets).nodes[0]


def run_cpu(node: Node, inputs: Sequence[Array | None]) -> list[Array]:
    from ep_cpu import CPUExecutionProvider
    kdef = CPUExecutionProvider.kernel_registry().lookup(node)
    if kdef is None:
        raise LookupError(f"CPU provider has no kernel for {node.describe()}")
    out = kdef.factory(node, KernelContext(CPUExecutionProvider())).compute(*inputs)
    return [np.asarray(v) for v in (out if isinstance(out, (tuple, list)) else (out,))]


def cuda_kernel_def(node: Node):
    from ep_cuda import CUDAExecutionProvider
    return CUDAExecutionProvider.kernel_registry().lookup(node)


def to_device(x: Array, backend: str, noncontig: bool = False) -> Any:
    """A device copy of x (an emulator EmuArray for "emu"); with noncontig, a strided view
    (every other element of a wider array)."""
    if backend == "gpu":
        import cupy as xp
        wrap = xp.asarray
    else:
        from .emulator import EmuArray
        xp, wrap = np, EmuArray
    if not noncontig or x.ndim == 0 or x.size == 0:
        return wrap(xp.array(x, copy=True))
    wide = xp.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
    view = wide[..., ::2]
    view[...] = xp.asarray(x)
    return wrap(view)


def to_numpy(v: Any) -> Any:
    """A kernel output as numpy: device arrays are copied back, host outputs pass through."""
    if v is None or isinstance(v, (np.ndarray, list)):
        return v
    if hasattr(v, "get"):
        return v.get()
    return np.asarray(v)


def run_cuda(node: Node, inputs: Sequence[Array | None], backend: str = "emu",
             noncontig: bool = False) -> list[Array]:
    """Run the node's CUDA kernel; host-memory inputs stay numpy, others go to the device."""
    kdef = cuda_kernel_def(node)
    if kdef is None:
        raise LookupError(f"CUDA provider has no kernel for {node.describe()}")
    supports = getattr(kdef.factory, "supports", None)
    if supports is not None and not supports(node):
        raise LookupError(f"CUDA kernel for {node.describe()} declines these attributes")
    args = [v if (v is None or k in kdef.host_inputs) else to_device(np.asarray(v), backend, noncontig)
            for k, v in enumerate(inputs)]

    def call():
        out = kdef.factory(node, None).compute(*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if backend == "gpu":
            import cupy
            cupy.cuda.get_current_stream().synchronize()
        return [to_numpy(v) for v in outs]

    if backend == "emu":
        from . import emulator
        with emulator.enabled():
            return call()
    return call()


def check(op: str, inputs: Sequence[Array | None], attrs: dict | None = None, *, opset: int = 17,
          backend: str = "emu", n_outputs: int = 1, consts: Sequence[int] = (),
          noncontig: bool = False, rtol: float | None = None, atol: float | None = None,
          compare: Sequence[int] | None = None, domain: str = "") -> list[Array]:
    """Compare the CUDA kernel with the CPU provider on one node; returns the CUDA outputs."""
    model = make_model(op, inputs, attrs, opset, n_outputs, consts, domain)
    node = node_of(model)
    want = run_cpu(node, inputs)
    got = run_cuda(node, inputs, backend, noncontig)
    for k in (compare if compare is not None else range(min(len(want), len(got)))):
        w, g = want[k], got[k]
        assert g.dtype == w.dtype, f"{op} output {k}: dtype {g.dtype}, CPU gives {w.dtype}"
        assert g.shape == w.shape, f"{op} output {k}: shape {g.shape}, CPU gives {w.shape}"
        if w.dtype.kind == "f":
            lo = w.dtype == np.float16
            r = rtol if rtol is not None else (2e-2 if lo else 1e-4)
            a = atol if atol is not None else (2e-2 if lo else 1e-5)
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=r, atol=a,
                                       equal_nan=True, err_msg=f"{op} output {k}")
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"{op} output {k}")
    return got


# ---------------------------------------------------------------------------- pytest glue
REQUIRE_GPU_ENV = "EP_REQUIRE_GPU"


def gpu_required() -> bool:
    """EP_REQUIRE_GPU=1 (set by benchmarks/gpu_verify.sh): an unusable GPU fails the GPU tests
    instead of skipping them, so a GPU run cannot report green without having run."""
    return os.environ.get(REQUIRE_GPU_ENV, "").strip().lower() not in ("", "0", "false", "no")


def require_gpu() -> None:
    """Skip the calling test without a usable GPU (fail instead under EP_REQUIRE_GPU=1)."""
    import pytest

    from .provider import CUDAExecutionProvider
    ok, why = CUDAExecutionProvider.availability()
    if ok:
        return
    if gpu_required():
        pytest.fail(f"{REQUIRE_GPU_ENV}=1 but the CUDA provider is unavailable: {why}", pytrace=False)
    pytest.skip(f"no usable GPU: {why}")


def backends() -> list:
    """pytest params: the CPU emulator (runs anywhere with g++) and a real GPU (marked cuda)."""
    import pytest
    return [pytest.param("emu", id="emu"), pytest.param("gpu", id="gpu", marks=pytest.mark.cuda)]


def require(backend: str) -> None:
    """Skip the calling test when the backend cannot run here (see require_gpu for 'gpu')."""
    import pytest
    if backend == "gpu":
        require_gpu()
        return
    from . import emulator
    ok, why = emulator.available()
    if not ok:
        pytest.skip(f"{backend} backend unavailable: {why}")


def session_provider(backend: str) -> str:
    """The provider name a session test passes in `providers=[name, "cpu"]` for a backend:
    "cuda" on a GPU, the emulated CUDA provider ("cuda_emu") on the emulator."""
    require(backend)
    return "cuda" if backend == "gpu" else register_emulated()


def random_array(shape, dtype=np.float32, lo: float = -2.0, hi: float = 2.0, seed: int = 0) -> np.ndarray:
    """Deterministic test data: uniform floats in [lo, hi), random bools, or integers in [lo, hi]."""
    r = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return r.uniform(lo, hi, shape).astype(dtype)
    if np.dtype(dtype) == np.bool_:
        return r.random(shape) < 0.5
    return r.integers(int(lo), int(hi) + 1, shape).astype(dtype)


# ---------------------------------------------------------------------------- emulated provider
from .provider import CUDAExecutionProvider, CudaDataTransfer  # noqa: E402


class _HostArena:
    """Stands in for the device arena of an emulated provider."""
    recording = None

    def empty(self, shape, dtype):
        from .emulator import _NumpyDevice
        return _NumpyDevice.empty(shape, dtype)

    def release_unused(self) -> None:
        pass


class EmulatedCUDAProvider(CUDAExecutionProvider):
    """The CUDA provider with the CPU emulator as its device: EmuArrays (numpy memory that refuses
    host reads) stand for device memory and every kernel (generated fused kernels included) runs through ep_cuda.emulator.
    Partitioning, fusion (compile API), copy insertion and CUDA-graph regions (run eagerly) are
    the real provider's. Test tool: register it with `register_emulated()`."""

    def __init__(self, **options: Any) -> None:
        from ep_core.provider import ExecutionProvider
        ExecutionProvider.__init__(self, **options)
        self._parse_options()
        self.allocator = _HostArena()
        self.stream = None
        self._transfer = CudaDataTransfer(self)

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        from . import emulator
        return emulator.available()

    def scope(self):
        import contextlib

        from . import emulator
        from .launch import using

        stack = contextlib.ExitStack()
        stack.enter_context(emulator.enabled())
        stack.enter_context(using(self.settings))
        return stack

    def get_allocator(self, mem_type: str = "default"):
        return self.allocator

    def to_device(self, value: Any, stream: Any = None) -> Any:
        from .emulator import EmuArray
        if isinstance(value, EmuArray):
            return value
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise TypeError(f"cannot copy a {arr.dtype} tensor to a CUDA device")
        return EmuArray(np.array(arr, copy=True, order="C"))

    def to_host(self, value: Any, stream: Any = None) -> np.ndarray:
        from .emulator import EmuArray
        if isinstance(value, EmuArray):
            return np.asarray(value.get(), order="C")   # (ascontiguousarray makes 0-d 1-d)
        return np.asarray(value)

    def device_of(self, value: Any):
        from ep_core.provider import HOST
        return HOST if isinstance(value, np.ndarray) else self.device

    def sync(self) -> None:
        pass

    def on_run_end(self, run_options: Any = None) -> None:
        pass


EMULATED_NAME = "cuda_emu"


def register_emulated() -> str:
    """Make `providers=["cuda_emu"]` create an EmulatedCUDAProvider; returns the name."""
    from ep_core.providers import register_provider
    register_provider(EMULATED_NAME, EmulatedCUDAProvider)
    return EMULATED_NAME

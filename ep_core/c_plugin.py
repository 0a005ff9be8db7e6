"""ctypes adapter: a shared library implementing `ep_core/include/ep_plugin.h` as a Python provider.

`load_provider_library(name, path)` returns an ExecutionProvider subclass. Its device is the
library's memory space when the library reports one (values there are `DeviceTensor`s, moved by
the library's copy function); otherwise the library works on host (numpy) buffers directly.
Every status a library returns becomes a typed `ep_core.errors` exception naming the plugin.
"""
from __future__ import annotations

import ctypes as C
import itertools
import os
import threading
from typing import Any, Callable, Sequence

import numpy as np

from .errors import EPError, Fail, IncompatiblePlugin, InvalidArgument, NoSuchFile, NotImplemented
from .graph import Graph, Node
from .kernel import ANY_VERSION, Kernel, KernelDef, KernelRegistry
from .plugin import check_abi_version, make_meta_def
from .provider import (HOST, Allocator, ComputeCapability, DataTransfer, Device,
                       ExecutionProvider, GraphView)
from .c_plugin_abi import (
    EP_CLAIM_NODE, EP_DEVICE_CPU, EP_INVALID_ARGUMENT, EP_NOT_CLAIMED, EP_NOT_IMPLEMENTED, EP_OK,
    EP_OUT_OF_MEMORY, EpAttribute, EpDataType, EpDevice, EpGraphView, EpNode, EpOutputs,
    EpPluginApi, EpTensor, EpValueInfo, MSG_LEN, _ALLOC_FN, _ApiHeader, _MEMORY, _REQUIRED,
    _STATUS, _TO_DL, _dl_dtype, _np_dtype)
from .types import tensor_shape


def _status_error(status: int, plugin: str, what: str, msg: bytes) -> EPError:
    cls = {EP_INVALID_ARGUMENT: InvalidArgument, EP_NOT_IMPLEMENTED: NotImplemented}.get(status, Fail)
    text = msg.decode("utf-8", "replace") or "(no message)"
    return cls(f"provider plugin '{plugin}': {what} failed with {_STATUS.get(status, status)}: {text}")


# ---- the loaded library and one provider instance ----------------------------------------------
class _Library:
    """A loaded plugin library and its validated function table."""

    def __init__(self, name: str, path: str):
        self.name, self.path = name, os.fspath(path)
        if not os.path.exists(self.path):
            raise NoSuchFile(f"provider plugin '{name}': library '{self.path}' does not exist")
        try:
            self.cdll = C.CDLL(os.path.abspath(self.path))
        except OSError as e:
            raise IncompatiblePlugin(f"provider plugin '{name}': cannot load '{self.path}': {e}") from e
        try:
            entry = self.cdll.ep_plugin_get_api
        except AttributeError:
            raise IncompatiblePlugin(f"provider plugin '{name}' ({self.path}) lacks the required "
                                     f"symbol 'ep_plugin_get_api'") from None
        entry.restype, entry.argtypes = C.c_void_p, []
        address = entry()
        if not address:
            raise IncompatiblePlugin(f"provider plugin '{name}': ep_plugin_get_api returned NULL")
        head = _ApiHeader.from_address(address)
        check_abi_version(f"{head.abi_major}.{head.abi_minor}", name)
        if head.struct_size < C.sizeof(EpPluginApi):
            raise IncompatiblePlugin(f"provider plugin '{name}': its EpPluginApi has struct_size "
                                     f"{head.struct_size}, smaller than ABI 1.0's {C.sizeof(EpPluginApi)}")
        self.api = EpPluginApi.from_address(address)
        for member in _REQUIRED:
            self.require(member)
        if not self.api.compute and not self.api.compile:
            self.require("compute")  # one of the two compute paths is needed
        if self.api.compile or self.api.compute_compiled:
            for member in ("compile", "compute_compiled", "release_compiled"):
                self.require(member)

    def require(self, member: str) -> None:
        if not getattr(self.api, member):
            raise IncompatiblePlugin(f"provider plugin '{self.name}' ({self.path}) lacks the required "
                                     f"symbol '{member}' (NULL in its EpPluginApi table)")

    def call(self, member: str, what: str, *args) -> None:
        """Call a status-returning member with a message buffer; raise its error typed."""
        msg = C.create_string_buffer(MSG_LEN)
        status = getattr(self.api, member)(*args, msg, MSG_LEN)
        if status != EP_OK:
            raise _status_error(status, self.name, what, msg.value)


class _Handle:
    """One created C provider; released when the provider and every buffer it owns are gone."""

    def __init__(self, lib: _Library, options: dict[str, Any]):
        self.lib, self.ptr = lib, None
        keys = [str(k).encode() for k in options]
        values = [str(v).encode() for v in options.values()]
        ptr = C.c_void_p()
        lib.call("create_provider", "create_provider", len(keys), (C.c_char_p * max(len(keys), 1))(*keys),
                 (C.c_char_p * max(len(values), 1))(*values), C.byref(ptr))
        if not ptr.value:
            raise Fail(f"provider plugin '{lib.name}': create_provider returned no provider")
        self.ptr = ptr.value
        dev = EpDevice()
        lib.call("get_device", "get_device", self.ptr, C.byref(dev))
        self.ep_device = dev
        self.on_host = dev.device_type == EP_DEVICE_CPU
        if not self.on_host:
            for member in _MEMORY:
                lib.require(member)
        self.lock = threading.Lock()
        self.owned = 0         # live DeviceTensors and compiled groups made by this provider
        self.closing = False

    def hold(self) -> None:
        with self.lock:
            self.owned += 1

    def drop(self) -> None:
        with self.lock:
            self.owned -= 1
            last = self.closing and self.owned == 0
        if last:
            self._release()

    def _release(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, None
            self.lib.api.release_provider(ptr)

    def __del__(self):
        # The garbage collector may finalize this before the tensors that point at it (they are
        # unreachable together): then the last of them releases the provider.
        try:
            self.closing = True
            if self.owned == 0:
                self._release()
        except Exception:  # interpreter shutdown: nothing left to report to
            pass

    def allocate(self, nbytes: int) -> int:
        out = C.c_void_p()
        self.lib.call("allocate", f"allocate({nbytes} bytes)", self.ptr, C.byref(self.ep_device),
                      nbytes, C.byref(out))
        if nbytes and not out.value:
            raise Fail(f"provider plugin '{self.lib.name}': allocate({nbytes} bytes) returned NULL")
        return out.value or 0


class DeviceTensor:
    """A tensor in a C plugin's memory space. Not readable as a host array: copy it first."""

    def __init__(self, handle: _Handle, device: Device, shape: Sequence[int], dtype: np.dtype):
        self.shape, self.dtype, self.device = tuple(int(d) for d in shape), np.dtype(dtype), device
        self.ndim, self.size = len(self.shape), int(np.prod(self.shape, dtype=np.int64))
        self.nbytes = self.size * self.dtype.itemsize
        self._handle, self.ptr = handle, 0
        self.ptr = handle.allocate(self.nbytes)
        handle.hold()

    def __array__(self, *args, **kwargs):
        raise TypeError(f"a tensor on {self.device} was read as a host array; copy it to the host "
                        f"first (a copy node is missing)")

    def __repr__(self) -> str:
        return f"DeviceTensor(shape={self.shape}, dtype={self.dtype}, device={self.device})"

    def __del__(self):
        try:
            if self.ptr:
                h, ptr, self.ptr = self._handle, self.ptr, 0
                h.lib.api.free(h.ptr, C.byref(h.ep_device), ptr)
                h.drop()
        except Exception:  # interpreter shutdown
            pass


def _describe(value: Any, keep: list, plugin: str) -> EpTensor:
    """An EpTensor for a DeviceTensor or a host array (None: an omitted optional input)."""
    t = EpTensor()
    if value is None:
        t.ndim = -1
        return t
    if isinstance(value, DeviceTensor):
        data, shape, dtype, ep_dev = value.ptr, value.shape, value.dtype, value._handle.ep_device
    else:
        value = np.ascontiguousarray(value)  # the ABI passes compact row-major buffers
        keep.append(value)
        data, shape, dtype, ep_dev = value.ctypes.data, value.shape, value.dtype, EpDevice(EP_DEVICE_CPU, 0)
    dims = (C.c_int64 * max(len(shape), 1))(*shape)
    keep.append(dims)
    t.data, t.device, t.ndim = data, ep_dev, len(shape)
    t.dtype = _dl_dtype(dtype, plugin)
    t.shape = C.cast(dims, C.POINTER(C.c_int64))
    return t


def _check_placed(value: Any, handle: _Handle, device: Device, what: str) -> None:
    """A compute input must already be in the provider's memory space (copy insertion did it)."""
    if value is None:
        return
    where = value.device if isinstance(value, DeviceTensor) else HOST if isinstance(value, np.ndarray) else None
    if where is None:
        raise InvalidArgument(f"{what}: got a {type(value).__name__}; the C plugin ABI takes tensors")
    if where != device:
        raise Fail(f"{what}: got a value on {where}, expected one on {device} (a copy is missing)")


# ---- outputs: one C callback for all calls; the handle names the call's state ---------------------
_calls: dict[int, "_CallState"] = {}
_call_ids = itertools.count(1)


class _CallState:
    def __init__(self, handle: _Handle, device: Device, count: int):
        self.handle, self.device = handle, device
        self.values: list[Any] = [None] * count
        self.keep: list = []
        self.error = ""


@_ALLOC_FN
def _allocate_output(key, index, ndim, shape, dtype, out):
    state = _calls.get(key or 0)
    if state is None:
        return EP_INVALID_ARGUMENT
    try:
        if not 0 <= index < len(state.values):
            raise ValueError(f"output index {index} out of range (node has {len(state.values)})")
        if state.values[index] is not None:
            raise ValueError(f"output {index} allocated twice")
        if ndim < 0 or (ndim and not shape):
            raise ValueError(f"output {index}: bad rank {ndim}")
        dims = tuple(int(shape[k]) for k in range(ndim))
        if any(d < 0 for d in dims):
            raise ValueError(f"output {index}: negative dimension in {dims}")
        np_dt = _np_dtype(dtype)
        h = state.handle
        if h.on_host:
            value = np.empty(dims, np_dt)
            data, dev = value.ctypes.data, EpDevice(EP_DEVICE_CPU, 0)
        else:
            value = DeviceTensor(h, state.device, dims, np_dt)
            data, dev = value.ptr, h.ep_device
        arr = (C.c_int64 * max(ndim, 1))(*dims)
        state.keep.append(arr)
        state.values[index] = value
        t = out.contents
        t.data, t.device, t.ndim, t.dtype = data, dev, ndim, EpDataType(dtype.code, dtype.bits, 1)
        t.shape, t.strides, t.byte_offset = C.cast(arr, C.POINTER(C.c_int64)), None, 0
        return EP_OK
    except Exception as e:  # never let an exception cross the C boundary
        state.error = f"{type(e).__name__}: {e}"
        return EP_OUT_OF_MEMORY if isinstance(e, MemoryError) else EP_INVALID_ARGUMENT


def _run(handle: _Handle, device: Device, member: str, what: str, n_out: int,
         lead_args: tuple, inputs: Sequence[Any]) -> tuple:
    """Call compute / compute_compiled with input tensors and the output allocator."""
    keep: list = []
    for v in inputs:
        _check_placed(v, handle, device, what)
    arr = (EpTensor * max(len(inputs), 1))(*[_describe(v, keep, handle.lib.name) for v in inputs])
    state = _CallState(handle, device, n_out)
    key = next(_call_ids)
    _calls[key] = state
    outs = EpOutputs(key, n_out, _allocate_output)
    try:
        handle.lib.call(member, what, handle.ptr, *lead_args, len(inputs), arr, C.byref(outs))
    except EPError as e:
        if state.error:
            raise type(e)(f"{e} (output allocation: {state.error})") from None
        raise
    finally:
        del _calls[key]
    missing = [k for k, v in enumerate(state.values) if v is None]
    if missing:
        raise Fail(f"provider plugin '{handle.lib.name}': {what} returned EP_OK without "
                   f"allocating output(s) {missing}")
    return tuple(state.values)


# ---- graph views -----------------------------------------------------------------------------
class _ViewBuilder:
    """Builds the C graph structs for a set of nodes; keeps every buffer alive while in use."""

    def __init__(self, plugin: str):
        self.plugin, self.keep = plugin, []

    def s(self, text: str) -> bytes:
        b = text.encode("utf-8")
        self.keep.append(b)
        return b

    def value_info(self, vi: EpValueInfo, name: str, tp) -> None:
        vi.name = self.s(name)
        tt = tp.tensor_type if tp is not None and tp.WhichOneof("value") == "tensor_type" else None
        vi.elem_type = tt.elem_type if tt is not None else 0
        shape = tensor_shape(tp)
        if shape is None:
            vi.rank = -1
            return
        dims = (C.c_int64 * max(len(shape), 1))(*[d if isinstance(d, int) else -1 for d in shape])
        self.keep.append(dims)
        vi.rank, vi.dims = len(shape), C.cast(dims, C.POINTER(C.c_int64))

    def attribute(self, a: EpAttribute, name: str, value: Any) -> None:
        a.name = self.s(name)
        if isinstance(value, (bool, int, np.integer)):
            a.type, a.i = 2, int(value)
        elif isinstance(value, (float, np.floating)):
            a.type, a.f = 1, float(value)
        elif isinstance(value, str):
            a.type, a.s = 3, self.s(value)
        elif isinstance(value, np.ndarray) and value.dtype in _TO_DL:
            t = _describe(value, self.keep, self.plugin)
            self.keep.append(t)
            a.type, a.tensor = 4, C.pointer(t)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value) and value:
            arr = (C.c_char_p * len(value))(*[self.s(v) for v in value])
            self.keep.append(arr)
            a.type, a.n, a.strings = 8, len(value), arr
        elif isinstance(value, list) and all(isinstance(v, (int, np.integer)) for v in value):
            arr = (C.c_int64 * max(len(value), 1))(*value)
            self.keep.append(arr)
            a.type, a.n, a.ints = 7, len(value), C.cast(arr, C.POINTER(C.c_int64))
        elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            arr = (C.c_double * len(value))(*value)
            self.keep.append(arr)
            a.type, a.n, a.floats = 6, len(value), C.cast(arr, C.POINTER(C.c_double))
        else:
            a.type = 0  # graphs, sparse tensors, type protos: not exposed through the C ABI

    def node(self, ep: EpNode, n: Node) -> None:
        ep.name, ep.op_type, ep.domain = self.s(n.name), self.s(n.op_type), self.s(n.domain)
        ep.opset, ep.since_version = n.opset, n.since_version
        for names, types, count, field in ((n.inputs, n.input_types, "n_inputs", "inputs"),
                                           (n.outputs, n.output_types, "n_outputs", "outputs")):
            arr = (EpValueInfo * max(len(names), 1))()
            for k, name in enumerate(names):
                self.value_info(arr[k], name, types[k] if k < len(types) else None)
            self.keep.append(arr)
            setattr(ep, count, len(names))
            setattr(ep, field, arr)
        attrs = (EpAttribute * max(len(n.attrs), 1))()
        for k, (name, value) in enumerate(n.attrs.items()):
            self.attribute(attrs[k], name, value)
        self.keep.append(attrs)
        ep.n_attributes, ep.attributes = len(n.attrs), attrs

    def view(self, nodes: Sequence[Node], outputs: Sequence[str]) -> EpGraphView:
        arr = (EpNode * max(len(nodes), 1))()
        for k, n in enumerate(nodes):
            self.node(arr[k], n)
        names = (C.c_char_p * max(len(outputs), 1))(*[self.s(o) for o in outputs])
        self.keep += [arr, names]
        return EpGraphView(len(nodes), arr, len(outputs), names)


# ---- the Python provider around a library --------------------------------------------------------
class _NodeKernel(Kernel):
    """A node the library claimed alone: its EpNode is built once, compute calls the library."""

    def __init__(self, node: Node, ctx):
        super().__init__(node, ctx)
        self.provider = ctx.provider
        self.builder = _ViewBuilder(self.provider.type)
        self.ep_node = EpNode()
        self.builder.node(self.ep_node, node)
        self.what = f"{node.describe()} compute"

    def compute(self, *inputs):
        p = self.provider
        return _run(p._handle, p.device, "compute", self.what, len(self.node.outputs),
                    (C.byref(self.ep_node),), inputs[:len(self.node.inputs)])


class _Compiled:
    """A compiled group: calling it runs compute_compiled; release_compiled when dropped."""

    def __init__(self, provider: "CPluginProvider", state: int, name: str, n_out: int):
        self.provider, self.state, self.n_out = provider, state, n_out
        self.what = f"fused node '{name}' compute_compiled"
        provider._handle.hold()

    def __call__(self, *inputs):
        p = self.provider
        return _run(p._handle, p.device, "compute_compiled", self.what, self.n_out,
                    (C.c_void_p(self.state),), inputs)

    def __del__(self):
        try:
            h = self.provider._handle
            h.lib.api.release_compiled(h.ptr, self.state)
            h.drop()
        except Exception:  # interpreter shutdown
            pass


class _Transfer(DataTransfer):
    def __init__(self, provider: "CPluginProvider"):
        self.provider = provider

    def can_copy(self, src: Device, dst: Device) -> bool:
        return {src, dst} == {HOST, self.provider.device}

    def copy(self, value: Any, dst: Device, stream: Any = None) -> Any:
        p = self.provider
        h, keep = p._handle, []
        if dst == p.device:
            value = np.ascontiguousarray(value)
            out = DeviceTensor(h, dst, value.shape, value.dtype)
        else:
            if not isinstance(value, DeviceTensor):
                raise Fail(f"provider plugin '{p.type}': copy to host of a {type(value).__name__}")
            out = np.empty(value.shape, value.dtype)
        src_t, dst_t = _describe(value, keep, p.type), _describe(out, keep, p.type)
        if out.nbytes:
            h.lib.call("copy_tensor", f"copy_tensor to {dst}", h.ptr, C.byref(src_t), C.byref(dst_t))
        return out


class _DeviceAllocator(Allocator):
    def __init__(self, provider: "CPluginProvider"):
        self.handle, self.device = provider._handle, provider.device

    def empty(self, shape, dtype) -> Any:
        return DeviceTensor(self.handle, self.device, shape, np.dtype(dtype))


class CPluginProvider(ExecutionProvider):
    """Base of the classes `load_provider_library` makes; `_lib` is set on each subclass."""
    _lib: _Library

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._handle = _Handle(self._lib, options)
        d = self._handle.ep_device
        self.device = HOST if self._handle.on_host else Device(self.type, int(d.device_id))
        self._registry = KernelRegistry()
        self._transfer = None if self._handle.on_host else _Transfer(self)

    def get_kernel_registry(self) -> KernelRegistry:
        return self._registry  # filled as the library claims single nodes

    def get_capability(self, graph_view: GraphView,
                       kernel_lookup: Callable[[Node], KernelDef | None]) -> list[ComputeCapability]:
        free = {id(n) for n in graph_view.nodes}
        nodes = [n for n in graph_view.graph.topological_order() if id(n) in free]
        if not nodes:
            return []
        builder = _ViewBuilder(self.type)
        # values read outside the view: exactly the outputs a MetaDef of all these nodes would have
        view = builder.view(nodes, make_meta_def(graph_view, nodes, "view").outputs)
        groups = (C.c_int32 * len(nodes))(*([EP_NOT_CLAIMED] * len(nodes)))
        self._lib.call("get_capability", "get_capability", self._handle.ptr, C.byref(view), groups)
        caps, by_group = [], {}
        for n, g in zip(nodes, groups):
            if g == EP_CLAIM_NODE:
                self._lib.require("compute")
                if (n.domain, n.op_type) not in self._registry:
                    self._registry.add(KernelDef(n.op_type, n.domain, 1, ANY_VERSION, factory=_NodeKernel))
                caps.append(ComputeCapability([n]))
            elif g >= 0:
                self._lib.require("compile")
                by_group.setdefault(g, []).append(n)
            elif g != EP_NOT_CLAIMED:
                raise InvalidArgument(f"provider plugin '{self.type}': get_capability returned "
                                      f"{g} for {n.describe()}; expected -1, -2 or a group id >= 0")
        for k, members in enumerate(by_group.values()):   # names unique within the graph asked about
            name = f"{self.type}_fused_{k}"
            caps.append(ComputeCapability(members, make_meta_def(graph_view, members, name)))
        return caps

    def compile(self, fused_node: Node, subgraph: Graph) -> Callable[..., Sequence[Any]]:
        builder = _ViewBuilder(self.type)
        outs = list(fused_node.outputs)
        view = builder.view(subgraph.topological_order(), outs)
        ins_c = (C.c_char_p * max(len(fused_node.inputs), 1))(*[builder.s(i) for i in fused_node.inputs])
        outs_c = (C.c_char_p * max(len(outs), 1))(*[builder.s(o) for o in outs])
        state = C.c_void_p()
        self._lib.call("compile", f"compile of fused node '{fused_node.name}'", self._handle.ptr,
                       C.byref(view), len(fused_node.inputs), ins_c, len(outs), outs_c, C.byref(state))
        return _Compiled(self, state.value or 0, fused_node.name, len(outs))

    def get_allocator(self, mem_type: str = "default") -> Allocator:
        return Allocator() if self._handle.on_host or mem_type != "default" else _DeviceAllocator(self)

    def get_data_transfer(self) -> DataTransfer | None:
        return self._transfer


def load_provider_library(name: str, path: str | os.PathLike) -> type:
    """Load and validate a plugin library; return a provider class of type `name` for it."""
    lib = _Library(name, os.fspath(path))
    return type(f"CPlugin_{name}", (CPluginProvider,), {
        "type": name, "abi_version": f"{lib.api.abi_major}.{lib.api.abi_minor}", "_lib": lib,
        "__doc__": f"C provider plugin '{name}' loaded from {lib.path}"})

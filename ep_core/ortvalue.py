"""OrtValue: a tensor (or sequence/map) and the memory space it lives in, as onnxruntime has it.

Host values are numpy arrays (an OrtValue made from a numpy array on the CPU shares its buffer);
device values are whatever the owning provider's kernels take (CuPy arrays for CUDA, numpy arrays
standing for device memory on the emulated CUDA provider, a test provider's own type). Moving a
value between memory spaces goes through a provider's DataTransfer, never through ad-hoc code, so
"no host round-trip" is something the providers' transfer counters can prove.

ep_core does not import CuPy: a device's array library is the module of the arrays its provider's
allocator returns (DLPack, `__cuda_array_interface__` and raw pointers are handed to it).
"""
from __future__ import annotations

import ctypes
import sys
import threading
from typing import Any, Sequence

import numpy as np

from . import providers as provider_registry
from .errors import InvalidArgument, NotImplemented
from .provider import HOST, Device, ExecutionProvider
from .types import dtype_type_string as type_string_of, elem_type, np_dtype

# onnxruntime's device_type strings -> our Device kinds ('gpu' is onnxruntime's vendor-neutral name)
_KIND_ALIASES = {"gpu": "cuda", "cuda": "cuda", "cpu": "cpu"}
_DLPACK_DEVICE = {1: "cpu", 2: "cuda", 3: "cpu"}   # kDLCPU, kDLCUDA, kDLCUDAHost
_DLPACK_CODE = {"cpu": 1, "cuda": 2}

_providers: dict[Device, ExecutionProvider] = {}
_lock = threading.Lock()


def parse_device(device_type: str | Device, device_id: int = 0) -> Device:
    """('cuda', 0) / 'CUDA' / Device -> Device('cuda', 0)."""
    if isinstance(device_type, Device):
        return device_type
    if not isinstance(device_type, str):
        raise InvalidArgument(f"device_type must be a str such as 'cpu' or 'cuda', got {device_type!r}")
    kind = device_type.strip().lower()
    return Device(_KIND_ALIASES.get(kind, kind), int(device_id))


def use_device_provider(provider: ExecutionProvider) -> ExecutionProvider | None:
    """Make `provider` the one that allocates and copies OrtValues on its device (e.g. an emulated
    CUDA provider in tests); returns the one it replaces, if any."""
    if provider.device.is_host:
        raise InvalidArgument(f"provider '{provider.type}' has a host device: nothing to register")
    with _lock:
        previous = _providers.get(provider.device)
        _providers[provider.device] = provider
    return previous


def forget_device_provider(device: Device) -> None:
    with _lock:
        _providers.pop(device, None)


def device_provider(device: Device) -> ExecutionProvider:
    """A provider instance whose device is `device` (created once, then reused), for values made
    outside any session. Providers named like the device kind are tried first."""
    with _lock:
        if device in _providers:
            return _providers[device]
    names = provider_registry.get_available_providers()
    names = sorted((n for n in names if n != "cpu"), key=lambda n: n != device.kind)
    tried = []
    for name in names:
        try:
            p = provider_registry.provider_factory(name)(device_id=device.index)
        except Exception as e:  # noqa: BLE001 - a provider that cannot serve this device is skipped
            tried.append(f"{name}: {type(e).__name__}: {e}")
            continue
        if p.device == device:
            with _lock:
                return _providers.setdefault(device, p)
        tried.append(f"{name}: its device is {p.device}")
    raise InvalidArgument(f"no available provider has device {device} "
                          f"(available: {provider_registry.get_available_providers()}; {tried})")


def _transfer(src: Device, dst: Device):
    owner = device_provider(dst if not dst.is_host else src)
    t = owner.get_data_transfer()
    if t is None or not t.can_copy(src, dst):
        raise InvalidArgument(f"provider '{owner.type}' cannot copy values from {src} to {dst}")
    return owner, t


def copy_value(value: Any, src: Device, dst: Device) -> Any:
    """Copy a value between memory spaces with a provider's DataTransfer (through the host if no
    provider copies directly); returns the value on `dst`, ready to use (the copy is synchronized)."""
    if src == dst:
        return value
    if not src.is_host and not dst.is_host:
        try:
            owner, t = _transfer(src, dst)
        except InvalidArgument:
            return copy_value(copy_value(value, src, HOST), HOST, dst)
    else:
        owner, t = _transfer(src, dst)
    out = t.copy(value, dst)
    owner.sync()
    return out


def array_module(device: Device):
    """The array library of a device: the module of the arrays its provider allocates."""
    if device.is_host:
        return np
    probe = device_provider(device).get_allocator().empty((0,), np.float32)
    return sys.modules[type(probe).__module__.split(".")[0]]


class OrtValue:
    """A value and its device. Use the `ortvalue_from_*` / `from_dlpack` constructors."""

    def __init__(self, value: Any, device: Device = HOST, owner: Any = None) -> None:
        self._value = value
        self._device = device
        self._owner = owner   # keeps a borrowed buffer (numpy array, pointer owner) alive

    # ---- constructors ------------------------------------------------------------------------
    @classmethod
    def ortvalue_from_numpy(cls, numpy_obj: np.ndarray, /, device_type: str = "cpu",
                            device_id: int = 0, vendor_id: int = -1) -> "OrtValue":
        """On the CPU the OrtValue shares the array's buffer; on a device it holds a copy."""
        if not isinstance(numpy_obj, np.ndarray):
            raise InvalidArgument(f"ortvalue_from_numpy needs a numpy array, got "
                                  f"{type(numpy_obj).__name__}")
        device = parse_device(device_type, device_id)
        arr = numpy_obj if numpy_obj.flags.c_contiguous and numpy_obj.dtype.isnative \
            else np.ascontiguousarray(numpy_obj, numpy_obj.dtype.newbyteorder("="))
        if device.is_host:
            return cls(arr, HOST, numpy_obj)
        return cls(copy_value(arr, HOST, device), device)

    @classmethod
    def ortvalue_from_numpy_with_onnx_type(cls, data: np.ndarray, /, onnx_element_type: int) -> "OrtValue":
        """The array's bytes read as an ONNX element type of the same width (e.g. bfloat16 from
        uint16); no copy."""
        want = np_dtype(int(onnx_element_type))
        if want.itemsize != data.dtype.itemsize:
            raise InvalidArgument(f"ortvalue_from_numpy_with_onnx_type: {data.dtype} elements are "
                                  f"{data.dtype.itemsize} bytes, {type_string_of(want)} needs {want.itemsize}")
        return cls(np.ascontiguousarray(data).view(want), HOST, data)

    @classmethod
    def ortvalue_from_shape_and_type(cls, shape: Sequence[int], element_type: Any,
                                     device_type: str = "cpu", device_id: int = 0,
                                     vendor_id: int = -1, memory_info: Any = None) -> "OrtValue":
        """An uninitialized tensor allocated by the device's provider (element_type: a numpy type
        or an ONNX TensorProto element type int)."""
        if memory_info is not None:
            raise NotImplemented("ortvalue_from_shape_and_type(memory_info=...) needs onnxruntime's "
                                 "OrtMemoryInfo, which ep_core does not have; give device_type")
        dtype = _dtype_of(element_type)
        shape = [int(d) for d in shape]
        if any(d < 0 for d in shape):
            raise InvalidArgument(f"ortvalue_from_shape_and_type: negative dimension in {shape}")
        device = parse_device(device_type, device_id)
        if device.is_host:
            return cls(np.empty(shape, dtype), HOST)
        return cls(device_provider(device).get_allocator().empty(shape, dtype), device)

    @classmethod
    def from_dlpack(cls, data: Any, /) -> "OrtValue":
        """Zero-copy import of a DLPack producer (CuPy, PyTorch, JAX, numpy arrays)."""
        if not hasattr(data, "__dlpack_device__"):
            raise InvalidArgument(f"from_dlpack needs an object with __dlpack__ and "
                                  f"__dlpack_device__ (a raw capsule carries no device), got "
                                  f"{type(data).__name__}")
        code, index = data.__dlpack_device__()
        kind = _DLPACK_DEVICE.get(int(code))
        if kind is None:
            raise InvalidArgument(f"from_dlpack: DLPack device type {int(code)} is not supported")
        device = Device(kind, int(index)) if kind != "cpu" else HOST
        return cls(array_module(device).from_dlpack(data), device, data)

    @classmethod
    def from_cuda_array_interface(cls, data: Any, /) -> "OrtValue":
        """Zero-copy import of an object exposing `__cuda_array_interface__` (Numba, PyTorch, CuPy)."""
        iface = getattr(data, "__cuda_array_interface__", None)
        if iface is None:
            raise InvalidArgument(f"{type(data).__name__} has no __cuda_array_interface__")
        device = _cuda_device_of(data)
        return cls(array_module(device).asarray(data), device, data)

    @classmethod
    def from_pointer(cls, ptr: int, shape: Sequence[int], element_type: Any, device: Device,
                     owner: Any = None) -> "OrtValue":
        """A tensor over memory someone else owns (IOBinding's buffer_ptr); no copy."""
        dtype = _dtype_of(element_type)
        shape = tuple(int(d) for d in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        xp = array_module(device)
        if xp is np:  # host memory (the CPU, or a provider whose device memory is host memory)
            buf = (ctypes.c_byte * max(nbytes, 1)).from_address(int(ptr))
            arr = np.frombuffer(buf, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)
            return cls(arr, device, owner)
        iface = _CudaBuffer(int(ptr), shape, dtype)
        return cls(xp.asarray(iface), device, owner)

    # ---- what it holds ----------------------------------------------------------------------
    @property
    def value(self) -> Any:
        """The array (or list/dict) itself, on its device."""
        return self._value

    @property
    def device(self) -> Device:
        return self._device

    def device_name(self) -> str:
        return self._device.kind

    def shape(self) -> list[int]:
        self._need_tensor("shape")
        return [int(d) for d in self._value.shape]

    def data_type(self) -> str:
        v = self._value
        if isinstance(v, list):
            inner = type_string_of(np.asarray(v[0]).dtype) if v else "tensor(float)"
            return f"seq({inner})"
        if isinstance(v, dict):
            k, x = next(iter(v.items())) if v else ("", 0.0)
            key = type_string_of(np.asarray(k).dtype)[len("tensor("):-1]
            return f"map({key},{type_string_of(np.asarray(x).dtype)})"
        return type_string_of(np.dtype(v.dtype))

    def element_type(self) -> int:
        self._need_tensor("element_type")
        return elem_type(np.dtype(self._value.dtype))

    def tensor_size_in_bytes(self) -> int:
        self._need_tensor("tensor_size_in_bytes")
        return int(np.prod(self._value.shape, dtype=np.int64)) * np.dtype(self._value.dtype).itemsize

    def has_value(self) -> bool:
        return self._value is not None

    def is_tensor(self) -> bool:
        return self._value is not None and not isinstance(self._value, (list, dict))

    def is_sparse_tensor(self) -> bool:
        return False

    def is_tensor_sequence(self) -> bool:
        return isinstance(self._value, list)

    def data_ptr(self) -> int:
        """Address of the first element (device memory for device values)."""
        self._need_tensor("data_ptr")
        v = self._value
        if isinstance(v, np.ndarray):
            return int(v.ctypes.data)
        iface = getattr(v, "__cuda_array_interface__", None)
        if iface is not None:
            return int(iface["data"][0])
        for attr in ("data_ptr", "ptr"):
            p = getattr(v, attr, None)
            if p is not None:
                return int(p() if callable(p) else p)
        raise NotImplemented(f"values on device {self._device} ({type(v).__name__}) expose no "
                             f"data pointer")

    def numpy(self) -> np.ndarray:
        """The tensor on the host: shares memory for host values, a copy for device values."""
        if isinstance(self._value, (list, dict)) or self._value is None:
            raise InvalidArgument(f"numpy() needs a tensor; this OrtValue holds {self.data_type() if self._value is not None else 'no value'}")
        if self._device.is_host:
            return self._value
        return copy_value(self._value, self._device, HOST)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        arr = self.numpy()
        if copy:
            return np.array(arr, dtype=dtype, copy=True)
        return arr if dtype is None else arr.astype(dtype, copy=False)

    # ---- zero-copy export -------------------------------------------------------------------
    def __dlpack__(self, *, stream: Any = None, **kwargs: Any) -> Any:
        self._need_tensor("__dlpack__")
        export = getattr(self._value, "__dlpack__", None)
        if export is None:
            raise NotImplemented(f"values on device {self._device} ({type(self._value).__name__}) "
                                 f"cannot be exported through DLPack")
        return export(stream=stream, **kwargs) if (stream is not None or kwargs) else export()

    def __dlpack_device__(self) -> tuple[int, int]:
        probe = getattr(self._value, "__dlpack_device__", None)
        if probe is not None:
            return probe()
        if self._device.kind not in _DLPACK_CODE:
            raise NotImplemented(f"device {self._device} has no DLPack device type")
        return _DLPACK_CODE[self._device.kind], self._device.index

    @property
    def __cuda_array_interface__(self) -> dict:
        iface = getattr(self._value, "__cuda_array_interface__", None) if self._device.kind == "cuda" else None
        if iface is None:
            raise AttributeError(f"an OrtValue on {self._device} has no __cuda_array_interface__")
        return iface

    def update_inplace(self, data: Any) -> None:
        """Copy `data` (a numpy array or an OrtValue, on any device) into this value's buffer."""
        self._need_tensor("update_inplace")
        if isinstance(data, OrtValue):
            src, src_dev = data.value, data.device
        elif isinstance(data, np.ndarray):
            src, src_dev = np.ascontiguousarray(data), HOST
        else:
            raise InvalidArgument(f"update_inplace takes a numpy array or an OrtValue, got "
                                  f"{type(data).__name__}")
        if tuple(src.shape) != tuple(self._value.shape) or np.dtype(src.dtype) != np.dtype(self._value.dtype):
            raise InvalidArgument(f"update_inplace: source {src.dtype}{list(src.shape)} does not "
                                  f"match {self._value.dtype}{list(self._value.shape)}")
        assign_into(self._value, copy_value(src, src_dev, self._device), self._device)

    def _need_tensor(self, what: str) -> None:
        if not self.is_tensor():
            raise InvalidArgument(f"{what}() needs a tensor OrtValue")

    def __repr__(self) -> str:
        if self.is_tensor():
            return f"OrtValue({self.data_type()}, shape={self.shape()}, device={self._device})"
        return f"OrtValue({self.data_type() if self._value is not None else 'none'}, device={self._device})"


def assign_into(dst: Any, src: Any, device: Device) -> None:
    """Write `src` into `dst`'s buffer; both on `device` (device-to-device, no host pass)."""
    try:
        dst[...] = src
    except TypeError as e:
        raise NotImplemented(f"values on device {device} ({type(dst).__name__}) cannot be "
                             f"written in place: {e}") from e


def _dtype_of(element_type: Any) -> np.dtype:
    if isinstance(element_type, (int, np.integer)) and not isinstance(element_type, bool):
        return np_dtype(int(element_type))
    try:
        return np.dtype(element_type)
    except TypeError as e:
        raise InvalidArgument(f"element_type {element_type!r} is neither a numpy type nor an ONNX "
                              f"element type") from e


def device_of_array(value: Any) -> Device | None:
    """The device of an array that lives off the host (a DLPack producer or an object with
    `__cuda_array_interface__`: CuPy, PyTorch, Numba...); None for host values."""
    if isinstance(value, (np.ndarray, np.generic, OrtValue, list, tuple)):
        return None
    if hasattr(value, "__cuda_array_interface__"):
        return _cuda_device_of(value)
    probe = getattr(value, "__dlpack_device__", None)
    if probe is None:
        return None
    try:
        code, index = probe()
    except Exception:  # noqa: BLE001 - not a usable DLPack producer: the feed check reports it
        return None
    kind = _DLPACK_DEVICE.get(int(code))
    return Device(kind, int(index)) if kind not in (None, "cpu") else None


def _cuda_device_of(data: Any) -> Device:
    """The CUDA device an array lives on (CuPy: .device.id, PyTorch: .device.index)."""
    dev = getattr(data, "device", None)
    index = getattr(dev, "id", None)
    if index is None:
        index = getattr(dev, "index", None)
    return Device("cuda", int(index or 0))


class _CudaBuffer:
    """A raw device pointer described by `__cuda_array_interface__` (v3), for the device's array
    library to wrap without copying."""

    def __init__(self, ptr: int, shape: tuple, dtype: np.dtype) -> None:
        self.__cuda_array_interface__ = {"shape": shape, "typestr": dtype.str, "data": (ptr, False),
                                         "version": 3, "strides": None}

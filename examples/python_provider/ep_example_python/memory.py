"""The provider's own memory space.

The "device" is simulated: a DeviceBuffer keeps a numpy array behind an opaque handle and refuses
to be read as a host array, so the runtime must move every value in and out through the
provider's DataTransfer. A real accelerator would hold a device pointer here instead.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ep_core.plugin import HOST, Allocator, DataTransfer, Device

DEVICE = Device("example_python", 0)


class DeviceBuffer:
    """A tensor living on the example device."""

    def __init__(self, data: np.ndarray):
        self._data = data

    @property
    def shape(self) -> tuple:
        return self._data.shape

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    def __array__(self, *args, **kwargs):
        raise TypeError("an example_python device buffer was read as a host array: a copy is missing")

    def __repr__(self) -> str:
        return f"DeviceBuffer(shape={self.shape}, dtype={self.dtype})"


def device_data(value: Any) -> np.ndarray:
    """The array behind a device buffer; anything else is a value in the wrong memory space."""
    if not isinstance(value, DeviceBuffer):
        raise TypeError(f"example_python got a {type(value).__name__}, expected a DeviceBuffer")
    return value._data


class ExampleAllocator(Allocator):
    device = DEVICE

    def empty(self, shape, dtype) -> DeviceBuffer:
        return DeviceBuffer(np.empty(shape, dtype))


class ExampleTransfer(DataTransfer):
    """Host <-> device copies; counts the bytes moved each way."""

    def __init__(self) -> None:
        self.bytes_to_device = 0
        self.bytes_to_host = 0

    def can_copy(self, src: Device, dst: Device) -> bool:
        return {src, dst} == {HOST, DEVICE}

    def copy(self, value: Any, dst: Device, stream: Any = None) -> Any:
        if dst == DEVICE:
            data = np.array(value, copy=True)
            self.bytes_to_device += data.nbytes
            return DeviceBuffer(data)
        data = device_data(value).copy()
        self.bytes_to_host += data.nbytes
        return data

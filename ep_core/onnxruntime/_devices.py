"""onnxruntime's device and memory enums and OrtDevice, over ep_core's Device."""
from __future__ import annotations

import enum

from ..ortvalue import parse_device
from ..provider import Device


class OrtMemType(enum.IntEnum):
    CPU_INPUT = -2
    CPU_OUTPUT = -1
    CPU = -1
    DEFAULT = 0


class OrtAllocatorType(enum.IntEnum):
    INVALID = -1
    ORT_DEVICE_ALLOCATOR = 0
    ORT_ARENA_ALLOCATOR = 1


class OrtDevice:
    """A device as onnxruntime names it: device_type() 0 for the CPU, 1 for a GPU."""
    _TYPES = {"cpu": 0, "cuda": 1}

    def __init__(self, device: Device) -> None:
        self._device = device

    @staticmethod
    def make(ort_device_name: str, device_id: int, vendor_id: int = -1) -> "OrtDevice":
        return OrtDevice(parse_device(ort_device_name, device_id))

    @staticmethod
    def cpu() -> int:
        return 0

    @staticmethod
    def cuda() -> int:
        return 1

    @staticmethod
    def default_memory() -> int:
        return 0

    def device_id(self) -> int:
        return self._device.index

    def device_type(self) -> int:
        return self._TYPES.get(self._device.kind, 1)

    def device_mem_type(self) -> int:
        return 0

    def device_vendor_id(self) -> int:
        return 0x10DE if self._device.kind == "cuda" else 0

    @property
    def device(self) -> Device:
        return self._device

    def __repr__(self) -> str:
        return f"OrtDevice({self._device})"

"""A test-only provider whose device is a second host memory space.

Its values are `ForeignArray`s that refuse to be read as numpy arrays, so any kernel handed a value
from the wrong memory space fails loudly instead of silently computing.
"""
from __future__ import annotations

import numpy as np

from ep_core.kernel import Kernel, KernelRegistry
from ep_core.provider import HOST, DataTransfer, Device, ExecutionProvider

FOREIGN = Device("foreign", 0)


class ForeignArray:
    def __init__(self, data: np.ndarray):
        self.data = np.asarray(data)

    def __array__(self, *args, **kwargs):
        raise TypeError("ForeignArray read as a host array: a copy node is missing")

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype


def unwrap(v) -> np.ndarray:
    if not isinstance(v, ForeignArray):
        raise TypeError(f"foreign kernel got a {type(v).__name__}, expected a ForeignArray")
    return v.data


class ForeignTransfer(DataTransfer):
    def __init__(self):
        self.copies = 0

    def can_copy(self, src: Device, dst: Device) -> bool:
        return {src, dst} == {HOST, FOREIGN}

    def copy(self, value, dst: Device, stream=None):
        self.copies += 1
        if dst == FOREIGN:
            assert isinstance(value, np.ndarray), f"host->foreign copy of {type(value).__name__}"
            return ForeignArray(value.copy())
        return unwrap(value).copy()


registry = KernelRegistry()


@registry.register(["Add", "Mul"], types={"T": [np.float32]})
class Binary(Kernel):
    def compute(self, a, b):
        fn = np.add if self.node.op_type == "Add" else np.multiply
        return ForeignArray(fn(unwrap(a), unwrap(b)))


@registry.register("Relu", types={"T": [np.float32]})
class Relu(Kernel):
    def compute(self, x):
        return ForeignArray(np.maximum(unwrap(x), 0))


@registry.register("Reshape", since=5, host_inputs=(1,))
class Reshape(Kernel):
    def compute(self, x, shape):
        assert isinstance(shape, np.ndarray), "Reshape's shape must arrive on the host"
        return ForeignArray(unwrap(x).reshape([int(d) for d in shape]))


@registry.register("Shape", host_outputs=(0,))
class Shape(Kernel):
    def compute(self, x):
        return np.array(unwrap(x).shape, dtype=np.int64)


class ForeignProvider(ExecutionProvider):
    type = "foreign"
    device = FOREIGN

    def __init__(self, **options):
        super().__init__(**options)
        self.transfer = ForeignTransfer()

    @classmethod
    def kernel_registry(cls) -> KernelRegistry:
        return registry

    def get_data_transfer(self) -> DataTransfer:
        return self.transfer

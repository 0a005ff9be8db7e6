"""A test provider, on the second memory space of `foreign_provider`, that is deliberately slow
for some op types and fast for others, so that neither fixed provider order is best.

* MatMul: correct, plus a 2 ms sleep per call (a device with a slow GEMM path).
* Softplus: a numerically stable formula, max(x, 0) + log1p(exp(-|x|)), about 15x cheaper than the
  CPU provider's logaddexp (a device that does less work for the same result).
* Add, Mul, Relu: plain numpy, as fast as the CPU's.
Its values are `ForeignArray`s: a missing copy node fails loudly.
"""
from __future__ import annotations

import time

import numpy as np
from foreign_provider import ForeignArray, ForeignProvider, unwrap

from ep_core.kernel import Kernel, KernelRegistry

SLOW_SECONDS = 2e-3

registry = KernelRegistry()


@registry.register("MatMul", since=1, types={"T": [np.float32]})
class SlowMatMul(Kernel):
    def compute(self, a, b):
        time.sleep(SLOW_SECONDS)
        return ForeignArray(np.matmul(unwrap(a), unwrap(b)))


@registry.register("Softplus", types={"T": [np.float32]})
class FastSoftplus(Kernel):
    def compute(self, x):
        v = unwrap(x)
        return ForeignArray(np.maximum(v, 0) + np.log1p(np.exp(-np.abs(v))))


@registry.register(["Add", "Mul"], types={"T": [np.float32]})
class Binary(Kernel):
    def compute(self, a, b):
        fn = np.add if self.node.op_type == "Add" else np.multiply
        return ForeignArray(fn(unwrap(a), unwrap(b)))


@registry.register("Relu", types={"T": [np.float32]})
class Relu(Kernel):
    def compute(self, x):
        return ForeignArray(np.maximum(unwrap(x), 0))


class SlowFastProvider(ForeignProvider):
    """The foreign memory space and its transfers, with this file's kernels."""
    type = "slowfast"

    @classmethod
    def kernel_registry(cls) -> KernelRegistry:
        return registry

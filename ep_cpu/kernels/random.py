"""Random generators: RandomNormal/Uniform(+Like), Bernoulli, Multinomial.

As in ONNX Runtime, a kernel with a `seed` attribute owns a generator seeded once at session build,
so a session's sequence of outputs is reproducible; without `seed` the generator is seeded from OS
entropy.
"""
from __future__ import annotations

import numpy as np

from ep_core.kernel import Kernel
from ep_core.types import np_dtype
from ep_cpu.kernels.tensor import check_size
from ep_cpu.registry import kernel


def _rng(k: Kernel) -> np.random.Generator:
    seed = k.attr("seed")
    if seed is None:
        return np.random.default_rng()
    # The attribute is a float; fold it to a non-negative integer seed deterministically.
    return np.random.default_rng(int(np.floor(float(seed))) % (2**63))


def _dtype(declared: np.dtype | None, like: np.ndarray | None, default=np.float32) -> np.dtype:
    if declared is not None:
        return declared
    if like is not None:
        return like.dtype
    return np.dtype(default)


def _dtype_attr(k: Kernel) -> np.dtype | None:
    dt = k.attr("dtype")
    return None if dt is None else np_dtype(int(dt))


@kernel(["RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"])
class RandomTensor(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.rng = _rng(self)
        self.normal = node.op_type.startswith("RandomNormal")
        self.like = node.op_type.endswith("Like")
        self.mean = float(self.attr("mean", 0.0))
        self.scale = float(self.attr("scale", 1.0))
        self.low = float(self.attr("low", 0.0))
        self.high = float(self.attr("high", 1.0))
        self.shape = tuple(int(d) for d in self.attr("shape", []))
        self.dtype = _dtype_attr(self)
        if not self.like:   # the shape is the model's: refuse a bad or oversized one at build
            check_size(self, self.shape, _dtype(self.dtype, None))

    def compute(self, like=None):
        if self.like:
            shape, dtype = np.shape(like), _dtype(self.dtype, np.asarray(like))
        else:
            shape, dtype = self.shape, _dtype(self.dtype, None)
        if self.normal:
            vals = self.rng.normal(self.mean, self.scale, size=shape)
        else:
            vals = self.rng.uniform(self.low, self.high, size=shape)
        return np.asarray(vals).astype(dtype)


@kernel("Bernoulli")
class Bernoulli(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.rng = _rng(self)
        self.dtype = _dtype_attr(self)

    def compute(self, x):
        x = np.asarray(x)
        draws = self.rng.uniform(0.0, 1.0, size=x.shape) < x.astype(np.float64)
        return draws.astype(_dtype(self.dtype, x))


@kernel("Multinomial")
class Multinomial(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.rng = _rng(self)
        self.samples = int(self.attr("sample_size", 1))
        self.dtype = np_dtype(int(self.attr("dtype", 6)))  # default int32

    def compute(self, x):
        logits = np.asarray(x, dtype=np.float64)
        if logits.ndim != 2:
            raise ValueError(f"Multinomial expects [batch, class] input, got {logits.shape}")
        # Rows are unnormalised log-probabilities: sample by inverse CDF of their softmax.
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        cdf = np.cumsum(p, axis=1)
        cdf /= cdf[:, -1:]
        check_size(self, (logits.shape[0], self.samples), np.float64)   # the draws, then the output
        u = self.rng.uniform(0.0, 1.0, size=(logits.shape[0], self.samples))
        out = np.empty(u.shape, dtype=np.int64)
        for b in range(logits.shape[0]):
            out[b] = np.minimum(np.searchsorted(cdf[b], u[b], side="right"), logits.shape[1] - 1)
        return out.astype(self.dtype)

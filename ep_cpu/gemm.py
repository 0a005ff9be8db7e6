"""GEMM entry point used by Conv, Gemm, MatMul and fused ops (plain numpy for now)."""
from __future__ import annotations

import numpy as np


def pack_b(b: np.ndarray) -> np.ndarray:
    """Prepare a constant right-hand matrix once at session build."""
    return np.ascontiguousarray(b)


def gemm(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None,
         activation: str | None = None) -> np.ndarray:
    """a @ b (+ bias) with an optional activation ('Relu', ...)."""
    out = a @ b
    if bias is not None:
        out += bias
    if activation == "Relu":
        np.maximum(out, 0, out=out)
    elif activation is not None:
        raise ValueError(f"unknown gemm activation {activation!r}")
    return out

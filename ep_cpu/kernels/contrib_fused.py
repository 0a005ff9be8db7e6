"""onnxruntime's fused linear-algebra contrib ops (`com.microsoft`): FusedGemm, FusedMatMul,
NhwcConv. FusedConv of that domain is `fused.FusedConv` (same semantics as our own).

* FusedGemm is Gemm then an activation named by `activation`, whose parameters come as
  `activation_alpha` / `activation_beta` / `activation_gamma` (our own `com.ep_core::FusedGemm`
  takes a positional `activation_params` instead). Activations the GEMM epilogue knows run on
  each output tile; the rarer ones (Selu, Celu, ThresholdedRelu, ...) run once afterwards.
* FusedMatMul is numpy-style MatMul of op(A) and op(B) scaled by `alpha`, where op may move the
  first axis behind the batch axes (`transBatchA/B`, as in a (S, B, K) x (B, K, N) product) and
  swap the last two (`transA/B`). It has no bias or activation: a different op from our own
  `com.ep_core::FusedMatMul` (bias + activation epilogue).
* NhwcConv is Conv on channels-last data: X (N, H, W, C), W (M, kH, kW, C/group), Y (N, H', W', M).
"""
from __future__ import annotations

import numpy as np

from ep_core.errors import InvalidArgument
from ep_cpu.gemm import gemm
from ep_cpu.registry import kernel

from .contrib_common import MS
from .conv import Conv
from .linalg import Gemm, _half, matmul
from .rnn import _ACTS


def _selu(x, a, g):
    return g * np.where(x > 0, x, a * np.expm1(np.minimum(x, 0)))


def _celu(x, a, _):
    return np.maximum(x, 0) + np.minimum(0, a * np.expm1(x / a))


# Activations onnxruntime's FusedGemm accepts beyond the GEMM epilogue's: (f(x, alpha, beta|gamma),
# default alpha, default beta|gamma), applied after the product.
_AFTER = {"Selu": (_selu, 1.67326319217681884765625, 1.05070102214050292968750),
          "Celu": (_celu, 1.0, None),
          "ThresholdedRelu": (_ACTS["thresholdedrelu"][0], 1.0, None),
          "ScaledTanh": (_ACTS["scaledtanh"][0], 1.0, 1.0),
          "Softsign": (_ACTS["softsign"][0], None, None),
          "Softplus": (_ACTS["softplus"][0], None, None),
          "ParametricSoftplus": (lambda x, a, b: a * np.logaddexp(0, b * x), 1.0, 1.0)}
# Epilogue activations: their parameter names fed from activation_alpha / activation_beta.
_EPILOGUE_PARAMS = {"Relu": (), "Sigmoid": (), "Tanh": (), "LeakyRelu": ("alpha",),
                    "HardSigmoid": ("alpha", "beta"), "Elu": ("alpha",)}


@kernel("FusedGemm", domain=MS)
class FusedGemm(Gemm):
    """act(alpha * op(A) @ op(B) + beta * C), activation parameters as activation_alpha/beta/gamma."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        act = self.attr("activation") or None
        alpha, beta = self.attr("activation_alpha"), self.attr("activation_beta")
        gamma = self.attr("activation_gamma")
        self.after = None
        if act is None or act in _EPILOGUE_PARAMS:
            self.act = act
            given = [p for p in (alpha, beta) if p is not None]
            self.params = dict(zip(_EPILOGUE_PARAMS.get(act, ()), [float(p) for p in given]))
        elif act in _AFTER:
            fn, da, db = _AFTER[act]
            a = da if alpha is None else float(alpha)
            b = db if (gamma if act == "Selu" else beta) is None else float(gamma if act == "Selu" else beta)
            self.act, self.params = None, {}
            self.after = lambda y: fn(y, a, b)
        else:
            raise InvalidArgument(f"{node.describe()}: unsupported activation {act!r}; known: "
                                  f"{sorted(set(_EPILOGUE_PARAMS) | set(_AFTER))}")

    def compute(self, a, b, c=None):
        if self.act is None:
            y = super().compute(a, b, c)
        else:
            bm, tb = (b, self.trans_b) if self.packed_b is None else (self.packed_b, False)
            y = gemm(a, bm, c if self.beta != 0 else None, self.act, activation_params=self.params,
                     alpha=self.alpha, beta=self.beta, trans_a=self.trans_a,
                     trans_b=tb).astype(np.result_type(a.dtype, b.dtype), copy=False)
        if self.after is not None:
            with np.errstate(over="ignore"):
                y = np.asarray(self.after(y.astype(np.float32) if _half(y.dtype) else y), dtype=y.dtype)
        return y


def _logical(x: np.ndarray, trans_batch: bool, trans: bool, node, which: str) -> np.ndarray:
    if trans_batch:
        if x.ndim < 3:
            raise InvalidArgument(f"{node.describe()}: transBatch{which} needs inputs of rank >= 3, "
                                  f"got {x.shape}")
        x = np.moveaxis(x, 0, -2)   # stored (M, batch..., K): batch axes first
    if trans and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    return x


@kernel("FusedMatMul", domain=MS)
class FusedMatMul(Gemm):
    """alpha * op(A) @ op(B), numpy matmul broadcasting."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.tb_a = bool(self.attr("transBatchA", 0))
        self.tb_b = bool(self.attr("transBatchB", 0))

    def compute(self, a, b):
        if (self.tb_a or self.tb_b) and a.ndim != b.ndim:
            raise InvalidArgument(f"{self.node.describe()}: transBatchA/B need inputs of the same "
                                  f"rank, got {a.shape} and {b.shape}")
        dt = np.result_type(a.dtype, b.dtype)
        cdt = np.dtype(np.float32) if _half(dt) else dt
        la = _logical(a, self.tb_a, self.trans_a, self.node, "A").astype(cdt, copy=False)
        lb = _logical(b, self.tb_b, self.trans_b, self.node, "B").astype(cdt, copy=False)
        if lb.ndim == 2 and la.ndim >= 2:   # one weight matrix: gemm with alpha in its epilogue
            # (a constant one was packed by Gemm.__init__, transposed there when transB)
            bm = lb if self.packed_b is None else self.packed_b
            return gemm(la, bm, alpha=self.alpha).astype(dt, copy=False)
        y = matmul(la, lb)
        if self.alpha != 1:
            y = y * cdt.type(self.alpha)
        return np.asarray(y, dtype=dt)


@kernel("NhwcConv", domain=MS)
class NhwcConv(Conv):
    """Conv on channels-last X (N, spatial..., C) with W (M, k..., C/group)."""

    def compute(self, x, w, b=None):
        if x.ndim < 3 or w.ndim != x.ndim:
            raise InvalidArgument(f"{self.node.describe()}: X {x.shape} and W {w.shape} must have the "
                                  f"same rank >= 3")
        y = super().compute(np.moveaxis(x, -1, 1), np.moveaxis(w, -1, 1), b)
        return np.ascontiguousarray(np.moveaxis(y, 1, -1))


"""CPU kernels for the fused ops the graph optimizer creates (domain `com.ep_core`).

FusedConv / FusedGemm / FusedMatMul / FusedAdd apply the activation in place on the freshly computed result (one
pass, no extra temporaries); the matrix parts go through `ep_cpu.gemm.gemm`. Gelu, FastGelu,
LayerNormalization (for models below opset 17), SkipLayerNormalization and Attention replace the
subgraphs the transformer fusions match. Semantics follow onnxruntime's contrib ops of the same
names, except that Attention's fourth input is an additive mask and FusedGemm's activation
parameters are positional (see docs/optimizer.md); FusedMatMul and FusedAdd have no onnxruntime
counterpart. Where the semantics are the same (FusedConv, Gelu, FastGelu, SkipLayerNormalization)
one class is registered for both domains: the optimizer now writes `com.microsoft` ops, and
`com.ep_core` stays for models saved before.
"""
from __future__ import annotations

import math

import numpy as np

from ep_core.kernel import Kernel
from ep_core.op_attributes import ConvAttributes, GemmAttributes
from ep_cpu import jit_tier, norm_jit
from ep_cpu.gemm import ACTIVATIONS, gemm, pack_constant
from ep_cpu.registry import kernel

from .contrib_attention import Attention as _MsAttention
from .contrib_common import MS
from .conv import compute_dtype, prepare_constant_weight, ready_conv, run_conv
from .linalg import pack_matmul_b
from .norm import LayerNormalization as _OnnxLayerNormalization

try:
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover - scipy is a dependency
    _erf = np.vectorize(math.erf, otypes=[np.float64])

DOMAIN = "com.ep_core"

# Positional `activation_params` in onnxruntime's order, by activation.
_PARAM_NAMES = {"Clip": ("min", "max"), "LeakyRelu": ("alpha",), "HardSigmoid": ("alpha", "beta"),
                "Elu": ("alpha",)}


class _Activated(Kernel):
    """Parses `activation` / `activation_params` once."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        act = self.attr("activation") or None
        if act is not None and act not in ACTIVATIONS:
            raise ValueError(f"unsupported fused activation {act!r}; known: {sorted(ACTIVATIONS)}")
        self.act = act
        params = [float(p) for p in (self.attr("activation_params") or [])]
        self.params = dict(zip(_PARAM_NAMES.get(act, ()), params))

    def activate(self, y: np.ndarray) -> np.ndarray:
        """Apply the activation in place on a writable float array."""
        if self.act is not None:
            ACTIVATIONS[self.act](y, self.params)
        return y


@kernel("FusedConv", domain=MS)
@kernel("FusedConv", domain=DOMAIN)
class FusedConv(_Activated):
    """act(Conv(X, W, B) + Z): Conv attributes plus `activation`, `activation_params`."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.conv = ConvAttributes.from_node(node)
        prepare_constant_weight(self)   # a constant weight's Winograd transform, once

    def compute(self, x, w, b=None, z=None):
        call = ready_conv(self, x, b, z) if z is None or z.dtype == np.float32 else None
        if call is not None:
            return call(x, z)
        cdt = compute_dtype(x.dtype)
        # Residual and activation ride in the GEMM epilogue (applied per output tile while hot).
        y = run_conv(self, x, w, b, cdt, residual=None if z is None else z.astype(cdt, copy=False),
                     activation=self.act, activation_params=self.params)
        return y.astype(x.dtype, copy=False)


@kernel("FusedGemm", domain=DOMAIN)
class FusedGemm(_Activated):
    """act(alpha * op(A) @ op(B) + beta * C): Gemm attributes plus the activation."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha, self.beta, self.trans_a, self.trans_b = GemmAttributes.from_node(node)
        self.packed_b = pack_constant(ctx.constant_input(1), self.trans_b)  # constant B only

    def compute(self, a, b, c=None):
        if self.packed_b is not None:
            y = gemm(a, self.packed_b, c, self.act, activation_params=self.params,
                     alpha=self.alpha, beta=self.beta, trans_a=self.trans_a)
        else:
            y = gemm(a, b, c, self.act, activation_params=self.params, alpha=self.alpha,
                     beta=self.beta, trans_a=self.trans_a, trans_b=self.trans_b)
        return y.astype(np.result_type(a.dtype, b.dtype), copy=False)


@kernel("FusedMatMul", domain=DOMAIN)
class FusedMatMul(_Activated):
    """act(A @ B + bias): A (..., K), B a (K, N) matrix, bias (N,) optional, plus the activation.

    Leading axes of A fold into GEMM rows, so bias and activation run in gemm's per-tile epilogue.
    """

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.packed_b = pack_matmul_b(ctx.constant_input(1))  # constant B only

    def compute(self, a, b, bias=None):
        bm = b if self.packed_b is None else self.packed_b
        if a.ndim == 1:  # MatMul semantics: a vector times a matrix is a vector
            y = gemm(a[None, :], bm, bias, self.act, activation_params=self.params)[0]
        else:
            y = gemm(a, bm, bias, self.act, activation_params=self.params)
        return y.astype(np.result_type(a.dtype, b.dtype), copy=False)


@kernel("FusedAdd", domain=DOMAIN)
class FusedAdd(_Activated):
    """act(A + B) with numpy broadcasting."""

    def compute(self, a, b):
        dt = np.result_type(a.dtype, b.dtype)
        cdt = compute_dtype(dt)
        y = np.add(a, b, dtype=cdt)
        return self.activate(y).astype(dt, copy=False)


def _gelu(x: np.ndarray) -> np.ndarray:
    cdt = compute_dtype(x.dtype)
    if cdt == np.float32:
        # Chunked in-place Gelu with fast_erf (|error| < 1e-6): ~5x faster than scipy's erf.
        y = np.array(x, dtype=np.float32, order="C", copy=True)
        ACTIVATIONS["Gelu"](y.reshape(-1), {})  # 1-D view: 0-d would yield scalars
        return y.astype(x.dtype, copy=False)
    xf = x.astype(cdt)  # float64: exact erf
    s = xf * cdt.type(1.0 / math.sqrt(2.0))
    s = _erf(s).astype(cdt, copy=False)
    s += 1
    s *= xf
    s *= 0.5
    return s.astype(x.dtype, copy=False)


def _fast_gelu(x: np.ndarray) -> np.ndarray:
    cdt = compute_dtype(x.dtype)
    xf = x.astype(cdt)
    s = xf * xf
    s *= cdt.type(0.044715)
    s += 1
    s *= xf
    s *= cdt.type(math.sqrt(2.0 / math.pi))
    np.tanh(s, out=s)
    s += 1
    s *= xf
    s *= 0.5
    return s.astype(x.dtype, copy=False)


@kernel("Gelu", domain=MS)
@kernel("Gelu", domain=DOMAIN)
class Gelu(Kernel):
    """0.5 * x * (1 + erf(x / sqrt(2)))."""

    def compute(self, x):
        return _gelu(x)


@kernel("FastGelu", domain=MS)
@kernel("FastGelu", domain=DOMAIN)
class FastGelu(Kernel):
    """Tanh approximation of Gelu, with an optional bias added first (onnxruntime's FastGelu)."""

    def compute(self, x, bias=None):
        if bias is not None:
            x = (x + bias).astype(x.dtype, copy=False)
        return _fast_gelu(x)


@kernel("LayerNormalization", domain=DOMAIN)
class LayerNormalization(_OnnxLayerNormalization):
    """ONNX LayerNormalization for models whose opset predates it (< 17)."""


@kernel("SkipLayerNormalization", domain=MS)
@kernel("SkipLayerNormalization", domain=DOMAIN)
class SkipLayerNormalization(Kernel):
    """LayerNorm(input + skip + bias) over the last axis; skip may also be (1, S, H) or (S, H).

    Outputs: output, mean (optional), inv_std_var (optional), input_skip_bias_sum (optional).
    `simplified` (SkipSimplifiedLayerNormalization): RMS normalization, no mean removed, no beta
    (the mean output is then zeros, as onnxruntime writes it).
    """
    simplified = False

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.eps = float(self.attr("epsilon", 1e-12))
        self.n_out = len(node.outputs)

    @staticmethod
    def _compiled_rows(x, skip, gamma, beta, bias, hid: int) -> bool:
        """Up to norm_jit.MAX_ROWS rows, float32, C-contiguous, skip shaped as x or as its last
        two axes (a broadcast over the batch), gamma/beta/bias (H,): the compiled rows apply."""
        f32 = np.float32
        return bool(hid and x.size and x.size <= norm_jit.MAX_ROWS * hid
                    and x.dtype == f32 and skip.dtype == f32 and gamma.dtype == f32
                    and (skip.shape == x.shape
                         or (2 <= skip.ndim <= x.ndim and skip.shape[-2:] == x.shape[-2:]
                             and all(d == 1 for d in skip.shape[:-2])))
                    and gamma.shape == (hid,)
                    and all(v is None or (v.dtype == f32 and v.shape == (hid,)) for v in (beta, bias))
                    and x.flags.c_contiguous and skip.flags.c_contiguous
                    and jit_tier.ready("norm", norm_jit.compile_kernels))

    def compute(self, x, skip, gamma, beta=None, bias=None):
        if self.simplified:  # inputs: input, skip, gamma, bias
            beta, bias = None, beta
        hid = x.shape[-1] if x.ndim >= 2 else 0
        if self._compiled_rows(x, skip, gamma, beta, bias, hid):
            # one compiled pass over the rows (`ep_cpu.norm_jit`)
            y, mean, inv, total = norm_jit.skip_layer_norm(
                x.reshape(-1, hid), skip.reshape(-1, hid), gamma, beta, bias, self.eps,
                self.simplified, self.n_out > 3)
            lead = x.shape[:-1] + (1,)
            outs = [y.reshape(x.shape), mean.reshape(lead), inv.reshape(lead),
                    None if total is None else total.reshape(x.shape)]
            return outs[0] if self.n_out == 1 else tuple(outs[:self.n_out])
        # Few, raw ufunc calls: in a decoder step this runs on one 768-vector per layer, where
        # numpy's call overhead (mean()'s Python wrapper, temporaries) is the whole cost.
        cdt = compute_dtype(x.dtype)
        s = np.add(x, skip, dtype=cdt)
        if bias is not None:
            np.add(s, bias, out=s, dtype=cdt)
        total = s.copy() if self.n_out > 3 else None
        typ = cdt.type
        scale = typ(1.0 / s.shape[-1])
        if self.simplified:
            mean = np.zeros(s.shape[:-1] + (1,), dtype=cdt)
        else:
            mean = np.add.reduce(s, axis=-1, keepdims=True)
            mean *= scale
            s -= mean
        sq = np.multiply(s, s)
        inv = np.add.reduce(sq, axis=-1, keepdims=True)
        inv *= scale
        inv += typ(self.eps)
        np.sqrt(inv, out=inv)
        np.reciprocal(inv, out=inv)
        s *= inv
        np.multiply(s, gamma, out=s, dtype=cdt)
        if beta is not None:
            np.add(s, beta, out=s, dtype=cdt)
        if self.n_out == 1:
            return s.astype(x.dtype, copy=False)
        outs = [s.astype(x.dtype, copy=False), mean.astype(np.float32), inv.astype(np.float32),
                None if total is None else total.astype(x.dtype, copy=False)]
        return tuple(outs[:self.n_out])


@kernel("Attention", domain=DOMAIN)
class Attention(_MsAttention):
    """Multi-head self-attention of a BERT layer (before the output projection).

    Inputs: X (B, S, H), W (H, 3H) = [Wq | Wk | Wv], bias (3H), optional additive mask
    broadcastable to (B, num_heads, S, S). Attributes: num_heads, scale (0: 1/sqrt(head size)).
    Output: (B, S, H) = concat over heads of softmax(Q K^T * scale + mask) V. This is
    com.microsoft::Attention with the mask as its attention_bias (sixth input), where onnxruntime
    accepts only (B|1, N|1, S, T) shapes.
    """

    def compute(self, x, w, bias, mask=None):
        return super().compute(x, w, bias, None, None, mask)

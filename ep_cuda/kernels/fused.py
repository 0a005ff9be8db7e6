"""CUDA versions of the fused ops the graph optimizer creates (domain `com.ep_core`; semantics of
ep_cpu/kernels/fused.py). They are compositions of this provider's kernels; the activation runs
in place on the freshly computed result. Having them lets the optimizer fuse nodes the CUDA
provider runs (a fusion only happens where the original node's provider has the fused kernel)."""
from __future__ import annotations

import math

import numpy as np

from ep_core.op_attributes import NormAttributes, float_attr, int_attr, invalid

from ..launch import FLOATS, CudaKernel, ctype, elem_strides, empty, f32, i64
from ..registry import kernel
from .activation import activation
from .conv import Conv
from .elementwise import U_CLIP, binary, cast, unary
from .gemm import Gemm, batched_gemm
from .norm import LayerNormalization as OnnxLayerNormalization
from .norm import _row_launch, fp32_param
from .softmax import softmax

DOMAIN = "com.ep_core"
MS = "com.microsoft"   # onnxruntime's contrib ops with the same semantics as ours
B_ADD = 0
# fused activation name -> (code in activation.cu, parameter names in activation_params order)
FUSED_ACTIVATIONS = {
    "Relu": (0, ()), "LeakyRelu": (1, ("alpha",)), "Sigmoid": (2, ()),
    "HardSigmoid": (3, ("alpha", "beta")), "Tanh": (4, ()), "Elu": (5, ("alpha",)),
    "Gelu": (8, ()), "FastGelu": (9, ()), "HardSwish": (13, ()), "Silu": (16, ()),
    "Clip": (17, ("min", "max")),
}
_DEFAULTS = {("LeakyRelu", "alpha"): 0.01, ("HardSigmoid", "alpha"): 0.2,
             ("HardSigmoid", "beta"): 0.5, ("Elu", "alpha"): 1.0,
             ("Clip", "min"): -math.inf, ("Clip", "max"): math.inf}


def float_input(node) -> bool:
    """Our domain has no ONNX schema, so the registry cannot check `types`: do it here."""
    from ep_core.types import tensor_dtype
    dt = tensor_dtype(node.input_types[0]) if node.input_types else None
    return dt is not None and dt in {np.dtype(t) for t in FLOATS}


class _Fused(CudaKernel):
    @classmethod
    def supports(cls, node) -> bool:
        return float_input(node)


class _Activated:
    """Parses `activation` / `activation_params` once; applies the activation in place."""

    @classmethod
    def supports(cls, node) -> bool:
        act = node.attrs.get("activation") or None
        return float_input(node) and (act is None or act in FUSED_ACTIVATIONS)

    def _parse(self) -> None:
        act = self.attr("activation") or None
        self.act = act
        names = FUSED_ACTIVATIONS[act][1] if act else ()
        given = [float(p) for p in (self.attr("activation_params") or [])]
        self.params = [given[k] if k < len(given) else _DEFAULTS.get((act, n), 0.0)
                       for k, n in enumerate(names)] + [0.0, 0.0]

    @property
    def act_code(self) -> int:
        """Activation code of kernels_cu/act.cuh for the GEMM/conv epilogues (-1: none)."""
        return -1 if self.act is None else FUSED_ACTIVATIONS[self.act][0]

    def activate(self, y):
        if self.act is None or y.size == 0:
            return y
        code = FUSED_ACTIVATIONS[self.act][0]
        if self.act == "Clip":
            return unary(U_CLIP, y, y.dtype, self.params[0], self.params[1], out=y)
        return activation(code, y, self.params[0], self.params[1], out=y)


@kernel("FusedConv", domain=MS, types={"T": FLOATS})
@kernel("FusedConv", domain=DOMAIN, types={"T": FLOATS})
class FusedConv(_Activated, Conv):
    """act(Conv(X, W, B) + Z)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self._parse()

    @classmethod
    def supports(cls, node) -> bool:
        return _Activated.supports(node) and Conv.supports(node)  # activation, dtype, rank

    def forward(self, x, w, b=None, z=None):
        # bias, residual and activation run in the convolution's epilogue
        return self.run(x, w, b, z, self.act_code, self.params[0], self.params[1])


@kernel("FusedGemm", domain=DOMAIN, types={"T": FLOATS})
class FusedGemm(_Activated, Gemm):
    """act(alpha * op(A) @ op(B) + beta * C)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self._parse()

    def forward(self, a, b, c=None):
        return self.gemm(a, b, c, self.act_code, self.params[0], self.params[1])


@kernel("FusedAdd", domain=DOMAIN, types={"T": FLOATS})
class FusedAdd(_Activated, _Fused):
    """act(A + B) with numpy broadcasting."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self._parse()

    def forward(self, a, b):
        return self.activate(binary(B_ADD, a, b, a.dtype))


@kernel(["Gelu", "FastGelu"], domain=MS, types={"T": FLOATS})
@kernel(["Gelu", "FastGelu"], domain=DOMAIN, types={"T": FLOATS})
class GeluFused(_Fused):
    """Gelu (erf) and FastGelu (tanh approximation, optional bias added first)."""

    def forward(self, x, bias=None):
        if bias is not None:
            x = binary(B_ADD, x, bias, x.dtype)
        code = FUSED_ACTIVATIONS[self.node.op_type][0]
        return activation(code, x)


@kernel("LayerNormalization", domain=DOMAIN, types={"T": FLOATS})
class LayerNormalizationFused(OnnxLayerNormalization):
    """ONNX LayerNormalization for models whose opset predates it (< 17)."""

    @classmethod
    def supports(cls, node) -> bool:
        return float_input(node) and OnnxLayerNormalization.supports(node)


@kernel("SkipLayerNormalization", domain=MS, types={"T": FLOATS})
@kernel("SkipLayerNormalization", domain=DOMAIN, types={"T": FLOATS})
class SkipLayerNormalization(_Fused):
    """LayerNorm(input + skip + bias) over the last axis.
    Outputs: output, mean, inv_std_var (float32), input_skip_bias_sum (all but the first optional)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        # No ONNX schema: epsilon defaults to 1e-12, as onnxruntime's SkipLayerNormalization.
        self.eps = NormAttributes.from_node(node, epsilon=1e-12).epsilon

    def forward(self, x, skip, gamma, beta=None, bias=None):
        L = x.shape[-1] if x.ndim else 0
        if (L and tuple(skip.shape) == tuple(x.shape) and x.flags.c_contiguous
                and skip.flags.c_contiguous and skip.dtype == x.dtype
                and (bias is None or (tuple(bias.shape) == (L,) and bias.flags.c_contiguous))):
            return self._one_kernel(x, skip, gamma, beta, bias, L)
        s = binary(B_ADD, x, skip, x.dtype)
        if bias is not None:
            binary(B_ADD, s, bias, s.dtype, out=s)
        L = s.shape[-1]
        rows = s.size // L if L else 0
        y = empty(s.shape, s.dtype)
        stat_shape = tuple(s.shape[:-1]) + (1,)
        mean, inv = empty(stat_shape, np.float32), empty(stat_shape, np.float32)
        if rows:
            g = fp32_param(gamma, (L,))
            b = fp32_param(beta, (L,)) if beta is not None else None
            _row_launch(f"layernorm_k<{ctype(s.dtype)}>", rows, L,
                        (s, g, b, y, mean, inv, i64(rows), i64(L), f32(self.eps)))
        outs = (y, mean, inv, s)
        n_out = len(self.node.outputs)
        return outs[:n_out] if n_out > 1 else y


    def _one_kernel(self, x, skip, gamma, beta, bias, L):
        n_out = len(self.node.outputs)
        want_sum = n_out > 3 and bool(self.node.outputs[3])
        rows = x.size // L
        y = empty(x.shape, x.dtype)
        total = empty(x.shape, x.dtype) if want_sum else None
        stat_shape = tuple(x.shape[:-1]) + (1,)
        mean, inv = empty(stat_shape, np.float32), empty(stat_shape, np.float32)
        if rows:
            g = fp32_param(gamma, (L,))
            b = fp32_param(beta, (L,)) if beta is not None else None
            _row_launch(f"skip_layernorm_k<{ctype(x.dtype)}>", rows, L,
                        (x, skip, bias, g, b, y, total, mean, inv, i64(rows), i64(L),
                         f32(self.eps)))
        outs = (y, mean, inv, total)
        return outs[:n_out] if n_out > 1 else y


@kernel("Attention", domain=DOMAIN, types={"T": FLOATS})
class Attention(_Fused):
    """Multi-head self-attention (before the output projection), as the CPU kernel:
    X (B, S, H), W (H, 3H) = [Wq | Wk | Wv], bias (3H), optional additive mask broadcastable to
    (B, heads, S, S); attributes num_heads, scale (0: 1/sqrt(head size)). Q, K^T and V are read
    straight out of the packed QKV projection through strides: no split or transpose copies."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.heads = int_attr(node, "num_heads", minimum=1)
        if self.heads is None:
            raise invalid(node, "required attribute 'num_heads' is missing")
        self.scale = float_attr(node, "scale", 0.0)   # no ONNX schema; 0: 1/sqrt(head size)

    def forward(self, x, w, bias, mask=None):
        B, S, _ = x.shape
        hidden = w.shape[1] // 3
        heads = self.heads
        hd = hidden // heads
        scale = self.scale or 1.0 / math.sqrt(hd)
        qkv = batched_gemm([B, S, x.shape[2]], list(elem_strides(x)), list(w.shape),
                           list(elem_strides(w)), x, w, bias)            # (B, S, 3H) contiguous
        if qkv.size == 0:
            return empty((B, S, hidden), x.dtype)
        row = 3 * hidden
        q_view = (S * row, hd, row, 1)                                     # (B, heads, S, hd)
        kt_view = (S * row, hd, 1, row)                                    # (B, heads, hd, S)
        q, k, v = (qkv[:, :, j * hidden:(j + 1) * hidden] for j in range(3))
        mask = cast(mask, x.dtype) if mask is not None else None
        scores = batched_gemm([B, heads, S, hd], list(q_view), [B, heads, hd, S], list(kt_view),
                              q, k, mask, alpha=scale, beta=1.0)           # (B, heads, S, S)
        probs = softmax(scores, 3)
        y = empty((B, S, hidden), x.dtype)
        # the context GEMM writes (B, heads, S, hd) straight into (B, S, heads * hd)
        batched_gemm([B, heads, S, S], list(elem_strides(probs)), [B, heads, S, hd],
                     list(q_view), probs, v, out=y.reshape(B, S, heads, hd).transpose(0, 2, 1, 3))
        return y

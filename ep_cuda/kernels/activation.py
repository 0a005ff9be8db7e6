"""Activation functions (kernels_cu/activation.cu), float32 and float16 (fp32 math)."""
from __future__ import annotations


from .. import loader
from ..launch import (FLOATS, CudaKernel, broadcast_strides, collapse, contiguous_strides, ctype,
                      elem_strides, empty, f32, i64, launch, strided)
from ..registry import kernel

# op -> (code in activation.cu, since, ((attr, default) for p0, (attr, default) for p1))
ACTIVATIONS = {
    "Relu": (0, 6, ()), "LeakyRelu": (1, 6, (("alpha", 0.01),)), "Sigmoid": (2, 6, ()),
    "HardSigmoid": (3, 6, (("alpha", 0.2), ("beta", 0.5))), "Tanh": (4, 6, ()),
    "Elu": (5, 6, (("alpha", 1.0),)),
    "Selu": (6, 6, (("alpha", 1.67326319217681884765625), ("gamma", 1.05070102214813232421875))),
    "Celu": (7, 12, (("alpha", 1.0),)), "Gelu": (8, 20, ()), "Erf": (10, 9, ()),
    "Softplus": (11, 1, ()), "Softsign": (12, 1, ()), "HardSwish": (13, 14, ()), "Mish": (14, 18, ()),
    "ThresholdedRelu": (15, 10, (("alpha", 1.0),)),
}
A_GELU_TANH, A_SILU = 9, 16
_CODES = sorted({c for c, _, _ in ACTIVATIONS.values()} | {A_GELU_TANH, A_SILU})
loader.declare("activation", [f"act_k<{c}, {ctype(t)}>" for c in _CODES for t in FLOATS]
               + [f"prelu_k<{ctype(t)}>" for t in FLOATS])


def activation(code: int, x, p0: float = 0.0, p1: float = 0.0, out=None):
    """y = act(x) for any strided x; a new contiguous array of x's dtype, or `out` (which may be
    x itself: every element is read and written by the same thread)."""
    y = empty(x.shape, x.dtype) if out is None else out
    if y.size == 0:
        return y
    cshape, sts = collapse(x.shape, [elem_strides(x), list(elem_strides(y))])
    launch("activation", f"act_k<{code}, {ctype(x.dtype)}>", y.size,
           (x, y, i64(y.size), f32(p0), f32(p1), strided(cshape, sts)))
    return y


class Activation(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        code, _, params = ACTIVATIONS[node.op_type]
        if node.op_type == "Gelu" and self.attr("approximate", "none") == "tanh":
            code = A_GELU_TANH
        self.code = code
        vals = [float(self.attr(name, default)) for name, default in params] + [0.0, 0.0]
        self.p0, self.p1 = vals[0], vals[1]

    def forward(self, x):
        return activation(self.code, x, self.p0, self.p1)


for _name, (_code, _since, _params) in ACTIVATIONS.items():
    kernel(_name, since=_since, types={"T": FLOATS})(Activation)


@kernel("PRelu", since=7, types={"T": FLOATS})
class PRelu(CudaKernel):
    """slope is unidirectionally broadcast to X's shape."""

    def forward(self, x, slope):
        y = empty(x.shape, x.dtype)
        if y.size == 0:
            return y
        if slope.dtype != x.dtype:
            raise TypeError(f"PRelu slope dtype {slope.dtype} differs from X dtype {x.dtype}")
        sts = [elem_strides(x), broadcast_strides(slope.shape, elem_strides(slope), x.shape),
               contiguous_strides(x.shape)]
        cshape, sts = collapse(x.shape, sts)
        launch("activation", f"prelu_k<{ctype(x.dtype)}>", y.size,
               (x, slope, y, i64(y.size), strided(cshape, sts)))
        return y

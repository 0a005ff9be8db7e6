"""Type (and, where the rule is simple, shape) inference for onnxruntime's `com.microsoft` ops,
run inside onnx's own shape inference by the load stage.

onnx has no schemas for that domain, so its inference leaves their outputs untyped, and every
ONNX op downstream of them too. `registered(model)` registers, for the duration of one
inference call, a permissive schema for each op of `RULES` the model uses: any number of inputs
and outputs of any type (so strict mode and check_type never refuse them), no attributes
declared, and a Python inference function applying the op's rule. On leaving, they are
deregistered: onnx.checker calls outside that window (the load stage's own, and a user's) see
no com.microsoft schema. Registration is process-wide, so the window is taken under `LOCK`; the
load stage runs its checker under the same lock. Ops that already have a schema (a user's, e.g.
through `ep_core.register_custom_op`) are left alone.

A rule that cannot decide (an input untyped, an attribute it cannot read) leaves that output
untyped; the op types that did so are reported in `Window.undecided` (downstream ONNX ops then
fail strict inference, and the caller infers again without those schemas).

`RULES` maps op type -> one rule per output. A rule is a function of the node's view
(`NodeView`) returning a TypeProto or None:
- `like(j)`: the type and shape of input j;
- `elem_of(j, ...)`: the element type of input j (the first present of several), no shape;
- `fixed(t)`: element type t; both take `shape=` (a function of the view giving dims);
- `first(a, b)`: rule a, else rule b; `when_input(j, a, b)`: rule a when input j is given.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, TypeProto, numpy_helper
from onnx.defs import OpSchema

from .graph_edit import MS_DOMAIN

LOCK = threading.RLock()   # held while our schemas are registered, and around the load's checker

F32, I32, U32, U8, STR = (TensorProto.FLOAT, TensorProto.INT32, TensorProto.UINT32,
                          TensorProto.UINT8, TensorProto.STRING)

Dim = Optional[object]     # an int (dim_value), a str (dim_param) or None (unknown)


class NodeView:
    """What a rule reads of a node during inference: input types, shapes, attributes, constants."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.n_in = ctx.get_num_inputs()

    def has(self, j: int) -> bool:
        return j < self.n_in and self.ctx.has_input(j)

    def type(self, j: int) -> TypeProto | None:
        """Input j's tensor type, or None when absent, untyped or not a tensor."""
        if not self.has(j):
            return None
        t = self.ctx.get_input_type(j)
        if t is None or t.WhichOneof("value") != "tensor_type" or not t.tensor_type.elem_type:
            return None
        return t

    def elem(self, j: int) -> int | None:
        t = self.type(j)
        return None if t is None else t.tensor_type.elem_type

    def dims(self, j: int) -> list[Dim] | None:
        """Input j's dims (int, str or None each), or None when its rank is unknown."""
        t = self.type(j)
        if t is None or not t.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param")
                else None for d in t.tensor_type.shape.dim]

    def attr(self, name: str, default=None):
        a = self.ctx.get_attribute(name)
        return default if a is None else onnx.helper.get_attribute_value(a)

    def constant(self, j: int) -> np.ndarray | None:
        """Input j's value when it is an initializer or a Constant's output."""
        if not self.has(j):
            return None
        data = self.ctx.get_input_data(j)
        return None if data is None else numpy_helper.to_array(data)


Rule = Callable[[NodeView], Optional[TypeProto]]
ShapeFn = Callable[[NodeView], Optional[Sequence[Dim]]]


def _tensor(elem: int | None, dims: Sequence[Dim] | None = None) -> TypeProto | None:
    if not elem:
        return None
    t = TypeProto()
    t.tensor_type.elem_type = elem
    if dims is not None:
        shape = t.tensor_type.shape
        shape.SetInParent()
        for d in dims:
            dim = shape.dim.add()
            if isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0:
                dim.dim_value = int(d)
            elif isinstance(d, str) and d:
                dim.dim_param = d
    return t


def like(j: int) -> Rule:
    """Output has the type and shape of input j."""
    def rule(v: NodeView) -> TypeProto | None:
        return v.type(j)
    return rule


def elem_of(*inputs: int, shape: ShapeFn | None = None) -> Rule:
    """Output has the element type of the first present, typed input of `inputs`."""
    def rule(v: NodeView) -> TypeProto | None:
        elem = next((e for e in (v.elem(j) for j in inputs) if e), None)
        return _tensor(elem, shape(v) if shape else None)
    return rule


def fixed(elem: int, shape: ShapeFn | None = None) -> Rule:
    """Output has element type `elem` whatever the inputs."""
    def rule(v: NodeView) -> TypeProto | None:
        return _tensor(elem, shape(v) if shape else None)
    return rule


def first(*rules: Rule) -> Rule:
    def rule(v: NodeView) -> TypeProto | None:
        return next((t for t in (r(v) for r in rules) if t is not None), None)
    return rule


def when_input(j: int, then: Rule, otherwise: Rule) -> Rule:
    """`then` when input j is given, else `otherwise` (decided by presence, not by type)."""
    def rule(v: NodeView) -> TypeProto | None:
        return then(v) if v.has(j) else otherwise(v)
    return rule


# --- shapes -----------------------------------------------------------------------------------

def shape_of(j: int) -> ShapeFn:
    return lambda v: v.dims(j)


def _div(a: Dim, b: int) -> Dim:
    return a // b if isinstance(a, int) and b and a % b == 0 else None


def _mul(a: Dim, b: Dim) -> Dim:
    return a * b if isinstance(a, int) and isinstance(b, int) else None


def _stats(axis_default: int = -1) -> ShapeFn:
    """Mean / inv_std_var of a normalization over the axes from `axis` on: those dims set to 1."""
    def shape(v: NodeView):
        d = v.dims(0)
        if d is None:
            return None
        axis = int(v.attr("axis", axis_default))
        axis = axis + len(d) if axis < 0 else axis
        return d[:axis] + [1] * (len(d) - axis) if 0 <= axis <= len(d) else None
    return shape


def _half_last(v: NodeView):
    d = v.dims(0)
    return None if not d else d[:-1] + [_div(d[-1], 2)]


def _attention_out(v: NodeView):
    """Attention: (B, S, v_hidden), v_hidden from qkv_hidden_sizes or a third of the weights."""
    d = v.dims(0)
    if d is None or len(d) != 3:
        return None
    sizes = v.attr("qkv_hidden_sizes")
    if sizes:
        return d[:2] + [int(sizes[-1])]
    w = v.dims(1)
    return d[:2] + [_div(w[-1], 3) if w else None]


def _mha_out(v: NodeView):
    """MultiHeadAttention: (B, S, v_hidden) for a 3-D query and a 3-D or 4-D (B, N, L, hd) value."""
    q, val = v.dims(0), v.dims(2)
    if q is None or len(q) != 3 or val is None:
        return None
    if len(val) == 3:
        return q[:2] + [val[2]]
    if len(val) == 4:
        return q[:2] + [_mul(val[1], val[3])]
    return None


def _gqa_out(v: NodeView):
    """GroupQueryAttention: the query's shape with separate K/V; (B, S, N*hd) when packed."""
    q = v.dims(0)
    if q is None or len(q) != 3:
        return None
    if v.has(1):
        return q
    n, kv = int(v.attr("num_heads", 0)), int(v.attr("kv_num_heads", 0))
    return q[:2] + [_mul(_div(q[2], n + 2 * kv), n)]


def _embed_out(gamma: int) -> ShapeFn:
    """(B, S, hidden) from input_ids (B, S) and gamma (hidden,)."""
    def shape(v: NodeView):
        ids, g = v.dims(0), v.dims(gamma)
        if ids is None or len(ids) != 2:
            return None
        return ids + [g[0] if g and len(g) == 1 else None]
    return shape


def _batch(v: NodeView):
    ids = v.dims(0)
    return None if ids is None or len(ids) != 2 else ids[:1]


def _matmul_nbits_out(v: NodeView):
    a = v.dims(0)
    n = v.attr("N")
    return None if not a or n is None else a[:-1] + [int(n)]


def _cdist_out(v: NodeView):
    a, b = v.dims(0), v.dims(1)
    return None if not a or not b or len(a) != 2 or len(b) != 2 else [a[0], b[0]]


def _crop_out(v: NodeView):
    """(num_boxes, C, crop_height, crop_width); the crop size when it is a constant."""
    x, rois = v.dims(0), v.dims(1)
    if x is None or len(x) != 4 or rois is None:
        return None
    size = v.constant(3)
    hw = [int(s) for s in size.reshape(-1)] if size is not None and size.size == 2 else [None, None]
    return [rois[0], x[1]] + hw


def _expand_dims_out(v: NodeView):
    x, axis = v.dims(0), v.constant(1)
    if x is None or axis is None or axis.size != 1:
        return None
    a = int(axis.reshape(-1)[0])
    a = a + len(x) + 1 if a < 0 else a
    return x[:a] + [1] + x[a:] if 0 <= a <= len(x) else None


def _global_pool_out(v: NodeView):
    x = v.dims(0)
    if x is None or len(x) < 2:
        return None
    ones = [1] * (len(x) - 2)
    return [x[0]] + ones + [x[-1]] if int(v.attr("channels_last", 0)) else x[:2] + ones


def _tokens(v: NodeView):
    """Tokenizer: X ([C] or [N, C]) gains a last axis of tokens."""
    x = v.dims(0)
    return None if x is None or len(x) not in (1, 2) else x + [None]


def _int16_product(v: NodeView) -> TypeProto | None:
    """MatMulInteger16: int32, uint32 only when both operands are uint16."""
    a, b = v.elem(0), v.elem(1)
    if not a or not b:
        return None
    return _tensor(U32 if a == b == TensorProto.UINT16 else I32)


def _stash(v: NodeView) -> TypeProto | None:
    """Statistics of LayerNormalization / SimplifiedLayerNormalization: `stash_type` (float)."""
    return _tensor(int(v.attr("stash_type", F32)), _stats()(v))


def _murmur(v: NodeView) -> TypeProto | None:
    return _tensor(U32 if int(v.attr("positive", 1)) else I32, v.dims(0))


# --- the rules, one row per op: a rule per output, in output order ------------------------------

_SAME = (like(0),)
_LAYER_NORM = (like(0), fixed(F32, _stats()), fixed(F32, _stats()), like(0))  # + input_skip_bias_sum
_QLINEAR_UNARY = (elem_of(4, 0, shape=shape_of(0)),)          # X, X_scale, X_zp, Y_scale, Y_zp

RULES: dict[str, tuple[Rule, ...]] = {
    # element-wise
    "Gelu": _SAME, "FastGelu": _SAME, "BiasGelu": _SAME, "QuickGelu": _SAME, "BiasAdd": _SAME,
    "BiasSoftmax": _SAME, "Inverse": _SAME, "RotaryEmbedding": _SAME, "GroupNorm": _SAME,
    "BiasSplitGelu": (elem_of(0, shape=_half_last),),
    # normalizations: output, mean, inv_std_var (float32), input_skip_bias_sum
    "SkipLayerNormalization": _LAYER_NORM,
    "SkipSimplifiedLayerNormalization": _LAYER_NORM,
    # onnxruntime's ONNX-domain ops (load_lenient.hide_onnx_domain_contrib moves them here)
    "LayerNormalization": (like(0), _stash, _stash),
    "SimplifiedLayerNormalization": (elem_of(1, 0, shape=shape_of(0)), _stash),    # Y: scale's type
    "EmbedLayerNormalization": (elem_of(2, 5, shape=_embed_out(5)), fixed(I32, _batch),
                                elem_of(2, 5, shape=_embed_out(5))),
    "QEmbedLayerNormalization": (fixed(F32, _embed_out(5)), fixed(I32, _batch)),
    # attention: output, present (K/V) ..., qk
    "Attention": (elem_of(0, shape=_attention_out), elem_of(0)),
    "QAttention": (elem_of(2, shape=_attention_out), elem_of(2)),
    "MultiHeadAttention": (elem_of(0, shape=_mha_out), elem_of(0), elem_of(0), elem_of(0)),
    "GroupQueryAttention": (elem_of(0, shape=_gqa_out), elem_of(3, 0), elem_of(4, 0), elem_of(0)),
    # fused linear algebra (shapes: ONNX Conv/Gemm/MatMul rules, not repeated here)
    "FusedConv": (elem_of(0),), "FusedGemm": (elem_of(0),), "FusedMatMul": (elem_of(0),),
    "NhwcConv": (elem_of(0),), "CropAndResize": (elem_of(0, shape=_crop_out),),
    "CDist": (elem_of(0, shape=_cdist_out),), "ExpandDims": (elem_of(0, shape=_expand_dims_out),),
    # quantized
    "DynamicQuantizeMatMul": (first(elem_of(2), fixed(F32)),),   # b_scale's type
    "MatMulIntegerToFloat": (elem_of(2),),                       # a_scale's type
    "MatMulInteger16": (_int16_product,),
    "MatMulNBits": (elem_of(0, shape=_matmul_nbits_out),),
    "GatherBlockQuantized": (elem_of(2),),                       # scales' type
    "QGemm": (when_input(7, elem_of(8), fixed(F32)),),          # quantized when y_scale is given
    "QuantizeLinear": (first(elem_of(2, shape=shape_of(0)), fixed(U8, shape_of(0))),),
    "DequantizeLinear": (elem_of(1, shape=shape_of(0)),),        # x_scale's type
    "DynamicQuantizeLSTM": (elem_of(0), elem_of(0), elem_of(0)),
    "QLinearAdd": (elem_of(7, 0),), "QLinearMul": (elem_of(7, 0),),   # C_zero_point's type
    "QLinearSigmoid": _QLINEAR_UNARY, "QLinearLeakyRelu": _QLINEAR_UNARY,
    "QLinearSoftmax": _QLINEAR_UNARY,
    "QLinearGlobalAveragePool": (elem_of(4, 0, shape=_global_pool_out),),
    "QLinearAveragePool": (elem_of(4, 0),),
    "QLinearConcat": (elem_of(1, 2),),                           # Y_zero_point's type
    # text and hashing
    "WordConvEmbedding": (first(elem_of(1), fixed(F32)),),
    "MurmurHash3": (_murmur,),
    "Tokenizer": (fixed(STR, _tokens),),
}


# --- registration -----------------------------------------------------------------------------

class Window:
    """One registration window: the op types registered, and those whose rule left an output
    untyped."""

    def __init__(self) -> None:
        self.registered: set[str] = set()
        self.undecided: set[str] = set()


_current: Window | None = None   # the open window (one at a time, under LOCK)
_schemas: dict[str, OpSchema] = {}   # built once per op type, registered per window
_types: list[str] = []


def _infer(op_type: str, rules: tuple[Rule, ...]) -> Callable:
    def infer(ctx) -> None:
        try:
            view = NodeView(ctx)
            for k in range(min(len(rules), ctx.get_num_outputs())):
                if not ctx.has_output(k):
                    continue
                t = rules[k](view)
                if t is None:
                    _note_undecided(op_type)
                else:
                    ctx.set_output_type(k, t)
        except Exception:   # never refuse a model over a rule: the output stays untyped
            _note_undecided(op_type)
    return infer


def _note_undecided(op_type: str) -> None:
    if _current is not None:
        _current.undecided.add(op_type)


_ANY = "ContribAny"   # a name no kernel def's type constraint uses (KernelRegistry.lookup)


def _all_types() -> list[str]:
    return sorted({t for s in onnx.defs.get_all_schemas_with_history()
                   for c in s.type_constraints for t in c.allowed_type_strs})


def _schema(op_type: str) -> OpSchema:
    found = _schemas.get(op_type)
    if found is None:
        variadic = OpSchema.FormalParameterOption.Variadic
        if not _types:
            _types.extend(_all_types())
        found = OpSchema(op_type, MS_DOMAIN, 1,
                         "onnxruntime contrib op (ep_core's inference rule, load-time only)",
                         inputs=[OpSchema.FormalParameter("inputs", _ANY, param_option=variadic,
                                                          is_homogeneous=False, min_arity=0)],
                         outputs=[OpSchema.FormalParameter("outputs", _ANY, param_option=variadic,
                                                           is_homogeneous=False, min_arity=0)],
                         type_constraints=[(_ANY, _types, "any type")])
        found.set_type_and_shape_inference_function(_infer(op_type, RULES[op_type]))
        _schemas[op_type] = found
    return found


def used_ops(model: onnx.ModelProto) -> set[str]:
    """The op types of `RULES` the model uses in com.microsoft (every graph)."""
    found: set[str] = set()
    stack = [model.graph]
    while stack:
        g = stack.pop()
        for n in g.node:
            if n.domain == MS_DOMAIN and n.op_type in RULES:
                found.add(n.op_type)
            for a in n.attribute:
                if a.HasField("g"):
                    stack.append(a.g)
                stack.extend(a.graphs)
    return found


def _has_schema(op_type: str) -> bool:
    try:
        onnx.defs.get_schema(op_type, MS_DOMAIN)
        return True
    except onnx.defs.SchemaError:
        return False


@contextlib.contextmanager
def registered(model: onnx.ModelProto, skip: set[str] = frozenset()) -> Iterator[Window]:
    """Schemas for the ops of `RULES` that `model` uses (but `skip`) registered with onnx for
    the duration of the block, under `LOCK`."""
    global _current
    with LOCK:
        window = Window()
        try:
            if hasattr(onnx.defs, "register_schema"):
                for op in sorted(used_ops(model) - set(skip)):
                    if _has_schema(op):   # someone else's schema: not ours to replace or remove
                        continue
                    try:
                        onnx.defs.register_schema(_schema(op))
                    except Exception:   # an onnx that refuses it: that op stays untyped
                        continue
                    window.registered.add(op)
            _current = window
            yield window
        finally:
            _current = None
            for op in window.registered:
                onnx.defs.deregister_schema(op, 1, MS_DOMAIN)

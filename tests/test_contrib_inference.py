"""The load stage types onnxruntime's com.microsoft ops (ep_core/contrib_schemas.py): one
inference pass types the whole graph, ONNX ops after contrib ops included, with the types
onnxruntime infers; the schemas exist only while our inference runs."""
from __future__ import annotations

import threading
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ep_core
from ep_core import contrib_schemas
from ep_core.load import load
from test_contrib_common import node_model, ort
from test_contrib_models import SMALL, bert_small, quantization  # noqa: F401 (fixture)

MS = "com.microsoft"
F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16


def _model(nodes, inputs, outputs, inits=(), opset=17, value_info=()):
    vi = lambda s: helper.make_tensor_value_info(*s)  # noqa: E731
    g = helper.make_graph(nodes, "m", [vi(i) for i in inputs],
                          [vi(o) if isinstance(o, tuple) else onnx.ValueInfoProto(name=o) for o in outputs],
                          initializer=[numpy_helper.from_array(v, k) for k, v in inits],
                          value_info=[vi(v) for v in value_info])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])


def _load(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load(model).graph


def _typed(graph, name):
    """(elem_type, dims) of a value; dims None when the rank is unknown, a dim None when unknown."""
    t = graph.type_of(name)
    if t is None or not t.tensor_type.elem_type:
        return None
    tt = t.tensor_type
    dims = ([d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            if tt.HasField("shape") else None)
    return tt.elem_type, dims


def _has_ms_schema(op: str) -> bool:
    try:
        onnx.defs.get_schema(op, MS)
        return True
    except onnx.defs.SchemaError:
        return False


def _chain(dt=F32):
    """Gelu -> FastGelu (bias) -> Add -> SkipLayerNormalization (+ mean) -> MatMul -> BiasGelu
    -> Softmax, every intermediate value undeclared."""
    np_dt = helper.tensor_dtype_to_np_dtype(dt)
    nodes = [helper.make_node("Gelu", ["x"], ["g"], domain=MS),
             helper.make_node("FastGelu", ["g", "bias"], ["f"], domain=MS),
             helper.make_node("Add", ["f", "x"], ["a"]),
             helper.make_node("SkipLayerNormalization", ["a", "x", "gamma", "beta"], ["n", "mean"],
                              domain=MS),
             helper.make_node("MatMul", ["n", "w"], ["mm"]),
             helper.make_node("BiasGelu", ["mm", "b2"], ["bg"], domain=MS),
             helper.make_node("Softmax", ["bg"], ["y"])]
    r = np.random.default_rng(0)
    inits = [(k, r.standard_normal(s).astype(np_dt)) for k, s in
             (("bias", (8,)), ("gamma", (8,)), ("beta", (8,)), ("w", (8, 16)), ("b2", (16,)))]
    return _model(nodes, [("x", dt, ["batch", 5, 8])], ["y", "mean"], inits)


@pytest.mark.parametrize("dt", [F32, F16])
def test_chain_of_contrib_and_onnx_ops_is_typed_end_to_end(dt):
    g = _load(_chain(dt))
    want = {"g": (dt, [None, 5, 8]), "f": (dt, [None, 5, 8]), "a": (dt, [None, 5, 8]),
            "n": (dt, [None, 5, 8]), "mean": (F32, [None, 5, 1]), "mm": (dt, [None, 5, 16]),
            "bg": (dt, [None, 5, 16]), "y": (dt, [None, 5, 16])}
    assert {k: _typed(g, k) for k in want} == want
    assert g.type_of("g").tensor_type.shape.dim[0].dim_param == "batch"   # symbols carried over


def test_session_reports_types_of_outputs_produced_by_contrib_ops():
    s = ep_core.InferenceSession(_chain().SerializeToString(), providers=["cpu"])
    assert {o.name: (o.type, o.shape) for o in s.get_outputs()} == {
        "y": ("tensor(float)", ["batch", 5, 16]), "mean": ("tensor(float)", ["batch", 5, 1])}


def test_no_contrib_schema_is_left_registered():
    _load(_chain())
    assert not any(_has_ms_schema(op) for op in contrib_schemas.RULES)
    # A user's own checker still skips com.microsoft nodes (our schemas declare no attributes:
    # left registered, the checker would refuse Gelu's `approximate`).
    m = _model([helper.make_node("Gelu", ["x"], ["y"], domain=MS, approximate="tanh")],
               [("x", F32, [2])], [("y", F32, [2])])
    onnx.checker.check_model(m, full_check=True)


def test_a_schema_registered_by_someone_else_is_used_and_kept():
    seen = []

    def infer(ctx):
        seen.append(1)
        t = onnx.TypeProto()
        t.tensor_type.elem_type = TensorProto.DOUBLE
        ctx.set_output_type(0, t)

    ref = onnx.defs.get_schema("Relu", 14)
    schema = onnx.defs.OpSchema("Gelu", MS, 1, inputs=[
        onnx.defs.OpSchema.FormalParameter("X", "T")], outputs=[onnx.defs.OpSchema.FormalParameter("Y", "T2")],
        type_constraints=[(t, ref.type_constraints[0].allowed_type_strs, "") for t in ("T", "T2")])
    schema.set_type_and_shape_inference_function(infer)
    onnx.defs.register_schema(schema)
    try:
        g = _load(_model([helper.make_node("Gelu", ["x"], ["y"], domain=MS),
                          helper.make_node("FastGelu", ["x"], ["z"], domain=MS)],
                         [("x", F32, [2])], ["y", "z"]))
        assert seen and _typed(g, "y") == (TensorProto.DOUBLE, None)
        assert _typed(g, "z") == (F32, [2])
        assert _has_ms_schema("Gelu") and not _has_ms_schema("FastGelu")
    finally:
        onnx.defs.deregister_schema("Gelu", 1, MS)


def test_concurrent_loads_are_all_typed():
    model = _chain().SerializeToString()
    barrier = threading.Barrier(4)
    results, errors = [], []

    def one():
        barrier.wait()
        try:
            for _ in range(3):
                g = _load(model)
                results.append(all(_typed(g, v) for v in ("g", "f", "a", "n", "mm", "bg", "y")))
        except Exception as e:   # noqa: BLE001 (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [True] * 12
    assert not any(_has_ms_schema(op) for op in contrib_schemas.RULES)


def test_a_rule_that_cannot_decide_falls_back_to_onnx_leniency():
    """QGemm with y_scale but no y_zero_point: no output type. The Relu after it would fail
    strict inference; the model loads as before, QGemm's output untyped, the rest typed."""
    u8 = np.array(3, np.uint8)
    nodes = [helper.make_node("Gelu", ["x"], ["g"], domain=MS),
             helper.make_node("QGemm", ["a", "sa", "za", "b", "sb", "zb", "", "sy"], ["q"], domain=MS),
             helper.make_node("Relu", ["q"], ["y"])]
    inits = [("sa", np.float32(0.1)), ("za", u8), ("b", np.ones((4, 3), np.uint8)),
             ("sb", np.float32(0.2)), ("zb", u8), ("sy", np.float32(0.3))]
    g = _load(_model(nodes, [("x", F32, [2]), ("a", TensorProto.UINT8, [2, 4])], ["g", "y"], inits))
    assert _typed(g, "g") == (F32, [2])
    assert _typed(g, "q") is None


def test_a_declared_type_contradicting_a_rule_still_loads():
    """The model declares Gelu's output double (wrong; onnxruntime would refuse it): it loaded
    before the rules existed, so it still does, typed as declared."""
    m = _model([helper.make_node("Gelu", ["x"], ["g"], domain=MS), helper.make_node("Neg", ["g"], ["y"])],
               [("x", F32, [2])], ["y"], value_info=[("g", TensorProto.DOUBLE, [2])])
    g = _load(m)
    assert _typed(g, "g") == (TensorProto.DOUBLE, [2])


@pytest.mark.parametrize("op, opset, n_out", [("LayerNormalization", 16, 3),
                                               ("SimplifiedLayerNormalization", 17, 2)])
def test_onnx_domain_contrib_norms_are_typed(op, opset, n_out):
    """onnxruntime's ONNX-domain LayerNormalization (< 17) and SimplifiedLayerNormalization are
    moved to com.microsoft for inference (load_lenient) and get these rules; mean / inv_std_var
    are float32 (stash_type) also for float16 inputs, as onnxruntime types them."""
    outs = ["y", "m", "v"][:n_out]
    nodes = [helper.make_node(op, ["x", "s"], outs, axis=1), helper.make_node("Relu", ["y"], ["r"])]
    m = _model(nodes, [("x", F16, [2, 3, 8])], ["r"] + outs[1:],
               [("s", np.ones((3, 8), np.float16))], opset=opset)
    del m.opset_import[1:]
    g = _load(m)
    assert [n.domain for n in g.nodes] == ["", ""]
    assert _typed(g, "r") == (F16, [2, 3, 8])
    assert all(_typed(g, o) == (F32, [2, 1, 1]) for o in outs[1:])


# --- against onnxruntime's inference ---------------------------------------------------------------

def _every_value_an_output(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=o) for n in m.graph.node for o in n.output
                          if o and o not in have)
    return m


def _agree_with_onnxruntime(model: onnx.ModelProto) -> int:
    """Every node output typed here, with onnxruntime's element type and its known dims."""
    g = _load(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(_every_value_an_output(model).SerializeToString(), so,
                             providers=["CPUExecutionProvider"])
    theirs = {o.name: (o.type, o.shape) for o in s.get_outputs()}
    checked = 0
    for n in g.nodes:
        for o in n.outputs:
            if not o:
                continue
            ours = _typed(g, o)
            assert ours is not None, f"{n.op_type} output '{o}' untyped"
            kind, shape = theirs[o]
            name = helper.tensor_dtype_to_string(ours[0]).split(".")[-1].lower()
            assert kind == f"tensor({name})", f"{n.op_type} output '{o}': {name} vs onnxruntime {kind}"
            if ours[1] is not None and shape:
                assert len(ours[1]) == len(shape), f"{n.op_type} output '{o}': {ours[1]} vs {shape}"
                assert all(a is None or not isinstance(b, int) or a == b for a, b in zip(ours[1], shape)), \
                    f"{n.op_type} output '{o}': {ours[1]} vs onnxruntime {shape}"
            checked += 1
    return checked


def test_bert_optimized_by_onnxruntime_is_typed_as_onnxruntime_types_it(bert_small):
    _, path, model = bert_small
    ops = {n.op_type for n in model.graph.node if n.domain == MS}
    assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu"} <= ops
    assert _agree_with_onnxruntime(onnx.load(str(path))) > 20


def test_bert_quantized_by_quantize_dynamic_is_typed_as_onnxruntime_types_it(bert_small, tmp_path):
    _, path, _ = bert_small
    dst = tmp_path / "bert.q.onnx"
    quantization.quantize_dynamic(str(path), str(dst),
                                  extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    model = onnx.load(str(dst))
    assert {"QAttention", "QEmbedLayerNormalization"} <= {n.op_type for n in model.graph.node}
    assert _agree_with_onnxruntime(model) > 50


_R = np.random.default_rng(1)
_X = _R.standard_normal((2, 3, 8)).astype(np.float32)
_U8 = np.array(7, np.uint8)

# One-node models of ops the BERT models do not use: (op, inputs, outputs, attrs).
_CASES = [
    ("QuickGelu", [("x", _X)], 1, {}),
    ("SkipSimplifiedLayerNormalization", [("x", _X), ("s", _X), ("g", _X[0, 0])], 4, {}),
    ("RotaryEmbedding", [("x", _X), ("p", np.array([0], np.int64)), ("c", np.ones((8, 2), np.float32)),
                         ("s", np.ones((8, 2), np.float32))], 1, {"num_heads": 2}),
    ("MultiHeadAttention", [("q", _X), ("k", _X), ("v", _X)], 3, {"num_heads": 2}),
    ("MatMulNBits", [("a", _X), ("b", np.ones((4, 1, 8), np.uint8)), ("sc", np.ones(4, np.float32))], 1,
     {"K": 8, "N": 4, "bits": 4, "block_size": 16}),
    ("MatMulInteger16", [("a", np.ones((2, 3), np.int16)), ("b", np.ones((3, 4), np.int16))], 1, {}),
    ("DynamicQuantizeMatMul", [("a", _X), ("b", np.ones((8, 4), np.int8)), ("s", np.float32(0.1))], 1, {}),
    ("QLinearSigmoid", [("x", np.ones((2, 3), np.uint8)), ("xs", np.float32(0.1)), ("xz", _U8),
                        ("ys", np.float32(0.1)), ("yz", _U8)], 1, {}),
    ("QuantizeLinear", [("x", _X), ("s", np.float32(0.1)), ("z", np.int8(1))], 1, {}),
    ("DequantizeLinear", [("x", np.ones((2, 3), np.int8)), ("s", np.float32(0.1)), ("z", np.int8(1))], 1, {}),
    ("CDist", [("a", _X[0]), ("b", _X[1])], 1, {}),
    ("Inverse", [("x", np.eye(3, dtype=np.float32)[None])], 1, {}),
    ("MurmurHash3", [("x", np.array([1, 2], np.int32))], 1, {"positive": 0}),
]


@pytest.mark.parametrize("op, inputs, n_out, attrs", _CASES, ids=[c[0] for c in _CASES])
def test_contrib_op_followed_by_onnx_op_typed_as_onnxruntime_types_it(op, inputs, n_out, attrs):
    model, _ = node_model(op, inputs, n_out, attrs, consts=[k for k, _ in inputs[1:]])
    first = model.graph.node[0].output[0]
    model.graph.node.append(helper.make_node("Identity", [first], ["after"]))
    model.graph.output.append(onnx.ValueInfoProto(name="after"))
    assert _agree_with_onnxruntime(model) == n_out + 1


# onnxruntime implements these only on GPUs (it cannot build a CPU session to compare with).
_GPU_ONLY = [
    ("BiasSplitGelu", [("x", _X), ("b", _X[0, 0])], {}, (F32, [2, 3, 4])),
    ("BiasSoftmax", [("x", _X), ("b", _X)], {"axis": -1}, (F32, [2, 3, 8])),
    ("GroupNorm", [("x", _X[None].astype(np.float16)), ("g", _X[0, 0]), ("b", _X[0, 0])],
     {"groups": 2, "activation": 0}, (F16, [1, 2, 3, 8])),
]


@pytest.mark.parametrize("op, inputs, attrs, want", _GPU_ONLY, ids=[c[0] for c in _GPU_ONLY])
def test_gpu_only_contrib_op_is_typed(op, inputs, attrs, want):
    model, _ = node_model(op, inputs, 1, attrs, consts=[k for k, _ in inputs[1:]])
    model.graph.node.append(helper.make_node("Identity", ["out0"], ["after"]))
    model.graph.output.append(onnx.ValueInfoProto(name="after"))
    g = _load(model)
    assert _typed(g, "out0") == want and _typed(g, "after") == want

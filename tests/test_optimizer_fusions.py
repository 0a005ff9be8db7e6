"""Level-2 fusions into com.ep_core ops: node counts before/after and identical outputs at
DISABLE_ALL vs ENABLE_ALL; fusions only where the provider has the fused kernel."""
import numpy as np
import pytest
from foreign_provider import ForeignProvider
from onnx import helper
from opt_helpers import randn, F32, bert_layer, compare, init, layer_norm_nodes, model, ops, options, session

import ep_core
from ep_core import GraphOptimizationLevel as L

ep_core.register_provider("foreign", ForeignProvider)


def conv(rng, extra_inputs=()):
    w = init("w", randn(rng, 4, 3, 3, 3))
    b = init("b", randn(rng, 4))
    return helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), [w, b]


ACTIVATIONS = [
    ("Relu", {}, []), ("LeakyRelu", {"alpha": 0.2}, []), ("Sigmoid", {}, []), ("Tanh", {}, []),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, []), ("Elu", {"alpha": 0.7}, []),
    ("Clip", {}, ["lo", "hi"]),
]


@pytest.mark.parametrize("act,attrs,extra", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_fuse_conv_activation(rng, act, attrs, extra):
    c, inits = conv(rng)
    inits += [init("lo", np.float32(-0.5)), init("hi", np.float32(0.7))] if extra else []
    m = model([c, helper.make_node(act, ["c"] + extra, ["y"], **attrs)],
              [("x", F32, [1, 3, 5, 5])], [("y", F32, [1, 4, 5, 5])], inits)
    before, after = compare(m, {"x": randn(rng, 1, 3, 5, 5)}, rtol=1e-5, atol=1e-6)
    assert before == ["Conv", act] and after == ["FusedConv"]


@pytest.mark.parametrize("swap", [False, True], ids=["x*sig", "sig*x"])
def test_fuse_conv_sigmoid_mul_as_silu(rng, swap):
    # YOLOv8/EfficientNet exports spell SiLU as Conv -> Sigmoid -> Mul(conv, sigmoid).
    c, inits = conv(rng)
    mul_in = ["s", "c"] if swap else ["c", "s"]
    m = model([c, helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", mul_in, ["y"])],
              [("x", F32, [1, 3, 5, 5])], [("y", F32, [1, 4, 5, 5])], inits)
    before, after = compare(m, {"x": randn(rng, 1, 3, 5, 5)}, rtol=1e-5, atol=1e-6)
    assert before == ["Conv", "Sigmoid", "Mul"] and after == ["FusedConv"]


@pytest.mark.parametrize("case", ["sigmoid_is_output", "conv_read_twice", "mul_by_other"])
def test_sigmoid_mul_that_is_not_silu_stays(rng, case):
    c, inits = conv(rng)
    nodes = [c, helper.make_node("Sigmoid", ["c"], ["s"])]
    outputs = [("y", F32, [1, 4, 5, 5])]
    if case == "sigmoid_is_output":
        nodes.append(helper.make_node("Mul", ["c", "s"], ["y"]))
        outputs.append(("s", F32, [1, 4, 5, 5]))
    elif case == "conv_read_twice":
        nodes += [helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Add", ["m", "c"], ["y"])]
    else:
        inits.append(init("k", randn(rng, 1, 4, 5, 5)))
        nodes.append(helper.make_node("Mul", ["k", "s"], ["y"]))
    m = model(nodes, [("x", F32, [1, 3, 5, 5])], outputs, inits)
    before, after = compare(m, {"x": randn(rng, 1, 3, 5, 5)}, rtol=1e-5, atol=1e-6)
    assert "Mul" in after


@pytest.mark.parametrize("add_op", ["Add", "Sum"])
def test_fuse_conv_residual_add_relu(rng, add_op):
    c, inits = conv(rng)
    nodes = [c, helper.make_node(add_op, ["c", "z"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    m = model(nodes, [("x", F32, [1, 3, 5, 5]), ("z", F32, [1, 4, 5, 5])], [("y", F32, [1, 4, 5, 5])], inits)
    feeds = {"x": randn(rng, 1, 3, 5, 5),
             "z": randn(rng, 1, 4, 5, 5)}
    before, after = compare(m, feeds, rtol=1e-5, atol=1e-6)
    assert len(before) == 3 and after == ["FusedConv"]


def test_broadcast_add_after_conv_is_not_a_residual(rng):
    c, inits = conv(rng)
    nodes = [c, helper.make_node("Add", ["c", "z"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    m = model(nodes, [("x", F32, [1, 3, 5, 5]), ("z", F32, [5])], [("y", F32, [1, 4, 5, 5])], inits)
    feeds = {"x": randn(rng, 1, 3, 5, 5), "z": randn(rng, 5)}
    before, after = compare(m, feeds, rtol=1e-5, atol=1e-6)
    assert after == ["Conv", "FusedAdd"]


def test_fuse_gemm_activation(rng):
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1, alpha=0.5),
             helper.make_node("Relu", ["g"], ["y"])]
    m = model(nodes, [("x", F32, [3, 4])], [("y", F32, [3, 5])],
              [init("w", randn(rng, 5, 4)), init("b", randn(rng, 5))])
    before, after = compare(m, {"x": randn(rng, 3, 4)}, rtol=1e-5, atol=1e-6)
    assert before == ["Gemm", "Relu"] and after == ["FusedGemm"]


def test_fuse_matmul_add_relu_into_one_fused_gemm(rng):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    m = model(nodes, [("x", F32, [3, 4])], [("y", F32, [3, 5])],
              [init("w", randn(rng, 4, 5)), init("b", randn(rng, 5))])
    before, after = compare(m, {"x": randn(rng, 3, 4)}, rtol=1e-5, atol=1e-6)
    assert len(before) == 3 and after == ["FusedGemm"]


def test_fuse_add_activation(rng):
    nodes = [helper.make_node("Add", ["x", "z"], ["a"]), helper.make_node("Sigmoid", ["a"], ["y"])]
    m = model(nodes, [("x", F32, [2, 3]), ("z", F32, [3])], [("y", F32, [2, 3])])
    feeds = {"x": randn(rng, 2, 3), "z": randn(rng, 3)}
    before, after = compare(m, feeds, rtol=1e-6)
    assert before == ["Add", "Sigmoid"] and after == ["FusedAdd"]


def test_fusion_skipped_where_the_provider_lacks_the_fused_kernel(rng):
    nodes = [helper.make_node("Add", ["x", "z"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    m = model(nodes, [("x", F32, [2, 3]), ("z", F32, [2, 3])], [("y", F32, [2, 3])])
    feeds = {"x": randn(rng, 2, 3), "z": randn(rng, 2, 3)}
    sess = ep_core.InferenceSession(m.SerializeToString(), providers=["foreign", "cpu"])
    placed = [(op, p) for _, op, p in sess.get_placement()["nodes"] if not op.startswith("Memcpy")]
    assert placed == [("Add", "foreign"), ("Relu", "foreign")]       # no FusedAdd on 'foreign'
    np.testing.assert_allclose(sess.run(None, feeds)[0], np.maximum(feeds["x"] + feeds["z"], 0), rtol=1e-6)
    assert ops(session(m)) == ["FusedAdd"]


def _gelu_nodes(variant):
    if variant == "div_mul_half_last":
        return [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
                helper.make_node("Mul", ["m", "half"], ["y"])]
    if variant == "mul_half_first":
        return [helper.make_node("Mul", ["x", "rsqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                helper.make_node("Add", ["one", "e"], ["a"]), helper.make_node("Mul", ["x", "half"], ["h"]),
                helper.make_node("Mul", ["h", "a"], ["y"])]
    return [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["a", "half"], ["m"]),
            helper.make_node("Mul", ["m", "x"], ["y"])]


GELU_CONSTS = [init("sqrt2", np.float32(np.sqrt(2))), init("rsqrt2", np.float32(1 / np.sqrt(2))),
               init("one", np.float32(1)), init("half", np.float32(0.5))]


@pytest.mark.parametrize("variant", ["div_mul_half_last", "mul_half_first", "half_on_add"])
@pytest.mark.parametrize("opset", [13, 20])
def test_fuse_gelu(rng, variant, opset):
    m = model(_gelu_nodes(variant), [("x", F32, [2, 7])], [("y", F32, [2, 7])], GELU_CONSTS, opset=opset)
    before, after = compare(m, {"x": randn(rng, 2, 7) * 3}, rtol=1e-5, atol=1e-6)
    assert len(before) == 5 and after == ["Gelu"]


@pytest.mark.parametrize("cube", ["pow", "mul"])
def test_fuse_fast_gelu(rng, cube):
    consts = [init("three", np.float32(3)), init("c", np.float32(0.044715)),
              init("k", np.float32(np.sqrt(2 / np.pi))), init("one", np.float32(1)), init("half", np.float32(0.5))]
    if cube == "pow":
        head = [helper.make_node("Pow", ["x", "three"], ["p"])]
    else:
        head = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Mul", ["sq", "x"], ["p"])]
    nodes = head + [helper.make_node("Mul", ["p", "c"], ["w"]), helper.make_node("Add", ["x", "w"], ["v"]),
                    helper.make_node("Mul", ["v", "k"], ["u"]), helper.make_node("Tanh", ["u"], ["t"]),
                    helper.make_node("Add", ["t", "one"], ["a"]), helper.make_node("Mul", ["a", "x"], ["m"]),
                    helper.make_node("Mul", ["m", "half"], ["y"])]
    m = model(nodes, [("x", F32, [2, 7])], [("y", F32, [2, 7])], consts, opset=13)
    before, after = compare(m, {"x": randn(rng, 2, 7) * 3}, rtol=1e-5, atol=1e-6)
    assert len(before) == len(nodes) and after == ["FastGelu"]


@pytest.mark.parametrize("opset,domain", [(13, ""), (17, "")])   # below 17: onnxruntime's ONNX-domain op
def test_fuse_layer_normalization(rng, opset, domain):
    inits = [init("two", np.float32(2)), init("eps", np.float32(1e-5))]
    nodes = layer_norm_nodes("x", "y", 6, inits, rng)
    m = model(nodes, [("x", F32, [2, 3, 6])], [("y", F32, [2, 3, 6])], inits, opset=opset)
    before, after = compare(m, {"x": randn(rng, 2, 3, 6)}, rtol=1e-4, atol=1e-5)
    assert len(before) == 9 and after == ["LayerNormalization"]
    sess = session(m)
    assert sess._graph.nodes[0].domain == domain


def test_fuse_skip_layer_normalization_keeps_the_residual_sum(rng):
    inits = [init("two", np.float32(2)), init("eps", np.float32(1e-5)), init("bias", randn(rng, 6))]
    nodes = [helper.make_node("Add", ["x", "bias"], ["xb"]), helper.make_node("Add", ["xb", "skip"], ["s"])]
    nodes += layer_norm_nodes("s", "y", 6, inits, rng)
    nodes.append(helper.make_node("Mul", ["s", "y"], ["z"]))          # the sum is read again
    m = model(nodes, [("x", F32, [2, 3, 6]), ("skip", F32, [2, 3, 6])], [("z", F32, [2, 3, 6])], inits, opset=13)
    feeds = {"x": randn(rng, 2, 3, 6), "skip": randn(rng, 2, 3, 6)}
    before, after = compare(m, feeds, rtol=1e-4, atol=1e-5)
    assert len(before) == 12 and after == ["SkipLayerNormalization", "Mul"]


@pytest.mark.parametrize("mask", [True, False])
def test_fuse_bert_layer_attention(rng, mask):
    m, feeds = bert_layer(rng, mask=mask)
    before, after = compare(m, feeds, rtol=1e-4, atol=1e-5)
    # FFN: MatMul + bias + Gelu is one FusedMatMul (the other biases ride in SkipLayerNormalization).
    tail = ["Attention", "MatMul", "SkipLayerNormalization", "FusedMatMul", "MatMul",
            "SkipLayerNormalization"]
    # The 0/1 mask becomes com.microsoft::Attention's mask_index (one Cast to int32); the
    # arithmetic that made it additive is then dead.
    head = ["Cast"] if mask else []
    assert sorted(after) == sorted(head + tail) and len(before) == (55 if mask else 49)


def test_all_levels_agree_on_a_bert_layer(rng):
    m, feeds = bert_layer(rng)
    for level in (L.ORT_ENABLE_BASIC, L.ORT_ENABLE_EXTENDED, L.ORT_ENABLE_LAYOUT, L.ORT_ENABLE_ALL):
        compare(m, feeds, level=level, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("act,domain", [("Relu", "com.microsoft"), ("Elu", "com.ep_core")])
def test_fused_ops_are_onnxruntimes_where_it_has_them(rng, act, domain):
    """FusedConv with an activation onnxruntime's kernel takes is its com.microsoft op; Elu is not."""
    c, inits = conv(rng)
    m = model([c, helper.make_node(act, ["c"], ["y"])], [("x", F32, [1, 3, 5, 5])],
              [("y", F32, [1, 4, 5, 5])], inits)
    sess = session(m, options(L.ORT_ENABLE_ALL))
    node = sess._graph.nodes[0]
    assert (node.domain, node.op_type, node.attrs["activation"]) == (domain, "FusedConv", act)


@pytest.mark.parametrize("act", [None, "Relu", "Gelu"])
@pytest.mark.parametrize("bias_first", [False, True])
def test_fuse_nd_matmul_bias_activation(rng, act, bias_first):
    """MatMul with a 3-D A and a constant B, + a constant (N,) bias [+ activation]: one FusedMatMul."""
    add_in = ["b", "mm"] if bias_first else ["mm", "b"]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Add", add_in, ["a" if act else "y"])]
    if act:
        nodes.append(helper.make_node(act, ["a"], ["y"]))
    m = model(nodes, [("x", F32, [2, 3, 4])], [("y", F32, [2, 3, 5])],
              [init("w", randn(rng, 4, 5)), init("b", randn(rng, 5))], opset=20)
    before, after = compare(m, {"x": randn(rng, 2, 3, 4)}, rtol=1e-5, atol=1e-6)
    assert len(before) == len(nodes) and after == ["FusedMatMul"]
    node = session(m)._graph.nodes[0]
    assert node.domain == "com.ep_core" and node.attrs.get("activation") == act


def test_fuse_nd_matmul_bias_keeps_shared_and_output_values(rng):
    """The MatMul result read twice, or a bias that is not a (N,) constant: nothing fused there;
    an Add result read by two nodes still fuses (its value survives under the same name)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["y1"]),
             helper.make_node("Relu", ["mm"], ["y2"]),                     # MatMul read twice
             helper.make_node("MatMul", ["x", "w"], ["mm2"]), helper.make_node("Add", ["mm2", "z"], ["y3"]),
             helper.make_node("MatMul", ["x", "w2"], ["mm3"]), helper.make_node("Add", ["mm3", "b"], ["s"]),
             helper.make_node("Relu", ["s"], ["y4"]), helper.make_node("Tanh", ["s"], ["y5"])]
    m = model(nodes, [("x", F32, [2, 3, 4]), ("z", F32, [5])],
              [(n, F32, [2, 3, 5]) for n in ("y1", "y2", "y3", "y4", "y5")],
              [init("w", randn(rng, 4, 5)), init("w2", randn(rng, 4, 5)), init("b", randn(rng, 5))])
    feeds = {"x": randn(rng, 2, 3, 4), "z": randn(rng, 5)}
    before, after = compare(m, feeds, disabled=["CommonSubexpressionElimination"], rtol=1e-5, atol=1e-6)
    assert len(before) == 9
    assert sorted(after) == sorted(["MatMul", "Add", "Relu", "MatMul", "Add", "FusedMatMul", "Relu", "Tanh"])


def test_nd_matmul_fusion_skipped_where_the_provider_lacks_it(rng):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["y"])]
    m = model(nodes, [("x", F32, [2, 3, 4])], [("y", F32, [2, 3, 5])],
              [init("w", randn(rng, 4, 5)), init("b", randn(rng, 5))])
    sess = ep_core.InferenceSession(m.SerializeToString(), providers=["foreign", "cpu"])
    assert "FusedMatMul" not in [op for _, op, _ in sess.get_placement()["nodes"]]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_skip_layer_normalization_outputs(rng, dtype):
    """The CPU kernel's four outputs (normalized, mean, inv_std_var, input+skip+bias) against a
    float64 numpy reference."""
    from onnx import TensorProto, numpy_helper
    t = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    x, skip = randn(rng, 2, 3, 16).astype(dtype), randn(rng, 2, 3, 16).astype(dtype)
    gamma, beta, bias = (randn(rng, 16).astype(dtype) for _ in range(3))
    node = helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"],
                            ["y", "mean", "inv", "sum"], domain="com.ep_core", epsilon=1e-5)
    m = model([node], [("x", t, [2, 3, 16]), ("skip", t, [2, 3, 16])],
              [("y", t, [2, 3, 16]), ("mean", F32, [2, 3, 1]), ("inv", F32, [2, 3, 1]),
               ("sum", t, [2, 3, 16])],
              [numpy_helper.from_array(a, n) for a, n in ((gamma, "gamma"), (beta, "beta"), (bias, "bias"))],
              domains=[("com.ep_core", 1)])
    y, mean, inv, total = session(m).run(None, {"x": x, "skip": skip})
    s = x.astype(np.float64) + skip + bias
    mu = s.mean(-1, keepdims=True)
    iv = 1 / np.sqrt(((s - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    tol = 1e-5 if dtype == np.float32 else 2e-3
    assert y.dtype == dtype and total.dtype == dtype
    np.testing.assert_allclose(y, (s - mu) * iv * gamma + beta, rtol=tol, atol=tol)
    np.testing.assert_allclose(mean, mu, rtol=tol, atol=tol)
    np.testing.assert_allclose(inv, iv, rtol=tol, atol=tol)
    np.testing.assert_allclose(total, s, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", ["transB_4d", "transA_3d", "both_2d"])
def test_fuse_transpose_into_matmul(rng, case, tmp_path):
    """A Transpose swapping the last two axes that only a MatMul reads becomes the MatMul's
    transA / transB (onnxruntime's FusedMatMul): no copy; the optimized model runs in
    onnxruntime with the same result."""
    if case == "transB_4d":   # attention scores: Q @ K^T
        nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                 helper.make_node("MatMul", ["q", "kt"], ["y"])]
        inputs, out, flags = [("q", F32, [1, 2, 3, 4]), ("k", F32, [1, 2, 5, 4])], [1, 2, 3, 5], {"transB": 1}
    elif case == "transA_3d":
        nodes = [helper.make_node("Transpose", ["a"], ["at"], perm=[0, 2, 1]),
                 helper.make_node("MatMul", ["at", "b"], ["y"])]
        inputs, out, flags = [("a", F32, [2, 4, 3]), ("b", F32, [2, 4, 5])], [2, 3, 5], {"transA": 1}
    else:
        nodes = [helper.make_node("Transpose", ["a"], ["at"]), helper.make_node("Transpose", ["b"], ["bt"]),
                 helper.make_node("MatMul", ["at", "bt"], ["y"])]
        inputs, out, flags = [("a", F32, [4, 3]), ("b", F32, [5, 4])], [3, 5], {"transA": 1, "transB": 1}
    m = model(nodes, inputs, [("y", F32, out)], [])
    feeds = {name: randn(rng, *shape) for name, _, shape in inputs}
    before, after = compare(m, feeds, rtol=1e-5, atol=1e-6)
    assert len(before) == len(nodes) and after == ["FusedMatMul"]
    path = tmp_path / "optimized.onnx"
    sess = session(m, options(L.ORT_ENABLE_ALL))
    node = sess._graph.nodes[0]
    assert node.domain == "com.microsoft" and {k: node.attrs.get(k) for k in flags} == flags
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the test oracle ([dev] extra)")
    opts = options(L.ORT_ENABLE_ALL)
    opts.optimized_model_filepath = str(path)
    want = session(m, opts).run(None, feeds)[0]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["other_reader", "not_a_swap", "graph_output"])
def test_transpose_that_is_not_a_matmul_operand_stays(rng, case):
    perm = [1, 0, 2] if case == "not_a_swap" else [0, 2, 1]
    nodes = [helper.make_node("Transpose", ["a"], ["at"], perm=perm),
             helper.make_node("MatMul", ["at", "b"], ["y"])]
    outputs = [("y", F32, [2, 3, 5])]
    if case == "other_reader":
        nodes.append(helper.make_node("Relu", ["at"], ["r"]))
        outputs.append(("r", F32, [2, 3, 4]))
    elif case == "graph_output":
        outputs.append(("at", F32, [2, 3, 4]))
    a_shape = [3, 2, 4] if case == "not_a_swap" else [2, 4, 3]
    m = model(nodes, [("a", F32, a_shape), ("b", F32, [2, 4, 5])], outputs, [])
    before, after = compare(m, {"a": randn(rng, *a_shape), "b": randn(rng, 2, 4, 5)}, rtol=1e-5, atol=1e-6)
    assert sorted(after) == sorted(before)

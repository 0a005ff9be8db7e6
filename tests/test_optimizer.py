"""Level-1 rewrites and the optimizer framework: one test per rewrite (node counts before/after,
identical outputs at DISABLE_ALL and ENABLE_ALL), levels, disabled_optimizers, subgraphs."""
import numpy as np
import pytest
from onnx import helper
from opt_helpers import randn, F32, I64, compare, init, model, ops, options, session

from ep_core import GraphOptimizationLevel as L
from ep_core.optimizer import builtin_rewrites, registered_rewrites


@pytest.fixture
def x23(rng):
    return randn(rng, 2, 3)


def test_every_rewrite_is_listed_once_with_a_level():
    names = [c.name for c in builtin_rewrites()]
    assert len(names) == len(set(names)) and all(names)
    assert {lvl for lvl, _ in registered_rewrites()} <= {1, 2, 3, 99}


def test_constant_folding_constant_of_shape_unsqueeze_reshape_and_static_shape(x23):
    nodes = [helper.make_node("Constant", [], ["shp"], value=init("v", np.array([6], np.int64))),
             helper.make_node("ConstantOfShape", ["shp"], ["c6"], value=init("v", np.array([0.5], np.float32))),
             helper.make_node("Shape", ["x"], ["xs"]),                     # static shape of an input
             helper.make_node("Reshape", ["c6", "xs"], ["c23"]),
             helper.make_node("Unsqueeze", ["c23", "ax"], ["c123"]),
             helper.make_node("Squeeze", ["c123", "ax"], ["c23b"]),
             helper.make_node("Add", ["x", "c23b"], ["y"])]
    m = model(nodes, [("x", F32, [2, 3])], [("y", F32, [2, 3])], [init("ax", np.array([0], np.int64))])
    before, after = compare(m, {"x": x23})
    assert len(before) == 7 and after == ["Add"]


def test_constant_folding_uses_cpu_kernels_and_keeps_output_names(x23):
    # A graph output computed from constants only becomes an initializer under its own name.
    nodes = [helper.make_node("Mul", ["a", "b"], ["ab"]), helper.make_node("Add", ["x", "ab"], ["y"])]
    m = model(nodes, [("x", F32, [2, 3])], [("y", F32, [2, 3]), ("ab", F32, [3])],
              [init("a", np.arange(3, dtype=np.float32)), init("b", np.full(3, 2, np.float32))])
    before, after = compare(m, {"x": x23})
    assert before == ["Mul", "Add"] and after == ["Add"]


def test_constant_folding_skips_random_ops_and_overridable_initializers(x23):
    nodes = [helper.make_node("RandomUniform", [], ["r"], shape=[2, 3], seed=1.0),
             helper.make_node("Mul", ["r", "zero"], ["r0"]),
             helper.make_node("Neg", ["w"], ["nw"]),        # w is also a graph input: overridable
             helper.make_node("Add", ["x", "nw"], ["s"]),
             helper.make_node("Add", ["s", "r0"], ["y"])]
    m = model(nodes, [("x", F32, [2, 3]), ("w", F32, [2, 3])], [("y", F32, [2, 3])],
              [init("w", np.ones((2, 3), np.float32)), init("zero", np.zeros((2, 3), np.float32))])
    sess = session(m, options())
    assert "RandomUniform" in ops(sess) and "Neg" in ops(sess)
    out = sess.run(None, {"x": x23, "w": np.full((2, 3), 3, np.float32)})[0]
    np.testing.assert_allclose(out, x23 - 3)


def test_eliminate_identity_including_graph_output(x23):
    nodes = [helper.make_node("Identity", ["x"], ["i1"]), helper.make_node("Relu", ["i1"], ["r"]),
             helper.make_node("Identity", ["r"], ["y"])]
    m = model(nodes, [("x", F32, [2, 3])], [("y", F32, [2, 3])])
    before, after = compare(m, {"x": x23})
    assert len(before) == 3 and after == ["Relu"]
    sess = session(m)
    assert [o.name for o in sess.get_outputs()] == ["y"]


def test_identity_from_graph_input_to_graph_output_stays(x23):
    m = model([helper.make_node("Identity", ["x"], ["y"])], [("x", F32, [2, 3])], [("y", F32, [2, 3])])
    before, after = compare(m, {"x": x23})
    assert after == ["Identity"]


def test_eliminate_dropout_unless_mask_is_used(x23):
    nodes = [helper.make_node("Dropout", ["x", "ratio"], ["d"]), helper.make_node("Relu", ["d"], ["y"])]
    m = model(nodes, [("x", F32, [2, 3])], [("y", F32, [2, 3])], [init("ratio", np.array(0.3, np.float32))])
    before, after = compare(m, {"x": x23})
    assert before == ["Dropout", "Relu"] and after == ["Relu"]
    nodes = [helper.make_node("Dropout", ["x"], ["d", "mask"]), helper.make_node("Relu", ["d"], ["y"])]
    m = model(nodes, [("x", F32, [2, 3])], [("y", F32, [2, 3]), ("mask", 9, [2, 3])])
    before, after = compare(m, {"x": x23})
    assert "Dropout" in after


def test_eliminate_noop_cast(x23):
    nodes = [helper.make_node("Cast", ["x"], ["c"], to=F32), helper.make_node("Cast", ["c"], ["d"], to=I64),
             helper.make_node("Cast", ["d"], ["y"], to=I64)]
    m = model(nodes, [("x", F32, [2, 3])], [("y", I64, [2, 3])])
    before, after = compare(m, {"x": x23 * 10})
    assert len(before) == 3 and after == ["Cast"]


def test_eliminate_noop_and_chained_transposes(rng):
    x = randn(rng, 2, 3, 4)
    nodes = [helper.make_node("Transpose", ["x"], ["t0"], perm=[0, 1, 2]),
             helper.make_node("Transpose", ["t0"], ["t1"], perm=[1, 0, 2]),
             helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 2, 1]),   # composed with t1
             helper.make_node("Transpose", ["t2"], ["t3"], perm=[0, 2, 1]),   # cancels t2's part
             helper.make_node("Relu", ["t3"], ["y"])]
    m = model(nodes, [("x", F32, [2, 3, 4])], [("y", F32, [3, 2, 4])])
    before, after = compare(m, {"x": x})
    assert len(before) == 5 and after.count("Transpose") == 1 and len(after) == 2


@pytest.mark.parametrize("opset", [11, 13])
def test_eliminate_unsqueeze_squeeze_pairs(rng, opset):
    x = randn(rng, 2, 3)

    def node(op, i, o, axes):
        if opset >= 13:
            return helper.make_node(op, [i, "ax" + "".join(map(str, axes)).replace("-", "m")], [o])
        return helper.make_node(op, [i], [o], axes=axes)
    nodes = [node("Unsqueeze", "x", "u", [0, 3]), node("Squeeze", "u", "s", [-1, 0]),   # pair 1
             helper.make_node("Relu", ["s"], ["r"]),
             node("Squeeze", "r3", "q", [1]), node("Unsqueeze", "q", "y", [1])]          # pair 2
    nodes.insert(3, node("Unsqueeze", "r", "r3", [1]))
    inits = [init("ax03", np.array([0, 3], np.int64)), init("axm10", np.array([-1, 0], np.int64)),
             init("ax1", np.array([1], np.int64))]
    m = model(nodes, [("x", F32, [2, 3])], [("y", F32, [2, 1, 3])], inits if opset >= 13 else [], opset=opset)
    before, after = compare(m, {"x": x})
    assert len(before) == 6 and after == ["Relu", "Unsqueeze"]


def test_fuse_reshape_chain_and_noop_reshape(rng):
    x = randn(rng, 2, 3, 4)
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["a"]), helper.make_node("Flatten", ["a"], ["b"], axis=1),
             helper.make_node("Reshape", ["b", "s2"], ["c"]), helper.make_node("Reshape", ["c", "s3"], ["y"])]
    inits = [init("s1", np.array([6, 4], np.int64)), init("s2", np.array([4, -1], np.int64)),
             init("s3", np.array([4, 6], np.int64))]
    m = model(nodes, [("x", F32, [2, 3, 4])], [("y", F32, [4, 6])], inits)
    before, after = compare(m, {"x": x})
    assert len(before) == 4 and after == ["Reshape"]


def test_common_subexpressions_and_equal_initializers_merge(x23):
    nodes = [helper.make_node("Mul", ["x", "w1"], ["a"]), helper.make_node("Mul", ["x", "w2"], ["b"]),
             helper.make_node("Relu", ["a"], ["ra"]), helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("Add", ["ra", "rb"], ["y"])]
    w = np.arange(3, dtype=np.float32)
    m = model(nodes, [("x", F32, [2, 3])], [("y", F32, [2, 3])], [init("w1", w), init("w2", w.copy())])
    before, after = compare(m, {"x": x23}, level=L.ORT_ENABLE_BASIC)
    assert len(before) == 5 and after == ["Mul", "Relu", "Add"]


def test_dead_nodes_and_unused_initializers_go(x23):
    nodes = [helper.make_node("Exp", ["x"], ["unused"]), helper.make_node("Relu", ["x"], ["y"])]
    m = model(nodes, [("x", F32, [2, 3])], [("y", F32, [2, 3])], [init("junk", np.ones(5, np.float32))])
    before, after = compare(m, {"x": x23})
    assert before == ["Exp", "Relu"] and after == ["Relu"]
    sess = session(m)
    assert "junk" not in sess._graph.initializers


def _conv_model(rng, follow, opset=17):
    w = randn(rng, 4, 3, 3, 3)
    b = randn(rng, 4)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])] + follow
    inits = [init("w", w), init("b", b)]
    return nodes, inits


def test_fuse_conv_batchnorm(rng):
    nodes, inits = _conv_model(rng, [helper.make_node("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["y"],
                                                      epsilon=1e-3)])
    inits += [init("s", rng.uniform(0.5, 2, 4).astype(np.float32)), init("bb", randn(rng, 4)),
              init("mu", randn(rng, 4)), init("var", rng.uniform(0.5, 2, 4).astype(np.float32))]
    m = model(nodes, [("x", F32, [1, 3, 5, 5])], [("y", F32, [1, 4, 5, 5])], inits)
    before, after = compare(m, {"x": randn(rng, 1, 3, 5, 5)},
                            level=L.ORT_ENABLE_BASIC, rtol=1e-4, atol=1e-5)
    assert before == ["Conv", "BatchNormalization"] and after == ["Conv"]


def test_fuse_conv_mul_add_per_channel(rng):
    nodes, inits = _conv_model(rng, [helper.make_node("Mul", ["c", "m"], ["cm"]),
                                     helper.make_node("Add", ["a", "cm"], ["ca"]),
                                     helper.make_node("Sub", ["ca", "s"], ["y"])])
    inits += [init("m", randn(rng, 4, 1, 1)),
              init("a", randn(rng, 1, 4, 1, 1)), init("s", np.float32(0.5))]
    m = model(nodes, [("x", F32, [1, 3, 5, 5])], [("y", F32, [1, 4, 5, 5])], inits)
    before, after = compare(m, {"x": randn(rng, 1, 3, 5, 5)},
                            level=L.ORT_ENABLE_BASIC, rtol=1e-4, atol=1e-5)
    assert len(before) == 4 and after == ["Conv"]


def test_fuse_conv_div_and_batchnorm_div(rng):
    nodes, inits = _conv_model(rng, [helper.make_node("Div", ["c", "d"], ["y"])])
    inits.append(init("d", rng.uniform(0.5, 2, (4, 1, 1)).astype(np.float32)))
    m = model(nodes, [("x", F32, [1, 3, 5, 5])], [("y", F32, [1, 4, 5, 5])], inits)
    before, after = compare(m, {"x": randn(rng, 1, 3, 5, 5)}, level=L.ORT_ENABLE_BASIC, rtol=1e-4, atol=1e-5)
    assert before == ["Conv", "Div"] and after == ["Conv"]
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "bb", "mu", "var"], ["n"]),
             helper.make_node("Div", ["n", "d"], ["y"])]
    inits = [init(n, rng.uniform(0.5, 2, 4).astype(np.float32)) for n in ("s", "bb", "mu", "var", "d")]
    inits[-1] = init("d", rng.uniform(0.5, 2, (4, 1, 1)).astype(np.float32))
    m = model(nodes, [("x", F32, [2, 4, 3, 3])], [("y", F32, [2, 4, 3, 3])], inits)
    before, after = compare(m, {"x": randn(rng, 2, 4, 3, 3)}, level=L.ORT_ENABLE_BASIC, rtol=1e-4, atol=1e-5)
    assert before == ["BatchNormalization", "Div"] and after == ["BatchNormalization"]


def test_conv_mul_not_per_channel_is_left_alone(rng):
    nodes, inits = _conv_model(rng, [helper.make_node("Mul", ["c", "m"], ["y"])])
    inits.append(init("m", randn(rng, 1, 1, 5, 5)))   # spatial, not channel
    m = model(nodes, [("x", F32, [1, 3, 5, 5])], [("y", F32, [1, 4, 5, 5])], inits)
    before, after = compare(m, {"x": randn(rng, 1, 3, 5, 5)}, rtol=1e-5)
    assert after == ["Conv", "Mul"]


def test_fused_conv_output_with_two_consumers_is_not_folded(rng):
    bn = [helper.make_node("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["y"]),
          helper.make_node("Relu", ["c"], ["z"])]
    nodes, inits = _conv_model(rng, bn)
    inits += [init(n, rng.uniform(0.5, 2, 4).astype(np.float32)) for n in ("s", "bb", "mu", "var")]
    m = model(nodes, [("x", F32, [1, 3, 5, 5])], [("y", F32, [1, 4, 5, 5]), ("z", F32, [1, 4, 5, 5])], inits)
    before, after = compare(m, {"x": randn(rng, 1, 3, 5, 5)})
    assert "BatchNormalization" in after


def test_fuse_batchnorm_mul_add(rng):
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "bb", "mu", "var"], ["n"]),
             helper.make_node("Mul", ["n", "m"], ["nm"]), helper.make_node("Add", ["nm", "a"], ["y"])]
    inits = [init(n, rng.uniform(0.5, 2, 4).astype(np.float32)) for n in ("s", "bb", "mu", "var")]
    inits += [init("m", randn(rng, 4, 1, 1)),
              init("a", randn(rng, 4, 1, 1))]
    m = model(nodes, [("x", F32, [2, 4, 3, 3])], [("y", F32, [2, 4, 3, 3])], inits)
    before, after = compare(m, {"x": randn(rng, 2, 4, 3, 3)},
                            level=L.ORT_ENABLE_BASIC, rtol=1e-4, atol=1e-5)
    assert len(before) == 3 and after == ["BatchNormalization"]


def test_fuse_matmul_add_to_gemm(rng):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["y"])]
    m = model(nodes, [("x", F32, [3, 4])], [("y", F32, [3, 5])],
              [init("w", randn(rng, 4, 5)), init("b", randn(rng, 5))])
    before, after = compare(m, {"x": randn(rng, 3, 4)},
                            level=L.ORT_ENABLE_BASIC, rtol=1e-5)
    assert before == ["MatMul", "Add"] and after == ["Gemm"]


def test_matmul_add_of_3d_input_is_not_a_gemm(rng):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["y"])]
    m = model(nodes, [("x", F32, [2, 3, 4])], [("y", F32, [2, 3, 5])],
              [init("w", randn(rng, 4, 5)), init("b", randn(rng, 5))])
    before, after = compare(m, {"x": randn(rng, 2, 3, 4)}, level=L.ORT_ENABLE_BASIC)
    assert after == ["MatMul", "Add"]


def test_levels_and_disabled_optimizers(rng):
    nodes, inits = _conv_model(rng, [helper.make_node("Relu", ["c"], ["y"])])
    m = model(nodes, [("x", F32, [1, 3, 5, 5])], [("y", F32, [1, 4, 5, 5])], inits).SerializeToString()
    assert ops(session(m, options(L.ORT_ENABLE_BASIC))) == ["Conv", "Relu"]
    assert ops(session(m, options(L.ORT_ENABLE_EXTENDED))) == ["FusedConv"]
    assert ops(session(m, options(L.ORT_ENABLE_ALL, ["FuseConvActivation"]))) == ["Conv", "Relu"]
    nodes = [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Relu", ["i"], ["y"])]
    m2 = model(nodes, [("x", F32, [2, 3])], [("y", F32, [2, 3])]).SerializeToString()
    assert ops(session(m2, options(L.ORT_DISABLE_ALL))) == ["Identity", "Relu"]
    assert ops(session(m2, options(L.ORT_ENABLE_ALL, ["EliminateIdentity"]))) == ["Identity", "Relu"]


def test_rewrites_reach_into_if_bodies_and_follow_renamed_outer_values(rng):
    x = randn(rng, 2, 3)
    then_nodes = [helper.make_node("Identity", ["outer"], ["t1"]),
                  helper.make_node("Add", ["t1", "k"], ["t"])]
    then_g = helper.make_graph(then_nodes, "then", [], [helper.make_tensor_value_info("t", F32, [2, 3])],
                               initializer=[init("k", np.ones((2, 3), np.float32))])
    else_g = helper.make_graph([helper.make_node("Neg", ["outer"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", F32, [2, 3])])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["outer"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)]
    m = model(nodes, [("x", F32, [2, 3]), ("cond", 9, [])], [("y", F32, [2, 3])])
    for c in (True, False):
        before, after = compare(m, {"x": x, "cond": np.array(c)})
    assert after == ["Relu", "If"]
    sess = session(m)
    body = sess._graph.nodes[-1].attrs["then_branch"]
    assert [n.op_type for n in body.nodes] == ["Add"]


def test_contrib_ops_are_pure_for_cse_and_dead_nodes():
    """com.microsoft ops are onnxruntime's own pure kernels: duplicates merge, unread ones go."""
    nodes = [helper.make_node("Gelu", ["x"], ["a"], domain="com.microsoft"),
             helper.make_node("Gelu", ["x"], ["b"], domain="com.microsoft"),
             helper.make_node("FastGelu", ["x"], ["unread"], domain="com.microsoft"),
             helper.make_node("Add", ["a", "b"], ["y"])]
    m = model(nodes, [("x", F32, [2, 3])], [("y", F32, [2, 3])], domains=[("com.microsoft", 1)])
    before, after = compare(m, {"x": randn(np.random.default_rng(0), 2, 3)}, level=L.ORT_ENABLE_BASIC)
    assert before.count("Gelu") == 2 and "FastGelu" in before
    assert after.count("Gelu") == 1 and "FastGelu" not in after

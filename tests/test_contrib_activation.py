"""com.microsoft element-wise contrib ops vs onnxruntime: Gelu, FastGelu, BiasGelu, QuickGelu
(onnxruntime's CPU kernels), BiasAdd, BiasSplitGelu, BiasSoftmax (onnxruntime has them only on
GPUs: compared with onnxruntime running the equivalent standard-op graph)."""
from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from test_contrib_common import check, check_against_graph, rand

F32 = TensorProto.FLOAT


@pytest.mark.parametrize("shape", [(7,), (2, 3, 16), (1, 4, 1000)])
def test_gelu(rng, shape):
    check("Gelu", [("x", rand(rng, *shape, scale=3))], atol=2e-6)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("shape", [(5,), (2, 3, 16)])
def test_fast_gelu(rng, shape, with_bias):
    ins = [("x", rand(rng, *shape, scale=3))]
    if with_bias:
        ins.append(("bias", rand(rng, shape[-1])))
    check("FastGelu", ins, atol=2e-6)


@pytest.mark.parametrize("shape", [(4, 8), (2, 3, 16)])
def test_bias_gelu(rng, shape):
    check("BiasGelu", [("a", rand(rng, *shape, scale=3)), ("b", rand(rng, shape[-1]))], atol=2e-6)


@pytest.mark.parametrize("alpha", [None, 1.0, -0.5])
def test_quick_gelu(rng, alpha):
    attrs = {} if alpha is None else {"alpha": alpha}
    check("QuickGelu", [("x", rand(rng, 2, 3, 9, scale=4))], attrs=attrs, atol=2e-6)


def _graph(nodes, inputs, output_shape, inits=()):
    g = helper.make_graph(nodes, "ref", [helper.make_tensor_value_info(n, F32, s) for n, s in inputs],
                          [helper.make_tensor_value_info("y", F32, output_shape)], initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize("shape", [(2, 6, 8), (1, 16, 4)])
def test_bias_add(rng, shape):
    ref = _graph([helper.make_node("Add", ["x", "bias"], ["t"]), helper.make_node("Add", ["t", "skip"], ["y"])],
                 [("x", shape), ("bias", shape[-1:]), ("skip", shape)], shape)
    check_against_graph("BiasAdd", [("x", rand(rng, *shape)), ("bias", rand(rng, shape[-1])),
                                    ("skip", rand(rng, *shape))], ref)


@pytest.mark.parametrize("shape", [(2, 6, 8), (1, 5, 32)])
def test_bias_split_gelu(rng, shape):
    half = shape[-1] // 2
    out = shape[:-1] + (half,)
    ref = _graph([helper.make_node("Add", ["x", "bias"], ["t"]),
                  helper.make_node("Split", ["t"], ["left", "right"], axis=-1, num_outputs=2),
                  helper.make_node("Gelu", ["right"], ["g"]), helper.make_node("Mul", ["left", "g"], ["y"])],
                 [("x", shape), ("bias", shape[-1:])], out)
    check_against_graph("BiasSplitGelu", [("x", rand(rng, *shape, scale=2)), ("bias", rand(rng, shape[-1]))],
                        ref, atol=2e-6)


@pytest.mark.parametrize("bias_shape,inner", [((2, 1, 1, 5), 1), ((1, 3, 4, 5), 0), ((3, 4, 5), 0),
                                              ((2, 3, 4, 5), 0)])
def test_bias_softmax(rng, bias_shape, inner):
    shape = (2, 3, 4, 5)
    ref = _graph([helper.make_node("Add", ["data", "bias"], ["t"]), helper.make_node("Softmax", ["t"], ["y"], axis=-1)],
                 [("data", shape), ("bias", bias_shape)], shape)
    check_against_graph("BiasSoftmax", [("data", rand(rng, *shape, scale=2)), ("bias", rand(rng, *bias_shape))],
                        ref, attrs={"axis": 3, "is_inner_broadcast": inner}, atol=1e-6)


def test_bias_softmax_over_several_axes(rng):
    """axis 2 of a 4-D input: one softmax over the last two axes jointly (as Softmax-11 did)."""
    shape = (2, 3, 4, 5)
    g = helper.make_graph([helper.make_node("Add", ["data", "bias"], ["t"]),
                           helper.make_node("Softmax", ["t"], ["y"], axis=2)], "ref",
                          [helper.make_tensor_value_info("data", F32, shape),
                           helper.make_tensor_value_info("bias", F32, (1, 3, 4, 5))],
                          [helper.make_tensor_value_info("y", F32, shape)])
    ref = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])
    check_against_graph("BiasSoftmax", [("data", rand(rng, *shape)), ("bias", rand(rng, 1, 3, 4, 5))], ref,
                        attrs={"axis": 2, "is_inner_broadcast": 0}, atol=1e-6)

"""com.microsoft FusedConv, FusedGemm, FusedMatMul (onnxruntime's CPU kernels) and NhwcConv
(GPU-only in onnxruntime: compared with Transpose + Conv + Transpose run by onnxruntime)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from test_contrib_common import check, check_against_graph, rand

F32 = TensorProto.FLOAT

# Activations onnxruntime's FusedConv accepts (MLAS's), with activation_params.
CONV_ACTS = [(None, None), ("Relu", None), ("Sigmoid", None), ("Tanh", None), ("HardSwish", None),
             ("LeakyRelu", [0.2]), ("HardSigmoid", [0.3, 0.4]), ("Clip", [-0.5, 0.7])]


@pytest.mark.parametrize("act,params", CONV_ACTS)
@pytest.mark.parametrize("with_z", [False, True])
def test_fused_conv(rng, act, params, with_z):
    x, w, b = rand(rng, 1, 3, 7, 7), rand(rng, 4, 3, 3, 3), rand(rng, 4)
    attrs = {"pads": [1, 1, 1, 1], "strides": [1, 1]}
    if act:
        attrs["activation"] = act
    if params:
        attrs["activation_params"] = params
    ins = [("x", x), ("w", w), ("b", b)] + ([("z", rand(rng, 1, 4, 7, 7))] if with_z else [])
    check("FusedConv", ins, attrs=attrs, consts=("w", "b"), atol=2e-5)


@pytest.mark.parametrize("geometry", [dict(strides=[2, 2]), dict(group=2), dict(dilations=[2, 1]),
                                      dict(auto_pad="SAME_UPPER")])
def test_fused_conv_geometry(rng, geometry):
    cin = 4
    w = rand(rng, 6, cin // geometry.get("group", 1), 3, 3)
    check("FusedConv", [("x", rand(rng, 2, cin, 8, 9)), ("w", w)],
          attrs=dict(geometry, activation="Relu"), consts=("w",), atol=2e-5)


GEMM_ACTS = [("Relu", {}), ("Sigmoid", {}), ("Tanh", {}), ("LeakyRelu", {"activation_alpha": 0.2}),
             ("HardSigmoid", {"activation_alpha": 0.3, "activation_beta": 0.4}),
             ("Elu", {"activation_alpha": 0.7}), ("Selu", {"activation_alpha": 1.5, "activation_gamma": 1.1}),
             ("Celu", {"activation_alpha": 0.8}), ("ThresholdedRelu", {"activation_alpha": 0.3}),
             ("Softsign", {}), ("Softplus", {}), ("ScaledTanh", {"activation_alpha": 1.5, "activation_beta": 0.5}),
             ("ParametricSoftplus", {"activation_alpha": 1.5, "activation_beta": 0.5})]


@pytest.mark.parametrize("act,params", GEMM_ACTS)
def test_fused_gemm_activations(rng, act, params):
    ins = [("a", rand(rng, 5, 6)), ("b", rand(rng, 6, 4)), ("c", rand(rng, 4))]
    check("FusedGemm", ins, attrs=dict(params, activation=act), atol=2e-5)


@pytest.mark.parametrize("attrs", [dict(transA=1), dict(transB=1, alpha=0.5, beta=2.0), dict(beta=0.0),
                                   dict(transA=1, transB=1)])
@pytest.mark.parametrize("c_shape", [None, (1,), (4,), (5, 4)])
def test_fused_gemm_layouts(rng, attrs, c_shape):
    a = rand(rng, 6, 5) if attrs.get("transA") else rand(rng, 5, 6)
    b = rand(rng, 4, 6) if attrs.get("transB") else rand(rng, 6, 4)
    ins = [("a", a), ("b", b)] + ([("c", rand(rng, *c_shape))] if c_shape else [])
    check("FusedGemm", ins, attrs=dict(attrs, activation="LeakyRelu", activation_alpha=0.1), consts=("b",),
          atol=2e-5)


@pytest.mark.parametrize("sa,sb,attrs", [
    ((2, 3, 4), (2, 4, 5), {}),
    ((2, 3, 4), (4, 5), {"alpha": 0.5}),
    ((3, 4), (2, 4, 5), {}),
    ((5,), (2, 5, 3), {}),
    ((2, 3, 4), (2, 5, 4), {"transB": 1}),
    ((2, 4, 3), (2, 4, 5), {"transA": 1, "alpha": 2.0}),
    ((3, 2, 4), (2, 4, 5), {"transBatchA": 1}),
    ((2, 3, 4), (4, 2, 5), {"transBatchB": 1}),
    ((4, 2, 3, 5), (2, 3, 5, 6), {"transBatchA": 1}),
    ((3, 2, 4), (2, 3, 5), {"transBatchA": 1, "transA": 1}),
    ((2, 3, 4), (5, 2, 4), {"transBatchB": 1, "transB": 1, "alpha": 0.25}),
])
def test_fused_matmul(rng, sa, sb, attrs):
    check("FusedMatMul", [("a", rand(rng, *sa)), ("b", rand(rng, *sb))], attrs=attrs, atol=2e-5)


def _nhwc_reference(x_shape, w_nchw, y_channels, attrs, with_bias):
    nodes = [helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xc", "wc"] + (["b"] if with_bias else []), ["yc"], **attrs),
             helper.make_node("Transpose", ["yc"], ["y"], perm=[0, 2, 3, 1])]
    inits = [helper.make_tensor("wc", F32, w_nchw.shape, w_nchw.ravel())]
    ins = [helper.make_tensor_value_info("x", F32, x_shape)]
    if with_bias:
        ins.append(helper.make_tensor_value_info("b", F32, [y_channels]))
    g = helper.make_graph(nodes, "ref", ins, [helper.make_tensor_value_info("y", F32, None)], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("attrs", [{"pads": [1, 1, 1, 1]}, {"strides": [2, 2]}, {"group": 2},
                                   {"dilations": [1, 2], "pads": [0, 2, 0, 2]}])
@pytest.mark.parametrize("with_bias", [False, True])
def test_nhwc_conv(rng, attrs, with_bias):
    cin, cout = 4, 6
    x = rand(rng, 2, 7, 8, cin)
    w_nchw = rand(rng, cout, cin // attrs.get("group", 1), 3, 3)
    ins = [("x", x), ("w", np.ascontiguousarray(w_nchw.transpose(0, 2, 3, 1)))]
    if with_bias:
        ins.append(("b", rand(rng, cout)))
    check_against_graph("NhwcConv", ins, _nhwc_reference(x.shape, w_nchw, cout, attrs, with_bias),
                        attrs=attrs, consts=("w",), atol=2e-5)


# B big enough (> gemm.PACK_MIN elements) to be packed at session build.
@pytest.mark.parametrize("sb,attrs", [((256, 300), {"alpha": 0.5}), ((300, 256), {"transB": 1}),
                                      ((300, 256), {"transB": 1, "transA": 1})])
def test_fused_matmul_constant_weights(rng, sb, attrs):
    """A constant B is packed once (transposed there for transB)."""
    sa = (2, 256, 3) if attrs.get("transA") else (2, 3, 256)
    check("FusedMatMul", [("a", rand(rng, *sa)), ("b", rand(rng, *sb))], attrs=attrs, consts=("b",), atol=2e-5)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_fused_gemm_constant_weights(rng, trans_b):
    b = rand(rng, 300, 256) if trans_b else rand(rng, 256, 300)
    check("FusedGemm", [("a", rand(rng, 5, 256)), ("b", b), ("c", rand(rng, 300))],
          attrs={"transB": trans_b, "activation": "Tanh"}, consts=("b", "c"), atol=2e-5)

"""Normalization contrib ops vs onnxruntime: SkipLayerNormalization,
SkipSimplifiedLayerNormalization, EmbedLayerNormalization, SimplifiedLayerNormalization and
LayerNormalization below opset 17 (both in the ONNX domain, as onnxruntime registers them), and
GroupNorm (GPU-only in onnxruntime: compared with onnxruntime running the standard-op graph)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ep_core
from ep_core.errors import InvalidArgument
from test_contrib_common import check, check_against_graph, node_model, rand, run_ours, typed_outputs

F32 = TensorProto.FLOAT


@pytest.mark.parametrize("skip_shape", ["full", "row", "2d"])
@pytest.mark.parametrize("optional", ["all", "no_bias", "no_beta", "minimal"])
@pytest.mark.parametrize("n_out", [1, 4])
def test_skip_layer_normalization(rng, skip_shape, optional, n_out):
    x = rand(rng, 2, 3, 16)
    skip = {"full": rand(rng, 2, 3, 16), "row": rand(rng, 1, 3, 16), "2d": rand(rng, 3, 16)}[skip_shape]
    beta = None if optional in ("no_beta", "minimal") else rand(rng, 16)
    bias = None if optional in ("no_bias", "minimal") else rand(rng, 16)
    ins = [("x", x), ("skip", skip), ("gamma", rand(rng, 16)), ("beta", beta), ("bias", bias)]
    check("SkipLayerNormalization", ins, n_out, {"epsilon": 1e-5}, atol=2e-5)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("n_out", [1, 4])
@pytest.mark.parametrize("shape", [(2, 3, 16), (5, 8)])
def test_skip_simplified_layer_normalization(rng, with_bias, n_out, shape):
    ins = [("x", rand(rng, *shape)), ("skip", rand(rng, *shape)), ("gamma", rand(rng, shape[-1])),
           ("bias", rand(rng, shape[-1]) if with_bias else None)]
    check("SkipSimplifiedLayerNormalization", ins, n_out, {"epsilon": 1e-6}, atol=2e-5)


def _embed_inputs(rng, segments=True, mask=True, position_ids=None, b=2, s=5, h=8, v=20):
    ins = [("ids", rng.integers(0, v, (b, s)).astype(np.int32)),
           ("seg", rng.integers(0, 2, (b, s)).astype(np.int32) if segments else None),
           ("word", rand(rng, v, h)), ("pos", rand(rng, 16, h)),
           ("segemb", rand(rng, 2, h) if segments else None),
           ("gamma", rand(rng, h)), ("beta", rand(rng, h)),
           ("mask", np.array([[1, 1, 0, 1, 0], [1] * 5], np.int32)[:b, :s] if mask else None)]
    if position_ids is not None:
        ins.append(("pid", position_ids))
    return ins


@pytest.mark.parametrize("segments", [True, False])
@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("n_out", [2, 3])
def test_embed_layer_normalization(rng, segments, mask, n_out):
    check("EmbedLayerNormalization", _embed_inputs(rng, segments, mask), n_out, {"epsilon": 1e-12},
          atol=2e-5)


@pytest.mark.parametrize("pid_shape", [(1, 5), (2, 5)])
def test_embed_layer_normalization_position_ids(rng, pid_shape):
    pid = np.broadcast_to(np.array([[3, 1, 2, 0, 4]], np.int32), pid_shape).copy()
    check("EmbedLayerNormalization", _embed_inputs(rng, position_ids=pid), 3, atol=2e-5)


def test_embed_layer_normalization_refuses_out_of_range_ids(rng):
    ins = _embed_inputs(rng)
    ins[0] = ("ids", np.full((2, 5), 99, np.int32))
    model, feeds = node_model("EmbedLayerNormalization", ins, 2)
    model = typed_outputs(model, [np.zeros((2, 5, 8), np.float32), np.zeros(2, np.int32)])
    with pytest.raises(InvalidArgument, match="input_ids out of range"):
        run_ours(model, feeds)


def _onnx_domain_model(op, opset, x, scale, bias=None, n_out=1, **attrs):
    inits = [onnx.numpy_helper.from_array(scale, "scale")]
    ins = ["x", "scale"]
    if bias is not None:
        inits.append(onnx.numpy_helper.from_array(bias, "bias"))
        ins.append("bias")
    outs = ["y", "a", "b"][:n_out]
    g = helper.make_graph([helper.make_node(op, ins, outs, **attrs)], "g",
                          [helper.make_tensor_value_info("x", F32, x.shape)],
                          [onnx.ValueInfoProto(name=o) for o in outs], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _run_skipping_checker(model, feeds):
    """onnxruntime registers these ops in the ONNX domain where onnx has no schema for them, so
    onnx.checker refuses the model; our loader runs the checker (see the report). Load through
    the offline-model path, which trusts the model."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.metadata_props.add(key="ep_core.optimized", value="1")
    return ep_core.InferenceSession(m.SerializeToString(), providers=["cpu"]).run(None, feeds)


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("n_out", [1, 2])
def test_simplified_layer_normalization(rng, axis, n_out):
    from test_contrib_common import compare, run_ort
    x = rand(rng, 2, 3, 8)
    scale = rand(rng, *x.shape[axis:]) if axis != -1 else rand(rng, 8)
    model = _onnx_domain_model("SimplifiedLayerNormalization", 17, x, scale, n_out=n_out, axis=axis,
                               epsilon=1e-6)
    refs = run_ort(model, {"x": x})
    compare("SimplifiedLayerNormalization", _run_skipping_checker(typed_outputs(model, refs), {"x": x}),
            refs, atol=2e-5)


@pytest.mark.parametrize("opset", [13, 16])
@pytest.mark.parametrize("n_out", [1, 3])
def test_layer_normalization_below_opset_17(rng, opset, n_out):
    from test_contrib_common import compare, run_ort
    x = rand(rng, 2, 3, 8)
    model = _onnx_domain_model("LayerNormalization", opset, x, rand(rng, 8), rand(rng, 8), n_out=n_out,
                               epsilon=1e-5)
    refs = run_ort(model, {"x": x})
    compare("LayerNormalization", _run_skipping_checker(typed_outputs(model, refs), {"x": x}), refs,
            atol=2e-5)


def _group_norm_reference(shape_nhwc, groups, silu):
    """Transpose to NCHW, GroupNormalization-21 (per-channel scale), [SiLU], back to NHWC."""
    nodes = [helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]),
             helper.make_node("GroupNormalization", ["xc", "gamma", "beta"], ["n"], num_groups=groups,
                              epsilon=1e-5)]
    last = "n"
    if silu:
        nodes += [helper.make_node("Sigmoid", ["n"], ["sg"]), helper.make_node("Mul", ["n", "sg"], ["ns"])]
        last = "ns"
    nodes.append(helper.make_node("Transpose", [last], ["y"], perm=[0, 2, 3, 1]))
    c = shape_nhwc[-1]
    g = helper.make_graph(nodes, "ref", [helper.make_tensor_value_info("x", F32, shape_nhwc),
                                         helper.make_tensor_value_info("gamma", F32, [c]),
                                         helper.make_tensor_value_info("beta", F32, [c])],
                          [helper.make_tensor_value_info("y", F32, shape_nhwc)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("silu", [0, 1])
@pytest.mark.parametrize("shape,groups", [((2, 4, 4, 8), 4), ((1, 3, 5, 6), 2), ((1, 2, 2, 4), 1)])
def test_group_norm(rng, shape, groups, silu):
    ins = [("x", rand(rng, *shape)), ("gamma", rand(rng, shape[-1])), ("beta", rand(rng, shape[-1]))]
    check_against_graph("GroupNorm", ins, _group_norm_reference(shape, groups, silu),
                        attrs={"groups": groups, "activation": silu, "epsilon": 1e-5, "channels_last": 1},
                        atol=2e-5)


@pytest.mark.parametrize("mask", [False, True])
def test_qembed_layer_normalization(rng, mask):
    """Quantized tables (what quantize_dynamic writes for EmbedLayerNormalization)."""
    b, s, h, v = 2, 5, 8, 20
    q = lambda *shape: rng.integers(0, 256, shape).astype(np.uint8)  # noqa: E731
    sc = lambda: np.float32(rng.random() * 0.02 + 0.005)             # noqa: E731
    ins = [("ids", rng.integers(0, v, (b, s)).astype(np.int32)), ("seg", rng.integers(0, 2, (b, s)).astype(np.int32)),
           ("word", q(v, h)), ("pos", q(16, h)), ("segemb", q(2, h)), ("gamma", q(h)), ("beta", q(h)),
           ("mask", np.array([[1, 1, 0, 1, 0], [1] * 5], np.int32) if mask else None),
           ("word_s", sc()), ("pos_s", sc()), ("seg_s", sc()), ("gamma_s", sc()), ("beta_s", sc()),
           ("word_z", np.uint8(128)), ("pos_z", np.uint8(120)), ("seg_z", np.uint8(130)), ("gamma_z", np.uint8(3)),
           ("beta_z", np.uint8(128))]
    check("QEmbedLayerNormalization", ins, 2, {"epsilon": 1e-12},
          consts=[n for n, _ in ins if n not in ("ids", "seg", "mask")], atol=2e-5)

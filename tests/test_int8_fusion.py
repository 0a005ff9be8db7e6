"""Level-2 fusion of dynamic quantization's integer MatMul chains (`ep_core.rewrites_quant`):
DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scale product) [-> Add(bias)] becomes
com.microsoft::DynamicQuantizeMatMul (or MatMulIntegerToFloat), with the unfused graph's
outputs; and it does not fire where the pattern differs."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from conftest import ort_int8_exact
from onnx.reference import ReferenceEvaluator
from opt_helpers import compare, init, model, ops, options, session

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the test oracle ([dev] extra)")

F32, I8, U8 = TensorProto.FLOAT, TensorProto.INT8, TensorProto.UINT8
K, N = 24, 10
QUANT_OPS = ("DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "Add", "MatMulIntegerToFloat",
             "DynamicQuantizeMatMul")


def _weights(rng, per_column=True):
    w = rng.integers(-127, 128, (K, N)).astype(np.int8)
    scale = (rng.random(N if per_column else ()) * 0.02 + 0.002).astype(np.float32)
    return [init("w", w), init("w_scale", scale), init("w_zp", np.zeros(N if per_column else (), np.int8)),
            init("bias", rng.standard_normal(N).astype(np.float32))]


def _chain(x="x", w="w", w_scale="w_scale", w_zp="w_zp", out="y", bias=True, tag=""):
    """x -> DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(Mul(x_scale, w_scale)) [-> Add]."""
    mm = f"mm{tag}"
    nodes = [helper.make_node("DynamicQuantizeLinear", [x], [f"xq{tag}", f"xs{tag}", f"xz{tag}"]),
             helper.make_node("MatMulInteger", [f"xq{tag}", w, f"xz{tag}", w_zp], [mm]),
             helper.make_node("Cast", [mm], [f"mmf{tag}"], to=F32),
             helper.make_node("Mul", [f"xs{tag}", w_scale], [f"s{tag}"]),
             helper.make_node("Mul", [f"mmf{tag}", f"s{tag}"], [f"scaled{tag}"] if bias else [out])]
    if bias:
        nodes.append(helper.make_node("Add", [f"scaled{tag}", "bias"], [out]))
    return nodes


def _feeds(rng, shape=(2, 5, K)):
    return {"x": rng.standard_normal(shape).astype(np.float32)}


def _same_as_onnxruntime(m, feeds, atol=1e-5):
    ours = session(m).run(None, feeds)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    # its u8 x s8 products saturate where its exact mode cannot build on a CPU without VNNI
    # (conftest.py): onnx's reference runtime then
    theirs = sess.run(None, feeds) if ort_int8_exact(sess) else ReferenceEvaluator(m).run(None, feeds)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol)


def _quant_ops(names):
    return [op for op in names if op in QUANT_OPS]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("per_column", [True, False])
def test_chain_becomes_dynamic_quantize_matmul(rng, bias, per_column):
    m = model(_chain(bias=bias), [("x", F32, [2, 5, K])], [("y", F32, [2, 5, N])],
              _weights(rng, per_column), domains=[("com.microsoft", 1)])
    feeds = _feeds(rng)
    before, after = compare(m, feeds, rtol=0, atol=0)
    assert _quant_ops(before) == ["DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "Mul"] + \
        (["Add"] if bias else [])
    assert after == ["DynamicQuantizeMatMul"]
    _same_as_onnxruntime(m, feeds)


def test_shared_quantization_keeps_one_dynamic_quantize_linear(rng):
    """Q/K/V-style: one DynamicQuantizeLinear feeds two products: x is quantized once and each
    product becomes a MatMulIntegerToFloat."""
    nodes = _chain(out="y1")
    nodes += [helper.make_node("MatMulInteger", ["xq", "w2", "xz", "w_zp"], ["mm2"]),
              helper.make_node("Cast", ["mm2"], ["mmf2"], to=F32),
              helper.make_node("Mul", ["xs", "w_scale"], ["s2"]),
              helper.make_node("Mul", ["mmf2", "s2"], ["y2"])]
    w2 = init("w2", rng.integers(-127, 128, (K, N)).astype(np.int8))
    m = model(nodes, [("x", F32, [7, K])], [("y1", F32, [7, N]), ("y2", F32, [7, N])], _weights(rng) + [w2])
    feeds = _feeds(rng, (7, K))
    _, after = compare(m, feeds, rtol=0, atol=0)
    assert sorted(after) == ["DynamicQuantizeLinear", "MatMulIntegerToFloat", "MatMulIntegerToFloat"]
    _same_as_onnxruntime(m, feeds)


def test_two_activations_become_matmul_integer_to_float(rng):
    """Attention's Q @ K^T: both operands quantized dynamically, B not a constant."""
    nodes = [helper.make_node("DynamicQuantizeLinear", ["q"], ["qq", "qs", "qz"]),
             helper.make_node("DynamicQuantizeLinear", ["k"], ["kq", "ks", "kz"]),
             helper.make_node("MatMulInteger", ["qq", "kq", "qz", "kz"], ["mm"]),
             helper.make_node("Cast", ["mm"], ["mmf"], to=F32),
             helper.make_node("Mul", ["qs", "ks"], ["s"]),
             helper.make_node("Mul", ["mmf", "s"], ["y"])]
    m = model(nodes, [("q", F32, [2, 3, 6, 8]), ("k", F32, [2, 3, 8, 6])], [("y", F32, [2, 3, 6, 6])])
    feeds = {"q": rng.standard_normal((2, 3, 6, 8)).astype(np.float32),
             "k": rng.standard_normal((2, 3, 8, 6)).astype(np.float32)}
    _, after = compare(m, feeds, rtol=0, atol=0)
    assert sorted(after) == ["DynamicQuantizeLinear", "DynamicQuantizeLinear", "MatMulIntegerToFloat"]
    _same_as_onnxruntime(m, feeds)


def test_non_constant_weights_stop_at_matmul_integer_to_float(rng):
    """A weight fed at run time: no DynamicQuantizeMatMul (its B must be a constant)."""
    inits = [i for i in _weights(rng) if i.name != "w"]
    m = model(_chain(), [("x", F32, [3, K]), ("w", I8, [K, N])], [("y", F32, [3, N])], inits)
    feeds = {**_feeds(rng, (3, K)), "w": rng.integers(-127, 128, (K, N)).astype(np.int8)}
    _, after = compare(m, feeds, rtol=0, atol=0)
    assert sorted(after) == ["DynamicQuantizeLinear", "MatMulIntegerToFloat"]


def _unfused(m, feeds):
    before, after = compare(m, feeds, rtol=0, atol=0)
    assert "MatMulIntegerToFloat" not in after and "DynamicQuantizeMatMul" not in after, after
    assert "MatMulInteger" in after
    return after


def test_scale_not_the_product_of_the_two(rng):
    """Mul by a scale that is not x_scale * w_scale: the Cast/Mul chain stays."""
    nodes = _chain(bias=False)
    nodes[3] = helper.make_node("Mul", ["other_scale", "w_scale"], ["s"])
    m = model(nodes, [("x", F32, [3, K]), ("other_scale", F32, [])], [("y", F32, [3, N]), ("xs", F32, [])],
              _weights(rng))
    _unfused(m, {**_feeds(rng, (3, K)), "other_scale": np.float32(0.5)})


def test_scale_is_only_the_weight_scale(rng):
    nodes = _chain(bias=False)
    del nodes[3]
    nodes[3] = helper.make_node("Mul", ["mmf", "w_scale"], ["y"])
    m = model(nodes, [("x", F32, [3, K])], [("y", F32, [3, N])], _weights(rng))
    _unfused(m, _feeds(rng, (3, K)))


def test_zero_point_not_the_quantizers(rng):
    nodes = _chain(bias=False)
    nodes[1] = helper.make_node("MatMulInteger", ["xq", "w", "my_zp", "w_zp"], ["mm"])
    m = model(nodes, [("x", F32, [3, K])], [("y", F32, [3, N])], _weights(rng) + [init("my_zp", np.uint8(3))])
    _unfused(m, _feeds(rng, (3, K)))


def test_product_without_the_quantizers_zero_point(rng):
    """MatMulInteger without A's zero point (taken as 0): a MatMulIntegerToFloat without one,
    never a DynamicQuantizeMatMul (which would subtract the quantizer's zero point)."""
    nodes = _chain(bias=False)
    nodes[1] = helper.make_node("MatMulInteger", ["xq", "w"], ["mm"])
    m = model(nodes, [("x", F32, [3, K])], [("y", F32, [3, N])], _weights(rng))
    _, after = compare(m, _feeds(rng, (3, K)), rtol=0, atol=0)
    assert sorted(after) == ["DynamicQuantizeLinear", "MatMulIntegerToFloat"]


def test_cast_to_another_type_or_product_read_elsewhere(rng):
    nodes = _chain(bias=False)
    m = model(nodes, [("x", F32, [3, K])], [("y", F32, [3, N]), ("mm", TensorProto.INT32, [3, N])],
              _weights(rng))
    _unfused(m, _feeds(rng, (3, K)))
    nodes = _chain(bias=False)
    nodes[2] = helper.make_node("Cast", ["mm"], ["mmf"], to=TensorProto.DOUBLE)
    nodes[4:] = [helper.make_node("Cast", ["s"], ["s64"], to=TensorProto.DOUBLE),
                 helper.make_node("Mul", ["mmf", "s64"], ["y"])]
    m = model(nodes, [("x", F32, [3, K])], [("y", TensorProto.DOUBLE, [3, N])], _weights(rng))
    _unfused(m, _feeds(rng, (3, K)))


def test_disabled_by_name_and_below_level_2(rng):
    m = model(_chain(), [("x", F32, [2, 5, K])], [("y", F32, [2, 5, N])], _weights(rng))
    names = ["FuseMatMulIntegerToFloat", "FuseDynamicQuantizeMatMul"]
    assert "MatMulInteger" in ops(session(m, options(disabled=names)))
    assert "MatMulIntegerToFloat" in ops(session(m, options(disabled=names[1:])))


def test_onnxruntime_quantized_mlp(rng, tmp_path):
    """A model onnxruntime's quantize_dynamic writes (MatMulInteger chains): fused here, same
    outputs as unfused and as onnxruntime."""
    from onnxruntime.quantization import quantize_dynamic
    from quantization_models import mlp_classifier
    src, dst = tmp_path / "mlp.onnx", tmp_path / "mlp_q.onnx"
    src.write_bytes(mlp_classifier().SerializeToString())
    quantize_dynamic(str(src), str(dst), per_channel=True)
    import onnx
    m = onnx.load(str(dst))
    x = rng.standard_normal((16, 64)).astype(np.float32)
    feeds = {m.graph.input[0].name: x}
    before, after = compare(m, feeds, rtol=1e-5, atol=1e-5)
    assert "MatMulInteger" in before and "MatMulInteger" not in after
    assert "DynamicQuantizeMatMul" in after
    assert len(after) < len(before)
    _same_as_onnxruntime(m, feeds, atol=1e-4)

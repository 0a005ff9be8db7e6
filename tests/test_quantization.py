"""ep_core.quantization: INT8 dynamic and static (QDQ, QOperator) quantization of classifiers
trained on scikit-learn's digits, run by our runtime; accuracy within 1 point of FP32, size, and
our quantized models giving the same outputs in onnxruntime (the oracle, tests only)."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from ep_core.errors import InvalidArgument, NoSuchFile
from ep_core.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                  quantize_dynamic, quantize_static)
from quantization_models import (ListReader, accuracy, attention_block, cnn_classifier, digit_batches, digits,
                                 gpt2_shaped_decoder, mlp_classifier, ours, theirs)

ort = pytest.importorskip("onnxruntime")
MODELS = {"mlp": mlp_classifier, "cnn": cnn_classifier}


@pytest.fixture(scope="module")
def float_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("float")
    out = {}
    for name, build in MODELS.items():
        onnx.save(build(), str(d / f"{name}.onnx"))
        out[name] = d / f"{name}.onnx"
    return out


def _test_feeds():
    return {"X": digits()[1]}


def _op_types(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_accuracy_and_onnxruntime_agrees(float_models, tmp_path, model, per_channel):
    out = tmp_path / "dyn.onnx"
    quantize_dynamic(float_models[model], out, per_channel=per_channel)
    ops = _op_types(out)
    assert ("ConvInteger" in ops) == (model == "cnn") and "DynamicQuantizeMatMul" in ops
    assert not ops & {"MatMul", "Gemm", "Conv"}
    assert model != "mlp" or "Add" not in ops      # fc1's bias Add folded into the quantized MatMul
    f32 = accuracy(ours(float_models[model], _test_feeds()))
    y = ours(out, _test_feeds())
    assert abs(accuracy(y) - f32) <= 0.01, (accuracy(y), f32)
    # Integer kernels on both sides: the same result up to float32 rounding of the scaling.
    np.testing.assert_allclose(y, theirs(out, _test_feeds()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("fmt", [QuantFormat.QDQ, QuantFormat.QOperator])
@pytest.mark.parametrize("method", list(CalibrationMethod))
def test_static_accuracy_and_onnxruntime_agrees(float_models, tmp_path, model, fmt, method):
    out = tmp_path / "static.onnx"
    quantize_static(float_models[model], out, ListReader(digit_batches()), quant_format=fmt, per_channel=True,
                    calibrate_method=method)
    ops = _op_types(out)
    if fmt is QuantFormat.QDQ:
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    else:
        assert ("QLinearConv" in ops) == (model == "cnn") and "QGemm" in ops
        assert not ops & {"MatMul", "Gemm", "Conv", "Relu"}
    f32 = accuracy(ours(float_models[model], _test_feeds()))
    y = ours(out, _test_feeds())
    assert abs(accuracy(y) - f32) <= 0.01, (accuracy(y), f32)
    # onnxruntime fuses DQ -> op -> Q into integer kernels; an intermediate value may round to the
    # neighbouring level there, so allow one quantization step of the logits.
    step = float(onnx.numpy_helper.to_array(next(t for t in onnx.load(str(out)).graph.initializer
                                                 if t.name == "logits_scale")))
    assert np.max(np.abs(y - theirs(out, _test_feeds()))) <= step * 1.01


@pytest.mark.parametrize("activation_type, weight_type", [(QuantType.QInt8, QuantType.QInt8),
                                                          (QuantType.QUInt8, QuantType.QInt8),
                                                          (QuantType.QUInt8, QuantType.QUInt8)])
def test_static_types_qoperator_exact_against_onnxruntime(float_models, tmp_path, activation_type, weight_type):
    out = tmp_path / "s.onnx"
    quantize_static(float_models["cnn"], out, ListReader(digit_batches(4)), quant_format=QuantFormat.QOperator,
                    activation_type=activation_type, weight_type=weight_type, per_channel=False)
    y = ours(out, _test_feeds())
    assert abs(accuracy(y) - accuracy(ours(float_models["cnn"], _test_feeds()))) <= 0.01
    np.testing.assert_allclose(y, theirs(out, _test_feeds()), rtol=0, atol=1e-5)


def test_relu_folds_into_its_producer(float_models, tmp_path):
    out = tmp_path / "s.onnx"
    quantize_static(float_models["cnn"], out, ListReader(digit_batches(2)), quant_format=QuantFormat.QDQ)
    assert "Relu" not in _op_types(out)
    m = onnx.load(str(out))
    # The folded activation's range starts at 0: its zero point is the type's minimum.
    zp = next(t for t in m.graph.initializer if t.name == "r1_zero_point")
    assert int(onnx.numpy_helper.to_array(zp)) == -128


def test_attention_matmuls_of_two_activations(tmp_path):
    src, out = tmp_path / "att.onnx", tmp_path / "att_q.onnx"
    onnx.save(attention_block(), str(src))
    quantize_dynamic(src, out)
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("MatMulInteger") == 2 and ops.count("DynamicQuantizeMatMul") == 4
    x = {"X": np.random.default_rng(1).standard_normal((4, 8, 16)).astype(np.float32)}
    y, y32 = ours(out, x), ours(src, x)
    assert np.max(np.abs(y - y32)) < 0.05 * np.max(np.abs(y32))
    np.testing.assert_allclose(y, theirs(out, x), rtol=1e-5, atol=1e-5)
    quantize_dynamic(src, out, extra_options={"MatMulConstBOnly": True})
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("MatMulInteger") == 0 and ops.count("MatMul") == 2


def test_filters_op_types_and_node_names(float_models, tmp_path):
    out = tmp_path / "d.onnx"
    quantize_dynamic(float_models["cnn"], out, op_types_to_quantize=["Conv"], nodes_to_exclude=["conv2"])
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("ConvInteger") == 1 and ops.count("Conv") == 1 and "Gemm" in ops
    quantize_dynamic(float_models["cnn"], out, nodes_to_quantize=["head"])
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("Conv") == 2 and "DynamicQuantizeMatMul" in ops


def test_int8_size_at_most_030_of_fp32(tmp_path):
    src = tmp_path / "dec.onnx"
    onnx.save(gpt2_shaped_decoder(), str(src))
    ids = np.random.default_rng(0).integers(0, 512, (2, 6))
    quantize_dynamic(src, tmp_path / "d.onnx", per_channel=True)
    batches = [{"ids": np.random.default_rng(i).integers(0, 512, (2, 6))} for i in range(2)]
    quantize_static(src, tmp_path / "s.onnx", ListReader(batches), per_channel=True,
                    op_types_to_quantize=["MatMul", "Gather"])
    assert "DequantizeLinear" in _op_types(tmp_path / "d.onnx") and "Gather" in _op_types(tmp_path / "d.onnx")
    size = os.path.getsize(src)
    for name in ("d.onnx", "s.onnx"):
        assert os.path.getsize(tmp_path / name) <= 0.3 * size, name
        y = ours(tmp_path / name, {"ids": ids})
        y32 = ours(src, {"ids": ids})
        cos = float((y * y32).sum() / np.linalg.norm(y) / np.linalg.norm(y32))
        assert cos > 0.99, (name, cos)


def test_onnxruntime_enums_accepted(float_models, tmp_path):
    """A user's script passes onnxruntime's enum members and string names: both work."""
    from onnxruntime.quantization import QuantType as OrtQuantType
    quantize_dynamic(float_models["mlp"], tmp_path / "d.onnx", weight_type=OrtQuantType.QUInt8)
    m = onnx.load(str(tmp_path / "d.onnx"))
    w = next(t for t in m.graph.initializer if t.name == "W1_quantized")
    assert w.data_type == onnx.TensorProto.UINT8
    quantize_dynamic(float_models["mlp"], tmp_path / "d.onnx", weight_type="QInt8")


def test_bad_arguments_are_typed_errors(float_models, tmp_path):
    with pytest.raises(NoSuchFile):
        quantize_dynamic(tmp_path / "missing.onnx", tmp_path / "o.onnx")
    with pytest.raises(InvalidArgument, match="calibration_data_reader"):
        quantize_static(float_models["mlp"], tmp_path / "o.onnx", None)
    with pytest.raises(InvalidArgument, match="gave no batch"):
        quantize_static(float_models["mlp"], tmp_path / "o.onnx", ListReader([]))
    with pytest.raises(InvalidArgument, match="weight_type"):
        quantize_dynamic(float_models["mlp"], tmp_path / "o.onnx", weight_type=3.5)
    with pytest.raises(InvalidArgument, match="QUInt8"):
        quantize_static(float_models["mlp"], tmp_path / "o.onnx", ListReader(digit_batches(1)),
                        activation_type=QuantType.QInt8, weight_type=QuantType.QUInt8)
    with pytest.raises(ValueError, match="QuantType"):
        quantize_dynamic(float_models["mlp"], tmp_path / "o.onnx", weight_type="QInt3")

    class NotADict(CalibrationDataReader):
        def __init__(self):
            self.done = False

        def get_next(self):
            if self.done:
                return None
            self.done = True
            return [1, 2]
    with pytest.raises(InvalidArgument, match="dict"):
        quantize_static(float_models["mlp"], tmp_path / "o.onnx", NotADict())


@pytest.mark.parametrize("fmt", [QuantFormat.QDQ, QuantFormat.QOperator])
def test_gemm_alpha_beta(tmp_path, fmt):
    """QGemm scales (acc + C) by alpha: the int32 bias must carry beta / alpha."""
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(0)
    w, c = rng.standard_normal((6, 16)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "W", "C"], ["y"], alpha=0.5, beta=2.0, transB=1)], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 6])],
                          [numpy_helper.from_array(w, "W"), numpy_helper.from_array(c, "C")])
    src, out = tmp_path / "g.onnx", tmp_path / "q.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    x = rng.standard_normal((8, 16)).astype(np.float32)
    quantize_static(src, out, ListReader([{"x": x}]), quant_format=fmt)
    y, ref = ours(out, {"x": x}), 0.5 * x @ w.T + 2 * c
    assert np.max(np.abs(y - ref)) < 0.02 * np.max(np.abs(ref))
    np.testing.assert_allclose(y, theirs(out, {"x": x}), rtol=0, atol=1e-5)

"""Interop the other way: models onnxruntime's own tools quantize (quantize_dynamic,
quantize_static QDQ and QOperator, MatMulNBitsQuantizer) run here with onnxruntime's outputs;
and our 4-bit MatMulNBits / GatherBlockQuantized models run in onnxruntime with ours."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from ep_core.errors import InvalidArgument
from ep_core.quantization import MatMul4BitsQuantizer, MatMulNBitsQuantizer, quantize_matmul_4bits
from ep_core.quantization.matmul_nbits import quantize_blocks
from quantization_models import (ListReader, accuracy, attention_block, cnn_classifier, digit_batches, digits,
                                 gpt2_shaped_decoder, mlp_classifier, ours, theirs)

ort = pytest.importorskip("onnxruntime")
oq = pytest.importorskip("onnxruntime.quantization")


@pytest.fixture(scope="module")
def cnn_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("f") / "cnn.onnx"
    onnx.save(cnn_classifier(), str(p))
    return p


@pytest.mark.parametrize("per_channel", [False, True])
def test_onnxruntime_dynamic_runs_here(tmp_path, per_channel):
    src, out = tmp_path / "mlp.onnx", tmp_path / "q.onnx"
    onnx.save(mlp_classifier(), str(src))
    oq.quantize_dynamic(str(src), str(out), per_channel=per_channel)
    feeds = {"X": digits()[1]}
    y = ours(out, feeds)
    np.testing.assert_allclose(y, theirs(out, feeds), rtol=1e-5, atol=1e-5)
    assert abs(accuracy(y) - accuracy(ours(src, feeds))) <= 0.01


def test_onnxruntime_dynamic_attention_runs_here(tmp_path):
    src, out = tmp_path / "att.onnx", tmp_path / "q.onnx"
    onnx.save(attention_block(), str(src))
    oq.quantize_dynamic(str(src), str(out))
    x = {"X": np.random.default_rng(3).standard_normal((2, 8, 16)).astype(np.float32)}
    np.testing.assert_allclose(ours(out, x), theirs(out, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_onnxruntime_static_runs_here(cnn_path, tmp_path, fmt, per_channel):
    out = tmp_path / "q.onnx"
    oq.quantize_static(str(cnn_path), str(out), ListReader(digit_batches(4)), quant_format=oq.QuantFormat[fmt],
                       per_channel=per_channel)
    feeds = {"X": digits()[1]}
    y, y_ort = ours(out, feeds), theirs(out, feeds)
    assert abs(accuracy(y) - accuracy(y_ort)) <= 0.01
    m = onnx.load(str(out))
    scales = [float(onnx.numpy_helper.to_array(t)) for t in m.graph.initializer
              if t.name.startswith("logits") and t.name.endswith("scale") and not t.dims]
    # QOperator: integer kernels on both sides agree exactly; QDQ: we compute the simulated
    # graph where onnxruntime fuses integer kernels, so one step of the logits at most.
    step = max(scales) if scales else 0.05
    assert np.max(np.abs(y - y_ort)) <= (1e-5 if fmt == "QOperator" else step * 1.01)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block", [16, 32, 128])
def test_onnxruntime_matmul_nbits_runs_here(tmp_path, symmetric, block):
    pytest.importorskip("onnx_ir", reason="onnxruntime's MatMulNBitsQuantizer imports onnx_ir (dev extra)")
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer as OrtQuantizer
    q = OrtQuantizer(gpt2_shaped_decoder(d=128, layers=1, vocab=256), block_size=block, is_symmetric=symmetric)
    q.process()
    out = tmp_path / "q4.onnx"
    q.model.save_model_to_file(str(out), False)
    assert "MatMulNBits" in {n.op_type for n in onnx.load(str(out)).graph.node}
    ids = {"ids": np.random.default_rng(0).integers(0, 256, (2, 5))}
    np.testing.assert_allclose(ours(out, ids), theirs(out, ids), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block", [16, 32, 64])
@pytest.mark.parametrize("gather", [False, True])
def test_our_4bit_runs_in_onnxruntime(tmp_path, symmetric, block, gather):
    src, out = tmp_path / "dec.onnx", tmp_path / "q4.onnx"
    onnx.save(gpt2_shaped_decoder(d=128, layers=1, vocab=256), str(src))
    ops = ("MatMul", "Gather") if gather else ("MatMul",)
    q = MatMul4BitsQuantizer(str(src), block_size=block, is_symmetric=symmetric, op_types_to_quantize=ops)
    q.process()
    q.model.save_model_to_file(str(out))
    kinds = [n.op_type for n in q.model.model.graph.node]
    assert kinds.count("MatMulNBits") == 5 and ("GatherBlockQuantized" in kinds) == gather
    ids = {"ids": np.random.default_rng(0).integers(0, 256, (2, 5))}
    y = ours(out, ids)
    np.testing.assert_allclose(y, theirs(out, ids), rtol=1e-4, atol=1e-5)
    y32 = ours(src, ids)
    cos = float((y * y32).sum() / np.linalg.norm(y) / np.linalg.norm(y32))
    assert cos > 0.95, cos


def test_4bit_block32_size_at_most_020_of_fp32(tmp_path):
    src, out = tmp_path / "dec.onnx", tmp_path / "q4.onnx"
    onnx.save(gpt2_shaped_decoder(), str(src))
    m = quantize_matmul_4bits(str(src), block_size=32, is_symmetric=True, op_types_to_quantize=("MatMul", "Gather"))
    onnx.save(m, str(out))
    assert os.path.getsize(out) <= 0.2 * os.path.getsize(src)
    # Weight-only: even the MatMul-only file is far below the INT8 bound.
    onnx.save(quantize_matmul_4bits(str(src), block_size=32), str(out))
    assert os.path.getsize(out) <= 0.25 * os.path.getsize(src)


def test_block_packing_round_trips():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((70, 3)).astype(np.float32)          # K not a multiple of the block
    for symmetric in (True, False):
        packed, scales, zeros = quantize_blocks(w, 32, symmetric)
        assert packed.shape == (3, 3, 16) and scales.shape == (9,)
        q = np.stack([packed & 15, packed >> 4], axis=-1).reshape(3, 3, 32).astype(np.float32)
        if symmetric:
            zp = np.full((3, 3), 8.0)
            assert zeros is None
        else:
            z = zeros.reshape(3, 2)
            zp = np.stack([z & 15, z >> 4], axis=-1).reshape(3, 4)[:, :3].astype(np.float32)
        back = ((q - zp[..., None]) * scales.reshape(3, 3)[..., None]).reshape(3, 96)[:, :70].T
        # Within one step of its block: half a step of rounding, up to one at the end of the range
        # that the grid cannot reach (the +7 side of a symmetric block, the rounded zero point's).
        step = np.repeat(np.abs(scales).reshape(3, 3), 32, axis=1)[:, :70].T
        err = np.abs(back - w)
        assert np.all(err <= step + 1e-6) and np.median(err / step) < 0.3


def test_4bit_arguments():
    m = gpt2_shaped_decoder(d=64, layers=1, vocab=64)
    with pytest.raises(InvalidArgument, match="block_size"):
        MatMul4BitsQuantizer(m, block_size=24)
    with pytest.raises(InvalidArgument, match="bits"):
        MatMulNBitsQuantizer(m, bits=3)
    q = MatMul4BitsQuantizer(m, block_size=16, nodes_to_exclude=["lm_head_mm"])
    q.process()
    kinds = [n.op_type for n in q.model.model.graph.node]
    assert kinds.count("MatMul") == 1 and kinds.count("MatMulNBits") == 4

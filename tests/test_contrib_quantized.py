"""Quantized matrix contrib ops vs onnxruntime: DynamicQuantizeMatMul, MatMulIntegerToFloat,
MatMulInteger16, QGemm, MatMulNBits, GatherBlockQuantized, contrib QuantizeLinear /
DequantizeLinear."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from test_contrib_common import check, rand


def _q(rng, dtype, *shape):
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)


@pytest.mark.parametrize("b_type", [np.int8, np.uint8])
@pytest.mark.parametrize("per_column", [False, True])
@pytest.mark.parametrize("with_zp", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_dynamic_quantize_matmul(rng, b_type, per_column, with_zp, with_bias):
    a = rand(rng, 2, 3, 16)
    n = 5
    scale = (rng.random(n if per_column else ()) * 0.02 + 0.005).astype(np.float32)
    zp = _q(rng, b_type, *((n,) if per_column else ())) // 8 if with_zp else None
    if zp is not None and b_type == np.int8 and not per_column:
        zp = np.int8(3)
    ins = [("a", a), ("b", _q(rng, b_type, 16, n)), ("b_scale", scale), ("b_zp", zp),
           ("bias", rand(rng, n) if with_bias else None)]
    check("DynamicQuantizeMatMul", ins, consts=("b", "b_scale", "b_zp", "bias"), rtol=1e-5, atol=1e-5)


def test_dynamic_quantize_matmul_positive_only_input(rng):
    """All-positive A: the range still includes 0 (zero point 0)."""
    a = np.abs(rand(rng, 4, 8)) + 1
    ins = [("a", a), ("b", _q(rng, np.int8, 8, 3)), ("b_scale", np.float32(0.01))]
    check("DynamicQuantizeMatMul", ins, consts=("b", "b_scale"), atol=1e-5)


@pytest.mark.parametrize("a_type,b_type", [(np.uint8, np.int8), (np.uint8, np.uint8), (np.int8, np.int8)])
@pytest.mark.parametrize("per_column", [False, True])
@pytest.mark.parametrize("optional", [False, True])
def test_matmul_integer_to_float(rng, a_type, b_type, per_column, optional):
    n = 6
    b_scale = (rng.random(n if per_column else ()) * 0.02 + 0.001).astype(np.float32)
    ins = [("a", _q(rng, a_type, 2, 4, 10)), ("b", _q(rng, b_type, 10, n)),
           ("a_scale", np.float32(0.03)), ("b_scale", b_scale),
           ("a_zp", np.array(7, a_type) if optional else None),
           ("b_zp", _q(rng, b_type, *((n,) if per_column else ())) if optional else None),
           ("bias", rand(rng, n) if optional else None)]
    check("MatMulIntegerToFloat", ins, consts=("b", "b_scale", "b_zp", "bias"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5))])
def test_matmul_integer16(rng, sa, sb):
    check("MatMulInteger16", [("a", _q(rng, np.int16, *sa)), ("b", _q(rng, np.int16, *sb))])


@pytest.mark.parametrize("a_type,b_type", [(np.uint8, np.int8), (np.uint8, np.uint8), (np.int8, np.int8)])
@pytest.mark.parametrize("trans", [(0, 0), (1, 0), (0, 1)])
@pytest.mark.parametrize("quantized_out", [False, True])
@pytest.mark.parametrize("per_column", [False, True])
def test_qgemm(rng, a_type, b_type, trans, quantized_out, per_column):
    m, k, n = 3, 8, 5
    a = _q(rng, a_type, *((k, m) if trans[0] else (m, k)))
    b = _q(rng, b_type, *((n, k) if trans[1] else (k, n)))
    b_scale = (rng.random(n if per_column else ()) * 0.01 + 0.001).astype(np.float32)
    b_zp = (_q(rng, b_type, n) // 16).astype(b_type) if per_column else np.array(2, b_type)
    ins = [("a", a), ("a_scale", np.float32(0.02)), ("a_zp", np.array(5, a_type)), ("b", b),
           ("b_scale", b_scale), ("b_zp", b_zp), ("c", rng.integers(-500, 500, n).astype(np.int32))]
    if quantized_out:
        ins += [("y_scale", np.float32(0.05)), ("y_zp", np.array(3, a_type))]
    check("QGemm", ins, attrs={"transA": trans[0], "transB": trans[1], "alpha": 0.75},
          consts=("b", "b_scale", "b_zp", "c"), rtol=1e-5, atol=1e-5, int_tol=1)


@pytest.mark.parametrize("out_type", [np.uint8, np.int8, np.uint16, np.int16])
@pytest.mark.parametrize("per_axis", [False, True])
def test_quantize_dequantize_linear(rng, out_type, per_axis):
    x = rand(rng, 2, 3, 4, scale=3)
    scale = (rng.random(3 if per_axis else ()) * 0.05 + 0.01).astype(np.float32)
    zp = (np.full(3, 4) if per_axis else np.array(4)).astype(out_type)
    attrs = {"axis": 1} if per_axis else {}
    check("QuantizeLinear", [("x", x), ("scale", scale), ("zp", zp)], attrs=attrs)
    q = _q(rng, out_type, 2, 3, 4)
    check("DequantizeLinear", [("x", q), ("scale", scale), ("zp", zp)], attrs=attrs)


def test_dequantize_linear_without_zero_point_and_int32(rng):
    check("DequantizeLinear", [("x", _q(rng, np.int32, 4, 5)), ("scale", np.float32(0.001))])


# --------------------------------------------------------------------------- MatMulNBits
def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Values (..., count) packed low-bits-first into bytes along the last axis."""
    bitsarr = ((q[..., None].astype(np.uint16) >> np.arange(bits)) & 1).astype(np.uint8)
    stream = bitsarr.reshape(q.shape[:-1] + (-1,))
    pad = (-stream.shape[-1]) % 8
    stream = np.concatenate([stream, np.zeros(stream.shape[:-1] + (pad,), np.uint8)], axis=-1)
    return np.packbits(stream, axis=-1, bitorder="little")


def _nbits_inputs(rng, k, n, bits, block, zp_kind, with_bias, batch=(2, 3)):
    kb = -(-k // block)
    q = rng.integers(0, 1 << bits, (n, kb, block))
    b = _pack(q, bits).reshape(n, kb, block * bits // 8)
    scales = (rng.random((n, kb)) * 0.05 + 0.01).astype(np.float32)
    zp = None
    if zp_kind == "packed":
        zp = _pack(rng.integers(0, 1 << bits, (n, kb)), bits)
    elif zp_kind == "float":
        zp = (rng.random((n, kb)) * (1 << bits)).astype(np.float32)
    return [("a", rand(rng, *batch, k)), ("b", b), ("scales", scales), ("zp", zp), ("g_idx", None),
            ("bias", rand(rng, n) if with_bias else None)]


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("zp_kind", [None, "packed", "float"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matmul_nbits(rng, bits, zp_kind, with_bias):
    if bits == 8 and zp_kind == "float":
        pytest.skip("onnxruntime's CPU kernel refuses float zero points with 8-bit weights")
    k, n, block = 64, 12, 32
    ins = _nbits_inputs(rng, k, n, bits, block, zp_kind, with_bias)
    check("MatMulNBits", ins, attrs={"K": k, "N": n, "bits": bits, "block_size": block},
          consts=("b", "scales", "zp", "bias"), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k,block", [(40, 16), (100, 32), (128, 128)])
def test_matmul_nbits_ragged_k_and_block_sizes(rng, k, block):
    n = 7
    ins = _nbits_inputs(rng, k, n, 4, block, "packed", False, batch=(5,))
    check("MatMulNBits", ins, attrs={"K": k, "N": n, "bits": 4, "block_size": block},
          consts=("b", "scales", "zp"), rtol=1e-4, atol=1e-4)


def test_matmul_nbits_fed_weights(rng):
    """Weights fed at run time (not constants): dequantized per call."""
    k, n = 32, 8
    ins = _nbits_inputs(rng, k, n, 4, 16, "packed", True)
    check("MatMulNBits", ins, attrs={"K": k, "N": n, "bits": 4, "block_size": 16}, rtol=1e-4, atol=1e-4)


def test_matmul_nbits_accuracy_level_4(rng):
    """onnxruntime may quantize A to int8 at accuracy_level 4; we stay at float32 accuracy."""
    k, n = 64, 16
    ins = _nbits_inputs(rng, k, n, 4, 32, "packed", False)
    check("MatMulNBits", ins, attrs={"K": k, "N": n, "bits": 4, "block_size": 32, "accuracy_level": 4},
          consts=("b", "scales", "zp"), rtol=2e-2, atol=2e-2)


# --------------------------------------------------------------------------- GatherBlockQuantized
@pytest.mark.parametrize("dtype", [ml_dtypes.int4, ml_dtypes.uint4])
@pytest.mark.parametrize("gather_axis,quantize_axis", [(0, 1), (0, 2), (1, 0), (2, 2)])
@pytest.mark.parametrize("with_zp", [False, True])
def test_gather_block_quantized_int4(rng, dtype, gather_axis, quantize_axis, with_zp):
    shape = (4, 6, 32)
    block = 16
    lo, hi = (-8, 8) if dtype == ml_dtypes.int4 else (0, 16)
    data = rng.integers(lo, hi, shape).astype(dtype)
    sshape = list(shape)
    sshape[quantize_axis] = -(-shape[quantize_axis] // block)
    scales = (rng.random(sshape) * 0.1 + 0.01).astype(np.float32)
    zp = rng.integers(lo, hi, sshape).astype(dtype) if with_zp else None
    indices = np.array([[0, shape[gather_axis] - 1], [1, -1]], np.int64)
    ins = [("data", data), ("indices", indices), ("scales", scales), ("zp", zp)]
    check("GatherBlockQuantized", ins, attrs={"gather_axis": gather_axis, "quantize_axis": quantize_axis,
                                              "block_size": block}, consts=("data", "scales", "zp"))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("with_zp", [False, True])
def test_gather_block_quantized_uint8(rng, bits, with_zp):
    rows, cols, block = 10, 64, 32
    q = rng.integers(0, 1 << bits, (rows, cols))
    data = _pack(q, bits)
    scales = (rng.random((rows, cols // block)) * 0.1).astype(np.float32)
    zp = _pack(rng.integers(0, 1 << bits, (rows, cols // block)), bits) if with_zp else None
    ins = [("data", data), ("indices", np.array([[3, 0, 9]], np.int32)), ("scales", scales), ("zp", zp)]
    check("GatherBlockQuantized", ins, attrs={"gather_axis": 0, "quantize_axis": 1, "block_size": block,
                                              "bits": bits}, consts=("data", "scales", "zp"))


def test_gather_block_quantized_out_of_range_index_gives_zeros(rng):
    data = rng.integers(-8, 8, (4, 32)).astype(ml_dtypes.int4)
    scales = (rng.random((4, 2)) * 0.1).astype(np.float32)
    ins = [("data", data), ("indices", np.array([1, 7], np.int64)), ("scales", scales)]
    check("GatherBlockQuantized", ins, attrs={"block_size": 16}, consts=("data", "scales"))

"""The CUDA provider's integer / quantization kernels (kernels_cu/quant*.cu) against the CPU
provider, one node at a time: odd shapes (M, N, K off the tiles, K not a multiple of 4), zero
points 0 and not 0, uint8 and int8 operands, per-tensor and per-channel parameters. Integer
outputs must be equal bit for bit. Each GEMM main loop is forced in turn: dp4a and the int8
tensor-core tiles (on the emulator with its software MMA, on a GPU (`cuda` marker) with
mma.sync)."""
from __future__ import annotations

import numpy as np
import pytest

from ep_cuda.launch import Settings, using
from ep_cuda.testing import check, random_array

U8, S8 = np.uint8, np.int8
MS = "com.microsoft"
VARIANTS = ["dp4a", "imma", "imma:big"]


def ints(shape, dtype, seed=0):
    lo, hi = (0, 255) if dtype == U8 else (-128, 127)
    return random_array(shape, dtype, lo, hi, seed)


def zp(dtype, value, n=None, seed=7):
    """A zero point: scalar `value`, or n random values (per channel) when n is given."""
    if n is None:
        return np.array(value, dtype)
    return ints((n,), dtype, seed)


def forced(backend, variant):
    """Run the integer GEMM's `variant` (on a GPU below sm_80 the provider runs dp4a whatever is
    asked: its tensor-core kernels are built for sm_80+)."""
    return using(Settings(force={"qgemm": variant}))


# (A shape, B shape): M, N, K off the 64/128 tiles; K = 37 and 5 not multiples of 4; batches
MATMUL = [((5, 37), (37, 70)), ((70, 130), (130, 9)), ((1, 5), (5, 3)), ((2, 3, 67), (67, 33)),
          ((2, 1, 4, 20), (3, 20, 6)), ((19,), (19, 4)), ((6, 64), (64, 128)), ((0, 4), (4, 3))]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shapes", MATMUL, ids=[f"{a}x{b}" for a, b in MATMUL])
@pytest.mark.parametrize("ta, tb", [(U8, S8), (U8, U8), (S8, S8), (S8, U8)], ids=["u8s8", "u8u8", "s8s8", "s8u8"])
def test_matmul_integer(backend, variant, shapes, ta, tb):
    a, b = ints(shapes[0], ta, 1), ints(shapes[1], tb, 2)
    with forced(backend, variant):
        check("MatMulInteger", [a, b], opset=13, backend=backend)
        check("MatMulInteger", [a, b, zp(ta, 3 if ta == U8 else -5), zp(tb, 0)], opset=13, backend=backend)
        check("MatMulInteger", [a, b, zp(ta, 0), zp(tb, 9 if tb == U8 else -7)], opset=13, backend=backend)


@pytest.mark.parametrize("variant", VARIANTS)
def test_matmul_integer_per_row_and_column_zero_points(backend, variant):
    a, b = ints((33, 45), U8, 1), ints((45, 71), S8, 2)
    with forced(backend, variant):
        check("MatMulInteger", [a, b, zp(U8, 0, 33), zp(S8, 0, 71)], opset=13, backend=backend)


@pytest.mark.parametrize("variant", VARIANTS)
def test_matmul_integer_constant_and_strided_operands(backend, variant):
    """A constant B is staged from a K-major copy (aligned and not); strided views of A."""
    with forced(backend, variant):
        for k in (64, 48, 50):
            a, b = ints((9, k), U8, 1), ints((k, 40), S8, 2)
            check("MatMulInteger", [a, b, zp(U8, 128), zp(S8, 3)], opset=13, consts=(1, 3), backend=backend)
        check("MatMulInteger", [ints((3, 7, 32), S8, 3), ints((32, 5), S8, 4)], opset=13,
              noncontig=True, backend=backend)


def _qlinear_inputs(a_shape, b_shape, ta, tb, ty, per_column, seed=0):
    rng = np.random.default_rng(seed)
    a, b = ints(a_shape, ta, seed + 1), ints(b_shape, tb, seed + 2)
    n = b_shape[-1]
    a_scale = np.array(rng.uniform(0.01, 0.05), np.float32)
    b_scale = (rng.uniform(0.001, 0.01, n) if per_column else np.array(rng.uniform(0.001, 0.01))).astype(np.float32)
    mid = 120 if tb == U8 else 0   # centred data: the requantized outputs do not saturate
    b_zp = (ints((n,), tb, seed + 3) // 16 + mid) if per_column else zp(tb, mid + 4)
    k = a_shape[-1]
    y_scale = np.array(a_scale * float(np.mean(b_scale)) * np.sqrt(k) * 40, np.float32)
    return [a, a_scale, zp(ta, 127 if ta == U8 else -3), b, b_scale, b_zp.astype(tb), y_scale,
            zp(ty, 128 if ty == U8 else 0)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shapes", [((5, 37), (37, 70)), ((2, 70, 130), (130, 9)), ((1, 3), (3, 1))])
@pytest.mark.parametrize("ta, tb, ty", [(U8, S8, U8), (U8, U8, U8), (S8, S8, S8), (S8, U8, U8)])
@pytest.mark.parametrize("per_column", [False, True])
def test_qlinear_matmul(backend, variant, shapes, ta, tb, ty, per_column):
    ins = _qlinear_inputs(*shapes, ta, tb, ty, per_column)
    with forced(backend, variant):
        got = check("QLinearMatMul", ins, opset=13, backend=backend)[0]
    assert got.dtype == ty and (got.size < 8 or len(np.unique(got)) > 2)   # not saturated into a constant


@pytest.mark.parametrize("per_column", [False, True])
def test_qlinear_matmul_float16_scales(backend, per_column):
    """float16 scales (opset 21): the real value rounds to float16 before the division, as on the CPU."""
    ins = _qlinear_inputs((6, 45), (45, 30), U8, S8, U8, per_column, seed=5)
    for k in (1, 4, 6):
        ins[k] = ins[k].astype(np.float16)
    with forced(backend, "imma"):
        check("QLinearMatMul", ins, opset=21, backend=backend)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tb", [U8, S8])
@pytest.mark.parametrize("per_column", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_matmul_integer_to_float(backend, variant, tb, per_column, bias):
    rng = np.random.default_rng(3)
    a, b = ints((2, 7, 45), U8, 1), ints((45, 66), tb, 2)
    b_scale = (rng.uniform(0.001, 0.01, 66) if per_column else np.array(0.004)).astype(np.float32)
    b_zp = (ints((66,), tb, 5) if per_column else zp(tb, 3)).astype(tb)
    ins = [a, b, np.array(0.02, np.float32), b_scale, zp(U8, 131), b_zp,
           rng.standard_normal(66).astype(np.float32) if bias else None]
    with forced(backend, variant):
        check("MatMulIntegerToFloat", ins, domain=MS, backend=backend, rtol=0, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ta, tb", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("c", ["none", "scalar", "column"])
@pytest.mark.parametrize("out", ["float", U8, S8])
@pytest.mark.parametrize("per_column", [False, True])
def test_qgemm(backend, variant, ta, tb, c, out, per_column):
    rng = np.random.default_rng(6)
    m, k, n = 13, 67, 35
    a = ints((k, m) if ta else (m, k), U8, 1)
    b = ints((n, k) if tb else (k, n), S8, 2)
    b_scale = (rng.uniform(0.001, 0.01, n) if per_column else np.array(0.004)).astype(np.float32)
    b_zp = (ints((n,), S8, 5) // 8 if per_column else zp(S8, 2)).astype(S8)
    bias = {"none": None, "scalar": np.array([37], np.int32),
            "column": rng.integers(-3000, 3000, n).astype(np.int32)}[c]
    ins = [a, np.array(0.02, np.float32), zp(U8, 128), b, b_scale, b_zp, bias]
    if out != "float":
        ins += [np.array(0.02 * 0.005 * np.sqrt(k) * 30, np.float32), zp(out, 128 if out == U8 else 0)]
    attrs = {"alpha": 0.75, "transA": ta, "transB": tb}
    with forced(backend, variant):
        check("QGemm", ins, attrs, domain=MS, backend=backend, consts=(3, 4, 5), rtol=0, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tb", [U8, S8])
@pytest.mark.parametrize("per_column", [False, True])
@pytest.mark.parametrize("a_shape", [(4, 70), (3, 5, 33), (2, 0, 8)])
def test_dynamic_quantize_matmul(backend, variant, tb, per_column, a_shape):
    rng = np.random.default_rng(4)
    k = a_shape[-1]
    a = rng.standard_normal(a_shape).astype(np.float32) * 3
    b = ints((k, 19), tb, 2)
    b_scale = (rng.uniform(0.001, 0.01, 19) if per_column else np.array(0.004)).astype(np.float32)
    b_zp = (ints((19,), tb, 5) if per_column else zp(tb, 0)).astype(tb)
    ins = [a, b, b_scale, b_zp, rng.standard_normal(19).astype(np.float32)]
    with forced(backend, variant):
        check("DynamicQuantizeMatMul", ins, domain=MS, backend=backend, consts=(1, 2, 3), rtol=0, atol=0)


# (x shape, w shape, attrs): 2-D with pads/strides/dilations/groups, 1-D, 3-D
CONV = [((1, 3, 7, 9), (5, 3, 3, 3), {"pads": [1, 1, 1, 1]}),
        ((2, 4, 6, 5), (6, 2, 3, 2), {"group": 2, "pads": [1, 0, 1, 1], "strides": [2, 1]}),
        ((1, 3, 9, 9), (4, 3, 3, 3), {"dilations": [2, 2], "auto_pad": "SAME_UPPER"}),
        ((1, 4, 8, 8), (4, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1], "strides": [2, 2]}),
        ((1, 16, 5, 5), (20, 16, 1, 1), {}),
        ((2, 2, 10), (3, 2, 4), {"pads": [2, 1], "strides": [3]}),
        ((1, 2, 3, 5, 4), (2, 2, 2, 3, 2), {"pads": [1, 0, 1, 0, 1, 1]}),
        ((1, 8, 12, 12), (70, 8, 3, 3), {"pads": [1, 1, 1, 1]})]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", range(len(CONV)))
@pytest.mark.parametrize("tx, tw", [(U8, S8), (U8, U8), (S8, S8), (S8, U8)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_qlinear_conv(backend, variant, case, tx, tw, per_channel):
    xs, ws, attrs = CONV[case]
    rng = np.random.default_rng(case)
    m = ws[0]
    x, w = ints(xs, tx, 1), ints(ws, tw, 2)
    w_scale = (rng.uniform(0.002, 0.01, m) if per_channel else np.array(0.005)).astype(np.float32)
    w_zp = (ints((m,), tw, 3) // 8 if per_channel else zp(tw, 2 if tw == U8 else -1)).astype(tw)
    k = int(np.prod(ws[1:]))
    y_scale = np.array(0.02 * 0.005 * np.sqrt(k) * 60, np.float32)
    bias = rng.integers(-2000, 2000, m).astype(np.int32)
    ins = [x, np.array(0.02, np.float32), zp(tx, 100 if tx == U8 else -4), w, w_scale, w_zp, y_scale,
           zp(tx, 120 if tx == U8 else 3), bias]
    with forced(backend, variant):
        got = check("QLinearConv", ins, attrs, opset=13, backend=backend)[0]
        check("QLinearConv", ins[:-1], attrs, opset=13, backend=backend)
    assert len(np.unique(got)) > 2


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", [0, 1, 3, 5, 7])
@pytest.mark.parametrize("tx, tw", [(U8, U8), (U8, S8), (S8, S8)])
@pytest.mark.parametrize("zero_points", ["none", "scalar", "per_channel"])
def test_conv_integer(backend, variant, case, tx, tw, zero_points):
    xs, ws, attrs = CONV[case]
    x, w = ints(xs, tx, 1), ints(ws, tw, 2)
    ins = [x, w]
    if zero_points == "scalar":
        ins += [zp(tx, 100 if tx == U8 else -4), zp(tw, 128 if tw == U8 else 3)]
    elif zero_points == "per_channel":
        ins += [zp(tx, 7 if tx == U8 else 0), ints((ws[0],), tw, 3)]
    with forced(backend, variant):
        check("ConvInteger", ins, attrs, opset=13, backend=backend)


@pytest.mark.parametrize("variant", VARIANTS)
def test_qlinear_conv_zero_point_fills_padding(backend, variant):
    """Padding must read the input's zero point (x - xz = 0): an all-zero-point image with a
    large zero point gives y = saturate(rint(bias * scale) + yz) everywhere, borders included."""
    x = np.full((1, 2, 5, 5), 200, U8)
    w = ints((3, 2, 3, 3), S8, 1)
    ins = [x, np.array(0.1, np.float32), np.array(200, U8), w, np.array(0.1, np.float32),
           np.array(0, S8), np.array(0.5, np.float32), np.array(10, U8), np.array([0, 5, -5], np.int32)]
    with forced(backend, variant):
        got = check("QLinearConv", ins, {"pads": [1, 1, 1, 1]}, opset=13, backend=backend)[0]
    assert set(np.unique(got[0, 0])) == {10} and set(np.unique(got[0, 1])) == {10}


# ---------------------------------------------------------------- Q / DQ / DynamicQuantizeLinear
# (a 0-d x is left out: the CPU provider's QuantizeLinear fails on it, np.clip(out=) of a numpy scalar)
QSHAPES = [(3, 5, 7), (1, 130), (4,), (1,)]


@pytest.mark.parametrize("shape", QSHAPES)
@pytest.mark.parametrize("xt", [np.float32, np.float16])
@pytest.mark.parametrize("yt", [U8, S8, np.uint16, np.int16])
def test_quantize_linear_per_tensor(backend, shape, xt, yt):
    x = random_array(shape, xt, -4, 4, 1)
    scale = np.array(0.0173, xt)
    z = np.array(3 if yt in (U8, np.uint16) else -2, yt)
    check("QuantizeLinear", [x, scale, z], opset=21, backend=backend)
    check("QuantizeLinear", [x * 60, scale, z], opset=21, backend=backend)   # saturates
    if yt == U8:
        check("QuantizeLinear", [x, scale], opset=13, backend=backend)


def test_quantize_linear_rounds_half_to_even(backend):
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 254.5, 255.5], np.float32)
    got = check("QuantizeLinear", [x, np.array(1.0, np.float32), np.array(0, S8)], opset=13, backend=backend)[0]
    np.testing.assert_array_equal(got, np.array([0, 2, 2, 0, -2, -2, 4, 127, 127], S8))


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("yt", [U8, S8])
def test_quantize_dequantize_per_axis(backend, axis, yt):
    x = random_array((4, 6, 5), np.float32, -3, 3, 2)
    n = x.shape[axis]
    scale = np.linspace(0.01, 0.05, n).astype(np.float32)
    z = ints((n,), yt, 3) // 4
    q = check("QuantizeLinear", [x, scale, z.astype(yt)], {"axis": axis}, opset=13, backend=backend)[0]
    check("DequantizeLinear", [q, scale, z.astype(yt)], {"axis": axis}, opset=13, backend=backend, rtol=0, atol=0)


@pytest.mark.parametrize("xt", [U8, S8, np.uint16, np.int16, np.int32])
@pytest.mark.parametrize("st", [np.float32, np.float16])
def test_dequantize_linear(backend, xt, st):
    lo, hi = {U8: (0, 255), S8: (-128, 127), np.uint16: (0, 65535), np.int16: (-32768, 32767),
              np.int32: (-2**30, 2**30)}[xt]
    x = random_array((3, 7, 5), xt, lo, hi, 1)
    scale = np.array(0.0123, st)
    z = np.array((lo + hi) // 3, xt)
    check("DequantizeLinear", [x, scale, z], opset=21, backend=backend, rtol=0, atol=0)
    check("DequantizeLinear", [x, scale], opset=21, backend=backend, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 5000), (0, 3), (4,)])
@pytest.mark.parametrize("kind", ["mixed", "positive", "negative", "zeros"])
def test_dynamic_quantize_linear(backend, shape, kind):
    x = random_array(shape, np.float32, -3, 5, 4)
    x = {"mixed": x, "positive": np.abs(x) + 0.5, "negative": -np.abs(x) - 0.5, "zeros": x * 0}[kind]
    check("DynamicQuantizeLinear", [x], opset=13, n_outputs=3, backend=backend, rtol=0, atol=0)


def test_quantize_declines_blocked_and_mixed_precision():
    """Blocked quantization and a float16 input with a float32 scale go to the CPU provider."""
    from ep_cuda.testing import cuda_kernel_def, make_model, node_of
    x = np.zeros((4, 8), np.float32)
    blocked = node_of(make_model("QuantizeLinear", [x, np.ones((4, 2), np.float32), np.zeros((4, 2), U8)],
                                 {"axis": 1, "block_size": 4}, opset=21))
    mixed = node_of(make_model("QuantizeLinear", [x.astype(np.float16), np.ones((), np.float32)], opset=21))
    for node in (blocked, mixed):
        kdef = cuda_kernel_def(node)
        assert kdef is None or not kdef.factory.supports(node)


def test_integer_matmul_declines_per_batch_zero_points(backend):
    """A zero point per batch of a 3-D B goes to the CPU provider; (1, N) stays on the device."""
    from ep_cuda.testing import cuda_kernel_def, make_model, node_of
    a, b = ints((2, 3, 8), U8, 1), ints((2, 8, 5), S8, 2)
    per_batch = node_of(make_model("MatMulInteger", [a, b, zp(U8, 1), ints((2, 1, 5), S8, 3)], opset=13))
    assert not cuda_kernel_def(per_batch).factory.supports(per_batch)
    with forced(backend, "dp4a"):
        check("MatMulInteger", [a, b, zp(U8, 1), ints((1, 5), S8, 3)], opset=13, backend=backend)


# ---------------------------------------------------------------- MatMulNBits
def _nbits_inputs(m_shape, k, n, bits, block, zkind, bias, dtype, seed=0):
    rng = np.random.default_rng(seed)
    kb = -(-k // block)
    blob = block * bits // 8
    a = rng.standard_normal(m_shape + (k,)).astype(dtype)
    b = rng.integers(0, 256, (n, kb, blob)).astype(U8)
    scales = (rng.uniform(0.01, 0.1, n * kb)).astype(dtype)
    zps = None
    if zkind == "packed":
        zps = rng.integers(0, 256, (n, -(-kb * bits // 8))).astype(U8).reshape(-1)
    elif zkind == "float":
        zps = rng.uniform(0, 2 ** bits - 1, n * kb).astype(dtype)
    return [a, b, scales, zps, None, rng.standard_normal(n).astype(dtype) if bias else None]


@pytest.mark.parametrize("bits", [4, 2, 8])
@pytest.mark.parametrize("zkind", ["none", "packed", "float"])
@pytest.mark.parametrize("dims", [((1,), 64, 40, 32), ((3, 5), 100, 33, 16), ((), 48, 70, 64)],
                         ids=["decode", "ragged", "vector"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_matmul_nbits(backend, bits, zkind, dims, dtype):
    m_shape, k, n, block = dims
    ins = _nbits_inputs(m_shape, k, n, bits, block, zkind, bias=zkind != "none", dtype=dtype)
    attrs = {"K": k, "N": n, "bits": bits, "block_size": block}
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=2e-2, atol=5e-2)
    check("MatMulNBits", ins, attrs, domain=MS, backend=backend, consts=(1, 2, 3), **tol)

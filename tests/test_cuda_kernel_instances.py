"""Kernel instantiations no other test launched (found by `python -m ep_cuda.kernel_coverage`,
issue 13): int32 comparisons, integer Max/Min/L1/SumSquare, mixed-type Pow, fp16 SiLU and
single-axis Resize, 1/2/8-byte gathers and scatters, the atomic-CAS scatter reductions with int32
indices. Each against the CPU provider, on the emulator and (marked cuda) a GPU."""
import numpy as np
import pytest

from ep_cuda.testing import check, random_array

F32, F16, I32, I64, U8 = np.float32, np.float16, np.int32, np.int64, np.uint8
rnd = random_array


@pytest.mark.parametrize("op,dtype", [("Equal", I32), ("Equal", np.bool_), ("Less", I32), ("Greater", I32),
                                      ("LessOrEqual", I32), ("GreaterOrEqual", I32)])
def test_comparisons_of_ints_and_bools(backend, op, dtype):
    a, b = rnd((3, 4), dtype, -3, 3), rnd((4,), dtype, -3, 3, seed=1)
    check(op, [a, b], opset=16, backend=backend)


@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("dtype", [I32, I64])
def test_integer_max_min(backend, op, dtype):
    check(op, [rnd((2, 5), dtype, -9, 9), rnd((5,), dtype, -9, 9, seed=1)], opset=13, backend=backend)


@pytest.mark.parametrize("fmod,dtype", [(1, F32), (1, F16), (0, F32), (0, F16)])
def test_float_mod(backend, fmod, dtype):
    a = rnd((3, 4), dtype, -5, 5)
    b = rnd((3, 4), dtype, 0.5, 3, seed=1) * np.where(rnd((3, 4), np.bool_, seed=2), 1, -1).astype(dtype)
    check("Mod", [a, b], {"fmod": fmod}, backend=backend, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("base,exp", [(F32, F16), (F32, I32), (F16, F32), (F16, I32)])
def test_pow_mixed_exponent_types(backend, base, exp):
    check("Pow", [rnd((3, 4), base, 0.5, 2), rnd((4,), exp, 0, 3, seed=1)], opset=15, backend=backend,
          rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [I64, U8])
def test_bitwise_not_wide_and_narrow(backend, dtype):
    check("BitwiseNot", [rnd((3, 5), dtype, 0, 200)], opset=18, backend=backend)


@pytest.mark.parametrize("op", ["ReduceL1", "ReduceSumSquare"])
@pytest.mark.parametrize("dtype", [I32, I64])
@pytest.mark.parametrize("shape,axes", [((3, 40), [1]), ((300, 5), [0])])   # block / thread kernels
def test_integer_l1_sumsquare(backend, op, dtype, shape, axes):
    check(op, [rnd(shape, dtype, -9, 9), np.array(axes, I64)], {"keepdims": 0}, opset=18, consts=[1],
          backend=backend)
    check(op, [rnd((64, 70), dtype, -9, 9)], {"keepdims": 1}, opset=18, backend=backend)


def test_fused_add_silu_float16(backend):
    check("FusedAdd", [rnd((2, 3, 4), F16), rnd((4,), F16, seed=1)], {"activation": "Silu"},
          domain="com.ep_core", backend=backend, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_one_axis_float16(backend, mode):
    check("Resize", [rnd((1, 2, 5, 6), F16), None, np.array([1, 1, 1, 1.5], F32)], {"mode": mode},
          opset=19, consts=(1, 2), backend=backend, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("dtype", [U8, np.int8, np.bool_])
def test_pad_one_byte_types(backend, dtype):
    check("Pad", [rnd((3, 4), dtype, 0, 9), np.array([0, 2, 1, 1], I64), np.array(1, dtype)],
          {"mode": "constant"}, opset=19, consts=(1, 2), backend=backend)
    check("Pad", [rnd((3, 4), dtype, 0, 9), np.array([1, 1, 0, 2], I64)], {"mode": "reflect"},
          opset=19, consts=(1,), backend=backend)


@pytest.mark.parametrize("dtype", [U8, F16, np.uint64])
@pytest.mark.parametrize("itype", [I32, I64])
def test_gather_scatter_elements_by_element_size(backend, dtype, itype):
    x = rnd((4, 5), dtype, 0, 9)
    idx = np.array([[0, 3, -1, 2, 1], [1, 0, 2, -4, 3]], itype)
    check("GatherElements", [x, idx], {"axis": 0}, opset=13, backend=backend)
    upd = rnd((2, 5), dtype, 0, 9, seed=1)
    check("ScatterElements", [x, idx, upd], {"axis": 0}, opset=18, backend=backend)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_scatter_elements_int32_indices_2_and_4_bytes(backend, dtype):
    x = rnd((4, 5), dtype, 0, 9)
    idx = np.array([[0, 3, 1, 2, 1]], I32)
    check("ScatterElements", [x, idx, rnd((1, 5), dtype, 0, 9, seed=1)], {"axis": 0}, opset=18,
          backend=backend)


@pytest.mark.parametrize("dtype", [U8, F16])
def test_gather_scatter_nd_narrow_types(backend, dtype):
    x = rnd((4, 3, 2), dtype, 0, 9)
    idx = np.array([[1, 2], [3, 0]], I64)
    check("GatherND", [x, idx], opset=13, backend=backend)
    if dtype == U8:
        check("ScatterND", [x, np.array([[1], [3]], I64), rnd((2, 3, 2), dtype, 0, 9, seed=1)],
              opset=18, backend=backend)


@pytest.mark.parametrize("reduction", ["add", "mul", "max", "min"])
@pytest.mark.parametrize("dtype", [F32, F16, I32, I64])
def test_scatter_reductions_with_int32_indices(backend, reduction, dtype):
    """The atomic-CAS reductions, duplicates included, with int32 indices."""
    x = rnd((4, 5), dtype, 1, 3)
    idx = np.array([[0, 0, 2], [0, 0, 1]], I32)
    check("ScatterElements", [x, idx, rnd((2, 3), dtype, 1, 3, seed=1)],
          {"axis": 0, "reduction": reduction}, opset=18, backend=backend)


@pytest.mark.parametrize("reduction", ["add", "mul", "max", "min"])
def test_scatter_nd_reductions_int32_data(backend, reduction):
    x = rnd((4, 3), I32, 1, 3)
    check("ScatterND", [x, np.array([[1], [1], [-1]], I64), rnd((3, 3), I32, 1, 3, seed=1)],
          {"reduction": reduction}, opset=18, backend=backend)

"""CUDA element-wise and activation kernels against the CPU provider.

Each test runs on the CPU emulator of the kernels (`emu`, needs g++) and on a GPU (`gpu`, marked
`cuda`, skipped without one)."""
import numpy as np
import pytest

from ep_cuda.testing import check, random_array

F32, F16 = np.float32, np.float16
rnd = random_array


BROADCAST_SHAPES = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((5,), ()),
                    ((1, 3, 1, 2), (2, 1, 4, 1)), ((0, 3), (1, 3))]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("dtype", [F32, F16, np.int32, np.int64])
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES[:4])
def test_arithmetic(backend, op, dtype, shapes):
    a, b = rnd(shapes[0], dtype, 1, 9, 1), rnd(shapes[1], dtype, 1, 9, 2)  # positive: no Div sign ambiguity
    check(op, [a, b], backend=backend)


@pytest.mark.parametrize("shapes", BROADCAST_SHAPES)
def test_broadcast_shapes(backend, shapes):
    check("Mul", [rnd(shapes[0]), rnd(shapes[1], seed=3)], backend=backend)


@pytest.mark.parametrize("dtype", [F32, F16])
def test_noncontiguous_binary(backend, dtype):
    check("Add", [rnd((3, 4, 5), dtype), rnd((4, 5), dtype, seed=1)], backend=backend, noncontig=True)


@pytest.mark.parametrize("op", ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"])
@pytest.mark.parametrize("dtype", [F32, F16, np.int64])
def test_comparison(backend, op, dtype):
    a, b = rnd((4, 5), dtype, -3, 3), rnd((5,), dtype, -3, 3, seed=1)
    b[0] = a[0, 0]  # ties
    check(op, [a, b], backend=backend)


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_logical(backend, op):
    check(op, [rnd((3, 4), np.bool_), rnd((4,), np.bool_, seed=1)], backend=backend)


def test_not(backend):
    check("Not", [rnd((3, 4), np.bool_)], backend=backend, noncontig=True)


@pytest.mark.parametrize("op", ["BitwiseAnd", "BitwiseOr", "BitwiseXor"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8])
def test_bitwise(backend, op, dtype):
    check(op, [rnd((3, 4), dtype, 0, 200), rnd((4,), dtype, 0, 200, 1)], opset=18, backend=backend)


def test_bitwise_not(backend):
    check("BitwiseNot", [rnd((3, 4), np.int32, -100, 100)], opset=18, backend=backend)


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, np.uint64])
def test_bitshift(backend, direction, dtype):
    x, s = rnd((6,), dtype, 0, 200), np.array([0, 1, 2, 3, 5, 7], dtype)
    check("BitShift", [x, s], {"direction": direction}, backend=backend)


@pytest.mark.parametrize("dtype", [F32, F16])
def test_pow(backend, dtype):
    check("Pow", [rnd((3, 4), dtype, 0.5, 2), rnd((4,), dtype, -2, 2, 1)], backend=backend)
    check("Pow", [rnd((3, 4), dtype, 0.5, 2), np.array([2, 3], np.int64)[:1]], backend=backend)


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, F32])
def test_mod(backend, fmod, dtype):
    if dtype == F32 and fmod == 0:
        pytest.skip("float Mod requires fmod=1")
    a = rnd((4, 6), dtype, -20, 20)
    b = rnd((6,), dtype, 1, 7, 1) * np.array([1, -1, 1, -1, 1, -1]).astype(dtype)
    check("Mod", [a, b], {"fmod": fmod}, backend=backend)


@pytest.mark.parametrize("op", ["Max", "Min", "Sum", "Mean"])
@pytest.mark.parametrize("dtype", [F32, F16])
def test_variadic(backend, op, dtype):
    check(op, [rnd((2, 3, 4), dtype), rnd((3, 1), dtype, seed=1), rnd((4,), dtype, seed=2)],
          backend=backend)
    check(op, [rnd((2, 3), dtype)], backend=backend)


UNARY_FLOAT = ["Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
               "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh",
               "Atanh", "Erf"]
DOMAIN = {"Log": (0.1, 3), "Sqrt": (0.1, 3), "Reciprocal": (0.5, 3), "Asin": (-0.9, 0.9),
          "Acos": (-0.9, 0.9), "Atanh": (-0.9, 0.9), "Acosh": (1.1, 3), "Round": (-4, 4)}


@pytest.mark.parametrize("op", UNARY_FLOAT)
@pytest.mark.parametrize("dtype", [F32, F16])
def test_unary_math(backend, op, dtype):
    lo, hi = DOMAIN.get(op, (-2, 2))
    x = rnd((3, 4, 5), dtype, lo, hi)
    if op == "Round":
        x.flat[:4] = [0.5, 1.5, 2.5, -0.5]  # half to even
    check(op, [x], backend=backend, noncontig=True)


@pytest.mark.parametrize("op", ["Abs", "Neg", "Sign"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_unary_int(backend, op, dtype):
    check(op, [rnd((3, 5), dtype, -5, 5)], backend=backend)


@pytest.mark.parametrize("dtype", [F32, F16])
def test_isnan_isinf(backend, dtype):
    x = np.array([0, np.nan, np.inf, -np.inf, 1.5, -2], dtype)
    check("IsNaN", [x], backend=backend)
    for neg, pos in ((1, 1), (0, 1), (1, 0)):
        check("IsInf", [x], {"detect_negative": neg, "detect_positive": pos}, backend=backend)


@pytest.mark.parametrize("dtype", [F32, F16])
def test_clip(backend, dtype):
    x = rnd((4, 5), dtype, -3, 3)
    check("Clip", [x, np.array(-1, dtype), np.array(1.5, dtype)], backend=backend)
    check("Clip", [x, None, np.array(0.5, dtype)], backend=backend)
    check("Clip", [x], backend=backend)
    check("Clip", [x], {"min": -0.5, "max": 0.5}, opset=6, backend=backend)


@pytest.mark.parametrize("dtype", [F32, F16, np.int64, np.bool_, np.uint8])
def test_where(backend, dtype):
    c = rnd((3, 1, 4), np.bool_)
    check("Where", [c, rnd((2, 4), dtype, 0, 9), rnd((3, 2, 1), dtype, 0, 9, 1)], backend=backend)


CAST = [F32, F16, np.float64, np.int8, np.uint8, np.int32, np.int64, np.bool_]
ONNX_TYPE = {F32: 1, F16: 10, np.float64: 11, np.int8: 3, np.uint8: 2, np.int32: 6, np.int64: 7,
             np.bool_: 9}


@pytest.mark.parametrize("src", CAST)
@pytest.mark.parametrize("dst", CAST)
def test_cast(backend, src, dst):
    x = rnd((3, 4), src, 0, 100)
    check("Cast", [x], {"to": ONNX_TYPE[dst]}, backend=backend, noncontig=True)


def test_castlike(backend):
    check("CastLike", [rnd((3, 4)), np.zeros(1, F16)], backend=backend)


ACT = {"Relu": {}, "LeakyRelu": {"alpha": 0.2}, "Sigmoid": {}, "HardSigmoid": {"alpha": 0.3, "beta": 0.4},
       "Tanh": {}, "Elu": {"alpha": 0.7}, "Selu": {}, "Celu": {"alpha": 1.3}, "Softplus": {},
       "Softsign": {}, "HardSwish": {}, "ThresholdedRelu": {"alpha": 0.5}}


@pytest.mark.parametrize("op", list(ACT))
@pytest.mark.parametrize("dtype", [F32, F16])
def test_activation(backend, op, dtype):
    x = rnd((2, 3, 17), dtype, -4, 4)
    check(op, [x], ACT[op], backend=backend, noncontig=True)


@pytest.mark.parametrize("dtype", [F32, F16])
def test_mish_gelu(backend, dtype):
    x = rnd((5, 7), dtype, -4, 4)
    check("Mish", [x], opset=18, backend=backend)
    check("Gelu", [x], opset=20, backend=backend)
    check("Gelu", [x], {"approximate": "tanh"}, opset=20, backend=backend)


@pytest.mark.parametrize("dtype", [F32, F16])
def test_prelu(backend, dtype):
    x = rnd((2, 3, 4, 5), dtype)
    check("PRelu", [x, rnd((3, 1, 1), dtype, 0, 1, 1)], backend=backend)
    check("PRelu", [x, rnd((5,), dtype, 0, 1, 2)], backend=backend, noncontig=True)


def test_empty_tensors(backend):
    e = np.zeros((0, 3), F32)
    check("Add", [e, rnd((3,))], backend=backend)
    check("Relu", [e], backend=backend)
    check("Cast", [e], {"to": 10}, backend=backend)

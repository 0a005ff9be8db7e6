"""CUDA GEMM, convolution and pooling kernels against the CPU provider
(emulator backend everywhere with g++, GPU backend marked `cuda`)."""
import numpy as np
import pytest

from ep_cuda.testing import check, random_array

F32, F16 = np.float32, np.float16
def rnd(shape, dtype=F32, lo=-1.0, hi=1.0, seed=0):
    return random_array(shape, dtype, lo, hi, seed)


def tol(dtype):
    return dict(rtol=3e-2, atol=3e-2) if dtype == F16 else dict(rtol=1e-4, atol=1e-4)


MATMUL = [((3, 4), (4, 5)), ((70, 33), (33, 65)), ((2, 3, 4), (4, 6)), ((2, 1, 3, 4), (5, 4, 2)),
          ((4,), (4, 3)), ((3, 4), (4,)), ((4,), (4,)), ((0, 3), (3, 2)), ((3, 0), (0, 2))]


@pytest.mark.parametrize("shapes", MATMUL, ids=[f"{a}x{b}" for a, b in MATMUL])
@pytest.mark.parametrize("dtype", [F32, F16])
def test_matmul(backend, shapes, dtype):
    a, b = rnd(shapes[0], dtype), rnd(shapes[1], dtype, seed=1)
    check("MatMul", [a, b], backend=backend, **tol(dtype))


def test_matmul_noncontiguous(backend):
    check("MatMul", [rnd((2, 5, 6)), rnd((6, 7), seed=1)], backend=backend, noncontig=True, **tol(F32))


@pytest.mark.parametrize("ta", [0, 1])
@pytest.mark.parametrize("tb", [0, 1])
@pytest.mark.parametrize("cshape", [None, (1,), (5,), (3, 1), (3, 5)])
@pytest.mark.parametrize("dtype", [F32, F16])
def test_gemm(backend, ta, tb, cshape, dtype):
    a = rnd((4, 3) if ta else (3, 4), dtype)
    b = rnd((5, 4) if tb else (4, 5), dtype, seed=1)
    ins = [a, b] + ([rnd(cshape, dtype, seed=2)] if cshape else [])
    check("Gemm", ins, {"transA": ta, "transB": tb, "alpha": 0.7, "beta": 1.3}, backend=backend,
          **tol(dtype))


def test_gemm_large_tiles(backend):
    check("Gemm", [rnd((130, 70)), rnd((70, 129), seed=1), rnd((129,), seed=2)], backend=backend,
          **tol(F32))


CONV = [  # (x shape, w shape, attrs)
    ((1, 2, 7, 7), (3, 2, 3, 3), {}),
    ((2, 4, 6, 5), (4, 2, 3, 2), {"group": 2, "pads": [1, 0, 1, 1], "strides": [2, 1]}),
    ((1, 3, 9, 9), (2, 3, 3, 3), {"dilations": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 3, 8, 8), (3, 1, 3, 3), {"group": 3, "auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ((2, 2, 10), (3, 2, 4), {"pads": [2, 1], "strides": [3]}),
    ((1, 2, 4, 5, 6), (2, 2, 2, 3, 2), {"pads": [1, 0, 1, 0, 1, 1]}),
    ((1, 1, 5, 5), (1, 1, 3, 3), {"auto_pad": "VALID"}),
    # large enough for the implicit-GEMM path (>= 16 output channels per group, >= 16 taps)
    ((2, 3, 9, 10), (20, 3, 3, 3), {"pads": [1, 2, 0, 1], "strides": [2, 1]}),
    ((1, 8, 7, 7), (70, 4, 2, 3), {"group": 2, "dilations": [2, 1], "auto_pad": "SAME_UPPER"}),
    ((2, 16, 5), (17, 16, 1), {}),
    ((1, 2, 3, 5, 6), (16, 2, 2, 3, 2), {"pads": [1, 0, 1, 0, 1, 1], "strides": [1, 2, 1]}),
]


@pytest.mark.parametrize("case", range(len(CONV)))
@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("bias", [0, 1])
def test_conv(backend, case, dtype, bias):
    xs, ws, attrs = CONV[case]
    ins = [rnd(xs, dtype), rnd(ws, dtype, seed=1)] + ([rnd((ws[0],), dtype, seed=2)] if bias else [])
    check("Conv", ins, attrs, backend=backend, **tol(dtype))


CONVT = [
    ((1, 2, 4, 4), (2, 3, 3, 3), {}),
    ((1, 2, 3, 3), (2, 2, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
    ((2, 4, 3, 4), (4, 1, 2, 2), {"group": 2, "strides": [2, 3], "dilations": [2, 1]}),
    ((1, 2, 5), (2, 3, 3), {"strides": [2], "output_shape": [12]}),
    ((1, 1, 3, 3), (1, 2, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 1, 2, 3, 2), (1, 1, 2, 2, 2), {"strides": [1, 2, 1]}),
]


@pytest.mark.parametrize("case", range(len(CONVT)))
@pytest.mark.parametrize("dtype", [F32, F16])
def test_conv_transpose(backend, case, dtype):
    xs, ws, attrs = CONVT[case]
    out_ch = ws[1] * attrs.get("group", 1)
    check("ConvTranspose", [rnd(xs, dtype), rnd(ws, dtype, seed=1), rnd((out_ch,), dtype, seed=2)],
          attrs, backend=backend, **tol(dtype))


POOL = [
    ((1, 2, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ((1, 2, 7, 7), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ((1, 1, 7, 8), {"kernel_shape": [3, 2], "ceil_mode": 1, "strides": [2, 3]}),
    ((2, 1, 9), {"kernel_shape": [3], "auto_pad": "SAME_UPPER", "strides": [2]}),
    ((1, 1, 6, 6), {"kernel_shape": [2, 2], "dilations": [2, 2], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 4, 4, 5), {"kernel_shape": [2, 2, 3], "pads": [0, 1, 1, 1, 0, 1]}),
]


@pytest.mark.parametrize("case", range(len(POOL)))
@pytest.mark.parametrize("dtype", [F32, F16])
def test_maxpool(backend, case, dtype):
    xs, attrs = POOL[case]
    x = rnd(xs, dtype)
    check("MaxPool", [x], attrs, backend=backend, n_outputs=2)
    if len(xs) == 4:
        check("MaxPool", [x], dict(attrs, storage_order=1), backend=backend, n_outputs=2)


@pytest.mark.parametrize("case", range(len(POOL)))
@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("include", [0, 1])
def test_avgpool(backend, case, dtype, include):
    xs, attrs = POOL[case]
    attrs = dict(attrs, count_include_pad=include)
    check("AveragePool", [rnd(xs, dtype)], attrs, opset=19, backend=backend, **tol(dtype))


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 300), (2, 3, 2, 2, 2)])
@pytest.mark.parametrize("dtype", [F32, F16])
def test_global_pool(backend, op, shape, dtype):
    check(op, [rnd(shape, dtype)], backend=backend, noncontig=True, **tol(dtype))


# ---------------------------------------------------------------- fused ops of the optimizer
FUSED = "com.ep_core"


@pytest.mark.parametrize("act,params", [(None, []), ("Relu", []), ("LeakyRelu", [0.2]),
                                        ("Clip", [-0.5, 0.5]), ("HardSigmoid", [0.3, 0.4]),
                                        ("Sigmoid", []), ("Gelu", []), ("FastGelu", []), ("Silu", [])])
def test_fused_conv_gemm_add(backend, act, params):
    attrs = {} if act is None else {"activation": act}
    if params:
        attrs["activation_params"] = [float(v) for v in params]
    x, w = rnd((1, 3, 6, 6)), rnd((4, 3, 3, 3), seed=1)
    check("FusedConv", [x, w, rnd((4,), seed=2), rnd((1, 4, 4, 4), seed=3)], attrs,
          domain=FUSED, backend=backend, **tol(F32))
    check("FusedConv", [x, w], dict(attrs, pads=[1, 1, 1, 1]), domain=FUSED, backend=backend,
          **tol(F32))
    check("FusedGemm", [rnd((3, 4)), rnd((5, 4), seed=1), rnd((5,), seed=2)],
          dict(attrs, transB=1, alpha=0.5), domain=FUSED, backend=backend, **tol(F32))
    check("FusedAdd", [rnd((2, 3, 4)), rnd((4,), seed=1)], attrs, domain=FUSED, backend=backend,
          **tol(F32))


@pytest.mark.parametrize("dtype", [F32, F16])
def test_fused_transformer_ops(backend, dtype):
    x = rnd((2, 5, 8), dtype)
    check("Gelu", [x], domain=FUSED, backend=backend, **tol(dtype))
    check("FastGelu", [x, rnd((8,), dtype, seed=1)], domain=FUSED, backend=backend, **tol(dtype))
    g, b = rnd((8,), dtype, 0.5, 1.5, 2), rnd((8,), dtype, seed=3)
    check("LayerNormalization", [x, g, b], {"axis": -1}, domain=FUSED, backend=backend, **tol(dtype))
    check("SkipLayerNormalization", [x, rnd((2, 5, 8), dtype, seed=4), g, b, rnd((8,), dtype, seed=5)],
          {"epsilon": 1e-5}, domain=FUSED, backend=backend, n_outputs=4, **tol(dtype))
    check("SkipLayerNormalization", [x, rnd((2, 5, 8), dtype, seed=4), g], domain=FUSED,
          backend=backend, **tol(dtype))


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("mask", [False, True])
def test_fused_attention(backend, dtype, mask):
    B, S, H, heads = 2, 5, 8, 2
    ins = [rnd((B, S, H), dtype), rnd((H, 3 * H), dtype, seed=1), rnd((3 * H,), dtype, seed=2)]
    if mask:
        m = np.zeros((B, 1, 1, S), dtype)
        m[0, ..., -2:] = -10000.0
        ins.append(m)
    check("Attention", ins, {"num_heads": heads}, domain=FUSED, backend=backend, **tol(dtype))

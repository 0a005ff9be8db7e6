"""The GEMM engine's kernel variants (kernels_cu/gemm_core.cuh) path by path: every SIMT and
tensor-core tile shape, vectorized and scalar operand loads, K-major and MN-major staging,
batched broadcasting, epilogue fusion and strided outputs; the convolution paths (implicit GEMM
NCHW / channels-last, 1x1 as GEMM, depthwise). Emulator backend everywhere with g++ (the
tensor-core MMA and cp.async run as their software fallbacks there), GPU backend marked `cuda`."""
import numpy as np
import pytest

from ep_cuda import launch
from ep_cuda.testing import to_device, to_numpy

F32, F16 = np.float32, np.float16
VARIANTS = ["simt:big", "simt:tall", "simt:small", "tc:big", "tc:small"]


def rnd(shape, dtype=F32, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(dtype)


def run(backend, fn, force=None, tf32=False, nhwc=False):
    """fn() with the kernel settings given, on the emulator or the GPU; results as numpy."""
    s = launch.Settings(use_tf32=tf32, prefer_nhwc=nhwc, force=dict(force or {}))

    def call():
        with launch.using(s):
            out = fn()
        if backend == "gpu":
            import cupy
            cupy.cuda.get_current_stream().synchronize()
        return to_numpy(out)
    if backend == "emu":
        from ep_cuda import emulator
        with emulator.enabled():
            return call()
    return call()


def tol(dtype, variant, K):
    if dtype == F16:
        return dict(rtol=2e-2, atol=2e-2 * max(1.0, np.sqrt(K) / 4))
    if variant.startswith("tc"):   # TF32: 10-bit mantissa inputs
        return dict(rtol=1e-2, atol=4e-3 * np.sqrt(K))
    return dict(rtol=1e-5, atol=1e-5 * np.sqrt(K))


def dev(x, backend):
    return to_device(np.ascontiguousarray(x), backend)


# (a shape, b shape, transA, transB): ragged sizes, vector-friendly sizes, batch broadcasting
CASES = [((37, 45), (45, 29), 0, 0), ((64, 32), (32, 136), 0, 0), ((40, 24), (72, 24), 0, 1),
         ((24, 40), (24, 72), 1, 0), ((2, 3, 17, 24), (3, 24, 9), 0, 0), ((130, 8), (131, 8), 0, 1)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_gemm_variants(backend, variant, dtype, case):
    from ep_cuda.kernels.gemm import batched_gemm
    sa, sb, ta, tb = CASES[case]
    a, b = rnd(sa, dtype), rnd(sb, dtype, 1)
    A = np.swapaxes(a, -1, -2) if ta else a
    B = np.swapaxes(b, -1, -2) if tb else b
    want = np.matmul(A.astype(np.float64), B.astype(np.float64))

    def fn():
        da, db = dev(a, backend), dev(b, backend)
        va = da.swapaxes(-1, -2) if ta else da
        vb = db.swapaxes(-1, -2) if tb else db
        from ep_cuda.launch import elem_strides
        return batched_gemm(list(va.shape), list(elem_strides(va)), list(vb.shape),
                            list(elem_strides(vb)), va, vb)
    got = run(backend, fn, {"gemm": variant}, tf32=True)
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float64), want, **tol(dtype, variant, A.shape[-1]))


@pytest.mark.parametrize("variant", ["simt:small", "simt:big", "tc:small", "tc:big"])
@pytest.mark.parametrize("dtype", [F32, F16])
def test_gemm_epilogue_strided_operands(backend, variant, dtype):
    """Non-contiguous (scalar-load) operands, C and R broadcast, activation, strided output."""
    from ep_cuda.kernels.gemm import batched_gemm
    from ep_cuda.launch import elem_strides
    M, N, K = 33, 70, 19
    a = rnd((M, 2 * K), dtype)[:, ::2]
    b = rnd((K, N), dtype, 1)
    c, r = rnd((N,), dtype, 2), rnd((M, 1), dtype, 3)
    ref = np.maximum(1.5 * (a.astype(np.float64) @ b) + 0.5 * c + r, 0)

    def fn():
        wa = dev(rnd((M, 2 * K), dtype), backend)[:, ::2]
        wb, wc, wr = dev(b, backend), dev(c, backend), dev(r, backend)
        out = launch.empty((N, M), dtype).T            # column-major output
        batched_gemm([M, K], list(elem_strides(wa)), [K, N], list(elem_strides(wb)), wa, wb, wc,
                     1.5, 0.5, r=wr, act=0, out=out)
        return out
    got = run(backend, fn, {"gemm": variant}, tf32=True)
    np.testing.assert_allclose(got.astype(np.float64), ref, **tol(dtype, variant, K))


def test_gemm_variant_choice_follows_settings():
    from ep_cuda.kernels.gemm import candidates
    from ep_cuda import emulator
    with emulator.enabled():
        with launch.using(launch.Settings(use_tf32=False)):
            assert candidates(F32, 512, 512, 1)[0].startswith("simt")
            assert candidates(F16, 512, 512, 1)[0].startswith("tc")
        with launch.using(launch.Settings(use_tf32=True)):
            assert candidates(F32, 4096, 4096, 1)[0] == "tc:big"
            assert candidates(F32, 64, 64, 1)[0] == "tc:small"


# ---------------------------------------------------------------------------- convolutions
def conv_ref(x, w, b, stride, pad, dil, group):
    import ep_cpu.kernels.conv as C
    from ep_core.graph import Node
    from ep_core.kernel import KernelContext
    node = Node("Conv", ["x", "w", "b"], ["y"], attrs={"strides": stride, "pads": pad,
                                                       "dilations": dil, "group": group},
                since_version=11, opset=17)
    return C.Conv(node, KernelContext(None)).compute(x.astype(np.float64).astype(np.float32), w.astype(np.float32),
                                      None if b is None else b.astype(np.float32))


CONVS = [  # x shape, w shape, stride, pads, dilation, group
    ((2, 8, 9, 10), (16, 8, 3, 3), [1, 1], [1, 1, 1, 1], [1, 1], 1),
    ((1, 12, 11, 7), (20, 6, 3, 2), [2, 1], [1, 0, 0, 1], [1, 2], 2),
    ((2, 3, 13, 13), (8, 3, 5, 5), [2, 2], [2, 2, 2, 2], [1, 1], 1),
    ((2, 16, 6, 6), (24, 16, 1, 1), [1, 1], [0, 0, 0, 0], [1, 1], 1),    # 1x1 -> GEMM
    ((2, 16, 6, 6), (24, 8, 1, 1), [1, 1], [0, 0, 0, 0], [1, 1], 2),     # grouped 1x1
    ((1, 8, 8, 8), (8, 1, 3, 3), [1, 1], [1, 1, 1, 1], [1, 1], 8),       # depthwise 3x3
    ((2, 4, 9, 9), (8, 1, 5, 5), [2, 2], [2, 2, 2, 2], [1, 1], 4),       # depthwise 5x5, x2
    ((1, 6, 7, 7), (6, 1, 2, 3), [1, 2], [0, 1, 1, 0], [2, 1], 6),       # depthwise generic
]


@pytest.mark.parametrize("variant", ["simt:big", "simt:small", "tc:big", "tc:small"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("case", range(len(CONVS)))
def test_conv_paths(backend, variant, layout, dtype, case):
    from ep_core.graph import Node
    from ep_cuda.kernels.conv import Conv
    xs, ws, stride, pad, dil, group = CONVS[case]
    if ws[1] == 1 and variant != "simt:big":
        pytest.skip("depthwise has one kernel: the tile variant does not apply")
    x, w, b = rnd(xs, dtype), rnd(ws, dtype, 1), rnd((ws[0],), dtype, 2)
    want = conv_ref(x, w, b, stride, pad, dil, group)
    z = rnd(want.shape, dtype, 3)
    want = np.maximum(want + z.astype(np.float32), 0)
    node = Node("Conv", ["x", "w", "b"], ["y"], attrs={"strides": stride, "pads": pad,
                                                       "dilations": dil, "group": group},
                since_version=11, opset=17)

    strides = []

    def fn():
        dx = dev(x, backend)
        if layout == "nhwc":   # channels-last memory seen as NCHW
            dx = dev(np.ascontiguousarray(np.moveaxis(x, 1, -1)), backend)
            dx = dx.transpose(0, 3, 1, 2)
        y = Conv(node, None).run(dx, dev(w, backend), dev(b, backend), dev(z, backend), 0)
        strides.append(y.strides)
        return y
    got = run(backend, fn, {"conv": variant, "gemm": variant}, tf32=True, nhwc=layout == "nhwc")
    K = ws[1] * ws[2] * ws[3]
    np.testing.assert_allclose(got.astype(np.float64), want, **tol(dtype, variant, K))
    if layout == "nhwc":
        assert strides[0][1] == got.itemsize, "prefer_nhwc output is channels-last"


# ---------------------------------------------------------------------------- a small CNN session
def small_cnn():
    from benchmarks.models.cnn import _bn, _conv
    from benchmarks.models.common import F32 as MF32, GraphBuilder
    g = GraphBuilder("small_cnn", 0)
    x = g.input("input", MF32, ["batch", 3, 16, 16])
    y = g.op("Relu", [_bn(g, _conv(g, x, 3, 16, 3, 2, "stem"), 16, "bn0")])
    y = g.op("MaxPool", [y], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    h = g.op("Relu", [_bn(g, _conv(g, y, 16, 8, 1, 1, "b1"), 8, "bn1")])
    h = g.op("Relu", [_bn(g, _conv(g, h, 8, 8, 3, 1, "b2"), 8, "bn2")])
    h = _bn(g, _conv(g, h, 8, 16, 1, 1, "b3"), 16, "bn3")
    y = g.op("Relu", [g.op("Add", [h, y])])
    d = _bn(g, _conv(g, y, 16, 16, 3, 2, "dw", group=16), 16, "bnd")
    d = g.op("Clip", [d, g.scalar("lo", 0.0), g.scalar("hi", 6.0)])
    d = _bn(g, _conv(g, d, 16, 24, 1, 1, "pw"), 24, "bnp")
    p = g.op("Flatten", [g.op("GlobalAveragePool", [d])], axis=1)
    out = g.op("Gemm", [p, g.normal("fc.w", (5, 24), 0.2), g.normal("fc.b", (5,), 0.1)], transB=1)
    g.output(out, "logits", MF32, ["batch", 5])
    return g.model().SerializeToString()


@pytest.mark.parametrize("nhwc", [0, 1])
@pytest.mark.parametrize("level", [0, 99])
def test_small_cnn_session(nhwc, level):
    import ep_core
    from ep_cuda.testing import register_emulated
    from ep_cuda import emulator
    if not emulator.available()[0]:
        pytest.skip("no C++ compiler for the emulator")
    name = register_emulated()
    m = small_cnn()
    so = ep_core.SessionOptions()
    so.graph_optimization_level = level
    ours = ep_core.InferenceSession(m, so, providers=[(name, {"use_tf32": 0, "prefer_nhwc": nhwc})])
    ref = ep_core.InferenceSession(m, so, providers=["cpu"])
    feeds = {"input": rnd((2, 3, 16, 16), seed=5)}
    np.testing.assert_allclose(ours.run(None, feeds)[0], ref.run(None, feeds)[0], rtol=1e-4, atol=1e-4)
    assert all(p == "cuda" for _, _, p in ours.get_placement()["nodes"])

"""The compiled implicit-GEMM convolution (`ep_cpu.conv_implicit`, microkernel in
`ep_cpu.microkernel`) against onnxruntime and against the im2col + BLAS path, over the shapes
that exercise its edges: tile rows (8/12) and columns (32) that do not divide the channels and
positions, padding, strides, dilations, 1x1 and rectangular kernels, batches, thread splits by
columns and by rows, residual and activation epilogues, non-constant weights."""
from __future__ import annotations

import numpy as np
import pytest
from compiled_threads import threads_via
from onnx import TensorProto, helper

import ep_core
from ep_cpu import conv_implicit, conv_thin, jit_tier, microkernel, tile_shapes
from ep_cpu.gemm import _get_pool
from ep_cpu.kernels import conv

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the test oracle ([dev] extra)")
pytestmark = pytest.mark.skipif(not microkernel.available(),
                                reason="the compiled microkernel needs numba and an AVX2 or AVX-512 CPU")


@pytest.fixture(autouse=True)
def _tiles_over_blas(monkeypatch):
    """The convolution goes through the tiles on AVX2 CPUs too (there BLAS is the faster route by
    default, `microkernel.beats_blas`), so these kernels are checked on every CPU they run on."""
    monkeypatch.setattr(microkernel, "beats_blas", lambda: True)

# (input NCHW, out channels, kernel, strides, pads, dilations)
SHAPES = [
    ((1, 16, 14, 14), 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((2, 12, 15, 11), 20, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),     # batch, stride 2, odd sizes
    ((1, 3, 33, 35), 13, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1)),      # stem-like, 13 channels
    ((1, 10, 12, 12), 36, (5, 5), (2, 1), (2, 1, 2, 3), (1, 1)),     # asymmetric pads/strides
    ((1, 6, 13, 13), 24, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),      # dilation
    ((2, 5, 7, 7), 7, (3, 2), (1, 2), (0, 1, 1, 0), (2, 1)),         # 3x2 kernel
    ((1, 64, 7, 7), 100, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),      # 1x1, 49 positions
    ((1, 96, 14, 14), 40, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),     # unaligned rows read in place
    ((1, 40, 20, 20), 17, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),     # 1x1 stride 2
    ((1, 300, 9, 9), 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),      # K = 2700 > one k block
    ((1, 8, 1, 70), 16, (1, 3), (1, 1), (0, 1, 0, 1), (1, 1)),       # one row
    ((2, 24, 5, 4), 30, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),       # 1x1, only a partial tile
    ((2, 33, 9, 9), 20, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),       # 1x1 stride 2, batch
    ((1, 20, 8, 8), 28, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),       # 1x1, whole tiles only
    # 1x1 in two k blocks with a last overlapping tile: in the pass of the thread running the
    # tile before it (7 tiles), or after the others (3 tiles on two threads)
    ((1, 300, 14, 14), 24, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    ((1, 300, 9, 9), 24, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
]
TOL = dict(rtol=1e-4, atol=1e-4)


def _model(in_shape, m, ks, strides, pads, dil, epilogue, const_weight=True):
    c = in_shape[1]
    rng = np.random.default_rng(sum(in_shape) + m)
    w = (rng.standard_normal((m, c, *ks)) / np.sqrt(c * np.prod(ks))).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    conv_out = "y" if epilogue == "none" else "c"
    nodes = [helper.make_node("Conv", ["x", "w", "b"], [conv_out], kernel_shape=list(ks),
                              strides=list(strides), pads=list(pads), dilations=list(dil))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))]
    if epilogue == "relu":
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    elif epilogue == "clip":
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    elif epilogue == "silu":
        nodes += [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])]
    elif epilogue == "residual_relu":
        nodes += [helper.make_node("Add", ["c", "z"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    inits = [helper.make_tensor("b", TensorProto.FLOAT, b.shape, b.ravel()),
             helper.make_tensor("lo", TensorProto.FLOAT, [], [-0.5]),
             helper.make_tensor("hi", TensorProto.FLOAT, [], [0.75])]
    if const_weight:
        inits.append(helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()))
    else:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w.shape)))
    feeds = {"x": rng.standard_normal(in_shape).astype(np.float32)}
    if epilogue == "residual_relu":
        ref = ort.InferenceSession(_build(nodes[:1], inputs, inits, "c"), providers=["CPUExecutionProvider"])
        z_shape = ref.run(None, {**feeds, **({} if const_weight else {"w": w})})[0].shape
        inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, list(z_shape)))
        feeds["z"] = rng.standard_normal(z_shape).astype(np.float32)
    if not const_weight:
        feeds["w"] = w
    return _build(nodes, inputs, inits, "y"), feeds


def _build(nodes, inputs, inits, out):
    graph = helper.make_graph(nodes, "conv", inputs, [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              initializer=[i for i in inits if any(i.name in n.input for n in nodes)])
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()



@pytest.fixture
def implicit_calls(monkeypatch):
    """Counts the compiled convolutions run; every eligible conv takes the path."""
    # the kernels' build (its own small convs) first, so that only the tests' convs are counted
    assert jit_tier.ready("conv_implicit", conv_implicit.compile_kernels)
    calls = []
    real = conv_implicit.ImplicitConv.__call__

    def counting(self, *args, **kwargs):
        calls.append(self._keep[0].shape[2])   # tile rows of the packed weight
        return real(self, *args, **kwargs)

    monkeypatch.setattr(conv_implicit.ImplicitConv, "__call__", counting)
    monkeypatch.setattr(conv, "IMPLICIT", True)
    monkeypatch.setattr(conv, "IMPLICIT_MIN_MACS", 0)
    monkeypatch.setattr(conv_thin, "MAX_POSITIONS", 0)   # a few positions: tests/test_conv_thin.py
    # 1x1 convs that OpenBLAS takes on Intel's AVX-512 at one thread: tests/test_conv_pointwise.py
    monkeypatch.setattr(conv, "BLAS_1X1_MIN_OUTPUTS_INTEL", 1 << 30)
    return calls


@pytest.mark.parametrize("split", ["one_thread", "columns", "rows", "columns_pool", "rows_pool"])
@pytest.mark.parametrize("epilogue", ["none", "relu", "clip", "silu", "residual_relu"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0])) + f"_m{s[1]}_k{s[2][0]}{s[2][1]}_s{s[3][0]}{s[3][1]}")
def test_matches_onnxruntime(monkeypatch, implicit_calls, shape, epilogue, split):
    split = threads_via(monkeypatch, split)
    monkeypatch.setattr(conv_implicit, "FILL_SPLIT_MIN_FLOATS", 1)   # the planes' fill splits too
    if split == "columns":     # every panel its own hand-off: the column split runs
        monkeypatch.setattr(conv_implicit, "PAR_MIN_PANELS", 1)
    elif split == "rows":      # the row-panel split (maps with few positions)
        monkeypatch.setattr(conv_implicit, "PAR_MIN_PANELS", 1)
        monkeypatch.setattr(conv_implicit, "_split_by_columns", lambda tiles, rows: False)
    data, feeds = _model(*shape, epilogue=epilogue)
    opts = ep_core.SessionOptions()
    opts.intra_op_num_threads = 1 if split == "one_thread" else 2
    ours = ep_core.InferenceSession(data, opts, providers=["cpu"]).run(None, feeds)[0]
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert implicit_calls == [tile_shapes.panel_rows(shape[1])]   # the compiled path really ran
    np.testing.assert_allclose(ours, ref, **TOL)


@pytest.mark.parametrize("shape", [
    ((1, 8, 40, 40), 20, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),     # 53 tiles, padded grid
    ((1, 24, 30, 30), 16, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),    # 28 tiles + a partial one
    ((2, 12, 31, 29), 20, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),    # stride-phase planes
], ids=["3x3", "1x1", "3x3_s2"])
@pytest.mark.parametrize("split", ["one_thread", "columns", "rows"])
def test_blocks_of_tiles_give_the_same_bits(monkeypatch, implicit_calls, shape, split):
    """The tiles run in blocks sized to keep their input in L2 (`tile_shapes.block_tiles`): a
    block of one tile, of three, and the whole map as one block compute every tile's sums in
    the same order, so the outputs are identical."""
    split = threads_via(monkeypatch, split)
    if split != "one_thread":
        monkeypatch.setattr(conv_implicit, "PAR_MIN_PANELS", 1)
    if split == "rows":
        monkeypatch.setattr(conv_implicit, "_split_by_columns", lambda tiles, rows: False)
    data, feeds = _model(*shape, epilogue="residual_relu")
    opts = ep_core.SessionOptions()
    opts.intra_op_num_threads = 1 if split == "one_thread" else 2
    planes = shape[0][1] * shape[3][0] * shape[3][1]
    outs = []
    for tiles in (1, 3, tile_shapes.BLOCK_TILES_MAX):
        monkeypatch.setattr(tile_shapes, "BLOCK_INPUT_BYTES", tiles * planes * microkernel.NR * 4)
        assert tile_shapes.block_tiles(planes) == tiles
        outs.append(ep_core.InferenceSession(data, opts, providers=["cpu"]).run(None, feeds)[0])
    assert len(implicit_calls) == 3
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(outs[0], ref, **TOL)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: "x".join(map(str, s[0])))
def test_weight_as_graph_input(implicit_calls, shape):
    """A non-constant W is packed per run, never reused from an earlier run."""
    data, feeds = _model(*shape, epilogue="relu", const_weight=False)
    sess = ep_core.InferenceSession(data, providers=["cpu"])
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for scale in (1.0, -2.0):
        run_feeds = dict(feeds, w=feeds["w"] * np.float32(scale))
        np.testing.assert_allclose(sess.run(None, run_feeds)[0], ref.run(None, run_feeds)[0], **TOL)
    assert len(implicit_calls) == 2


def test_constant_weight_packed_at_session_creation(monkeypatch, implicit_calls):
    packs = []
    real = conv_implicit.pack_weight
    monkeypatch.setattr(conv_implicit, "pack_weight", lambda w: packs.append(w.shape) or real(w))
    data, feeds = _model(*SHAPES[0], epilogue="relu")
    sess = ep_core.InferenceSession(data, providers=["cpu"])
    assert len(packs) == 1
    for _ in range(3):
        sess.run(None, feeds)
    assert len(packs) == 1 and len(implicit_calls) == 3


def test_same_as_blas_path(monkeypatch):
    """On a ResNet-like block both CPU paths agree (the compiled one and im2col + BLAS)."""
    data, feeds = _model((1, 64, 28, 28), 64, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), "residual_relu")
    monkeypatch.setattr(conv, "IMPLICIT", True)
    fast = ep_core.InferenceSession(data, providers=["cpu"]).run(None, feeds)[0]
    monkeypatch.setattr(conv, "IMPLICIT", False)
    blas = ep_core.InferenceSession(data, providers=["cpu"]).run(None, feeds)[0]
    np.testing.assert_allclose(fast, blas, **TOL)   # (the other path is Winograd here)


@pytest.mark.parametrize("shape, path", [
    (((1, 32, 20, 20), 32, (3, 3), (1, 1)), "implicit"),   # stride 1
    (((1, 3, 32, 32), 16, (3, 3), (2, 2)), "implicit"),    # a stem: few channels, stride 2
    (((1, 64, 20, 20), 64, (3, 3), (2, 2)), "im2col"),     # deeper, stride 2
    (((1, 64, 20, 20), 64, (1, 1), (1, 1)), "im2col"),     # 1x1
    (((1, 16, 56, 56), 96, (1, 1), (1, 1)), "implicit"),   # shallow 1x1 on a large map
], ids=["3x3", "stem_s2", "deep_s2", "1x1", "shallow_1x1"])
def test_spatial_kernels_take_the_tiles_where_blas_takes_convs(monkeypatch, shape, path):
    """Where BLAS takes convs (AVX2 at one thread), spatial kernels of stride 1, strided ones
    over a few channels and shallow 1x1 ones on large maps still run on the tiles
    (`conv._spatial_on_tiles`)."""
    monkeypatch.setattr(microkernel, "beats_blas", lambda: False)
    assert jit_tier.ready("conv_implicit", conv_implicit.compile_kernels)
    x_shape, m, ks, strides = shape
    pads = tuple(k // 2 for k in ks) * 2
    data, feeds = _model(x_shape, m, ks, strides, pads, (1, 1), "relu")
    opts = ep_core.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ep_core.InferenceSession(data, opts, providers=["cpu"])
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(sess.run(None, feeds)[0], ref, **TOL)
    paths = [st.kernel._conv_geometry[1][-1] for st in sess._plan.steps
             if "_conv_geometry" in st.kernel.__dict__]
    assert paths == [path]


def test_nan_and_inf_propagate(implicit_calls):
    data, feeds = _model((1, 8, 6, 6), 12, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), "relu")
    feeds["x"][0, 0, 2, 2] = np.nan
    feeds["x"][0, 1, 4, 4] = np.inf
    ours = ep_core.InferenceSession(data, providers=["cpu"]).run(None, feeds)[0]
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_allclose(np.nan_to_num(ours), np.nan_to_num(ref), **TOL)


@pytest.mark.parametrize("geometry", [
    # C, H, W, k, stride, pad (begin = end), dilation
    (3, 320, 320, 3, 2, 1, 1), (2, 17, 15, 3, 2, 0, 1), (4, 15, 16, 5, 2, 2, 1), (3, 224, 224, 7, 2, 3, 1),
    (3, 9, 11, 3, 1, 0, 1), (2, 12, 12, 3, 1, 1, 2), (2, 13, 13, 3, 3, 1, 1),
])
@pytest.mark.parametrize("pad_value", [0.0, -np.inf])
@pytest.mark.parametrize("workers", [1, 2])
def test_phase_planes_hold_the_padded_image(geometry, pad_value, workers):
    """`fill_planes` (compiled for column strides 1 and 2, its channels split between threads
    with `workers`; numpy otherwise): plane (a, b) row t, column u is the padded image's row
    a + t*sh, column b + u*sw."""
    c, h, w, k, s, p, d = geometry
    rng = np.random.default_rng(h + w)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    o = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n in (h, w)]
    lay = conv_implicit.phase_layout(c, h, w, k, k, s, s, d, d, p, p, p, p, *o)
    got = conv_implicit.fill_planes(x, lay, s, s, pad_value, workers, _get_pool)
    padded = np.full((2, c, h + 2 * p + s * lay.hq, w + 2 * p + s * lay.wq), pad_value, np.float32)
    padded[:, :, p:p + h, p:p + w] = x
    planes = got[:, :lay.planes_size].reshape(2, c, s, s, lay.hq, lay.wq)
    for a in range(s):
        for b in range(s):
            want = padded[:, :, a::s, b::s][:, :, :lay.hq, :lay.wq]
            np.testing.assert_array_equal(planes[:, :, a, b], want)
    assert not got[:, lay.planes_size:].any()

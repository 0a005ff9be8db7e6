"""Depthwise convolution on the CPU provider against onnxruntime, through both tap layouts
(NCHW rows and channels-last blocks) and the fused epilogue (bias, residual, activation)."""
from __future__ import annotations

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper

import ep_core
from ep_core.op_attributes import conv_geometry
from ep_cpu import conv_depthwise, microkernel, native_call, winograd, winograd_jit
from ep_cpu.kernels import conv, conv_depthwise_numpy

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the test oracle ([dev] extra)")

# (input NCHW, out channels, kernel, strides, pads, dilations)
SHAPES = [
    ((1, 16, 14, 14), 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((2, 12, 15, 11), 12, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),      # odd sizes, stride 2
    ((1, 8, 9, 10), 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),       # channel multiplier 2
    ((1, 10, 12, 12), 10, (5, 5), (2, 1), (2, 1, 2, 3), (1, 1)),     # asymmetric pads/strides
    ((1, 6, 13, 13), 6, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),       # dilation
    ((2, 5, 7, 7), 5, (3, 2), (1, 2), (0, 1, 1, 0), (2, 1)),         # 3x2 kernel
    ((1, 24, 40, 40), 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),     # long rows (NCHW taps)
]


def _conv_model(in_shape, m, ks, strides, pads, dil, fused_relu: bool):
    c = in_shape[1]
    rng = np.random.default_rng(sum(in_shape) + m)
    w = rng.standard_normal((m, 1, *ks)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c" if fused_relu else "y"], group=c,
                              kernel_shape=list(ks), strides=list(strides), pads=list(pads),
                              dilations=list(dil))]
    if fused_relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    graph = helper.make_graph(
        nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "m", "h", "w"])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
                     helper.make_tensor("b", TensorProto.FLOAT, b.shape, b.ravel())])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString(), {"x": rng.standard_normal(in_shape).astype(np.float32)}


@pytest.mark.parametrize("layout_row_max", [0, 1 << 30, "planes", "nhwc", "tiles", "tiles_pool", "padded"],
                         ids=["nchw_taps", "channels_last_taps", "compiled_planes", "compiled_nhwc",
                              "compiled_tiles", "compiled_tiles_python_pool", "compiled_padded"])
@pytest.mark.parametrize("fused_relu", [False, True], ids=["plain", "fused_relu"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0])) + f"_k{s[2][0]}{s[2][1]}_s{s[3][0]}{s[3][1]}")
def test_depthwise_matches_onnxruntime(monkeypatch, shape, fused_relu, layout_row_max):
    if isinstance(layout_row_max, str):  # the compiled kernels (numba), forced to one layout
        pytest.importorskip("numba")
        if layout_row_max.startswith(("tiles", "padded")) and not microkernel.available():
            pytest.skip("the vector depthwise kernels need an AVX2 or AVX-512 CPU")
        if layout_row_max == "tiles_pool":   # threads through ep_cpu.gemm's pool, not TBB
            monkeypatch.setattr(native_call, "parallel_ok", lambda: False)
            layout_row_max = "tiles"
        planes_min = 0 if layout_row_max == "planes" else 1 << 30
        monkeypatch.setattr(conv_depthwise, "TILES_MIN_POSITIONS", 0 if layout_row_max == "tiles" else 1 << 30)
        monkeypatch.setattr(conv_depthwise, "PLANES_MIN_STRIDE1", planes_min)
        monkeypatch.setattr(conv_depthwise, "PLANES_MIN_STRIDED", planes_min)
        monkeypatch.setattr(conv_depthwise, "PAR_MIN_MACS", 1)
        monkeypatch.setattr(conv_depthwise, "FLAT", False)   # tests/test_depthwise_flat.py
        monkeypatch.setattr(conv_depthwise, "PADDED", layout_row_max == "padded")
    else:
        monkeypatch.setattr(conv, "DW_COMPILED", False)
        monkeypatch.setattr(conv_depthwise_numpy, "DW_CHANNELS_LAST_MAX_ROW", layout_row_max)
    monkeypatch.setattr(conv_depthwise_numpy, "DW_PAR_MIN", 0)        # also run the channel blocks on threads
    data, feeds = _conv_model(*shape, fused_relu=fused_relu)
    ours = ep_core.InferenceSession(data, providers=["cpu"]).run(None, feeds)[0]
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- Winograd 3x3

# (input NCHW, out channels, pads, auto_pad): stride 1, dilation 1, 3x3, group 1.
WINO_SHAPES = [
    ((1, 8, 9, 9), 8, (1, 1, 1, 1), "NOTSET"),         # partial last tiles
    ((2, 5, 12, 7), 3, (1, 1, 1, 1), "NOTSET"),        # batch 2, C != M, non-square
    ((3, 4, 10, 11), 6, (0, 0, 0, 0), "NOTSET"),       # no padding
    ((1, 6, 8, 8), 4, (2, 0, 1, 3), "NOTSET"),         # asymmetric pads
    ((1, 3, 5, 5), 5, (0, 0, 0, 0), "SAME_LOWER"),     # auto_pad
    ((1, 4, 3, 3), 2, (0, 0, 0, 0), "VALID"),          # a single output pixel
    ((2, 16, 17, 15), 24, (1, 1, 1, 1), "NOTSET"),
]
WINO_TOL = dict(rtol=1e-4, atol=1e-4)   # onnxruntime's float conv tests use 1e-4-ish; F(4x4) errs ~5e-6


def _wino_model(in_shape, m, pads, auto_pad, epilogue: str, const_weight: bool):
    c = in_shape[1]
    rng = np.random.default_rng(sum(in_shape) * 7 + m)
    w = (rng.standard_normal((m, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    attrs = dict(kernel_shape=[3, 3], auto_pad=auto_pad)
    if auto_pad == "NOTSET":
        attrs["pads"] = list(pads)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs)]
    last = "c"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))]
    feeds = {"x": rng.standard_normal(in_shape).astype(np.float32)}
    if epilogue in ("residual_relu", "residual"):
        # The residual has the conv's output shape: one more conv on the same input makes it.
        nodes.append(helper.make_node("Conv", ["x", "w", "b"], ["r"], **attrs))
        nodes.append(helper.make_node("Add", ["c", "r"], ["s"]))
        last = "s"
    if epilogue in ("relu", "residual_relu"):
        nodes.append(helper.make_node("Relu", [last], ["a"]))
        last = "a"
    if epilogue == "clip":
        nodes.append(helper.make_node("Clip", [last, "lo", "hi"], ["a"]))
        last = "a"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    inits = [helper.make_tensor("b", TensorProto.FLOAT, b.shape, b.ravel()),
             helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("hi", TensorProto.FLOAT, [], [0.5])]
    if const_weight:
        inits.append(helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()))
    else:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w.shape)))
        feeds["w"] = w
    graph = helper.make_graph(nodes, "wino", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "m", "h", "w"])],
                              initializer=inits)
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString(), feeds


@pytest.fixture
def force_winograd(monkeypatch):
    """Every eligible conv takes the Winograd path; returns the list of calls made to it."""
    calls = []
    real = winograd.conv3x3

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(winograd, "conv3x3", counting)
    monkeypatch.setattr(conv, "IMPLICIT", False)   # Winograd is the path where the compiled one is off
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 0)
    monkeypatch.setattr(conv, "WINOGRAD_MIN_TILES", 0)
    return calls


@pytest.mark.parametrize("impl", [(4, "compiled"), (4, "bands_threads"), (4, "numpy"), (2, "numpy")],
                         ids=["F4x4", "F4x4_bands_threads", "F4x4_numpy", "F2x2"])
@pytest.mark.parametrize("epilogue", ["none", "relu", "clip", "residual_relu"])
@pytest.mark.parametrize("shape", WINO_SHAPES, ids=lambda s: "x".join(map(str, s[0])) + f"_m{s[1]}_{s[3]}")
def test_winograd_matches_onnxruntime(monkeypatch, force_winograd, shape, epilogue, impl):
    """F(4x4) through the compiled transforms (one band; one-tile bands with the channels split
    between two threads) and through numpy, F(2x2) through numpy."""
    tile, how = impl
    monkeypatch.setattr(conv, "WINOGRAD_TILE", tile)
    monkeypatch.setattr(winograd, "COMPILED", how != "numpy")
    ranges = []
    if how == "bands_threads":
        monkeypatch.setattr(winograd, "BAND_BYTES", 1)
        monkeypatch.setattr(winograd, "BAND_MIN_TILES", 1)
        monkeypatch.setattr(winograd, "SPLIT_MIN", 0)
        monkeypatch.setattr(winograd, "SPLIT_MAX_CHANNELS", 1 << 30)
        real_input = winograd_jit.input_tiles
        monkeypatch.setattr(winograd_jit, "input_tiles",
                            lambda *a: ranges.append((a[3], a[4], a[-2], a[-1])) or real_input(*a))
    opts = ep_core.SessionOptions()
    opts.intra_op_num_threads = 2 if how == "bands_threads" else 1
    data, feeds = _wino_model(*shape, epilogue=epilogue, const_weight=True)
    ours = ep_core.InferenceSession(data, opts, providers=["cpu"]).run(None, feeds)[0]
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert force_winograd and set(force_winograd) == {tile}   # the path under test really ran
    if how == "bands_threads":   # one band per tile row; channels split where there are two
        channels = shape[0][1]
        assert {t1 - t0 for t0, t1, _, _ in ranges} == {1}
        assert any(c1 - c0 < channels for _, _, c0, c1 in ranges) == (channels > 1)
    np.testing.assert_allclose(ours, ref, **WINO_TOL)


@pytest.mark.parametrize("shape", WINO_SHAPES[:3], ids=lambda s: "x".join(map(str, s[0])))
def test_winograd_weight_as_graph_input(force_winograd, shape):
    """A non-constant W is transformed per run (and never cached across runs)."""
    data, feeds = _wino_model(*shape, epilogue="relu", const_weight=False)
    sess = ep_core.InferenceSession(data, providers=["cpu"])
    ref_sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for scale in (1.0, -2.0):   # a second run with another weight must not reuse the first
        run_feeds = dict(feeds, w=feeds["w"] * np.float32(scale))
        np.testing.assert_allclose(sess.run(None, run_feeds)[0],
                                   ref_sess.run(None, run_feeds)[0], **WINO_TOL)
    assert force_winograd


def test_winograd_constant_weight_transformed_once(monkeypatch, force_winograd):
    transforms = []
    real = winograd.transform_weight
    monkeypatch.setattr(winograd, "transform_weight", lambda w, m: transforms.append(m) or real(w, m))
    data, feeds = _wino_model((1, 8, 9, 9), 8, (1, 1, 1, 1), "NOTSET", epilogue="none",
                              const_weight=True)
    sess = ep_core.InferenceSession(data, providers=["cpu"])
    for _ in range(3):
        sess.run(None, feeds)
    assert len(force_winograd) == 3 and len(transforms) == 1


def test_winograd_shape_rule():
    """Defaults: big-channel maps with enough tiles take Winograd, small ones and strided don't."""
    f32 = np.dtype(np.float32)
    assert conv._use_winograd((1, 64, 56, 56), (64, 64, 3, 3), [3, 3], [1, 1], [1, 1], 1, [56, 56], f32)
    assert not conv._use_winograd((1, 512, 7, 7), (512, 512, 3, 3), [3, 3], [1, 1], [1, 1], 1, [7, 7], f32)
    assert not conv._use_winograd((1, 32, 56, 56), (32, 32, 3, 3), [3, 3], [1, 1], [1, 1], 1, [56, 56], f32)
    assert not conv._use_winograd((1, 64, 56, 56), (64, 64, 3, 3), [3, 3], [2, 2], [1, 1], 1, [28, 28], f32)
    assert not conv._use_winograd((1, 64, 56, 56), (64, 64, 3, 3), [3, 3], [1, 1], [1, 1], 1, [56, 56],
                                  np.dtype(np.float64))


@pytest.mark.parametrize("epilogue", ["none", "relu"])
def test_winograd_transform_at_session_creation(monkeypatch, force_winograd, epilogue):
    """Conv and FusedConv (Conv+Relu) transform a constant weight when the session is built:
    no run pays for it, and runs with other input sizes reuse it."""
    transforms = []
    real = winograd.transform_weight
    monkeypatch.setattr(winograd, "transform_weight", lambda w, m: transforms.append(m) or real(w, m))
    data, feeds = _wino_model((1, 8, 9, 9), 8, (1, 1, 1, 1), "NOTSET", epilogue=epilogue,
                              const_weight=True)
    model = onnx.load_from_string(data)
    for d, name in zip(model.graph.input[0].type.tensor_type.shape.dim, "nchw"):
        d.dim_param = name   # any input size
    data = model.SerializeToString()
    sess = ep_core.InferenceSession(data, providers=["cpu"])
    ops = {st.node.op_type for st in sess._plan.steps}
    assert ("FusedConv" if epilogue == "relu" else "Conv") in ops
    assert len(transforms) == 1
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for shape in ((1, 8, 9, 9), (2, 8, 12, 7), (1, 8, 9, 9)):   # the geometry follows the shapes
        x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0], **WINO_TOL)
    assert len(transforms) == 1 and len(force_winograd) == 3


@pytest.mark.parametrize("geometry", [
    ((1, 3, 17), (4, 3, 3), (2,), (1,), (1, 2)),
    ((1, 5, 9, 7), (6, 5, 3, 2), (1, 2), (2, 1), (1, 0, 2, 1)),
    ((1, 4, 6, 6), (2, 2, 3, 3), (1, 1), (1, 1), (-1, 0, 1, -1)),   # grouped; negative pads crop
    ((1, 2, 4, 5, 3), (3, 2, 2, 3, 1), (1, 2, 1), (1, 1, 2), (0, 1, 0, 1, 0, 0)),
])
def test_small_im2col_gather_matches_window_view(monkeypatch, geometry):
    """The cached-index gather of small single-image convs equals the window-view im2col."""
    x_shape, w_shape, strides, dil, pads = geometry
    rng = np.random.default_rng(len(x_shape))
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    group = x_shape[1] // w_shape[1]
    nd = len(strides)
    begin, end, out = conv_geometry(x_shape[2:], w_shape[2:], strides, dil, pads, "NOTSET")
    args = (x, w, group, list(strides), list(dil), begin, end, out)
    monkeypatch.setattr(conv, "SMALL_IM2COL", 1 << 30)
    gathered = conv.conv_nd(*args)
    monkeypatch.setattr(conv, "SMALL_IM2COL", 0)
    viewed = conv.conv_nd(*args)
    assert gathered.shape == viewed.shape == (1, w_shape[0], *out) and nd == len(out)
    np.testing.assert_allclose(gathered, viewed, rtol=1e-6, atol=1e-6)


def test_winograd_first_by_cpu_class_map_and_threads(monkeypatch):
    """Winograd before the implicit conv: always on AVX2, never on AMD's AVX-512, on Intel's at
    one thread from WINOGRAD_FIRST_MIN_TILES_AVX512 tiles (measured per class: conv.py)."""
    from ep_cpu import microkernel
    from ep_cpu.kernels import conv as conv_kernels
    monkeypatch.setattr(conv_kernels, "WINOGRAD_OVER_IMPLICIT", None)
    first = conv_kernels._winograd_first
    many = conv_kernels.WINOGRAD_FIRST_MIN_TILES_AVX512
    monkeypatch.setattr(microkernel, "wide", lambda: False)
    assert first(1, 2) and first(None)
    monkeypatch.setattr(microkernel, "wide", lambda: True)
    monkeypatch.setattr(microkernel, "amd", lambda: True)
    assert not first(10 * many, 1)
    monkeypatch.setattr(microkernel, "amd", lambda: False)
    assert first(many, 1) and not first(many - 1, 1) and not first(10 * many, 2) and not first(None)
    monkeypatch.setattr(conv_kernels, "WINOGRAD_OVER_IMPLICIT", True)
    assert first(1, 2)


def test_deep_1x1_convs_on_blas_by_cpu_class(monkeypatch):
    """Intel's AVX-512 at one thread: 1x1 convs with BLAS_1X1_MIN_OUTPUTS_INTEL outputs and
    BLAS_1X1_MIN_CHANNELS_INTEL inputs (or at most BLAS_1X1_MAX_POSITIONS_INTEL positions) run
    on OpenBLAS when their activation is none or a clamp; at two threads, on AMD, or with SiLU
    they stay on the implicit conv (conv.py)."""
    from ep_cpu import microkernel
    from ep_cpu.kernels import conv as conv_kernels
    deep = conv_kernels._deep_1x1_on_blas
    c, m = conv_kernels.BLAS_1X1_MIN_CHANNELS_INTEL, conv_kernels.BLAS_1X1_MIN_OUTPUTS_INTEL
    monkeypatch.setattr(microkernel, "beats_blas", lambda: True)
    monkeypatch.setattr(microkernel, "amd", lambda: False)
    assert deep([1, 1], [1, 1], c, m, 1 << 20, 1)
    assert not deep([1, 1], [1, 1], c - 1, m, 1 << 20, 1) and not deep([1, 1], [1, 1], c, m - 1, 1 << 20, 1)
    assert not deep([1, 1], [1, 1], c, m, 1 << 20, 2) and not deep([3, 3], [1, 1], c, m, 1 << 20, 1)
    assert not deep([1, 1], [2, 2], c, m, 1 << 20, 1)
    assert not deep([1, 1], [1, 1], c, m, 1 << 20, 1, clamp_epilogue=False)
    few = conv_kernels.BLAS_1X1_MAX_POSITIONS_INTEL   # shallow ones on small maps too
    assert deep([1, 1], [1, 1], 16, m, 1 << 20, 1, positions=few)
    assert not deep([1, 1], [1, 1], 16, m, 1 << 20, 1, positions=few + 1)
    assert not deep([1, 1], [1, 1], 16, m, 1 << 20, 1)   # positions not known
    monkeypatch.setattr(microkernel, "amd", lambda: True)
    assert not deep([1, 1], [1, 1], c, m, 1 << 20, 1)

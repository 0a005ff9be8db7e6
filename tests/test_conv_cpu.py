"""Depthwise convolution on the CPU provider against onnxruntime, through both tap layouts
(NCHW rows and channels-last blocks) and the fused epilogue (bias, residual, activation)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import ep_core
from ep_cpu import conv_depthwise
from ep_cpu.kernels import conv

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


@pytest.mark.parametrize("layout_row_max", [0, 1 << 30, "planes", "nhwc"],
                         ids=["nchw_taps", "channels_last_taps", "compiled_planes", "compiled_nhwc"])
@pytest.mark.parametrize("fused_relu", [False, True], ids=["plain", "fused_relu"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0])) + f"_k{s[2][0]}{s[2][1]}_s{s[3][0]}{s[3][1]}")
def test_depthwise_matches_onnxruntime(monkeypatch, shape, fused_relu, layout_row_max):
    if isinstance(layout_row_max, str):  # the compiled kernels (numba), forced to one layout
        pytest.importorskip("numba")
        planes_min = 0 if layout_row_max == "planes" else 1 << 30
        monkeypatch.setattr(conv_depthwise, "PLANES_MIN_STRIDE1", planes_min)
        monkeypatch.setattr(conv_depthwise, "PLANES_MIN_STRIDED", planes_min)
        monkeypatch.setattr(conv_depthwise, "PAR_MIN_MACS", 1)
    else:
        monkeypatch.setattr(conv, "DW_COMPILED", False)
        monkeypatch.setattr(conv, "DW_CHANNELS_LAST_MAX_ROW", layout_row_max)
    monkeypatch.setattr(conv, "DW_PAR_MIN", 0)        # also run the channel blocks on threads
    data, feeds = _conv_model(*shape, fused_relu=fused_relu)
    ours = ep_core.InferenceSession(data, providers=["cpu"]).run(None, feeds)[0]
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)

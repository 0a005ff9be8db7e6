"""Resize on the CPU provider: nearest upsampling by integer factors as one broadcast copy
(`_integer_repeats` / `_repeat`), against onnxruntime, over the coordinate and rounding modes
that do and do not reduce to repeats; plans computed once per shape."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import ep_core
from ep_cpu.kernels import resize

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the test oracle ([dev] extra)")

MODES = [("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"),
         ("pytorch_half_pixel", "round_prefer_ceil"), ("align_corners", "round_prefer_floor"),
         ("asymmetric", "ceil")]


def _model(shape, scales, coord, nearest):
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                            coordinate_transformation_mode=coord, nearest_mode=nearest)
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[helper.make_tensor("scales", TensorProto.FLOAT, [len(scales)], scales)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("coord,nearest", MODES)
@pytest.mark.parametrize("shape,scales", [((1, 8, 5, 7), [1, 1, 2, 2]), ((2, 3, 4, 4), [1, 1, 3, 1]),
                                          ((1, 2, 6, 5), [1, 1, 1.5, 2])])
def test_nearest_matches_onnxruntime(monkeypatch, shape, scales, coord, nearest):
    taken = []
    real = resize._repeat
    monkeypatch.setattr(resize, "_repeat", lambda x, r: taken.append(r) or real(x, r))
    data = _model(shape, scales, coord, nearest)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    sess = ep_core.InferenceSession(data, providers=["cpu"])
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    for _ in range(2):   # the second run uses the cached plans
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], want)
    if (coord, nearest) in MODES[:2] and all(float(s).is_integer() for s in scales):
        assert taken   # a 2x/3x upsample in these modes is a pure repeat


def test_non_repeat_index_maps_are_refused():
    plans = {2: resize.AxisPlan(np.array([[0], [0], [1], [2]]), None, None)}
    assert resize._integer_repeats((1, 1, 2), plans) is None
    plans = {2: resize.AxisPlan(np.array([[0], [0], [1], [1]]), None, None)}
    assert resize._integer_repeats((1, 1, 2), plans) == {2: 2}

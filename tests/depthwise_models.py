"""Shared by the compiled depthwise kernels' tests: a one-node depthwise conv + Clip model."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper


def depthwise_clip_model(channels: int, size: int, **conv_attrs) -> bytes:
    """Conv (group = channels, 3x3, `conv_attrs`) then Clip(0, 6) over a (1, channels, size,
    size) input "x"; random weights (seed 0)."""
    w = np.random.default_rng(0).standard_normal((channels, 1, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], group=channels, **conv_attrs),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
             helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("hi", TensorProto.FLOAT, [], [6.0])]
    graph = helper.make_graph(
        nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, ir_version=8,
                             opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

"""A one-stage detector in the layout of Ultralytics YOLOv8n as torch.onnx exports it, 320x320.

Backbone of Conv(3x3, stride 2) + C2f blocks (1x1 conv, Split, 3x3 bottlenecks with shortcuts,
Concat, 1x1 conv), SPPF (three chained 5x5 MaxPools), a PAN neck (nearest Resize x2 + Concat up,
strided 3x3 convs + Concat down) and the decoupled Detect head on strides 8/16/32: two 3x3 convs
and a 1x1 conv each for the box distribution (4 x 16 bins) and the 80 class scores, then the
export's decode (DFL softmax + 1x1 conv over the bins, anchor points, strides, Sigmoid) into one
(1, 84, 2100) output. BatchNorm is folded into the convs (the export's default); SiLU is
Sigmoid + Mul as opset 17 exports it. Weights are random (He init, fixed seed).
"""
from __future__ import annotations

import math

import numpy as np
import onnx

from .common import F32, GraphBuilder

SIZE = 320
CLASSES = 80
REG_MAX = 16


def _conv_silu(g: GraphBuilder, x: str, c_in: int, c_out: int, k: int, s: int, name: str) -> str:
    w = g.normal(f"{name}.conv.weight", (c_out, c_in, k, k), math.sqrt(2.0 / (c_in * k * k)))
    b = g.normal(f"{name}.conv.bias", (c_out,), 0.05)
    y = g.op("Conv", [x, w, b], name=f"{name}/conv", kernel_shape=[k, k], strides=[s, s],
             pads=[k // 2] * 4, dilations=[1, 1], group=1)
    return g.op("Mul", [y, g.op("Sigmoid", [y], name=f"{name}/sigmoid")], name=f"{name}/silu")


def _c2f(g: GraphBuilder, x: str, c_in: int, c_out: int, n: int, shortcut: bool, name: str) -> str:
    c = c_out // 2
    y = _conv_silu(g, x, c_in, 2 * c, 1, 1, f"{name}.cv1")
    parts = list(g.op("Split", [y, g.ints(f"{name}.split", [c, c])], n_out=2, name=f"{name}/split",
                      axis=1))
    for i in range(n):
        h = _conv_silu(g, parts[-1], c, c, 3, 1, f"{name}.m.{i}.cv1")
        h = _conv_silu(g, h, c, c, 3, 1, f"{name}.m.{i}.cv2")
        if shortcut:
            h = g.op("Add", [parts[-1], h], name=f"{name}.m.{i}/add")
        parts.append(h)
    y = g.op("Concat", parts, name=f"{name}/concat", axis=1)
    return _conv_silu(g, y, (2 + n) * c, c_out, 1, 1, f"{name}.cv2")


def _sppf(g: GraphBuilder, x: str, c: int, name: str) -> str:
    y = _conv_silu(g, x, c, c // 2, 1, 1, f"{name}.cv1")
    pools = [y]
    for i in range(3):
        pools.append(g.op("MaxPool", [pools[-1]], name=f"{name}/pool{i}", kernel_shape=[5, 5],
                          strides=[1, 1], pads=[2, 2, 2, 2]))
    return _conv_silu(g, g.op("Concat", pools, name=f"{name}/concat", axis=1), 2 * c, c, 1, 1,
                      f"{name}.cv2")


def _upsample(g: GraphBuilder, x: str, name: str) -> str:
    scales = g.const(f"{name}.scales", np.array([1, 1, 2, 2], dtype=np.float32))
    return g.op("Resize", [x, "", scales], name=name, mode="nearest",
                coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def yolov8n(seed: int = 0, size: int = SIZE) -> onnx.ModelProto:
    g = GraphBuilder("yolov8n", seed)
    x = g.input("images", F32, [1, 3, size, size])
    y = _conv_silu(g, x, 3, 16, 3, 2, "model.0")
    y = _conv_silu(g, y, 16, 32, 3, 2, "model.1")
    y = _c2f(g, y, 32, 32, 1, True, "model.2")
    y = _conv_silu(g, y, 32, 64, 3, 2, "model.3")
    p3 = _c2f(g, y, 64, 64, 2, True, "model.4")
    y = _conv_silu(g, p3, 64, 128, 3, 2, "model.5")
    p4 = _c2f(g, y, 128, 128, 2, True, "model.6")
    y = _conv_silu(g, p4, 128, 256, 3, 2, "model.7")
    y = _c2f(g, y, 256, 256, 1, True, "model.8")
    p5 = _sppf(g, y, 256, "model.9")
    # PAN neck
    y = g.op("Concat", [_upsample(g, p5, "model.10"), p4], name="model.11", axis=1)
    n4 = _c2f(g, y, 384, 128, 1, False, "model.12")
    y = g.op("Concat", [_upsample(g, n4, "model.13"), p3], name="model.14", axis=1)
    o3 = _c2f(g, y, 192, 64, 1, False, "model.15")
    y = g.op("Concat", [_conv_silu(g, o3, 64, 64, 3, 2, "model.16"), n4], name="model.17", axis=1)
    o4 = _c2f(g, y, 192, 128, 1, False, "model.18")
    y = g.op("Concat", [_conv_silu(g, o4, 128, 128, 3, 2, "model.19"), p5], name="model.20", axis=1)
    o5 = _c2f(g, y, 384, 256, 1, False, "model.21")
    # Detect head
    c2, c3 = max(16, 64 // 4, REG_MAX * 4), max(64, min(CLASSES, 100))
    flat, anchors, strides = [], [], []
    for i, (feat, ch, stride) in enumerate(((o3, 64, 8), (o4, 128, 16), (o5, 256, 32))):
        p = f"model.22.{i}"
        box = _conv_silu(g, _conv_silu(g, feat, ch, c2, 3, 1, f"{p}.cv2.0"), c2, c2, 3, 1, f"{p}.cv2.1")
        box = g.op("Conv", [box, g.normal(f"{p}.cv2.2.weight", (4 * REG_MAX, c2, 1, 1), 1 / math.sqrt(c2)),
                            g.normal(f"{p}.cv2.2.bias", (4 * REG_MAX,), 0.5)], name=f"{p}.cv2.2",
                   kernel_shape=[1, 1])
        cls = _conv_silu(g, _conv_silu(g, feat, ch, c3, 3, 1, f"{p}.cv3.0"), c3, c3, 3, 1, f"{p}.cv3.1")
        cls = g.op("Conv", [cls, g.normal(f"{p}.cv3.2.weight", (CLASSES, c3, 1, 1), 1 / math.sqrt(c3)),
                            g.const(f"{p}.cv3.2.bias", np.full(CLASSES, -4.0, np.float32))],
                   name=f"{p}.cv3.2", kernel_shape=[1, 1])
        y = g.op("Concat", [box, cls], name=f"{p}/concat", axis=1)
        flat.append(g.op("Reshape", [y, g.ints(f"{p}.shape", [1, 4 * REG_MAX + CLASSES, -1])],
                         name=f"{p}/reshape"))
        side = size // stride
        yy, xx = np.meshgrid(np.arange(side, dtype=np.float32) + 0.5,
                             np.arange(side, dtype=np.float32) + 0.5, indexing="ij")
        anchors.append(np.stack([xx.ravel(), yy.ravel()]))
        strides.append(np.full((1, side * side), stride, np.float32))
    y = g.op("Concat", flat, name="model.22/concat", axis=2)
    box, cls = g.op("Split", [y, g.ints("model.22.split", [4 * REG_MAX, CLASSES])], n_out=2,
                    name="model.22/split", axis=1)
    # DFL: softmax over the 16 bins of each side, expectation by a 1x1 conv with weights 0..15
    n_anchors = sum(a.shape[1] for a in anchors)
    d = g.op("Reshape", [box, g.ints("dfl.shape", [1, 4, REG_MAX, n_anchors])], name="dfl/reshape")
    d = g.op("Softmax", [g.op("Transpose", [d], name="dfl/transpose", perm=[0, 2, 1, 3])],
             name="dfl/softmax", axis=1)
    bins = g.const("dfl.conv.weight", np.arange(REG_MAX, dtype=np.float32).reshape(1, REG_MAX, 1, 1))
    d = g.op("Conv", [d, bins], name="dfl/conv", kernel_shape=[1, 1])
    d = g.op("Reshape", [d, g.ints("dfl.shape2", [1, 4, n_anchors])], name="dfl/reshape2")
    lt, rb = g.op("Split", [d, g.ints("dist.split", [2, 2])], n_out=2, name="dist/split", axis=1)
    anchor = g.const("anchors", np.concatenate(anchors, axis=1)[None])
    x1y1 = g.op("Sub", [anchor, lt], name="dist/sub")
    x2y2 = g.op("Add", [anchor, rb], name="dist/add")
    cxy = g.op("Div", [g.op("Add", [x1y1, x2y2], name="dist/add2"), g.scalar("two", 2.0)], name="dist/div")
    wh = g.op("Sub", [x2y2, x1y1], name="dist/sub2")
    boxes = g.op("Mul", [g.op("Concat", [cxy, wh], name="dist/concat", axis=1),
                         g.const("strides", np.concatenate(strides, axis=1))], name="dist/mul")
    out = g.op("Concat", [boxes, g.op("Sigmoid", [cls], name="cls/sigmoid")], name="out/concat", axis=1)
    g.output(out, "output0", F32, [1, 4 + CLASSES, n_anchors])
    return g.model(doc=f"YOLOv8n-style detector at {size}x{size}, random weights")


def detection_feeds(seed: int = 1, size: int = SIZE) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"images": rng.uniform(0.0, 1.0, (1, 3, size, size)).astype(np.float32)}

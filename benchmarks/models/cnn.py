"""CNNs in torchvision's layout (NCHW float32, 224x224): ResNet-50 and MobileNetV2.

ResNet-50 keeps BatchNormalization nodes after each Conv (as torch.onnx exports in
TrainingMode.PRESERVE / as the ONNX model zoo has it); MobileNetV2 has BN folded into the Conv
weights and bias (what torch.onnx's default eval export does) with ReLU6 as Clip(0, 6).

Random weights are He-initialised. Running statistics are picked so every BN roughly normalises
its input, and the last BN of each residual branch gets a small gamma (as torchvision's
`zero_init_residual` idea), so activations stay O(1) through all 16 bottlenecks.
"""
from __future__ import annotations

import math

import numpy as np
import onnx

from .common import F32, GraphBuilder


def _conv(g: GraphBuilder, x: str, c_in: int, c_out: int, k: int, stride: int, name: str,
          group: int = 1, bias: bool = False, gain: float = 2.0) -> str:
    fan_in = c_in // group * k * k
    w = g.normal(f"{name}.weight", (c_out, c_in // group, k, k), math.sqrt(gain / fan_in))
    ins = [x, w] + ([g.normal(f"{name}.bias", (c_out,), 0.02)] if bias else [])
    return g.op("Conv", ins, name=name, kernel_shape=[k, k], strides=[stride, stride],
                pads=[k // 2] * 4, group=group, dilations=[1, 1])


def _bn(g: GraphBuilder, x: str, c: int, name: str, gamma: float = 1.0, in_std: float = 1.0,
        in_mean: float = 0.0) -> str:
    """BatchNormalization whose running stats approximately match an input of (in_mean, in_std)."""
    rng = g.rng
    scale = g.const(f"{name}.weight", (gamma * rng.uniform(0.8, 1.2, c)).astype(np.float32))
    bias = g.const(f"{name}.bias", rng.normal(0.0, 0.05, c).astype(np.float32))
    mean = g.const(f"{name}.running_mean", (in_mean + rng.normal(0, 0.05 * in_std, c)).astype(np.float32))
    var = g.const(f"{name}.running_var", (in_std ** 2 * rng.uniform(0.8, 1.2, c)).astype(np.float32))
    return g.op("BatchNormalization", [x, scale, bias, mean, var], name=name, epsilon=1e-5,
                momentum=0.9)


def resnet50(seed: int = 0, num_classes: int = 1000) -> onnx.ModelProto:
    """torchvision.models.resnet50 (v1.5: stride on the 3x3 conv), batch 1, 224x224."""
    g = GraphBuilder("resnet50", seed)
    x = g.input("input", F32, [1, 3, 224, 224])
    # After a He-initialised conv on unit-variance input the output std is ~sqrt(2) (pre-ReLU);
    # after ReLU on a BN-normalised input the mean is ~0.4 and the second moment ~0.5.
    y = _conv(g, x, 3, 64, 7, 2, "conv1")
    y = g.op("Relu", [_bn(g, y, 64, "bn1", in_std=math.sqrt(2))], name="relu")
    y = g.op("MaxPool", [y], name="maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c_in = 64
    for stage, (width, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2),
                                                     (512, 3, 2)], start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            s = stride if b == 0 else 1
            h = _conv(g, y, c_in, width, 1, 1, f"{p}.conv1")
            h = g.op("Relu", [_bn(g, h, width, f"{p}.bn1", in_std=1.4)], name=f"{p}.relu1")
            h = _conv(g, h, width, width, 3, s, f"{p}.conv2")
            h = g.op("Relu", [_bn(g, h, width, f"{p}.bn2", in_std=1.0)], name=f"{p}.relu2")
            h = _conv(g, h, width, width * 4, 1, 1, f"{p}.conv3")
            h = _bn(g, h, width * 4, f"{p}.bn3", gamma=0.3, in_std=1.0)
            if b == 0:
                sc = _conv(g, y, c_in, width * 4, 1, s, f"{p}.downsample.0")
                sc = _bn(g, sc, width * 4, f"{p}.downsample.1", in_std=1.4)
            else:
                sc = y
            y = g.op("Relu", [g.op("Add", [h, sc], name=f"{p}.add")], name=f"{p}.relu3")
            c_in = width * 4
    y = g.op("GlobalAveragePool", [y], name="avgpool")
    y = g.op("Flatten", [y], name="flatten", axis=1)
    w = g.normal("fc.weight", (num_classes, 2048), 1.0 / math.sqrt(2048))
    bias = g.normal("fc.bias", (num_classes,), 0.02)
    y = g.op("Gemm", [y, w, bias], name="fc", alpha=1.0, beta=1.0, transB=1)
    g.output(y, "logits", F32, [1, num_classes])
    return g.model(doc="ResNet-50 (torchvision layout), random weights")


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def mobilenetv2(seed: int = 0, num_classes: int = 1000) -> onnx.ModelProto:
    """torchvision.models.mobilenet_v2 with BN folded into the convs, ReLU6 as Clip(0, 6)."""
    g = GraphBuilder("mobilenetv2", seed)
    x = g.input("input", F32, [1, 3, 224, 224])
    lo, hi = g.scalar("relu6.min", 0.0), g.scalar("relu6.max", 6.0)

    def conv_relu6(v: str, c_in: int, c_out: int, k: int, s: int, name: str, group: int = 1) -> str:
        v = _conv(g, v, c_in, c_out, k, s, name, group=group, bias=True)
        return g.op("Clip", [v, lo, hi], name=f"{name}.relu6")

    y = conv_relu6(x, 3, 32, 3, 2, "features.0")
    c_in = 32
    idx = 1
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            p = f"features.{idx}"
            hidden = c_in * t
            h = y
            if t != 1:
                h = conv_relu6(h, c_in, hidden, 1, 1, f"{p}.conv.0")
            h = conv_relu6(h, hidden, hidden, 3, stride, f"{p}.conv.dw", group=hidden)
            # linear bottleneck: unit-gain init so the residual sum stays O(1)
            h = _conv(g, h, hidden, c, 1, 1, f"{p}.conv.pw", bias=True, gain=0.5)
            if stride == 1 and c_in == c:
                h = g.op("Add", [y, h], name=f"{p}.add")
            y = h
            c_in = c
            idx += 1
    y = conv_relu6(y, c_in, 1280, 1, 1, f"features.{idx}")
    y = g.op("GlobalAveragePool", [y], name="pool")
    y = g.op("Flatten", [y], name="flatten", axis=1)
    w = g.normal("classifier.1.weight", (num_classes, 1280), 1.0 / math.sqrt(1280))
    bias = g.normal("classifier.1.bias", (num_classes,), 0.02)
    y = g.op("Gemm", [y, w, bias], name="classifier", transB=1)
    g.output(y, "logits", F32, [1, num_classes])
    return g.model(doc="MobileNetV2 (torchvision layout, BN folded), random weights")


def image_feeds(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((1, 3, 224, 224), dtype=np.float32)}

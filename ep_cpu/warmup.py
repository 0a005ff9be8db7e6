"""Compile every compiled CPU kernel of this machine ahead of the first real session.

numba compiles the CPU provider's kernels on first use and keeps the machine code on disk
(`__pycache__` beside the sources, or NUMBA_CACHE_DIR): the first session on a machine (or in a
fresh container) pays 1-3 s per kernel family, up to ~10 s for a CNN. `warm_up()` runs one small
model per compiled path (convolutions of every kind, pools, products, recurrent layers,
activations, the linear ML ops) on the CPU provider, so that cost moves to an install or image
build step (`python -m ep_core warmup`, docs/cli.md). Later sessions load the cached code.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


@dataclass
class Probe:
    name: str
    what: str                       # the compiled path it exercises
    nodes: list
    inputs: dict[str, tuple]        # name -> shape (float32)
    inits: dict[str, np.ndarray]
    opsets: tuple = (("", 17),)


def _w(rng, *shape) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.1).astype(np.float32)


def probes() -> list[Probe]:
    """The small models, one per compiled path."""
    rng = np.random.default_rng(0)
    node = helper.make_node
    p = [
        Probe("conv_implicit", "implicit-GEMM conv + Relu and SiLU tile epilogues",
              [node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), node("Relu", ["c"], ["r"]),
               node("Conv", ["r", "w2"], ["d"], pads=[1, 1, 1, 1]), node("Sigmoid", ["d"], ["s"]),
               node("Mul", ["d", "s"], ["y"])],
              {"x": (1, 8, 24, 24)}, {"w": _w(rng, 16, 8, 3, 3), "b": _w(rng, 16), "w2": _w(rng, 16, 16, 3, 3)}),
        Probe("winograd", "3x3 convs through Winograd's compiled transforms (CPUs without AVX-512)",
              [node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), node("Relu", ["c"], ["y"])],
              {"x": (1, 64, 32, 32)}, {"w": _w(rng, 64, 64, 3, 3), "b": _w(rng, 64)}),
        Probe("conv_thin", "few-position convs (positions as GEMM rows)",
              [node("Conv", ["x", "w"], ["y"], strides=[64])], {"x": (1, 1, 192)}, {"w": _w(rng, 40, 1, 64)}),
        Probe("depthwise", "depthwise convs: flat planes (AVX-512) or zero-padded planes (strides 1, 2), "
              "masked row vectors (others)",
              [node("Conv", ["x", "w"], ["a"], group=16, strides=[2, 2], pads=[1, 1, 1, 1]),
               node("Conv", ["x", "w"], ["b"], group=16, pads=[1, 1, 1, 1]),
               node("Conv", ["x", "w"], ["c"], group=16, strides=[2, 2])],
              {"x": (1, 16, 64, 64)}, {"w": _w(rng, 16, 1, 3, 3)}),
        Probe("max_pool", "MaxPool: flat planes, masked vectors and phase planes",
              [node("MaxPool", ["x"], ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
               node("MaxPool", ["x"], ["b"], kernel_shape=[2, 2], strides=[1, 1]),
               node("MaxPool", ["x"], ["c"], kernel_shape=[3, 3], strides=[1, 1])],
              {"x": (1, 4, 20, 20)}, {}),
        Probe("gemm", "products through the microkernel, Gelu/Sigmoid passes",
              [node("MatMul", ["x", "w"], ["m"]), node("Gelu", ["m"], ["g"], domain="com.microsoft"),
               node("Sigmoid", ["g"], ["y"])],
              {"x": (64, 128)}, {"w": _w(rng, 128, 128)}, (("", 17), ("com.microsoft", 1))),
        Probe("recurrent", "LSTM and GRU time loops and cells (both directions side by side)",
              [node("LSTM", ["x", "lw", "lr", "lb"], ["ly"], hidden_size=16, direction="bidirectional"),
               node("GRU", ["x", "gw", "gr", "gb"], ["gy"], hidden_size=16, linear_before_reset=1)],
              {"x": (5, 2, 8)},
              {"lw": _w(rng, 2, 64, 8), "lr": _w(rng, 2, 64, 16), "lb": _w(rng, 2, 128),
               "gw": _w(rng, 1, 48, 8), "gr": _w(rng, 1, 48, 16), "gb": _w(rng, 1, 96)}),
        Probe("recurrent_halves", "a one-direction layer's steps split between two threads",
              [node("GRU", ["x", "gw", "gr", "gb"], ["gy"], hidden_size=64, linear_before_reset=1)],
              {"x": (2, 24, 8)}, {"gw": _w(rng, 1, 192, 8), "gr": _w(rng, 1, 192, 64), "gb": _w(rng, 1, 384)}),
        Probe("norm", "SkipLayerNormalization rows",
              [node("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["y"], domain="com.microsoft")],
              {"x": (1, 2, 16), "skip": (1, 2, 16)}, {"gamma": _w(rng, 16), "beta": _w(rng, 16)},
              (("", 17), ("com.microsoft", 1))),
        Probe("linear_ml", "Scaler, LinearClassifier, Normalizer",
              [node("Scaler", ["x"], ["s"], domain="ai.onnx.ml", offset=[0.5], scale=[2.0]),
               node("LinearClassifier", ["s"], ["label", "p"], domain="ai.onnx.ml",
                    coefficients=[float(v) for v in _w(rng, 12)], intercepts=[0.0, 0.1, 0.2],
                    classlabels_ints=[0, 1, 2], post_transform="SOFTMAX"),
               node("Normalizer", ["p"], ["y"], domain="ai.onnx.ml", norm="L1")],
              {"x": (8, 4)}, {}, (("", 17), ("ai.onnx.ml", 3))),
    ]
    return p


def _model(probe: Probe) -> bytes:
    inputs = [helper.make_tensor_value_info(n, F, list(s)) for n, s in probe.inputs.items()]
    produced = {o for n in probe.nodes for o in n.output}
    consumed = {i for n in probe.nodes for i in n.input}
    outputs = [helper.make_empty_tensor_value_info(o) for o in sorted(produced - consumed)]
    graph = helper.make_graph(probe.nodes, probe.name, inputs, outputs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in probe.inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in probe.opsets])
    model.ir_version = 8
    return model.SerializeToString()


def warm_up(threads: int = 2) -> list[dict]:
    """Run every probe on the CPU provider with `threads` intra-op threads (the parallel runners
    compile too); returns per probe {name, what, seconds}."""
    import ep_core
    from ep_cpu import jit_tier
    report = []
    for probe in probes():
        rng = np.random.default_rng(1)
        feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in probe.inputs.items()}
        opts = ep_core.SessionOptions()
        opts.intra_op_num_threads = threads
        t0 = time.perf_counter()
        with jit_tier.synchronous():   # each probe compiles, then runs, its compiled path
            ep_core.InferenceSession(_model(probe), opts, providers=["cpu"]).run(None, feeds)
        report.append({"name": probe.name, "what": probe.what,
                       "seconds": round(time.perf_counter() - t0, 3)})
    return report

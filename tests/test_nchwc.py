"""The channel-blocked layout (NCHWc): the level-3 rewrite (`ep_core.rewrites_layout`) and the CPU
provider's blocked kernels (`ep_cpu.conv_nchwc`, `ep_cpu/kernels/nchwc.py`).

Chains of 1x1 and 3x3 depthwise convs (MobileNet's inverted residual blocks) run blocked and
match onnxruntime; chains that would need too many layout changes, activations that do not keep
0, and sessions below level 3 stay in NCHW.
"""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import ep_core
from ep_cpu import conv_nchwc, nchwc_layout

pytestmark = pytest.mark.skipif(not conv_nchwc.available(),
                                reason="the blocked kernels need numba and AVX-512")
BLOCKED_OPS = ("NchwcConv", "ReorderInput", "ReorderOutput")


def model_bytes(nodes, inits, x_shape, outputs=("y",)) -> bytes:
    """An opset-17 model of `nodes` from input x of `x_shape` to `outputs`."""
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, x_shape)],
                          [helper.make_tensor_value_info(o, TP.FLOAT, None) for o in outputs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def inverted_residual_model(rng, n=1, c=24, h=14, expand=6, stride=1, blocks=3, act="Clip",
                            extra_output=True) -> bytes:
    """`blocks` MobileNetV2 blocks (1x1 expand + act, 3x3 depthwise (the first of `stride`) +
    Relu, 1x1 project, + residual where the shape allows), then GlobalAveragePool."""
    inits, nodes = [], []

    def weight(name, shape):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name))
        return name
    inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
              numpy_helper.from_array(np.array(6, np.float32), "hi")]
    x, cur = "x", c
    for k in range(blocks):
        e = cur * expand
        nodes.append(helper.make_node("Conv", [x, weight(f"w{k}a", (e, cur, 1, 1)), weight(f"b{k}a", (e,))], [f"a{k}"]))
        if act == "Clip":
            nodes.append(helper.make_node("Clip", [f"a{k}", "lo", "hi"], [f"ar{k}"]))
        else:
            nodes.append(helper.make_node(act, [f"a{k}"], [f"ar{k}"]))
        s = stride if k == 0 else 1
        nodes.append(helper.make_node("Conv", [f"ar{k}", weight(f"w{k}d", (e, 1, 3, 3)), weight(f"b{k}d", (e,))],
                                      [f"d{k}"], group=e, pads=[1, 1, 1, 1], strides=[s, s]))
        nodes.append(helper.make_node("Relu", [f"d{k}"], [f"dr{k}"]))
        nodes.append(helper.make_node("Conv", [f"dr{k}", weight(f"w{k}p", (cur, e, 1, 1)), weight(f"b{k}p", (cur,))],
                                      [f"p{k}"]))
        if s == 1:
            nodes.append(helper.make_node("Add", [f"p{k}", x], [f"o{k}"]))
            x = f"o{k}"
        else:
            x = f"p{k}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["y"]))
    outputs = [helper.make_tensor_value_info("y", TP.FLOAT, None)]
    if extra_output:   # a blocked value that is also a graph output: reordered back
        outputs.append(helper.make_tensor_value_info(x, TP.FLOAT, None))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [n, c, h, h])],
                          outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def run_both(model: bytes, x: np.ndarray, threads: int, level=None):
    so = ep_core.SessionOptions()
    so.intra_op_num_threads = threads
    if level is not None:
        so.graph_optimization_level = level
    sess = ep_core.InferenceSession(model, so, providers=["cpu"])
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    return sess, sess.run(None, {"x": x}), ref


def run_built(build, shape: dict, threads: int, seed: int, c: int, h: int):
    """Session and onnxruntime outputs of `build(rng, **shape)` on a random (n, c, h, h) input
    (n, c, h from `shape` where it sets them), and the op types of the session's graph."""
    rng = np.random.default_rng(seed)
    n, c, h = shape.get("n", 1), shape.get("c", c), shape.get("h", h)
    model = build(rng, **shape)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    sess, ours, ref = run_both(model, x, threads)
    return model, x, ours, ref, [node.op_type for node in sess._graph.nodes], sess


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [
    dict(),                                        # 24 channels: padded to 32
    dict(n=2, c=20, h=9, stride=2),                # two images, a strided depthwise, odd map
    dict(c=33, h=7, expand=3),                     # 33 -> 99 channels: odd blocks and groups
    dict(c=16, h=56, stride=2),                    # many positions: split between threads
    dict(c=16, h=1, expand=2),                     # one position
    dict(c=32, h=2, stride=2, expand=2),           # the depthwise edge cases only
])
def test_inverted_residual_chains_run_blocked_and_match_onnxruntime(shape, threads):
    _, _, ours, ref, ops, _ = run_built(inverted_residual_model, shape, threads, 0, c=24, h=14)
    assert ops.count("NchwcConv") == 9 and ops.count("ReorderInput") == 1
    # the pool runs blocked too: the last block's output (a graph output) and the pool's
    # (1x1: a free layout change) are reordered back
    assert ops.count("NchwcGlobalAveragePool") == 1 and ops.count("ReorderOutput") == 2
    for o, r in zip(ours, ref):
        assert o.shape == r.shape
        np.testing.assert_allclose(o, r, rtol=1e-4, atol=1e-5)


def test_below_the_layout_level_nothing_is_blocked():
    rng = np.random.default_rng(1)
    model = inverted_residual_model(rng)
    x = rng.standard_normal((1, 24, 14, 14)).astype(np.float32)
    sess, ours, ref = run_both(model, x, 1, ep_core.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    assert not any(n.op_type in BLOCKED_OPS for n in sess._graph.nodes)
    for o, r in zip(ours, ref):
        np.testing.assert_allclose(o, r, rtol=1e-4, atol=1e-5)


def test_an_activation_that_moves_zero_keeps_its_convs_in_nchw():
    """Sigmoid(0) = 0.5 would fill the padding channels: the expand convs stay NCHW (and so
    the chain falls apart into pieces too small to convert)."""
    rng = np.random.default_rng(2)
    model = inverted_residual_model(rng, act="Sigmoid")
    x = rng.standard_normal((1, 24, 14, 14)).astype(np.float32)
    sess, ours, ref = run_both(model, x, 1)
    for node in sess._graph.nodes:
        if node.op_type == "NchwcConv":
            assert node.attrs.get("activation") in (None, "Relu", "Clip")
    for o, r in zip(ours, ref):
        np.testing.assert_allclose(o, r, rtol=1e-4, atol=1e-5)


def test_a_chain_too_short_for_its_layout_changes_stays_in_nchw():
    """Six convs between a layout change in and one out: fewer than REORDERS_PER_CONV convs a
    change, not converted."""
    rng = np.random.default_rng(3)
    c = 32
    inits, nodes = [], []

    def weight(name, shape):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name))
        return name
    x = "x"
    for k in range(3):
        nodes.append(helper.make_node("Conv", [x, weight(f"a{k}", (c, c, 1, 1))], [f"p{k}"]))
        nodes.append(helper.make_node("Conv", [f"p{k}", weight(f"b{k}", (c, c, 3, 3))], [f"q{k}"], pads=[1, 1, 1, 1]))
        x = f"q{k}"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [1, c, 8, 8])],
                          [helper.make_tensor_value_info(x, TP.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    xv = rng.standard_normal((1, c, 8, 8)).astype(np.float32)
    sess, ours, ref = run_both(m.SerializeToString(), xv, 1)
    assert not any(n.op_type in BLOCKED_OPS for n in sess._graph.nodes)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_numpy_forms_before_the_compile_match_the_compiled_loops(threads, monkeypatch):
    """Until the compiled loops are built (`jit_tier`, on a cold disk cache) the blocked kernels
    run numpy forms of the same ops: same results."""
    from ep_cpu.kernels import nchwc
    rng = np.random.default_rng(4)
    model = inverted_residual_model(rng, n=2, c=20, h=9, stride=2)
    x = rng.standard_normal((2, 20, 9, 9)).astype(np.float32)
    _, compiled, ref = run_both(model, x, threads)
    monkeypatch.setattr(nchwc, "_compiled", lambda: False)
    _, fallback, _ = run_both(model, x, threads)
    for c, f, r in zip(compiled, fallback, ref):
        np.testing.assert_allclose(f, c, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(f, r, rtol=1e-4, atol=1e-5)


def bottleneck_model(rng, n=1, c=32, h=12, blocks=3) -> bytes:
    """ResNet bottlenecks: 1x1, 3x3 (the first of stride 2), 1x1 to 4c, + the input (the first
    block's through a strided 1x1 downsample), Relu; then GlobalAveragePool."""
    inits, nodes = [], []

    def weight(name, shape):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name))
        return name
    x, cin = "x", c
    for k in range(blocks):
        s = 2 if k == 0 else 1
        nodes.append(helper.make_node("Conv", [x, weight(f"w{k}a", (c, cin, 1, 1)), weight(f"b{k}a", (c,))], [f"a{k}"]))
        nodes.append(helper.make_node("Relu", [f"a{k}"], [f"ar{k}"]))
        nodes.append(helper.make_node("Conv", [f"ar{k}", weight(f"w{k}b", (c, c, 3, 3)), weight(f"b{k}b", (c,))],
                                      [f"m{k}"], pads=[1, 1, 1, 1], strides=[s, s]))
        nodes.append(helper.make_node("Relu", [f"m{k}"], [f"mr{k}"]))
        nodes.append(helper.make_node("Conv", [f"mr{k}", weight(f"w{k}c", (4 * c, c, 1, 1)), weight(f"b{k}c", (4 * c,))],
                                      [f"e{k}"]))
        skip = x
        if k == 0:
            nodes.append(helper.make_node("Conv", [x, weight("wd", (4 * c, cin, 1, 1)), weight("bd", (4 * c,))],
                                          ["down"], strides=[2, 2]))
            skip = "down"
        nodes.append(helper.make_node("Add", [f"e{k}", skip], [f"s{k}"]))
        nodes.append(helper.make_node("Relu", [f"s{k}"], [f"o{k}"]))
        x, cin = f"o{k}", 4 * c
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["y"]))
    return model_bytes(nodes, inits, [n, c, h, h])


@pytest.mark.parametrize("row_tiles_from", [1, 16])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [dict(), dict(n=2, c=24, h=9), dict(c=16, h=28)])
def test_bottleneck_chains_with_3x3_and_strided_convs_run_blocked_and_match(shape, threads,
                                                                           row_tiles_from,
                                                                           monkeypatch):
    """3x3 convs of stride 1 and 2 (phase planes; small maps row by row, or as a grid of output
    positions cropped back: each CPU takes one, both are tested) and a strided 1x1 downsample
    run blocked, as their numpy forms do, and match onnxruntime."""
    from ep_cpu.kernels import nchwc
    monkeypatch.setattr(nchwc, "ROW_TILES_FROM", row_tiles_from)
    model, x, ours, ref, ops, _ = run_built(bottleneck_model, shape, threads, 5, c=32, h=12)
    blocks = shape.get("blocks", 3)
    assert ops.count("NchwcConv") == 3 * blocks + 1 and ops.count("ReorderInput") == 1
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(nchwc, "_compiled", lambda: False)
    _, fallback, _ = run_both(model, x, threads)
    np.testing.assert_allclose(fallback[0], ref[0], rtol=1e-4, atol=1e-5)


def test_a_session_built_before_the_loops_are_compiled_stays_in_nchw(monkeypatch):
    """On an empty disk cache the blocked loops compile on the background thread (~3 s) and the
    session being built keeps NCHW (no wait, no numpy forms on its first run); with them on
    disk the build waits for their load and converts."""
    from ep_cpu import conv_nchwc, jit_tier
    from ep_cpu.provider import CPUExecutionProvider
    started = []
    monkeypatch.setattr(jit_tier, "sync", lambda: False)
    monkeypatch.setattr(jit_tier, "start", lambda name, build: started.append(name) or False)
    monkeypatch.setattr(conv_nchwc, "_disk_cache", {"found": False})
    rng = np.random.default_rng(6)
    model = inverted_residual_model(rng)
    sess = ep_core.InferenceSession(model, providers=["cpu"])
    assert started == ["conv_nchwc", "nchwc_layout"] and CPUExecutionProvider().nchwc_block() == 0
    assert not any(n.op_type in BLOCKED_OPS for n in sess._graph.nodes)
    monkeypatch.setattr(conv_nchwc, "_disk_cache", {"found": True})
    monkeypatch.setattr(jit_tier, "ready", lambda name, build, on_disk=False: True)
    sess = ep_core.InferenceSession(model, providers=["cpu"])
    assert any(n.op_type == "NchwcConv" for n in sess._graph.nodes)


def test_an_optimized_model_with_blocked_ops_reloads_and_runs(tmp_path):
    """`optimized_model_filepath` writes the blocked chain (com.ep_core ops); a session of that
    file runs it as it is and gives the same outputs."""
    rng = np.random.default_rng(7)
    model = inverted_residual_model(rng)
    x = rng.standard_normal((1, 24, 14, 14)).astype(np.float32)
    so = ep_core.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "blocked.onnx")
    first = ep_core.InferenceSession(model, so, providers=["cpu"]).run(None, {"x": x})
    again = ep_core.InferenceSession(str(tmp_path / "blocked.onnx"), providers=["cpu"])
    assert [n.op_type for n in again._graph.nodes].count("NchwcConv") == 9
    for a, b in zip(first, again.run(None, {"x": x})):
        np.testing.assert_array_equal(a, b)


def c2f_model(rng, n=1, c=16, h=16, act="Silu", opset=17, resize="scales") -> bytes:
    """YOLOv8-style blocks: a stride-2 3x3 stem conv; a C2f block (1x1, Split in halves, two 3x3
    convs + residual on one half, Concat of all three, 1x1); SPPF (1x1, three 5x5 MaxPools,
    Concat, 1x1); a stride-2 conv, a nearest Resize back up and a Concat with the block's output;
    a head of two plain 1x1 convs (2c and 20 channels) concatenated. Convs end in `act`
    (Silu as x * Sigmoid(x), or Tanh). The outputs reach ~30: compared with atol 1e-4."""
    inits, nodes = [], []
    count = [0]

    def weight(shape):
        count[0] += 1
        name = f"w{count[0]}"
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.15).astype(np.float32), name))
        return name

    def conv(x, cin, cout, k=1, s=1, activate=True):
        count[0] += 1
        y = f"c{count[0]}"
        nodes.append(helper.make_node("Conv", [x, weight((cout, cin, k, k)), weight((cout,))], [y],
                                      pads=[k // 2] * 4, strides=[s, s]))
        if not activate:
            return y
        if act == "Silu":
            nodes.append(helper.make_node("Sigmoid", [y], [y + "_s"]))
            nodes.append(helper.make_node("Mul", [y, y + "_s"], [y + "_a"]))
        else:
            nodes.append(helper.make_node(act, [y], [y + "_a"]))
        return y + "_a"

    stem = conv("x", c, 2 * c, 3, 2)
    a = conv(stem, 2 * c, 2 * c)
    if opset >= 18:
        nodes.append(helper.make_node("Split", [a], ["h0", "h1"], axis=1, num_outputs=2))
    elif opset >= 13:
        inits.append(numpy_helper.from_array(np.array([c, c], np.int64), "halves"))
        nodes.append(helper.make_node("Split", [a, "halves"], ["h0", "h1"], axis=1))
    else:   # (Resize-11 needs its roi input)
        nodes.append(helper.make_node("Split", [a], ["h0", "h1"], axis=1, split=[c, c]))
        inits.append(numpy_helper.from_array(np.zeros(0, np.float32), "roi"))
    m = conv(conv("h1", c, c, 3), c, c, 3)
    nodes.append(helper.make_node("Add", ["h1", m], ["res"]))
    nodes.append(helper.make_node("Concat", ["h0", "h1", "res"], ["cat"], axis=1))
    block = conv("cat", 3 * c, 2 * c)
    s0 = conv(block, 2 * c, c)
    pools = [s0]
    for k in range(3):
        nodes.append(helper.make_node("MaxPool", [pools[-1]], [f"pool{k}"], kernel_shape=[5, 5],
                                      pads=[2, 2, 2, 2], strides=[1, 1]))
        pools.append(f"pool{k}")
    nodes.append(helper.make_node("Concat", pools, ["spp"], axis=-3))
    p = conv("spp", 4 * c, 2 * c)
    down = conv(p, 2 * c, 2 * c, 3, 2)
    if resize == "scales":
        inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
        rin = [down, "roi" if opset < 13 else "", "scales"]
    else:
        inits.append(numpy_helper.from_array(np.array([n, 2 * c, h // 2, h // 2], np.int64), "sizes"))
        rin = [down, "", "", "sizes"]
    nodes.append(helper.make_node("Resize", rin, ["up"], mode="nearest",
                                  coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
    nodes.append(helper.make_node("Concat", ["up", p], ["neck"], axis=1))
    box = conv("neck", 4 * c, 2 * c, activate=False)
    cls = conv("neck", 4 * c, 20, activate=False)
    nodes.append(helper.make_node("Concat", [box, cls], ["y"], axis=1))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [n, c, h, h])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [
    dict(),                                   # Silu convs, Split by an input (opset 17)
    dict(n=2, c=32, h=20, opset=18),          # Split by num_outputs; two images
    dict(act="Tanh", opset=11),               # Split by its attribute; Tanh convs
    dict(h=12, resize="sizes"),               # Resize by sizes; a 3x3 map under the pools
])
def test_yolo_blocks_run_blocked_end_to_end_and_match_onnxruntime(shape, threads, monkeypatch):
    """Split, Concat, MaxPool and Resize take blocked values (channel parts of whole blocks), and
    convs ending in Silu or Tanh run blocked: one layout change in, one out; the compiled loops
    and their numpy forms match onnxruntime."""
    from ep_cpu.kernels import nchwc
    model, x, ours, ref, ops, sess = run_built(c2f_model, shape, threads, 8, c=16, h=16)
    n, c, h = x.shape[:3]
    assert ops.count("NchwcConv") == 10 and ops.count("NchwcMaxPool") == 3
    assert ops.count("ReorderInput") == 1 and ops.count("ReorderOutput") == 1
    assert {"Split", "Concat", "Resize"} <= set(ops)
    acts = {node.attrs.get("activation") for node in sess._graph.nodes if node.op_type == "NchwcConv"}
    assert acts == {shape.get("act", "Silu"), None}
    assert ours[0].shape == ref[0].shape == (n, 2 * c + 20, h // 2, h // 2)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(nchwc, "_compiled", lambda: False)
    _, fallback, _ = run_both(model, x, threads)
    np.testing.assert_allclose(fallback[0], ref[0], rtol=1e-4, atol=1e-4)


def test_channel_parts_off_the_block_keep_their_split_in_nchw():
    """Halves of 24 channels would split a block: that Split (and what only it feeds) stays
    NCHW, and the model still matches."""
    rng = np.random.default_rng(9)
    model = c2f_model(rng, c=24)
    x = rng.standard_normal((1, 24, 16, 16)).astype(np.float32)
    sess, ours, ref = run_both(model, x, 2)
    assert all(node.op_type != "Split" or not node.outputs[0].endswith("_nchwc")
               for node in sess._graph.nodes)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-4, atol=1e-4)


def test_blocked_max_pool_takes_nan_and_windows_past_the_edge(monkeypatch):
    """The blocked MaxPool, compiled and numpy forms: windows reaching past every edge, strides
    of 2, and a NaN input, which wins in every window holding it (onnxruntime's max
    instructions keep it in some windows only: the windows are found by an inf there)."""
    from ep_cpu.kernels import nchwc
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 20, 7, 9)).astype(np.float32)
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 4], pads=[1, 2, 1, 1],
                            strides=[2, 2])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TP.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TP.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x_inf = x.copy()
    x_inf[0, 3, 2, 4] = np.inf
    x_nan = x.copy()
    x_nan[0, 3, 2, 4] = np.nan
    want, want_inf = ref.run(None, {"x": x})[0], ref.run(None, {"x": x_inf})[0]

    class Node:
        inputs, outputs, name = ["x"], ["y"], "pool"

    class Ctx:
        pass
    attrs = {"kernel_shape": [3, 4], "strides": [2, 2], "pads": [1, 2, 1, 1]}
    monkeypatch.setattr(nchwc.Kernel, "__init__", lambda self, node, ctx: setattr(self, "node", node))
    monkeypatch.setattr(nchwc.NchwcMaxPool, "attr", lambda self, name, default=None: attrs.get(name, default))
    pool = nchwc.NchwcMaxPool(Node(), Ctx())
    for compiled in (True, False):
        monkeypatch.setattr(nchwc, "_compiled", lambda: compiled)
        got = nchwc.plain_numpy(pool.compute(nchwc.blocked_numpy(x)), 20)
        np.testing.assert_array_equal(got, want)
        got_nan = nchwc.plain_numpy(pool.compute(nchwc.blocked_numpy(x_nan)), 20)
        np.testing.assert_array_equal(np.isnan(got_nan), np.isinf(want_inf))
        np.testing.assert_array_equal(got_nan[~np.isnan(got_nan)], want[~np.isinf(want_inf)])


@pytest.mark.parametrize("stride, pads, hw", [(1, [1, 1, 1, 1], 9), (2, [1, 1, 1, 1], 10),
                                              (2, [3, 2, 1, 0], 7), (3, [0, 0, 0, 0], 11)])
def test_phase_planes_hold_the_padded_image_by_stride_phase(stride, pads, hw):
    """The compiled phase planes against numpy: plane (py, px) row r, column c is padded row
    r stride + py, column c stride + px, zero past the padded image."""
    from ep_cpu import native_call
    from ep_cpu.gemm import _get_pool
    rng = np.random.default_rng(11)
    n, cb, kh = 2, 3, 3
    x = rng.standard_normal((n, cb, hw, hw, 16)).astype(np.float32)
    t, l, b, r = pads
    oh = (hw + t + b - kh) // stride + 1
    hq, wq = nchwc_layout.phase_shape(hw, hw, pads, stride, kh, kh, oh, oh)
    padded = np.zeros((n, cb, hq * stride, wq * stride, 16), np.float32)
    rows, cols = min(hw, hq * stride - t), min(hw, wq * stride - l)
    padded[:, :, t:t + rows, l:l + cols] = x[:, :, :rows, :cols]
    want = padded.reshape(n, cb, hq, stride, wq, stride, 16).transpose(0, 1, 3, 5, 2, 4, 6)
    got = np.full((n, cb, stride, stride, hq, wq, 16), np.nan, np.float32)
    args = native_call.pack(native_call.address(x), native_call.address(got), cb, hw, hw, stride,
                            hq, wq, t, l, n)
    native_call.run_ranges(nchwc_layout.phase_planes(), args, n * cb * stride * stride * hq, 1, 2,
                           True, _get_pool)
    np.testing.assert_array_equal(got, want)


def test_a_large_depthwise_conv_is_split_between_threads(monkeypatch):
    """The depthwise conv counts its multiply-adds over all 16 lanes when it asks for threads
    (counted per vector, 96 channels 112x112 stride 2 ran on one thread: 220 us, 110 on two)."""
    from ep_cpu import gemm, native_call
    calls = []
    real = native_call.run_ranges
    monkeypatch.setattr(native_call, "run_ranges",
                        lambda cb, args, cols, rows, workers, *rest: calls.append((cb, workers)) or
                        real(cb, args, cols, rows, workers, *rest))
    rng = np.random.default_rng(12)
    model = inverted_residual_model(rng, c=16, h=112, expand=6, stride=2, extra_output=False)
    x = rng.standard_normal((1, 16, 112, 112)).astype(np.float32)
    before = gemm.get_num_threads()
    sess, ours, ref = run_both(model, x, 2)
    calls.clear()
    sess.run(None, {"x": x})
    gemm.set_num_threads(before)
    assert [n.op_type for n in sess._graph.nodes].count("NchwcConv") == 9
    depthwise = [workers for cb, workers in calls if cb is conv_nchwc.depthwise()]
    assert depthwise == [2, 2, 2]
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-4, atol=1e-5)


def stem_model(rng, n=1, c=3, h=20, k=3, stride=2, out=24, act="Relu", pool=True) -> bytes:
    """An image's stem (a conv of `c` channels, k x k, `stride`, padding k // 2, + act; then a
    3x3 stride-2 MaxPool) and three 1x1 convs: the stem reads the NCHW image as it is."""
    inits, nodes = [], []

    def weight(name, shape):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name))
        return name
    nodes.append(helper.make_node("Conv", ["x", weight("w0", (out, c, k, k)), weight("b0", (out,))], ["s"],
                                  pads=[k // 2] * 4, strides=[stride, stride]))
    if act == "Silu":
        nodes += [helper.make_node("Sigmoid", ["s"], ["sg"]), helper.make_node("Mul", ["s", "sg"], ["a"])]
    else:
        nodes.append(helper.make_node(act, ["s"], ["a"]))
    cur = "a"
    if pool:
        nodes.append(helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[3, 3], strides=[2, 2],
                                      pads=[1, 1, 1, 1]))
        cur = "p"
    nodes.append(helper.make_node("Conv", [cur, weight("w1", (32, out, 1, 1)), weight("b1", (32,))], ["c1"]))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
    nodes.append(helper.make_node("Conv", ["r1", weight("w2", (32, 32, 1, 1)), weight("b2", (32,))], ["c2"]))
    nodes.append(helper.make_node("Relu", ["c2"], ["r2"]))
    nodes.append(helper.make_node("Conv", ["r2", weight("w3", (16, 32, 1, 1)), weight("b3", (16,))], ["y"]))
    return model_bytes(nodes, inits, [n, c, h, h])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [
    dict(),                                           # a 3x3 stride-2 stem (MobileNetV2, YOLO)
    dict(n=2, k=7, h=23, out=64),                     # ResNet's 7x7 on two images, an odd map
    dict(c=1, stride=1, h=9, out=16, act="Silu"),     # one channel, stride 1, a stored activation
    dict(c=4, k=5, h=33, out=40, pool=False),         # 5x5, an odd block count, a wide row
])
def test_an_image_stem_reads_the_plain_image_and_matches(shape, threads, monkeypatch):
    """A conv of few channels (an image's stem) runs blocked on its NCHW input ("plain": no
    reorder of the image, one value a k step), as its numpy form does, and matches onnxruntime;
    the MaxPool after it runs blocked too."""
    from ep_cpu.kernels import nchwc
    model, x, ours, ref, ops, sess = run_built(stem_model, shape, threads, 11, c=3, h=20)
    assert "ReorderInput" not in ops and ops.count("NchwcConv") == 4
    assert [n.attrs["kind"] for n in sess._graph.nodes if n.op_type == "NchwcConv"][0] == "plain"
    assert ("NchwcMaxPool" in ops) == shape.get("pool", True)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(nchwc, "_compiled", lambda: False)
    _, fallback, _ = run_both(model, x, threads)
    np.testing.assert_allclose(fallback[0], ref[0], rtol=1e-4, atol=1e-5)


def test_a_stem_of_another_stride_or_a_wide_window_keeps_its_reorder():
    """The plain tiles are compiled for strides 1 and 2 and windows of up to 256 values: a
    stride-4 patch conv, or a 3-channel 11x11 one, reads a blocked copy of the image (or stays
    in NCHW)."""
    for shape in (dict(k=3, stride=4, h=32), dict(k=11, stride=2, h=40)):
        model, _, ours, ref, ops, sess = run_built(stem_model, shape, 1, 13, c=3, h=20)
        kinds = [n.attrs["kind"] for n in sess._graph.nodes if n.op_type == "NchwcConv"]
        assert "plain" not in kinds
        np.testing.assert_allclose(ours[0], ref[0], rtol=1e-4, atol=1e-5)

"""The CUDA provider's compile API: fused element-wise kernels (generated code), GEMM epilogue
groups and CUDA-graph regions, through real sessions. Without a GPU the provider runs on the CPU
emulator (ep_cuda.testing.EmulatedCUDAProvider: same partitioning, fusion and generated kernels;
graph regions run eagerly); with a GPU the same models run on it (marked `cuda`)."""
import json
import os

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import ep_core
from ep_cuda import loader
from ep_cuda.testing import backends, session_provider

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16


@pytest.fixture(params=backends())
def provider(request):
    return session_provider(request.param)


def model(nodes, inputs, outputs, inits=(), opset=17, domains=()):
    vi = lambda s: helper.make_tensor_value_info(*s)  # noqa: E731
    g = helper.make_graph(nodes, "m", [vi(i) for i in inputs], [vi(o) for o in outputs],
                          initializer=[numpy_helper.from_array(v, k) for k, v in inits])
    ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(g, opset_imports=ops).SerializeToString()


def sessions(m, provider, opts=None, level=0, profile=False):
    so = ep_core.SessionOptions()
    so.graph_optimization_level = level
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(os.environ.get("TMPDIR", "/tmp"), "ep_cuda_fusion")
    opts = dict(opts or {})
    ours = ep_core.InferenceSession(m, so, providers=[(provider, opts), "cpu"])
    ref = ep_core.InferenceSession(m, so, providers=["cpu"])
    return ours, ref


def compare(ours, ref, feeds, rtol=1e-5, atol=1e-5):
    got, want = ours.run(None, feeds), ref.run(None, feeds)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol)
    return got


def fused(sess, prefix="CudaFused"):
    return [n for n, op, p in sess.get_placement()["nodes"] if n.startswith(prefix)]


def rnd(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).uniform(-2, 2, shape).astype(dtype)


def test_elementwise_chain_with_broadcast_and_two_outputs(provider):
    nodes = [helper.make_node("Add", ["x", "b"], ["t0"]), helper.make_node("Relu", ["t0"], ["t1"]),
             helper.make_node("Mul", ["t1", "y"], ["t2"]), helper.make_node("Sigmoid", ["t2"], ["out"]),
             helper.make_node("Exp", ["t1"], ["e"])]
    m = model(nodes, [("x", F32, [2, 3, 4, 5]), ("y", F32, [1, 3, 1, 5])],
              [("out", F32, [2, 3, 4, 5]), ("t1", F32, [2, 3, 4, 5]), ("e", F32, [2, 3, 4, 5])],
              [("b", rnd((3, 1, 1), seed=3))])
    ours, ref = sessions(m, provider)
    groups = fused(ours)
    assert len(groups) == 1 and "Add" in groups[0], ours.get_placement()
    compare(ours, ref, {"x": rnd((2, 3, 4, 5)), "y": rnd((1, 3, 1, 5), seed=1)})


def test_float16_cast_clip_prelu(provider):
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=F32), helper.make_node("Tanh", ["xf"], ["t"]),
             helper.make_node("Cast", ["t"], ["h"], to=F16),
             helper.make_node("Clip", ["h", "lo", "hi"], ["c"]),
             helper.make_node("PRelu", ["c", "slope"], ["p"]), helper.make_node("Neg", ["p"], ["out"])]
    m = model(nodes, [("x", F16, [4, 6])], [("out", F16, [4, 6])],
              [("lo", np.array(-0.5, np.float16)), ("hi", np.array(0.75, np.float16)),
               ("slope", rnd((6,), np.float16, 2))])
    ours, ref = sessions(m, provider)
    assert len(fused(ours)) == 1
    compare(ours, ref, {"x": rnd((4, 6), np.float16)}, rtol=1e-3, atol=1e-3)


def test_clip_bound_also_read_as_operand(provider):
    # issue 13 bug 1: 'lo' is a Clip bound (baked into the generated code) and an Add operand; the
    # fused group must keep it as an input (it raised KeyError inside compile, failing the session)
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
             helper.make_node("Add", ["c", "lo"], ["a"]), helper.make_node("Neg", ["a"], ["out"])]
    m = model(nodes, [("x", F32, [3, 5])], [("out", F32, [3, 5])],
              [("lo", np.array(-0.5, np.float32)), ("hi", np.array(0.75, np.float32))])
    ours, ref = sessions(m, provider)
    assert len(fused(ours)) == 1, ours.get_placement()
    compare(ours, ref, {"x": rnd((3, 5))})


def test_group_operand_produced_after_its_first_member(provider):
    # The core puts a fused node where its first member stood; an operand produced by a node
    # standing between the members (here the Reshape) would then be read before it exists (the
    # expanded LayerNormalization node cases: InvalidGraph at session creation).
    nodes = [helper.make_node("Sub", ["x", "m"], ["s"]),
             helper.make_node("Reshape", ["scale", "shape"], ["scale2"]),
             helper.make_node("Div", ["s", "d"], ["q"]), helper.make_node("Mul", ["q", "scale2"], ["out"])]
    m = model(nodes, [("x", F32, [3, 4]), ("scale", F32, [4])], [("out", F32, [3, 4])],
              [("m", rnd((4,), seed=1)), ("d", np.full(4, 2.0, np.float32)),
               ("shape", np.array([1, 4], np.int64))])
    ours, ref = sessions(m, provider)
    compare(ours, ref, {"x": rnd((3, 4)), "scale": rnd((4,), seed=2)})


def test_groups_stay_convex(provider):
    # a -> b is fusible, a -> softmax -> c(b, softmax): fusing {a, b, c} would need the softmax
    # both before and after the group (a cycle). The planner must not do that.
    nodes = [helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
             helper.make_node("Softmax", ["a"], ["s"], axis=-1), helper.make_node("Add", ["b", "s"], ["c"]),
             helper.make_node("Abs", ["c"], ["out"])]
    m = model(nodes, [("x", F32, [3, 7])], [("out", F32, [3, 7])])
    ours, ref = sessions(m, provider)
    placement = ours.get_placement()["nodes"]
    for name, _, _ in placement:
        if name.startswith("CudaFused"):
            assert not ("Exp" in name and "Add" in name), placement
    compare(ours, ref, {"x": rnd((3, 7))})


def test_gemm_epilogue_group(provider):
    w, bias, r = rnd((16, 24), seed=1), rnd((24,), seed=2), rnd((5, 24), seed=3)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Div", ["m", "scale"], ["d"]),
             helper.make_node("Add", ["d", "bias"], ["a"]),
             helper.make_node("Add", ["r", "a"], ["a2"]),
             helper.make_node("Gelu", ["a2"], ["out"], approximate="tanh")]
    m = model(nodes, [("x", F32, [2, 5, 16])], [("out", F32, [2, 5, 24])],
              [("w", w), ("scale", np.array(2.0, np.float32)), ("bias", bias), ("r", r)], opset=20)
    ours, ref = sessions(m, provider)
    names = fused(ours, "CudaFusedGemm")
    assert len(names) == 1 and len(ours.get_placement()["nodes"]) == 3   # copy in, gemm, copy out
    compare(ours, ref, {"x": rnd((2, 5, 16))}, rtol=1e-4, atol=1e-4)


def test_gemm_transb_relu_and_optimizer_fused_ops(provider):
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g"], transB=1, alpha=0.5),
             helper.make_node("Add", ["g", "y"], ["a"]), helper.make_node("Relu", ["a"], ["out"])]
    m = model(nodes, [("x", F32, [6, 8]), ("y", F32, [6, 10])], [("out", F32, [6, 10])],
              [("w", rnd((10, 8), seed=1)), ("c", rnd((10,), seed=2))])
    ours, ref = sessions(m, provider)
    assert len(fused(ours, "CudaFusedGemm")) == 1
    compare(ours, ref, {"x": rnd((6, 8)), "y": rnd((6, 10), seed=4)}, rtol=1e-4, atol=1e-4)


def tiny_bert():
    from benchmarks.models.transformer import bert_base
    return bert_base(layers=1, hidden=32, heads=2, ffn=64, vocab=50, max_pos=16, seq=8).SerializeToString()


def bert_feeds(batch=2, seq=8, vocab=50):
    rng = np.random.default_rng(0)
    mask = np.ones((batch, seq), np.int64)
    mask[:, -2:] = 0
    return {"input_ids": rng.integers(0, vocab, (batch, seq), dtype=np.int64), "attention_mask": mask,
            "token_type_ids": np.zeros((batch, seq), np.int64)}


@pytest.mark.parametrize("level", [0, 99])
def test_bert_fusion_fewer_launches_equal_outputs(provider, level):
    m = tiny_bert()
    feeds = bert_feeds()
    ours, ref = sessions(m, provider, level=level)
    plain, _ = sessions(m, provider, {"enable_fusion": 0}, level=level)
    compare(ours, ref, feeds, rtol=1e-4, atol=1e-4)
    before = loader.LAUNCHES[0]
    ours.run(None, feeds)
    fused_launches = loader.LAUNCHES[0] - before
    before = loader.LAUNCHES[0]
    plain.run(None, feeds)
    plain_launches = loader.LAUNCHES[0] - before
    import onnx
    n_nodes = len(onnx.load_from_string(m).graph.node)
    assert fused(ours), ours.get_placement()
    assert fused_launches < plain_launches and fused_launches < n_nodes, \
        (fused_launches, plain_launches, n_nodes)


def test_fused_nodes_in_profile(provider, tmp_path):
    nodes = [helper.make_node("Add", ["x", "x"], ["t"]), helper.make_node("Tanh", ["t"], ["out"])]
    m = model(nodes, [("x", F32, [3, 4])], [("out", F32, [3, 4])])
    ours, _ = sessions(m, provider, profile=True)
    ours.run(None, {"x": rnd((3, 4))})
    path = ours.end_profiling()
    events = json.load(open(path))["traceEvents"]
    os.remove(path)
    names = {e["name"] for e in events if e.get("cat") == "Node"}
    assert any(n.startswith("CudaFused") for n in names), names


def test_fusion_option_off(provider):
    nodes = [helper.make_node("Add", ["x", "x"], ["t"]), helper.make_node("Tanh", ["t"], ["out"])]
    m = model(nodes, [("x", F32, [3, 4])], [("out", F32, [3, 4])])
    ours, ref = sessions(m, provider, {"enable_fusion": "0"})
    assert not fused(ours)
    compare(ours, ref, {"x": rnd((3, 4))})


def test_cuda_graph_region_equals_normal_run(provider):
    m = tiny_bert()
    feeds = bert_feeds()
    ours, ref = sessions(m, provider, {"enable_cuda_graph": 1}, level=99)
    regions = fused(ours, "CudaGraph")
    assert len(regions) == 1, ours.get_placement()
    from ep_cuda.compiled import GRAPH_STATS
    before = dict(GRAPH_STATS)
    for _ in range(3):   # warm-up, capture + replay, replay
        compare(ours, ref, feeds, rtol=1e-4, atol=1e-4)
    assert GRAPH_STATS["captured"] == before["captured"] + 1, GRAPH_STATS     # really captured
    assert GRAPH_STATS["replayed"] == before["replayed"] + 2 and GRAPH_STATS["failed"] == before["failed"]
    feeds2 = bert_feeds()
    feeds2["input_ids"] = feeds2["input_ids"][:, ::-1].copy()
    compare(ours, ref, feeds2, rtol=1e-4, atol=1e-4)   # new values through the static buffers


def test_cuda_graph_splits_around_sync_ops(provider):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("NonZero", ["r"], ["nz"]),
             helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Exp", ["n"], ["out"])]
    m = model(nodes, [("x", F32, [4, 5])], [("nz", TensorProto.INT64, [2, None]), ("out", F32, [4, 5])])
    with pytest.warns(RuntimeWarning, match="enable_cuda_graph"):
        ours, ref = sessions(m, provider, {"enable_cuda_graph": 1})
    ops = [op for _, op, _ in ours.get_placement()["nodes"]]
    assert "NonZero" in ops
    compare(ours, ref, {"x": rnd((4, 5))})
    compare(ours, ref, {"x": rnd((4, 5), seed=1)})


def test_cuda_graph_captures_around_host_reads_from_outside(provider):
    # issue 13 bug 5: Reshape(x, Shape(y)) with y a graph input: the shape is computed on the host
    # outside any region; a region holding the Reshape got it uploaded and read it back while
    # capturing (forbidden), so it never captured, silently. Every region must capture now.
    from ep_cuda.compiled import GRAPH_STATS
    nodes = [helper.make_node("Shape", ["y"], ["s"]), helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Exp", ["r"], ["e"]), helper.make_node("Reshape", ["e", "s"], ["t"]),
             helper.make_node("Neg", ["t"], ["n"]), helper.make_node("Softmax", ["n"], ["out"], axis=-1)]
    m = model(nodes, [("x", F32, [4, 6]), ("y", F32, [None, None])], [("out", F32, [None, None])])
    with pytest.warns(RuntimeWarning, match="enable_cuda_graph"):   # it says why it splits
        ours, ref = sessions(m, provider, {"enable_cuda_graph": 1})
    regions = fused(ours, "CudaGraph")
    assert len(regions) == 2, ours.get_placement()
    before = dict(GRAPH_STATS)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # a failed capture warns: make it fail the test
        for k in range(4):   # warm-up, capture + replay, replays (new shape values: same graph)
            y = np.zeros((3, 8) if k % 2 else (8, 3), np.float32)
            compare(ours, ref, {"x": rnd((4, 6), seed=k), "y": y})
    assert GRAPH_STATS["captured"] - before["captured"] >= 2, GRAPH_STATS
    assert GRAPH_STATS["failed"] == before["failed"], GRAPH_STATS


def test_tf32_option(provider):
    w = rnd((64, 48), seed=1)
    m = model([helper.make_node("MatMul", ["x", "w"], ["out"])], [("x", F32, [32, 64])],
              [("out", F32, [32, 48])], [("w", w)])
    x = rnd((32, 64))
    exact, ref = sessions(m, provider, {"use_tf32": 0})
    tf32, _ = sessions(m, provider, {"use_tf32": 1})
    compare(exact, ref, {"x": x}, rtol=1e-5, atol=1e-4)
    got = tf32.run(None, {"x": x})[0]
    want = ref.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=5e-2)
    assert not np.array_equal(got, exact.run(None, {"x": x})[0]), "TF32 inputs keep 10 mantissa bits"


def test_autotune_caches_choice(provider, tmp_path, monkeypatch):
    monkeypatch.setenv("EP_CUDA_CACHE_DIR", str(tmp_path))
    w = rnd((64, 40), seed=1)
    m = model([helper.make_node("MatMul", ["x", "w"], ["out"])], [("x", F32, [24, 64])],
              [("out", F32, [24, 40])], [("w", w)])
    ours, ref = sessions(m, provider, {"tunable_op_enable": 1, "tunable_op_tuning_enable": 1,
                                       "tunable_op_max_tuning_duration_ms": 1})
    compare(ours, ref, {"x": rnd((24, 64))}, rtol=1e-5, atol=1e-4)
    saved = json.load(open(tmp_path / "autotune.json"))
    assert len(saved) == 1 and list(saved.values())[0].startswith("simt")
    from ep_cuda import emulator
    from ep_cuda.autotune import Tuner
    t = Tuner(tuning=False, path=tmp_path / "autotune.json")
    key, choice = list(saved)[0].split("|", 1)[1], list(saved.values())[0]
    with emulator.enabled() if provider != "cuda" else open(os.devnull):
        assert t.choose(key, ["tc:big", choice], lambda v: None) == choice   # from the file
        assert t.choose(key + "x", ["tc:big", choice], lambda v: None) is None  # unknown, no tuning


def test_onnxruntime_contrib_ops_with_our_semantics_run_on_cuda(provider):
    """com.microsoft Gelu, FastGelu, SkipLayerNormalization and FusedConv (what onnxruntime's
    transformer optimizer and its own fusions write) run on the CUDA provider, as the CPU's."""
    MS = "com.microsoft"
    # Each reads graph inputs: onnx's inference gives com.microsoft outputs no type (yet).
    nodes = [helper.make_node("Gelu", ["x"], ["g"], domain=MS),
             helper.make_node("FastGelu", ["x", "bias"], ["f"], domain=MS),
             helper.make_node("SkipLayerNormalization", ["x", "x2", "gamma", "beta"], ["y"],
                              domain=MS, epsilon=1e-5),
             helper.make_node("FusedConv", ["img", "w", "b"], ["z"], domain=MS,
                              activation="LeakyRelu", activation_params=[0.1], pads=[1, 1, 1, 1])]
    inits = [("bias", rnd((8,), seed=1)), ("gamma", rnd((8,), seed=2)), ("beta", rnd((8,), seed=3)),
             ("w", rnd((4, 3, 3, 3), seed=4)), ("b", rnd((4,), seed=5))]
    m = model(nodes, [("x", F32, [2, 5, 8]), ("x2", F32, [2, 5, 8]), ("img", F32, [1, 3, 6, 6])],
              [("g", F32, [2, 5, 8]), ("f", F32, [2, 5, 8]), ("y", F32, [2, 5, 8]),
               ("z", F32, [1, 4, 6, 6])], inits, domains=[MS])
    ours, ref = sessions(m, provider)
    placed = {op: p for _, op, p in ours.get_placement()["nodes"]}
    assert all(placed[op] == "cuda" for op in ("Gelu", "FastGelu", "SkipLayerNormalization", "FusedConv")), placed
    compare(ours, ref, {"x": rnd((2, 5, 8), seed=6), "x2": rnd((2, 5, 8), seed=8),
                        "img": rnd((1, 3, 6, 6), seed=7)}, rtol=1e-4, atol=1e-4)

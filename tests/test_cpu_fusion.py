"""CPU element-wise fusion (compile API): which nodes become one generated kernel (ep_cpu.fused,
planned by ep_core.fusion's shared finder), and that the fused results match the unfused graph:
bit for bit where the members are arithmetic, to float32 rounding where a member runs as
vector_math's exp."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import ep_core
from ep_core.errors import InvalidArgument
from ep_cpu import fused_codegen
from ep_cpu.provider import GROUP_ATTR

BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min")


def _model(nodes, inputs, outputs, inits=(), dtype=TensorProto.FLOAT, opset=17) -> bytes:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, dtype, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, dtype, s) for n, s in outputs], list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m.SerializeToString()


def _sessions(data: bytes):
    fused_s = ep_core.InferenceSession(data, providers=["cpu"])
    plain = ep_core.InferenceSession(data, providers=[("cpu", {"enable_fusion": False})])
    return fused_s, plain


def _fused_nodes(sess) -> list:
    pl = sess._placement
    return [n for n in pl.graph.nodes if GROUP_ATTR in n.attrs]


def _chain(ops: list[str], shape, other_shape, dtype=TensorProto.FLOAT):
    """x -> ops (binary ones read `b`) -> y, and a second output from the middle."""
    nodes, prev = [], "x"
    for k, op in enumerate(ops):
        out = f"v{k}"
        nodes.append(helper.make_node(op, [prev, "b"] if op in BINARY + ("PRelu", "Pow") else [prev], [out]))
        prev = out
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    mid = f"v{len(ops) // 2}"
    return _model(nodes, [("x", shape), ("b", other_shape)], [("y", shape), (mid, shape)], dtype=dtype)


@pytest.mark.parametrize("shape,other", [((2, 3, 40, 50), (3, 1, 1)), ((2, 3, 40, 50), (50,)),
                                         ((70, 50), (70, 1)), ((40, 1, 60), (1, 50, 60)), ((3300,), ())])
def test_arithmetic_chain_matches_unfused_bitwise(shape, other):
    ops = ["Mul", "Add", "Relu", "Sub", "Max", "Neg", "Div", "Abs", "Sqrt", "Min", "Reciprocal"]
    full = np.broadcast_shapes(shape, other)
    data = _chain(ops, list(full), list(other))
    s_fused, s_plain = _sessions(data)
    assert len(_fused_nodes(s_fused)) == 1 and not _fused_nodes(s_plain)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal(full).astype(np.float32),
             "b": (rng.standard_normal(other) + 2).astype(np.float32)}
    for a, b in zip(s_fused.run(None, feeds), s_plain.run(None, feeds)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_transcendental_members_match_to_float32_rounding():
    ops = ["Mul", "Sigmoid", "Add", "Tanh", "Mul", "Exp", "LeakyRelu", "HardSigmoid", "HardSwish",
           "Log", "Erf", "Sin", "Cos", "Floor", "Ceil"]
    data = _chain(ops, [3, 700], [700])
    s_fused, s_plain = _sessions(data)
    assert len(_fused_nodes(s_fused)) == 1
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((3, 700)).astype(np.float32),
             "b": rng.uniform(0.2, 1.0, 700).astype(np.float32)}
    for a, b in zip(s_fused.run(None, feeds), s_plain.run(None, feeds)):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-6)


def test_nan_and_inf_pass_as_in_the_unfused_graph():
    nodes = [helper.make_node("Max", ["x", "b"], ["m"]), helper.make_node("Min", ["m", "b"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]), helper.make_node("Clip", ["r", "lo", "hi"], ["y"])]
    inits = [helper.make_tensor("lo", TensorProto.FLOAT, [], [0.25]),
             helper.make_tensor("hi", TensorProto.FLOAT, [], [4.0])]
    data = _model(nodes, [("x", [8, 256]), ("b", [8, 256])], [("y", [8, 256])], inits)
    s_fused, s_plain = _sessions(data)
    assert len(_fused_nodes(s_fused)) == 1
    x = np.repeat(np.array([np.nan, 1, -np.inf, np.inf, 2, 0.1, -3, 7], np.float32)[:, None], 256, 1)
    b = np.repeat(np.array([1, np.nan, 0, 0, 3, 0.2, -5, 9], np.float32)[:, None], 256, 1)
    a, p = s_fused.run(None, {"x": x, "b": b})[0], s_plain.run(None, {"x": x, "b": b})[0]
    np.testing.assert_array_equal(a, p)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_calls_split_between_threads(dtype):
    onnx_type = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    data = _chain(["Mul", "Add", "Exp", "Sub"], [600, 400], [400], dtype=onnx_type)
    so = ep_core.SessionOptions()
    so.intra_op_num_threads = 2
    s_fused = ep_core.InferenceSession(data, so, providers=["cpu"])
    s_plain = ep_core.InferenceSession(data, so, providers=[("cpu", {"enable_fusion": False})])
    assert len(_fused_nodes(s_fused)) == 1
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((600, 400)).astype(dtype), "b": rng.standard_normal(400).astype(dtype)}
    # float64: libm's exp against numpy's, 1 ulp; float32: vector_math's exp
    tol = 1e-14 if dtype == np.float64 else 2e-6
    for a, b in zip(s_fused.run(None, feeds), s_plain.run(None, feeds)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    fn = s_fused._placement.assigned[_fused_nodes(s_fused)[0]].compiled
    assert fn.ranges   # the split ran through the kernel's range callback


def test_numpy_path_and_many_dimensions():
    # broadcasting that collapses to more dimensions than the kernel walks runs in numpy
    shape, other = [2, 1, 3, 1, 4, 1, 5], [1, 3, 1, 2, 1, 6, 1]
    full = list(np.broadcast_shapes(shape, other))
    nodes = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Mul", ["a", "a"], ["y"])]
    data = _model(nodes, [("x", shape), ("b", other)], [("y", full)])
    s_fused, s_plain = _sessions(data)
    assert len(_fused_nodes(s_fused)) == 1
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal(shape).astype(np.float32),
             "b": rng.standard_normal(other).astype(np.float32)}
    np.testing.assert_array_equal(s_fused.run(None, feeds)[0], s_plain.run(None, feeds)[0])
    fn = s_fused._placement.assigned[_fused_nodes(s_fused)[0]].compiled
    assert all(layout.kernel is None for layout in fn.layouts.values())   # numpy ran it


def test_numpy_path_equals_kernel():
    data = _chain(["Mul", "Add", "Sigmoid", "Mul"], [50, 64], [64])
    s_fused, _ = _sessions(data)
    fn = s_fused._placement.assigned[_fused_nodes(s_fused)[0]].compiled
    rng = np.random.default_rng(4)
    x, b = rng.standard_normal((50, 64)).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    for a, p in zip(fn(x, b), fn.run_numpy(x, b)):
        assert a.shape == p.shape == (50, 64) and a.dtype == p.dtype == np.float32
        np.testing.assert_allclose(a, p, rtol=2e-6, atol=1e-7)
    assert any(layout.kernel is not None for layout in fn.layouts.values())


def test_what_is_not_fused():
    # an integer chain, a lone node, a non-element-wise op between two element-wise ones, a
    # group of a static shape too small to pay for the call
    nodes = [helper.make_node("Add", ["i", "i"], ["j"]), helper.make_node("Mul", ["j", "j"], ["k"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("i", TensorProto.INT64, [4])],
                          [helper.make_tensor_value_info("k", TensorProto.INT64, [4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    assert not _fused_nodes(ep_core.InferenceSession(m.SerializeToString(), providers=["cpu"]))
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Softmax", ["a"], ["s"]),
             helper.make_node("Neg", ["s"], ["y"])]
    data = _model(nodes, [("x", [30, 40])], [("y", [30, 40])])
    assert not _fused_nodes(ep_core.InferenceSession(data, providers=["cpu"]))
    assert not _fused_nodes(ep_core.InferenceSession(_chain(["Mul", "Add"], [20, 50], [50]), providers=["cpu"]))
    assert _fused_nodes(ep_core.InferenceSession(_chain(["Mul", "Add"], [30, 50], [50]), providers=["cpu"]))


def test_symbolic_shapes_fuse_and_small_runs_take_numpy():
    nodes = [helper.make_node("Mul", ["x", "x"], ["m"]), helper.make_node("Add", ["m", "x"], ["y"])]
    data = _model(nodes, [("x", ["n", 64])], [("y", ["n", 64])])
    s_fused, s_plain = _sessions(data)
    assert len(_fused_nodes(s_fused)) == 1
    fn = s_fused._placement.assigned[_fused_nodes(s_fused)[0]].compiled
    for n in (1, 3, 100):
        x = np.random.default_rng(n).standard_normal((n, 64)).astype(np.float32)
        np.testing.assert_array_equal(s_fused.run(None, {"x": x})[0], s_plain.run(None, {"x": x})[0])
    kernels = {shape[0][0]: layout.kernel is not None for shape, layout in fn.layouts.items()}
    assert kernels == {1: False, 3: False, 100: True}


def test_group_reads_and_writes_through_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("EP_CPU_CACHE_DIR", str(tmp_path))
    data = _chain(["Mul", "Add", "Sub", "Abs"], [99, 11], [11])   # a group no other test compiles
    s_fused, s_plain = _sessions(data)
    feeds = {"x": np.ones((99, 11), np.float32), "b": np.full(11, 3, np.float32)}
    np.testing.assert_array_equal(s_fused.run(None, feeds)[0], s_plain.run(None, feeds)[0])
    assert list((tmp_path / "fused").glob("*.py"))


def test_enable_fusion_option_is_checked():
    data = _chain(["Mul", "Add"], [4096], [4096])
    with pytest.raises(InvalidArgument, match="enable_fusion"):
        ep_core.InferenceSession(data, providers=[("cpu", {"enable_fusion": "maybe"})])
    s = ep_core.InferenceSession(data, providers=[("cpu", {"enable_fusion": "0"})])
    assert not _fused_nodes(s)


def test_generated_kernel_of_vector_members_passes_values_through_scratch():
    # a value computed before a vector member and read after it, and an output computed before it
    nodes = [helper.make_node("Mul", ["x", "b"], ["m"]), helper.make_node("Sigmoid", ["m"], ["s"]),
             helper.make_node("Add", ["s", "m"], ["y"]), helper.make_node("Tanh", ["y"], ["z"])]
    data = _model(nodes, [("x", [3000]), ("b", [3000])], [("m", [3000]), ("z", [3000])])
    s_fused, s_plain = _sessions(data)
    g = _fused_nodes(s_fused)[0].attrs[GROUP_ATTR]
    text, _ = fused_codegen.generate(g, (True, True))
    assert ("activate16(" in text) == (fused_codegen._vector_kind(g, g.info["specs"][1]) is not None)
    rng = np.random.default_rng(5)
    feeds = {"x": rng.standard_normal(3000).astype(np.float32), "b": rng.standard_normal(3000).astype(np.float32)}
    for a, p in zip(s_fused.run(None, feeds), s_plain.run(None, feeds)):
        np.testing.assert_allclose(a, p, rtol=2e-6, atol=1e-7)


def test_a_lone_large_node_runs_as_a_kernel():
    # Add -> Sigmoid -> Mul(a, s) becomes one FusedAdd(Silu): alone, but large enough for the
    # kernel (one pass, split between threads); the same node on a small map stays unfused
    def swish(shape):
        nodes = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Sigmoid", ["a"], ["s"]),
                 helper.make_node("Mul", ["a", "s"], ["y"])]
        return _model(nodes, [("x", shape), ("b", shape)], [("y", shape)])
    so = ep_core.SessionOptions()
    so.intra_op_num_threads = 2
    big = swish([1, 64, 56, 56])
    s_fused = ep_core.InferenceSession(big, so, providers=["cpu"])
    s_plain = ep_core.InferenceSession(big, so, providers=[("cpu", {"enable_fusion": False})])
    assert [op for _, op, _ in s_fused.get_placement()["nodes"]] == ["CpuFused0_FusedAdd"]
    rng = np.random.default_rng(6)
    feeds = {"x": rng.standard_normal((1, 64, 56, 56)).astype(np.float32),
             "b": rng.standard_normal((1, 64, 56, 56)).astype(np.float32)}
    np.testing.assert_allclose(s_fused.run(None, feeds)[0], s_plain.run(None, feeds)[0], rtol=2e-6, atol=2e-6)
    small = ep_core.InferenceSession(swish([1, 8, 16, 16]), providers=["cpu"])
    assert [op for _, op, _ in small.get_placement()["nodes"]] == ["FusedAdd"]


def test_a_literal_of_higher_rank_still_broadcasts_the_output():
    # c is one element of rank 2: x (n,) + c is (1, n), in the kernel and in the numpy path
    n = 3000
    nodes = [helper.make_node("Add", ["x", "c"], ["a"]), helper.make_node("Mul", ["a", "x"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                          [helper.make_tensor("c", TensorProto.FLOAT, [1, 1], [0.5])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    s_fused, s_plain = _sessions(m.SerializeToString())
    assert len(_fused_nodes(s_fused)) == 1
    fn = s_fused._placement.assigned[_fused_nodes(s_fused)[0]].compiled
    x = np.random.default_rng(7).standard_normal(n).astype(np.float32)
    a, p = s_fused.run(None, {"x": x})[0], s_plain.run(None, {"x": x})[0]
    assert a.shape == p.shape == (1, n)
    np.testing.assert_array_equal(a, p)
    assert fn.run_numpy(x)[0].shape == (1, n)


def test_groups_that_differ_in_constants_share_one_kernel():
    # the constants are the kernel's arguments, not literals of its text: two Mul+Add+Clip
    # groups with other scalars compile once and still compute their own
    nodes = [helper.make_node("Mul", ["x", "h"], ["a"]), helper.make_node("Add", ["a", "one"], ["b"]),
             helper.make_node("Clip", ["b", "lo", "hi"], ["y"]),
             helper.make_node("Mul", ["x", "q"], ["c"]), helper.make_node("Add", ["c", "two"], ["d"]),
             helper.make_node("Clip", ["d", "lo2", "hi2"], ["z"])]
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in
             (("h", 0.5), ("one", 1.0), ("lo", -0.5), ("hi", 1.5), ("q", 0.25), ("two", 2.0), ("lo2", 0.0), ("hi2", 2.2))]
    data = _model(nodes, [("x", [40, 100])], [("y", [40, 100]), ("z", [40, 100])], inits)
    s_fused, s_plain = _sessions(data)
    groups = [n.attrs[GROUP_ATTR] for n in _fused_nodes(s_fused)]
    assert len(groups) == 2
    assert fused_codegen.generate(groups[0], (True,))[1] == fused_codegen.generate(groups[1], (True,))[1]
    x = np.random.default_rng(8).standard_normal((40, 100)).astype(np.float32) * 4
    for a, p in zip(s_fused.run(None, {"x": x}), s_plain.run(None, {"x": x})):
        np.testing.assert_array_equal(a, p)

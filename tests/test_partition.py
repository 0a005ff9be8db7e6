"""Partitioning and copy insertion across two memory spaces, proven without a GPU."""
import numpy as np
import pytest
from conftest import F32, make_model
from foreign_provider import ForeignProvider
from onnx import helper, numpy_helper

import ep_core
from ep_core.errors import Fail
from ep_core.provider import HOST

ep_core.register_provider("foreign", ForeignProvider)


def run_both(model, feeds):
    ref = ep_core.InferenceSession(model, providers=["cpu"]).run(None, feeds)
    sess = ep_core.InferenceSession(model, providers=["foreign", "cpu"])
    return ref, sess, sess.run(None, feeds)


def copies(sess):
    return [(n.op_type, n.inputs[0]) for n in sess._graph.nodes if n.op_type.startswith("Memcpy")]


def test_split_graph_copies_exactly_the_crossing_edges(rng):
    w = numpy_helper.from_array(rng.standard_normal((2, 3)).astype(np.float32), "w")
    model = make_model(
        [helper.make_node("Relu", ["x"], ["r"]),            # foreign
         helper.make_node("Exp", ["r"], ["e"]),             # cpu (foreign has no Exp)
         helper.make_node("Add", ["e", "w"], ["y"])],       # foreign, initializer w
        [("x", F32, [2, 3])], [("y", F32, [2, 3])], [w])
    x = rng.standard_normal((2, 3)).astype(np.float32)
    ref, sess, out = run_both(model, {"x": x})
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-6)
    placement = sess.get_placement()
    assert [p for _, op, p in placement["nodes"] if not op.startswith("Memcpy")] == \
        ["foreign", "cpu", "foreign"]
    # x->foreign (graph input), r->host, e->foreign, y->host (graph output); w placed once at build.
    assert copies(sess) == [("MemcpyFromHost", "x"), ("MemcpyToHost", "r"),
                            ("MemcpyFromHost", "e"), ("MemcpyToHost", "y")]
    assert placement["copy_nodes"] == 4 and placement["initializer_copies"] == 1


def test_fully_claimed_graph_copies_only_at_the_boundary(rng):
    model = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "r"], ["y"])],
                       [("x", F32, [4])], [("y", F32, [4])])
    x = rng.standard_normal(4).astype(np.float32)
    ref, sess, out = run_both(model, {"x": x})
    np.testing.assert_allclose(out[0], ref[0])
    assert copies(sess) == [("MemcpyFromHost", "x"), ("MemcpyToHost", "y")]


def test_fan_out_shares_one_copy_and_cpu_only_graph_has_none(rng):
    model = make_model([helper.make_node("Relu", ["x"], ["r"]),
                        helper.make_node("Exp", ["r"], ["a"]), helper.make_node("Sin", ["r"], ["b"])],
                       [("x", F32, [3])], [("a", F32, [3]), ("b", F32, [3])])
    x = rng.standard_normal(3).astype(np.float32)
    ref, sess, out = run_both(model, {"x": x})
    for o, r in zip(out, ref):
        np.testing.assert_allclose(o, r, rtol=1e-6)
    assert copies(sess) == [("MemcpyFromHost", "x"), ("MemcpyToHost", "r")]
    cpu_only = ep_core.InferenceSession(model, providers=["cpu"])
    assert cpu_only.get_placement()["copy_nodes"] == 0


def test_host_memory_declarations_avoid_copies(rng):
    """Reshape's shape input and Shape's output are host-resident: no copy for them."""
    model = make_model([helper.make_node("Relu", ["x"], ["r"]),
                        helper.make_node("Shape", ["r"], ["s"]),
                        helper.make_node("Reshape", ["r", "s"], ["y"])],
                       [("x", F32, [2, 3])], [("y", F32, [2, 3])])
    x = rng.standard_normal((2, 3)).astype(np.float32)
    ref, sess, out = run_both(model, {"x": x})
    np.testing.assert_allclose(out[0], ref[0])
    assert copies(sess) == [("MemcpyFromHost", "x"), ("MemcpyToHost", "y")]


def test_type_constraints_send_other_dtypes_to_cpu(rng):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", 11, [3])], [("y", 11, [3])])
    x = rng.standard_normal(3)
    ref, sess, out = run_both(model, {"x": x})
    np.testing.assert_allclose(out[0], ref[0])
    assert sess.get_placement()["nodes"] == [("Relu_0", "Relu", "cpu")]


def test_wrong_device_value_is_detected():
    """A provider that lies about its output memory makes the consumer fail loudly, naming the node."""

    class LyingProvider(ForeignProvider):
        type = "liar"
        device = HOST  # claims host memory but its kernels take and return ForeignArrays

    ep_core.register_provider("liar", LyingProvider)
    model = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Exp", ["r"], ["y"])],
                       [("x", F32, [3])], [("y", F32, [3])])
    sess = ep_core.InferenceSession(model, providers=["liar", "cpu"])
    with pytest.raises(Fail, match="Relu|Exp"):
        sess.run(None, {"x": np.ones(3, np.float32)})

"""Every kind of bad input raises the typed error, with a message naming the value or node."""
import numpy as np
import onnx
import pytest
from conftest import F32, make_model
from onnx import helper

import ep_core
from ep_core import errors


@pytest.fixture(scope="module")
def model():
    return make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F32, [2, "N"])], [("y", F32, [2, "N"])])


@pytest.fixture(scope="module")
def sess(model):
    return ep_core.InferenceSession(model.SerializeToString(), providers=["cpu"])


def test_all_errors_share_one_base():
    for cls in (errors.InvalidArgument, errors.InvalidGraph, errors.InvalidProtobuf, errors.NoSuchFile,
                errors.NotImplemented, errors.Fail):
        assert issubclass(cls, errors.EPError)


@pytest.mark.parametrize("feeds, match", [
    ({"x": np.ones((2, 3), np.float32), "z": np.ones(1)}, "invalid feed name.*'z'"),
    ({}, "missing feed.*'x'"),
    ({"x": np.ones((2, 3), np.float64)}, "feed 'x' has dtype float64.*tensor\\(float\\)"),
    ({"x": np.ones((2, 3, 1), np.float32)}, "feed 'x' has rank 3"),
    ({"x": np.ones((5, 3), np.float32)}, "feed 'x' has dimension 5 at axis 0.*expects 2"),
])
def test_bad_feeds(sess, feeds, match):
    with pytest.raises(errors.InvalidArgument, match=match):
        sess.run(None, feeds)


def test_symbolic_dimension_accepts_any_size(sess):
    assert sess.run(None, {"x": np.ones((2, 7), np.float32)})[0].shape == (2, 7)


def test_unknown_output_name(sess):
    with pytest.raises(errors.InvalidArgument, match="'nope'"):
        sess.run(["nope"], {"x": np.ones((2, 1), np.float32)})


def test_truncated_bytes(model):
    data = model.SerializeToString()
    with pytest.raises(errors.InvalidProtobuf, match="bytes"):
        ep_core.InferenceSession(data[: len(data) // 2])


def test_garbage_bytes():
    with pytest.raises(errors.InvalidProtobuf):
        ep_core.InferenceSession(b"\xff\xfe not a model at all \x00\x01")


def test_missing_file(tmp_path):
    with pytest.raises(errors.NoSuchFile, match="nope.onnx"):
        ep_core.InferenceSession(str(tmp_path / "nope.onnx"))


def test_unknown_op_in_unknown_domain():
    model = make_model([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.nowhere")],
                       [("x", F32, [2])], [("y", F32, [2])], domains=[("com.nowhere", 1)])
    with pytest.raises(errors.NotImplemented, match="Frobnicate.*com.nowhere.*opset 1"):
        ep_core.InferenceSession(model)


def test_unknown_provider(model):
    with pytest.raises(errors.InvalidArgument, match="unknown provider 'tpu9000'"):
        ep_core.InferenceSession(model, providers=["tpu9000", "cpu"])


def test_checker_failure_is_invalid_graph():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F32, [2])], [("y", F32, [2])])
    model.graph.node[0].input[0] = "dangling"
    with pytest.raises(errors.InvalidGraph, match="dangling"):
        ep_core.InferenceSession(model)


def test_kernel_failure_names_node():
    shape = helper.make_tensor("s", onnx.TensorProto.INT64, [1], [5])
    model = make_model([helper.make_node("Reshape", ["x", "s"], ["y"], name="bad_reshape")],
                       [("x", F32, ["N"])], [("y", F32, [5])], [shape])
    sess = ep_core.InferenceSession(model, providers=["cpu"])
    with pytest.raises(errors.Fail, match="bad_reshape.*Reshape"):
        sess.run(None, {"x": np.ones(3, np.float32)})


def test_aliases_and_tuples(model):
    sess = ep_core.InferenceSession(model, providers=[("CPUExecutionProvider", {})])
    assert sess.get_providers() == ["cpu"]
    assert "cpu" in ep_core.get_available_providers()
    assert {"cpu", "cuda"} <= set(ep_core.get_all_providers())


def test_cuda_without_gpu_warns_and_falls_back(model):
    ok, _ = ep_core.providers.availability("cuda")
    if ok:
        pytest.skip("a GPU is present")
    ep_core.session._warned_unavailable.discard("cuda")
    with pytest.warns(RuntimeWarning, match="cuda"):
        sess = ep_core.InferenceSession(model, providers=["CUDAExecutionProvider", "cpu"])
    assert sess.get_providers() == ["cpu"]
    assert "cuda" not in ep_core.get_available_providers()

"""The load stage (ep_core.load): validation no metadata can skip, external data rules, strict
shape inference, leniency where onnxruntime is lenient, weights never serialized for checking."""
import os
import threading
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ep_core
from ep_core import load as load_module
from ep_core.errors import EPError, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile, ResourceLimit
from ep_core.load import EXTERNAL_FOLDER_KEY, LenientLoadWarning, load
from ep_core.load_wire import Source, split_weights

F32 = TensorProto.FLOAT
vi = helper.make_tensor_value_info


def mlp(rng, hidden=512, ir=8, opset=17):
    """x[2,64] @ w1[64,hidden] (128 KB: lifted out at load) -> Relu -> @ w2 -> y[2,4]."""
    w1 = rng.standard_normal((64, hidden)).astype(np.float32)
    w2 = rng.standard_normal((hidden, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    g = helper.make_graph(nodes, "mlp", [vi("x", F32, [2, 64])], [vi("y", F32, [2, 4])],
                          initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    return m, w1, w2


def expected(m, x):
    w1, w2 = (numpy_helper.to_array(t) for t in m.graph.initializer)
    return np.maximum(x @ w1, 0) @ w2


def run(model, x, options=None):
    sess = ep_core.InferenceSession(model, options, providers=["cpu"])
    return sess.run(None, {"x": x})[0]


# --- what load returns -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["path", "bytes", "proto"])
def test_load_gives_the_graph_with_its_weights_and_the_model_without(rng, tmp_path, kind):
    m, w1, w2 = mlp(rng)
    src = {"path": str(tmp_path / "m.onnx"), "bytes": m.SerializeToString(), "proto": m}[kind]
    if kind == "path":
        onnx.save(m, src)
    loaded = load(src)
    np.testing.assert_array_equal(loaded.graph.initializers["w1"], w1)
    np.testing.assert_array_equal(loaded.graph.initializers["w2"], w2)
    assert list(loaded.graph.initializers) == ["w1", "w2"]
    assert not loaded.graph.initializers["w1"].flags.writeable
    assert loaded.opsets == {"": 17} and loaded.preoptimized is False
    assert loaded.graph.type_of("h").tensor_type.shape.dim[1].dim_value == 512   # inferred
    assert [v.name for v in loaded.graph.inputs] == ["x"]
    if kind != "proto":   # the session keeps only metadata, not a second copy of the weights
        assert not loaded.model.graph.initializer
    else:
        assert loaded.model is m


def test_weights_are_never_serialized_for_the_checker_or_shape_inference(rng, tmp_path, monkeypatch):
    m, _, _ = mlp(rng, hidden=4096)                      # 1 MB of weights
    seen = []
    real_check, real_infer = onnx.checker.check_model, onnx.shape_inference.infer_shapes
    monkeypatch.setattr(onnx.checker, "check_model", lambda model, *a, **k: (
        seen.append(model.ByteSize()), real_check(model, *a, **k))[1])
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", lambda model, *a, **k: (
        seen.append(model.ByteSize()), real_infer(model, *a, **k))[1])
    for src in (m, m.SerializeToString()):
        seen.clear()
        load(src)
        assert len(seen) == 2 and max(seen) < 100_000, seen   # w1 is 1 MB, w2 64 KB (kept inline)


def test_the_file_is_opened_and_parsed_once_even_when_it_is_corrupt(rng, tmp_path, monkeypatch):
    m, _, _ = mlp(rng)
    path = tmp_path / "bad.onnx"
    data = bytearray(m.SerializeToString())
    path.write_bytes(bytes(data[: len(data) // 3]))
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: (opened.append(os.fspath(p)), real_open(p, *a, **k))[1])
    with pytest.raises(InvalidProtobuf, match="bad.onnx"):
        load(str(path))
    assert opened.count(str(path)) == 1


def test_lifted_raw_data_parses_like_protobuf_itself(rng):
    """split_weights keeps protobuf's semantics: a repeated raw_data field, last one wins."""
    m, w1, _ = mlp(rng)
    tensor = m.graph.initializer[0]
    decoy = TensorProto(raw_data=np.zeros(64 * 512, np.float32).tobytes())
    twice = decoy.SerializeToString() + tensor.SerializeToString()   # raw_data twice in one record
    t2 = TensorProto()
    t2.ParseFromString(twice)
    m.graph.initializer[0].CopyFrom(t2)
    data = m.SerializeToString()
    light, spans = split_weights(Source(len(data), data=data), 1024)
    parsed = onnx.ModelProto()
    parsed.ParseFromString(light)
    assert set(spans) == {0, 1}
    assert not parsed.graph.initializer[0].HasField("raw_data")
    span = spans[0]
    np.testing.assert_array_equal(np.frombuffer(data[span.offset:span.offset + span.length], np.float32),
                                  w1.ravel())
    expect = onnx.ModelProto()
    expect.ParseFromString(data)
    for t in expect.graph.initializer:
        t.ClearField("raw_data")
    assert parsed == expect
    np.testing.assert_array_equal(load(data).graph.initializers["w1"], w1)


# --- metadata never switches validation off --------------------------------------------------------------

def test_an_optimized_model_is_still_validated(rng):
    m, _, _ = mlp(rng)
    helper.set_model_props(m, {"ep_core.optimized": "1"})
    assert load(m).preoptimized
    m.graph.node[0].input[1] = "nowhere"
    with pytest.raises(InvalidGraph, match="nowhere"):
        load(m)


# --- external data ----------------------------------------------------------------------------------------

def external_model(rng, folder, location="w1.bin"):
    m, w1, w2 = mlp(rng)
    folder.mkdir(parents=True, exist_ok=True)
    t = m.graph.initializer[0]
    (folder / "w1.bin").write_bytes(t.raw_data)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(w1.nbytes))):
        e = t.external_data.add()
        e.key, e.value = k, v
    path = folder / "model.onnx"
    path.write_bytes(m.SerializeToString())
    return m, str(path), w1


def test_external_weights_next_to_the_model_load(rng, tmp_path):
    m, path, w1 = external_model(rng, tmp_path / "model")
    x = rng.standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_allclose(run(path, x), np.maximum(x @ w1, 0) @ numpy_helper.to_array(m.graph.initializer[1]),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("location, error, match", [
    ("/etc/passwd", InvalidGraph, "relative"),
    ("../secret.bin", InvalidGraph, r"'\.\.'"),
    ("leak.bin", InvalidGraph, "outside the model's folder"),        # symlink to ../secret.bin
    ("pipe.bin", InvalidGraph, "not a regular file"),                 # a FIFO: refused, never read
    ("sub", InvalidGraph, "not a regular file"),
    ("missing.bin", NoSuchFile, "does not exist"),
])
def test_external_data_outside_the_folder_or_not_a_file_is_refused(rng, tmp_path, location, error, match):
    folder = tmp_path / "model"
    _, path, w1 = external_model(rng, folder, location)
    (tmp_path / "secret.bin").write_bytes(b"s" * w1.nbytes)
    os.symlink(tmp_path / "secret.bin", folder / "leak.bin")
    os.mkfifo(folder / "pipe.bin")
    (folder / "sub").mkdir()
    done = []
    t = threading.Thread(target=lambda: done.append(pytest.raises(error, load, path)))
    t.start()
    t.join(30)
    assert done, "loading hung"
    assert "w1" in str(done[0].value) and location in str(done[0].value)
    with pytest.raises(error, match=match):
        load(path)


@pytest.mark.parametrize("entries, match", [
    ({"offset": "100000000"}, "beyond the end"),
    ({"length": "12"}, "does not match"),
    ({"offset": "-4"}, "non-negative integer"),
    ({"offset": "0x10"}, "non-negative integer"),
    ({"bogus": "1"}, "unknown external_data key"),
])
def test_external_offsets_and_lengths_are_checked(rng, tmp_path, entries, match):
    m, path, _ = external_model(rng, tmp_path / "model")
    t = m.graph.initializer[0]
    info = {e.key: e.value for e in t.external_data}
    info.update(entries)
    del t.external_data[:]
    for k, v in info.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    with pytest.raises(InvalidGraph, match=match):
        load(m, _folder_options(tmp_path / "model"))


def _folder_options(folder):
    opts = ep_core.SessionOptions()
    opts.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(folder))
    return opts


@pytest.mark.parametrize("as_bytes", [True, False])
def test_a_model_given_in_memory_reads_external_data_only_from_the_named_folder(rng, tmp_path, monkeypatch, as_bytes):
    m, _, w1 = external_model(rng, tmp_path / "model")
    src = m.SerializeToString() if as_bytes else m
    monkeypatch.chdir(tmp_path / "model")            # the current directory is never used
    with pytest.raises(InvalidGraph, match=EXTERNAL_FOLDER_KEY):
        load(src)
    loaded = load(src, _folder_options(tmp_path / "model"))
    np.testing.assert_array_equal(loaded.graph.initializers["w1"], w1)


# --- strict where it must be ------------------------------------------------------------------------------

def conv_model(**attrs):
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)], "g",
                          [vi("x", F32, [1, 3, 8, 8])], [vi("y", F32, None)], initializer=[w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("attrs, match", [
    ({"dilations": [0, 0]}, "dilations"),
    ({"pads": [-1, -1, -1, -1]}, "pads"),
    ({"kernel_shape": [5, 5]}, "kernel_shape"),
    ({"group": 3}, "group"),
    ({"auto_pad": "BOGUS"}, "auto_pad"),
])
def test_invalid_conv_attributes_are_refused_naming_the_node(attrs, match):
    with pytest.raises(InvalidGraph, match=match):
        load(conv_model(**attrs))
    # onnxruntime's own node checks catch some of these only at run time; the model loads there
    load(conv_model())


def test_deep_nesting_is_a_typed_error_not_a_recursion_error():
    m = conv_model()
    g = m.graph
    for level in range(2000):
        node = g.node.add()
        node.op_type, node.input[:], node.output[:] = "If", ["c"], [f"o{level}"]
        attr = node.attribute.add()
        attr.name, attr.type = "then_branch", onnx.AttributeProto.GRAPH
        g = attr.g
    with pytest.raises(InvalidGraph, match="nest more than"):
        load(m)


def test_invalid_utf8_in_a_name_is_a_typed_error():
    data = conv_model().SerializeToString().replace(b"conv", b"c\xffnv")
    with pytest.raises(InvalidProtobuf, match="UTF-8"):
        load(data)


def test_sparse_initializers_are_densified_and_bombs_refused():
    values = numpy_helper.from_array(np.array([5.0, 7.0], np.float32), "s")
    indices = numpy_helper.from_array(np.array([1, 4], np.int64), "i")
    g = helper.make_graph([helper.make_node("Add", ["x", "s"], ["y"])], "g", [vi("x", F32, [2, 3])],
                          [vi("y", F32, [2, 3])])
    g.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [2, 3]))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    np.testing.assert_array_equal(load(m).graph.initializers["s"], [[0, 5, 0], [0, 7, 0]])
    del m.graph.sparse_initializer[0].dims[:]
    m.graph.sparse_initializer[0].dims.extend([2 ** 20, 2 ** 20])
    with pytest.raises(ResourceLimit, match="densifies"):
        load(m)


@pytest.mark.parametrize("src", [12, None, "", "/dev/null"])
def test_odd_model_arguments_are_typed_errors(src):
    with pytest.raises(EPError):
        load(src)


def test_a_fifo_as_the_model_path_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "model.onnx")
    with pytest.raises(InvalidArgument, match="not a regular file"):
        load(str(tmp_path / "model.onnx"))


# --- lenient where onnxruntime is ---------------------------------------------------------------------------

def test_custom_domain_ops_pass_strict_inference(rng):
    """onnx's strict inference skips ops it has no schema for (com.microsoft, plugins, our own
    fused ops); their declared value types carry on to the ops downstream."""
    nodes = [helper.make_node("FastGelu", ["x"], ["g"], domain="com.microsoft", name="gelu"),
             helper.make_node("FusedMatMul", ["g", "w"], ["h"], domain="com.ep_core", name="fused"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "g", [vi("x", F32, [2, 3])], [vi("y", F32, None)],
                          initializer=[numpy_helper.from_array(np.ones((3, 3), np.float32), "w")],
                          value_info=[vi("h", F32, [2, 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1),
                                            helper.make_opsetid("com.ep_core", 1)])
    graph = load(m).graph
    assert graph.type_of("y").tensor_type.shape.dim[0].dim_value == 2


def _warns(m, match):
    with pytest.warns(LenientLoadWarning, match=match):
        return load(m)


@pytest.mark.filterwarnings("ignore::ep_core.load.LenientLoadWarning")   # session runs repeat them
def test_models_onnx_refuses_but_onnxruntime_runs_load_with_a_warning(rng):
    x = rng.standard_normal((2, 64)).astype(np.float32)
    m, _, _ = mlp(rng, ir=3, opset=9)                   # IR 3: initializers must be inputs, they are not
    _warns(m, "IR 3")
    np.testing.assert_allclose(run(m, x), expected(m, x), rtol=1e-4, atol=1e-4)

    m, _, _ = mlp(rng)
    nodes = list(m.graph.node)[::-1]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    loaded = _warns(m, "topological order")
    assert [n.name for n in loaded.graph.nodes] == ["mm1", "relu", "mm2"]
    np.testing.assert_allclose(run(m, x), expected(m, x), rtol=1e-4, atol=1e-4)

    m, _, _ = mlp(rng)
    m.graph.output[0].type.tensor_type.ClearField("shape")  # no warning: common and harmless
    with warnings.catch_warnings():
        warnings.simplefilter("error", LenientLoadWarning)
        assert load(m).graph.outputs[0].shape == [2, 4]

    m, _, _ = mlp(rng)
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5
    _warns(m, "declared shapes disagree")
    np.testing.assert_allclose(run(m, x), expected(m, x), rtol=1e-4, atol=1e-4)


def test_a_duplicate_initializer_takes_the_last_definition_as_onnxruntime_does(rng):
    m, _, _ = mlp(rng)
    dup = numpy_helper.from_array(np.full((512, 4), 2, np.float32), "w2")
    m.graph.initializer.append(dup)
    loaded = _warns(m, "defined twice")
    np.testing.assert_array_equal(loaded.graph.initializers["w2"], 2)


def test_the_strict_retry_after_a_shape_conflict_still_refuses_real_errors(rng):
    m, _, _ = mlp(rng)
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5
    m.graph.node[2].attribute.append(helper.make_attribute("bogus", 1))
    with pytest.raises(InvalidGraph):
        load(m)


def test_the_loader_module_imports_no_session_and_offline_only_imports_it():
    import ast
    import inspect
    for mod in ("load", "load_tensors", "load_wire", "load_lenient", "validate"):
        tree = ast.parse(inspect.getsource(__import__(f"ep_core.{mod}", fromlist=["x"])))
        names = {a.module for a in ast.walk(tree) if isinstance(a, ast.ImportFrom) and a.module}
        assert not names & {"session", "offline", "optimizer", "partition"}, (mod, names)
    assert load_module.META_OPTIMIZED == "ep_core.optimized"


def test_the_code_in_docs_security_runs(capsys):
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/security.md", "exec"), {})
    out = capsys.readouterr().out
    assert "session.model_external_initializers_file_folder_path" in out and "leaves the model's folder" in out


def test_read_model_inlines_external_data_under_the_same_rules(rng, tmp_path):
    from ep_core.load import read_model
    m, path, w1 = external_model(rng, tmp_path / "model")
    got = read_model(path)
    np.testing.assert_array_equal(numpy_helper.to_array(got.graph.initializer[0]), w1)
    assert got.graph.initializer[0].data_location == TensorProto.DEFAULT
    assert m.graph.initializer[0].data_location == TensorProto.EXTERNAL     # the caller's proto untouched
    with pytest.raises(InvalidGraph, match=EXTERNAL_FOLDER_KEY):
        read_model(m)
    np.testing.assert_array_equal(
        numpy_helper.to_array(read_model(m, _folder_options(tmp_path / "model")).graph.initializer[0]), w1)
    _, bad, _ = external_model(rng, tmp_path / "evil", "../model/w1.bin")
    with pytest.raises(InvalidGraph, match="leaves the model's folder"):
        read_model(bad)


def test_function_ops_with_defaulted_attributes_pass_strict_inference():
    """onnx's strict inference expands MeanVarianceNormalization's body and fails on the `axes`
    it refers to when the node leaves it at its default; the loader writes the default out."""
    g = helper.make_graph([helper.make_node("MeanVarianceNormalization", ["x"], ["y"])], "g",
                          [vi("x", F32, [1, 3, 2, 2])], [vi("y", F32, [1, 3, 2, 2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    node = load(m).graph.nodes[0]
    assert node.attrs["axes"] == [0, 2, 3]

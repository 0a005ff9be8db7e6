"""The Python plugin ABI: the example package pip-installed (into a temporary directory put on
sys.path, so the environment is left as it was) and found through its `ep_core.providers` entry
point; ABI version checks on registration and discovery."""
from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ep_core
from ep_core import errors
from ep_core import providers as registry
from ep_core.plugin import ABI_VERSION, ExecutionProvider, check_abi_version

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "python_provider"


@pytest.fixture(autouse=True, scope="module")
def _forget_test_providers():
    """Providers registered here must not leak into other test modules' default provider lists."""
    before = set(ep_core.get_all_providers())
    yield
    for name in set(ep_core.get_all_providers()) - before:
        ep_core.providers.unregister_provider(name)


def _pip_install(target: Path) -> None:
    """Install the example package with pip; offline first (no build isolation), then isolated.
    It is built from a scratch copy so the build leaves nothing in the repository."""
    source = target.parent / "python_provider_src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    base = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target)]
    errors_seen = []
    for extra in (["--no-build-isolation"], []):
        done = subprocess.run(base + extra + [str(source)], capture_output=True, text=True)
        if done.returncode == 0:
            return
        errors_seen.append(done.stderr[-2000:])
    pytest.fail("pip could not install examples/python_provider:\n" + "\n".join(errors_seen))


@pytest.fixture(scope="module")
def example_python(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    _pip_install(target)
    sys.path.insert(0, str(target))
    registry.refresh()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        for mod in [m for m in sys.modules if m.split(".")[0] == "ep_example_python"]:
            del sys.modules[mod]
        registry.refresh()


def session(model: onnx.ModelProto, providers: list) -> ep_core.InferenceSession:
    """Optimizations off: the placement checks are about the graph as written."""
    opts = ep_core.SessionOptions()
    opts.graph_optimization_level = ep_core.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ep_core.InferenceSession(model.SerializeToString(), opts, providers=providers)


def mixed_model() -> tuple[onnx.ModelProto, dict]:
    """relu1 feeds both Softmax (not claimed) and the Add after it: fusing mm1..add2 into one
    group would make a cycle through Softmax, so the provider must form two groups."""
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((8, 16)).astype(np.float32)
    b1 = rng.standard_normal(16).astype(np.float32)
    w2 = rng.standard_normal((16, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["m1"], name="mm1"),
        helper.make_node("Add", ["m1", "B1"], ["a1"], name="add1"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("Softmax", ["r1"], ["s1"], name="softmax", axis=-1),
        helper.make_node("Add", ["r1", "s1"], ["d1"], name="add2"),
        helper.make_node("MatMul", ["d1", "W2"], ["m2"], name="mm2"),
        helper.make_node("Tanh", ["m2"], ["Y"], name="tanh"),
        helper.make_node("Cast", ["X"], ["xd"], name="cast", to=TensorProto.DOUBLE),
        helper.make_node("Relu", ["xd"], ["Z"], name="relu_f64"),  # float64: not claimed
    ]
    graph = helper.make_graph(
        nodes, "mixed", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, 4]),
         helper.make_tensor_value_info("Z", TensorProto.DOUBLE, [4, 8])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1, "B1"),
         numpy_helper.from_array(w2, "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, {"X": rng.standard_normal((4, 8)).astype(np.float32)}


def test_found_through_entry_point(example_python):
    assert "example_python" in ep_core.get_all_providers()
    factory = registry.provider_factory("example_python")
    assert factory.__module__.startswith("ep_example_python")
    assert str(example_python) in sys.modules[factory.__module__].__file__  # the pip-installed copy


def test_example_python_runs_with_cpu(example_python):
    model, feeds = mixed_model()
    expected = session(model, ["cpu"]).run(None, feeds)
    sess = session(model, ["example_python", "cpu"])
    got = sess.run(None, feeds)
    for e, g in zip(expected, got):
        assert isinstance(g, np.ndarray) and g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    placement = sess.get_placement()
    by: dict[str, list[str]] = {}
    for name, op, provider in placement["nodes"]:
        by.setdefault(provider, []).append(op if op.startswith("Memcpy") else name)
    assert sorted(by["cpu"]) == ["cast", "relu_f64", "softmax"]
    fused = [n for n in by["example_python"] if not n.startswith("Memcpy")]
    assert fused == ["example_python_fused_0", "example_python_fused_1"]
    provider = sess._providers[0]
    assert provider.compiled_groups == [["MatMul", "Add", "Relu"], ["Add", "MatMul", "Tanh"]]
    # X in, r1 out for Softmax (add2 reads it on the device), s1 in, Y out; W1, B1, W2 placed at build
    assert by["example_python"].count("MemcpyFromHost") == 2
    assert by["example_python"].count("MemcpyToHost") == 2
    assert placement["copy_nodes"] == 4 and placement["initializer_copies"] == 3
    assert provider.transfer.bytes_to_host > 0


def test_example_imports_only_the_plugin_abi(example_python):
    for path in (EXAMPLE / "ep_example_python").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert not name.startswith("ep_core") or name == "ep_core.plugin", (path, name)


# ---- ABI versions ---------------------------------------------------------------------------------
def model_relu() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Relu", ["X"], ["Y"])], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def provider_class(version: str) -> type:
    return type("Versioned", (ExecutionProvider,), {"type": "versioned", "abi_version": version})


def test_abi_version_rules():
    assert ABI_VERSION == "1.0"
    check_abi_version("1.0", "p")
    check_abi_version("1.1", "p", core="1.3")  # older minor: accepted
    for bad, core in (("1.4", "1.3"), ("2.0", "1.0"), ("0.9", "1.0"), ("one", "1.0"), (None, "1.0")):
        with pytest.raises(errors.IncompatiblePlugin, match="plugin 'p'"):
            check_abi_version(bad, "p", core=core)


@pytest.mark.parametrize("version, pattern", [
    ("2.0", r"plugin 'future_major' was built for ep_core plugin ABI 2\.0.*major versions must match"),
    ("1.7", r"plugin 'future_major' needs ep_core plugin ABI 1\.7, newer than"),
])
def test_register_refuses_incompatible_class(version, pattern):
    with pytest.raises(errors.IncompatiblePlugin, match=pattern):
        ep_core.register_provider("future_major", provider_class(version))
    assert "future_major" not in ep_core.get_all_providers()


def test_register_refuses_non_provider():
    with pytest.raises(errors.IncompatiblePlugin, match="plugin 'notaprovider'.*not a subclass"):
        ep_core.register_provider("notaprovider", dict)


def test_factory_function_checked_when_called():
    ep_core.register_provider("made_by_function", lambda **o: provider_class("3.0")(**o))
    with pytest.raises(errors.IncompatiblePlugin, match="plugin 'made_by_function'.*ABI 3.0"):
        session(model_relu(), ["made_by_function", "cpu"])


def test_entry_point_with_incompatible_major(tmp_path):
    """A discovered plugin built for ABI 2.x: sessions naming it get a typed error naming it;
    sessions that do not use it, and the default provider list, are unaffected."""
    (tmp_path / "old_plugin.py").write_text(
        "from ep_core.plugin import ExecutionProvider\n"
        "class Future(ExecutionProvider):\n"
        "    type = 'from_the_future'\n"
        "    abi_version = '2.0'\n")
    dist = tmp_path / "old_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: old-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[ep_core.providers]\nfrom_the_future = old_plugin:Future\n")
    sys.path.insert(0, str(tmp_path))
    try:
        registry.refresh()
        assert "from_the_future" in ep_core.get_all_providers()
        assert "from_the_future" not in ep_core.get_available_providers()
        with pytest.raises(errors.IncompatiblePlugin,
                           match=r"plugin 'from_the_future' was built for ep_core plugin ABI 2\.0"):
            session(model_relu(), ["from_the_future", "cpu"])
        y = session(model_relu(), ["cpu"]).run(None, {"X": np.array([-1, 2], np.float32)})[0]
        np.testing.assert_array_equal(y, [0, 2])
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("old_plugin", None)
        importlib.invalidate_caches()
        registry.refresh()
    assert "from_the_future" not in ep_core.get_all_providers()

"""The C plugin ABI: the example C provider built with the system compiler, loaded through ctypes,
sharing a model with the CPU provider; broken libraries give typed errors naming the plugin."""
from __future__ import annotations

import ctypes
import gc
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ep_core
from ep_core import errors
from ep_core.plugin import HOST

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = ROOT / "ep_core" / "include"
EXAMPLE_SRC = ROOT / "examples" / "c_provider" / "ep_example_c.c"

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")


@pytest.fixture(autouse=True, scope="module")
def _forget_test_providers():
    """Providers registered here must not leak into other test modules' default provider lists."""
    before = set(ep_core.get_all_providers())
    yield
    for name in set(ep_core.get_all_providers()) - before:
        ep_core.providers.unregister_provider(name)


def session(model: onnx.ModelProto, providers: list) -> ep_core.InferenceSession:
    """Optimizations off: the placement checks below are about the graph as written."""
    opts = ep_core.SessionOptions()
    opts.graph_optimization_level = ep_core.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ep_core.InferenceSession(model.SerializeToString(), opts, providers=providers)


def build(src: Path, out: Path, *defines: str) -> Path:
    cmd = ["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-O2",
           f"-I{INCLUDE}", *[f"-D{d}" for d in defines], "-o", str(out), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stderr}"
    return out


@pytest.fixture(scope="module")
def example_lib(tmp_path_factory) -> Path:
    lib = build(EXAMPLE_SRC, tmp_path_factory.mktemp("c_example") / "libep_example_c.so")
    ep_core.register_provider_library("example_c", str(lib))
    return lib


def mixed_model() -> tuple[onnx.ModelProto, dict]:
    """MatMul+Add+Relu (claimed), Sigmoid (not), MatMul+Relu (claimed), and a float64 Relu (not:
    wrong dtype) plus a rank-3 MatMul (not: the example only claims 2-D MatMul)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 16)).astype(np.float32)
    b1 = rng.standard_normal(16).astype(np.float32)
    w2 = rng.standard_normal((16, 4)).astype(np.float32)
    w3 = rng.standard_normal((3, 8, 2)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["m1"], name="mm1"),
        helper.make_node("Add", ["m1", "B1"], ["a1"], name="add1"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("Sigmoid", ["r1"], ["s1"], name="sigmoid"),
        helper.make_node("MatMul", ["s1", "W2"], ["m2"], name="mm2"),
        helper.make_node("Relu", ["m2"], ["Y"], name="relu2"),
        helper.make_node("Relu", ["D"], ["Z"], name="relu_f64"),
        helper.make_node("MatMul", ["X", "W3"], ["B"], name="mm_batched"),
    ]
    graph = helper.make_graph(
        nodes, "mixed",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 8]),
         helper.make_tensor_value_info("D", TensorProto.DOUBLE, [5])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, 4]),
         helper.make_tensor_value_info("Z", TensorProto.DOUBLE, [5]),
         helper.make_tensor_value_info("B", TensorProto.FLOAT, [3, 4, 2])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1, "B1"),
         numpy_helper.from_array(w2, "W2"), numpy_helper.from_array(w3, "W3")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"X": rng.standard_normal((4, 8)).astype(np.float32),
             "D": rng.standard_normal(5)}
    return model, feeds


def placement_by_provider(sess) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, op, provider in sess.get_placement()["nodes"]:
        out.setdefault(provider, []).append(op if op.startswith("Memcpy") else name)
    return out


@pytest.mark.parametrize("fuse", ["0", "1"])
def test_example_c_runs_with_cpu(example_lib, fuse):
    model, feeds = mixed_model()
    expected = session(model, ["cpu"]).run(None, feeds)
    sess = session(model, [("example_c", {"fuse": fuse}), "cpu"])
    got = sess.run(None, feeds)
    for e, g in zip(expected, got):
        assert isinstance(g, np.ndarray) and g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
    placement = sess.get_placement()
    by = placement_by_provider(sess)
    assert sorted(by["cpu"]) == ["mm_batched", "relu_f64", "sigmoid"]
    if fuse == "1":  # two chains compiled as groups
        assert sorted(n for n in by["example_c"] if not n.startswith("Memcpy")) == \
            ["example_c_fused_0", "example_c_fused_1"]
    else:
        assert {"mm1", "add1", "relu1", "mm2", "relu2"} <= set(by["example_c"])
    # X in, r1 out to Sigmoid, s1 back in, Y out: four copies; W1, B1, W2 placed once at build
    assert placement["copy_nodes"] == 4
    assert by["example_c"].count("MemcpyFromHost") == 2
    assert by["example_c"].count("MemcpyToHost") == 2
    assert placement["initializer_copies"] == 3


def test_example_c_frees_run_buffers(example_lib):
    model, feeds = mixed_model()
    sess = session(model, ["example_c", "cpu"])
    provider = sess._providers[0]
    live = ctypes.CDLL(str(example_lib)).ep_example_c_live_buffers
    live.restype, live.argtypes = ctypes.c_long, [ctypes.c_void_p]
    assert live(provider._handle.ptr) == 3  # the placed initializers
    for _ in range(3):
        sess.run(None, feeds)
    gc.collect()
    assert live(provider._handle.ptr) == 3  # every activation and copy was freed


def test_example_c_values_live_in_its_memory(example_lib):
    cls = ep_core.providers.provider_factory("example_c")
    p = cls()
    assert p.device.kind == "example_c" and not p.device.is_host
    t = p.get_data_transfer()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    on_dev = t.copy(x, p.device)
    assert on_dev.shape == (2, 3) and on_dev.device == p.device
    with pytest.raises(TypeError, match="copy"):
        np.asarray(on_dev)
    np.testing.assert_array_equal(t.copy(on_dev, HOST), x)


def test_unknown_option_is_typed_error(example_lib):
    model, _ = mixed_model()
    with pytest.raises(errors.InvalidArgument, match=r"example_c.*unknown option 'bogus'"):
        session(model, [("example_c", {"bogus": "1"}), "cpu"])


# ---- broken libraries -----------------------------------------------------------------------------
# A host-memory plugin claiming Relu; macros break it in one way each.
BROKEN_SRC = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ep_plugin.h"

#ifndef ABI_MAJOR
#define ABI_MAJOR EP_PLUGIN_ABI_MAJOR
#endif

typedef struct { char mode[32]; } P;

static EpStatus create(int32_t n, const char *const *k, const char *const *v, void **out,
                       char *msg, size_t len) {
    P *p = (P *)calloc(1, sizeof(P));
    (void)msg; (void)len;
    for (int32_t i = 0; i < n; ++i)
        if (strcmp(k[i], "mode") == 0) snprintf(p->mode, sizeof p->mode, "%s", v[i]);
    *out = p;
    return EP_OK;
}
static void release(void *p) { free(p); }
static EpStatus device(void *p, EpDevice *d, char *msg, size_t len) {
    (void)p; (void)msg; (void)len;
    d->device_type = EP_DEVICE_CPU;
    d->device_id = 0;
    return EP_OK;
}
EpStatus capability(void *p, const EpGraphView *v, int32_t *group, char *msg, size_t len);
EpStatus capability(void *p, const EpGraphView *v, int32_t *group, char *msg, size_t len) {
    (void)p; (void)msg; (void)len;
    for (int32_t k = 0; k < v->n_nodes; ++k)
        if (strcmp(v->nodes[k].op_type, "Relu") == 0) group[k] = EP_CLAIM_NODE;
    return EP_OK;
}
static EpStatus compute(void *provider, const EpNode *node, int32_t n_in, const EpTensor *in,
                        EpOutputs *outs, char *msg, size_t len) {
    P *p = (P *)provider;
    EpTensor t;
    if (strcmp(p->mode, "fail") == 0) {
        snprintf(msg, len, "deliberate failure in %s", node->name);
        return EP_FAIL;
    }
    if (strcmp(p->mode, "invalid") == 0) {
        snprintf(msg, len, "input rank %d is not supported", (int)in[0].ndim);
        return EP_INVALID_ARGUMENT;
    }
    if (strcmp(p->mode, "no_output") == 0) return EP_OK;
    if (strcmp(p->mode, "bad_index") == 0) {
        EpStatus s = outs->allocate(outs->handle, 7, in[0].ndim, in[0].shape, in[0].dtype, &t);
        snprintf(msg, len, "allocate refused output 7");
        return s;
    }
    if (n_in != 1 || in[0].dtype.code != EP_DTYPE_FLOAT || in[0].dtype.bits != 32
        || in[0].device.device_type != EP_DEVICE_CPU) {
        snprintf(msg, len, "expected one float32 host tensor");
        return EP_INVALID_ARGUMENT;
    }
    EpStatus s = outs->allocate(outs->handle, 0, in[0].ndim, in[0].shape, in[0].dtype, &t);
    if (s != EP_OK) return s;
    int64_t n = 1;
    for (int32_t k = 0; k < in[0].ndim; ++k) n *= in[0].shape[k];
    const float *x = (const float *)in[0].data;
    float *y = (float *)t.data;
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0 ? x[i] : 0;
    return EP_OK;
}

static const EpPluginApi api = {
    ABI_MAJOR, EP_PLUGIN_ABI_MINOR, (uint32_t)sizeof(EpPluginApi), "broken",
    create, release, device,
#ifdef NULL_CAPABILITY
    NULL,
#else
    capability,
#endif
    compute, NULL, NULL, NULL, NULL, NULL, NULL,
};

#ifndef NO_ENTRY
EP_PLUGIN_EXPORT const EpPluginApi *ep_plugin_get_api(void) { return &api; }
#else
EP_PLUGIN_EXPORT const EpPluginApi *some_other_name(void) { return &api; }
#endif
"""


@pytest.fixture(scope="module")
def broken_src(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("broken") / "broken_plugin.c"
    src.write_text(BROKEN_SRC)
    return src


def relu_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["X"], ["R"], name="the_relu"),
         helper.make_node("Sigmoid", ["R"], ["Y"], name="sig")], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_host_memory_plugin_needs_no_copies(broken_src):
    ep_core.register_provider_library("host_relu", str(build(broken_src, broken_src.with_name("ok.so"))))
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    sess = session(relu_model(), ["host_relu", "cpu"])
    (y,) = sess.run(None, {"X": x})
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-np.maximum(x, 0))), rtol=1e-6)
    assert ("the_relu", "Relu", "host_relu") in sess.get_placement()["nodes"]
    assert sess.get_placement()["copy_nodes"] == 0


@pytest.mark.parametrize("mode, error, pattern", [
    ("fail", errors.Fail, r"provider plugin 'failing'.*the_relu.*EP_FAIL.*deliberate failure in the_relu"),
    ("invalid", errors.InvalidArgument, r"'failing'.*the_relu.*rank 2 is not supported"),
    ("no_output", errors.Fail, r"'failing'.*the_relu.*without allocating output"),
    ("bad_index", errors.InvalidArgument, r"'failing'.*output index 7 out of range"),
])
def test_library_errors_are_typed(broken_src, mode, error, pattern):
    ep_core.register_provider_library("failing", str(build(broken_src, broken_src.with_name("f.so"))))
    sess = session(relu_model(), [("failing", {"mode": mode}), "cpu"])
    with pytest.raises(error, match=pattern):
        sess.run(None, {"X": np.ones((2, 3), np.float32)})
    sess = ep_core.InferenceSession(relu_model().SerializeToString(), providers=["cpu"])
    assert sess.run(None, {"X": np.ones((2, 3), np.float32)})[0].shape == (2, 3)  # still alive


@pytest.mark.parametrize("define, pattern", [
    ("NO_ENTRY", r"plugin 'nosym'.*required symbol 'ep_plugin_get_api'"),
    ("NULL_CAPABILITY", r"plugin 'nosym'.*required symbol 'get_capability'"),
    ("ABI_MAJOR=2", r"plugin 'nosym' was built for ep_core plugin ABI 2\.0.*implements ABI 1\.0"),
])
def test_bad_library_is_refused(broken_src, define, pattern):
    lib = build(broken_src, broken_src.with_name(f"bad_{define.split('=')[0]}.so"), define)
    with pytest.raises(errors.IncompatiblePlugin, match=pattern):
        ep_core.register_provider_library("nosym", str(lib))
    assert "nosym" not in ep_core.get_all_providers()


def test_missing_library_file():
    with pytest.raises(errors.NoSuchFile, match="plugin 'ghost'"):
        ep_core.register_provider_library("ghost", "/nonexistent/libghost.so")


@pytest.mark.parametrize("a_shape, b_shape", [
    ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((1,), (5,)), ((), (3,)), ((0, 3), (3,)),
    ((2, 3, 1, 5), (1, 3, 4, 1)),
])
def test_example_c_add_broadcasts(example_lib, a_shape, b_shape):
    graph = helper.make_graph(
        [helper.make_node("Add", ["A", "B"], ["Y"], name="add")], "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, list(a_shape)),
         helper.make_tensor_value_info("B", TensorProto.FLOAT, list(b_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(np.broadcast_shapes(a_shape, b_shape)))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(3)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    sess = session(model, ["example_c", "cpu"])
    assert ("add", "Add", "example_c") in sess.get_placement()["nodes"]
    (y,) = sess.run(None, {"A": a, "B": b})
    np.testing.assert_array_equal(y, a + b)

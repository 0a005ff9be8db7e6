"""The session's build stages: fusions after partitioning, one constness rule, valid graphs,
no import cycles, sessions freed when dropped, cancellation, thread settings restored."""
from __future__ import annotations

import ast
import gc
import os
import pathlib
import subprocess
import sys
import threading
import time
import weakref

import numpy as np
import pytest
from conftest import F32, make_model
from foreign_provider import FOREIGN, ForeignArray, ForeignProvider, registry as foreign_registry, unwrap
from onnx import TensorProto, helper, numpy_helper

import ep_core
from ep_core.errors import RunTerminated
from ep_core.graph_edit import OWN_DOMAIN
from ep_core.kernel import Kernel, KernelRegistry

ep_core.register_provider("foreign", ForeignProvider)


def add_relu_chain(pairs: int):
    nodes = []
    prev = "x"
    for k in range(pairs):
        nodes += [helper.make_node("Add", [prev, "x"], [f"a{k}"], name=f"add{k}"),
                  helper.make_node("Relu", [f"a{k}"], [f"r{k}"], name=f"relu{k}")]
        prev = f"r{k}"
    nodes.append(helper.make_node("Identity", [prev], ["y"], name="out"))
    return make_model(nodes, [("x", F32, [2, 3])], [("y", F32, [2, 3])])


def test_plugin_keeps_claimed_nodes_at_default_level():
    """The CPU has FusedAdd; the plugin owning Add+Relu does not: nothing is fused away from it."""
    m = add_relu_chain(1)
    sess = ep_core.InferenceSession(m.SerializeToString(), providers=["foreign", "cpu"])
    placed = {op: p for _, op, p in sess.get_placement()["nodes"] if not op.startswith("Memcpy")}
    assert placed["Add"] == "foreign" and placed["Relu"] == "foreign"
    assert "FusedAdd" not in placed
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.maximum(2 * x, 0))


fusing_registry = KernelRegistry()
for kdef in [d for defs in foreign_registry._defs.values() for d in defs]:
    fusing_registry.add(kdef)


@fusing_registry.register("FusedAdd", domain=OWN_DOMAIN)
class ForeignFusedAdd(Kernel):
    def compute(self, a, b):
        assert self.attr("activation") == "Relu"
        return ForeignArray(np.maximum(unwrap(a) + unwrap(b), 0))


class FusingProvider(ForeignProvider):
    """A CUDA-style provider with its own fused kernel, claiming only nodes named 'add0'/'relu0'."""
    type = "fusing"

    @classmethod
    def kernel_registry(cls) -> KernelRegistry:
        return fusing_registry

    def get_capability(self, graph_view, kernel_lookup):
        return [c for c in super().get_capability(graph_view, kernel_lookup)
                if c.nodes[0].name in ("add0", "relu0", "add2")]


ep_core.register_provider("fusing", FusingProvider)


def test_provider_gets_its_own_fusions_only_for_nodes_it_owns():
    # add0+relu0: both ours -> our FusedAdd. add1+relu1: both CPU -> CPU FusedAdd.
    # add2 (ours) + relu2 (CPU): owners differ -> not fused.
    m = add_relu_chain(3)
    sess = ep_core.InferenceSession(m.SerializeToString(), providers=["fusing", "cpu"])
    placed = [(op, p) for _, op, p in sess.get_placement()["nodes"] if not op.startswith("Memcpy")]
    assert placed == [("FusedAdd", "fusing"), ("FusedAdd", "cpu"), ("Add", "fusing"), ("Relu", "cpu")]
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    ref = ep_core.InferenceSession(m.SerializeToString(), providers=["cpu"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-6)


def ir3_model_with_weight_inputs(rng, n_weights=3):
    """IR 3: weights are listed as graph inputs too, yet they are constants (no feed may set them)."""
    nodes, inits, inputs = [], [], [("x", F32, [2, 3])]
    prev = "x"
    for k in range(n_weights):
        w = rng.standard_normal((2, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{k}"))
        inputs.append((f"w{k}", F32, [2, 3]))
        nodes.append(helper.make_node("Add", [prev, f"w{k}"], [f"h{k}"]))
        prev = f"h{k}"
    nodes.append(helper.make_node("Relu", [prev], ["y"]))
    m = make_model(nodes, inputs, [("y", F32, [2, 3])], inits)
    m.ir_version = 3
    return m


def test_ir3_weights_listed_as_inputs_are_copied_once_at_build(rng):
    m = ir3_model_with_weight_inputs(rng)
    sess = ep_core.InferenceSession(m.SerializeToString(), providers=["foreign", "cpu"])
    placement = sess.get_placement()
    assert placement["initializer_copies"] == 3
    assert placement["copy_nodes"] == 2          # x in, y out: the only crossing edges
    x = rng.standard_normal((2, 3)).astype(np.float32)
    ref = ep_core.InferenceSession(m.SerializeToString(), providers=["cpu"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-6)
    with pytest.raises(ep_core.errors.InvalidArgument, match="constants"):
        sess.run(None, {"x": x, "w0": x})


def test_ir4_overridable_initializer_is_copied_per_run(rng):
    m = ir3_model_with_weight_inputs(rng, 1)
    m.ir_version = 8
    sess = ep_core.InferenceSession(m.SerializeToString(), providers=["foreign", "cpu"])
    assert sess.get_placement()["initializer_copies"] == 0   # a feed may replace it: not constant
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(sess.run(None, {"x": x, "w0": x})[0], 2 * x)


def test_placed_graph_is_valid_and_declares_device_constants(rng):
    m = ir3_model_with_weight_inputs(rng)
    sess = ep_core.InferenceSession(m.SerializeToString(), providers=["foreign", "cpu"])
    placement = sess._placement
    placement.graph.check_valid(placement.device_constants)
    for name, (source, device) in placement.device_constants.items():
        assert device == FOREIGN and source in placement.graph.initializers
        assert placement.graph.type_of(name) == placement.graph.type_of(source)


def test_check_valid_names_the_culprit():
    m = make_model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["y"])],
                   [("x", F32, [2])], [("y", F32, [2])])
    from ep_core.graph import graph_from_proto
    g = graph_from_proto(m.graph, {"": 17})
    with pytest.raises(ep_core.errors.InvalidGraph, match="'y', which is produced twice"):
        g.check_valid()


def test_offline_writer_needs_no_name_parsing(rng, tmp_path):
    m = ir3_model_with_weight_inputs(rng)
    so = ep_core.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ep_core.InferenceSession(m.SerializeToString(), so, providers=["foreign", "cpu"])
    import onnx
    saved = onnx.load(str(tmp_path / "opt.onnx"))
    onnx.checker.check_model(saved)
    names = {i for n in saved.graph.node for i in n.input}
    assert not any("@" in i for i in names if i.startswith("w"))   # device copies written as the weight


# --- imports ------------------------------------------------------------------------------------

def _module_imports(path: pathlib.Path) -> set[str]:
    """ep_core modules a module imports at its top level (function-local imports count too)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ep_core."):
            out.add(node.module.split(".")[1])
    return out


def test_no_import_cycle_inside_ep_core():
    root = pathlib.Path(ep_core.__file__).parent
    modules = {p.stem: p for p in root.glob("*.py") if p.stem != "__init__"}
    graph = {m: {i for i in _module_imports(p) if i in modules} for m, p in modules.items()}
    cycles = []

    def visit(m, stack):
        for n in graph[m]:
            if n in stack:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in done:
                visit(n, stack + [n])
        done.add(m)
    done: set[str] = set()
    for m in sorted(graph):
        if m not in done:
            visit(m, [m])
    assert not cycles, f"import cycles in ep_core: {cycles[:5]}"


# --- lifetime -----------------------------------------------------------------------------------

def mlp_model(rng, hidden=256, layers=4):
    nodes, inits, prev = [], [], "x"
    for k in range(layers):
        inits.append(numpy_helper.from_array(rng.standard_normal((hidden, hidden)).astype(np.float32), f"w{k}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{k}"], [f"m{k}"]))
        nodes.append(helper.make_node("Relu", [f"m{k}"], [f"r{k}"]))
        prev = f"r{k}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    return make_model(nodes, [("x", F32, [1, hidden])], [("y", F32, [1, hidden])], inits)


def test_dropped_session_is_freed_without_the_cycle_collector(rng):
    body = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", F32, [1, 256])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["t2"])], "else", [],
                              [helper.make_tensor_value_info("t2", F32, [1, 256])])
    m = mlp_model(rng)
    m.graph.node.append(helper.make_node("ReduceSum", ["y"], ["s"], keepdims=0))
    m.graph.node.append(helper.make_node("Greater", ["s", "zero"], ["c"]))
    m.graph.node.append(helper.make_node("If", ["c"], ["z"], then_branch=body, else_branch=other))
    m.graph.initializer.append(numpy_helper.from_array(np.array(0, np.float32), "zero"))
    m.graph.output.append(helper.make_tensor_value_info("z", F32, [1, 256]))
    data = m.SerializeToString()
    x = np.ones((1, 256), np.float32)
    gc.disable()
    try:
        for providers in (["cpu"], ["foreign", "cpu"]):
            for mode in (ep_core.ExecutionMode.ORT_SEQUENTIAL, ep_core.ExecutionMode.ORT_PARALLEL):
                so = ep_core.SessionOptions()
                so.execution_mode = mode
                sess = ep_core.InferenceSession(data, so, providers=providers)
                sess.run(None, {"x": x})
                ref = weakref.ref(sess)
                del sess
                assert ref() is None, f"session on {providers} ({mode.name}) kept alive by a cycle"
    finally:
        gc.enable()


def test_sessions_in_a_loop_keep_memory_flat():
    """200 x (create, run, drop) of a 4 MB MLP, no gc.collect(): RSS grows < 20 MB."""
    code = r"""
import gc, resource, numpy as np, sys
sys.path.insert(0, "tests")
gc.disable()
import ep_core
from test_stages import mlp_model
data = mlp_model(np.random.default_rng(0), hidden=512).SerializeToString()
x = np.ones((1, 512), np.float32)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
for _ in range(20):
    ep_core.InferenceSession(data, providers=["cpu"]).run(None, {"x": x})
start = rss()
for _ in range(200):
    ep_core.InferenceSession(data, providers=["cpu"]).run(None, {"x": x})
print(rss() - start)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         cwd=pathlib.Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    growth = float(out.stdout.strip().splitlines()[-1])
    assert growth < 20, f"RSS grew {growth:.1f} MB over 200 sessions"


def test_parallel_mode_restores_thread_settings(rng):
    from threadpoolctl import threadpool_info

    import ep_cpu.gemm as gemm
    before = (gemm.get_num_threads(), [i["num_threads"] for i in threadpool_info()])
    so = ep_core.SessionOptions()
    so.execution_mode = ep_core.ExecutionMode.ORT_PARALLEL
    so.inter_op_num_threads = 2
    sess = ep_core.InferenceSession(mlp_model(rng).SerializeToString(), so, providers=["cpu"])
    x = np.ones((1, 256), np.float32)

    def work():
        for _ in range(5):
            sess.run(None, {"x": x})
    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (gemm.get_num_threads(), [i["num_threads"] for i in threadpool_info()]) == before


# --- cancellation -------------------------------------------------------------------------------

def endless_loop_model(trips: int | None = None):
    """Loop adding 1 per iteration; `trips` None makes the trip count a graph input."""
    body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "one"], ["v_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", F32, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", F32, [])],
        initializer=[numpy_helper.from_array(np.array(1, np.float32), "one")])
    nodes = [helper.make_node("Loop", ["trips", "cond", "v0"], ["v"], body=body)]
    inits = [numpy_helper.from_array(np.array(True), "cond")]
    inputs = [("v0", F32, [])]
    if trips is None:
        inputs.append(("trips", TensorProto.INT64, []))
    else:
        inits.append(numpy_helper.from_array(np.array(trips, np.int64), "trips"))
    return make_model(nodes, inputs, [("v", F32, [])], inits)


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_terminate_from_another_thread_stops_a_huge_loop(mode):
    so = ep_core.SessionOptions()
    if mode == "parallel":
        so.execution_mode = ep_core.ExecutionMode.ORT_PARALLEL
    sess = ep_core.InferenceSession(endless_loop_model().SerializeToString(), so, providers=["cpu"])
    feeds = {"v0": np.array(0, np.float32), "trips": np.array(10**9, np.int64)}
    ro = ep_core.RunOptions()
    timer = threading.Timer(0.3, lambda: setattr(ro, "terminate", True))
    t0 = time.perf_counter()
    timer.start()
    with pytest.raises(RunTerminated, match="terminate"):
        sess.run(None, feeds, ro)
    assert time.perf_counter() - t0 < 1.3     # 0.3 s until set + < 1 s to stop
    # the session stays usable
    out = sess.run(None, {"v0": np.array(0, np.float32), "trips": np.array(3, np.int64)})
    assert out[0] == 3


def test_terminate_set_before_run_and_deadline():
    sess = ep_core.InferenceSession(endless_loop_model(2**62).SerializeToString(), providers=["cpu"])
    ro = ep_core.RunOptions()
    ro.terminate = True
    with pytest.raises(RunTerminated):
        sess.run(None, {"v0": np.array(0, np.float32)}, ro)
    ro = ep_core.RunOptions()
    ro.timeout_s = 0.2
    t0 = time.perf_counter()
    with pytest.raises(RunTerminated, match="deadline"):
        sess.run(None, {"v0": np.array(0, np.float32)}, ro)
    assert time.perf_counter() - t0 < 1.2


def test_only_execute_path_to_fetches_skips_other_branches():
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Loop", ["trips", "cond", "x0"], ["slow"],
                              body=endless_loop_model(1).graph.node[0].attribute[0].g)]
    m = make_model(nodes, [("x", F32, [2]), ("x0", F32, [])], [("a", F32, [2]), ("slow", F32, [])],
                   [numpy_helper.from_array(np.array(10**9, np.int64), "trips"),
                    numpy_helper.from_array(np.array(True), "cond")])
    sess = ep_core.InferenceSession(m.SerializeToString(), providers=["cpu"])
    ro = ep_core.RunOptions()
    ro.only_execute_path_to_fetches = True
    ro.timeout_s = 5
    out = sess.run(["a"], {"x": np.array([-1, 2], np.float32), "x0": np.array(0, np.float32)}, ro)
    np.testing.assert_array_equal(out[0], [0, 2])


# --- outputs are the caller's -------------------------------------------------------------------

@pytest.mark.parametrize("op", ["Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "passthrough"])
def test_outputs_never_alias_feeds(op):
    if op == "passthrough":
        nodes, out_shape = [helper.make_node("Relu", ["x"], ["r"])], [1, 4]
        outputs = [("x", F32, [1, 4]), ("r", F32, out_shape)]
    else:
        extra = {"Reshape": ["shape"], "Squeeze": ["axes"], "Unsqueeze": ["axes"]}.get(op, [])
        nodes = [helper.make_node(op, ["x"] + extra, ["y"])]
        shape = {"Reshape": [4], "Squeeze": [4], "Unsqueeze": [1, 1, 4]}.get(op, [1, 4])
        outputs = [("y", F32, shape)]
    inits = [numpy_helper.from_array(np.array([4], np.int64), "shape"),
             numpy_helper.from_array(np.array([0], np.int64), "axes")]
    m = make_model(nodes, [("x", F32, [1, 4])], outputs, inits)
    sess = ep_core.InferenceSession(m.SerializeToString(), providers=["cpu"])
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    outs = sess.run(None, {"x": x})
    kept = [o.copy() for o in outs]
    x[...] = -7
    for o, k in zip(outs, kept):
        np.testing.assert_array_equal(o, k)
    outs[0][...] = 99
    assert (x == -7).all()


def test_two_outputs_of_one_value_are_independent():
    m = make_model([helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["b"])],
                   [("x", F32, [3])], [("a", F32, [3]), ("b", F32, [3])])
    sess = ep_core.InferenceSession(m.SerializeToString(), providers=["cpu"])
    a, b = sess.run(None, {"x": np.ones(3, np.float32)})
    a[...] = 5
    np.testing.assert_array_equal(b, np.ones(3))


def test_session_options_refuse_unknown_fields():
    so = ep_core.SessionOptions()
    with pytest.raises(AttributeError, match="enable_cpu_mem_arenaa"):
        so.enable_cpu_mem_arenaa = False
    ro = ep_core.RunOptions()
    with pytest.raises(AttributeError):
        ro.terminated = True


class GroupingProvider(ForeignProvider):
    """Claims Relu 'a' and Add 'c' as one compiled group; the CPU's Neg 'b' between them feeds 'c'."""
    type = "grouping"

    def get_capability(self, graph_view, kernel_lookup):
        from ep_core.provider import ComputeCapability, MetaDef
        mine = [n for n in graph_view.nodes if n.name in ("a", "c")]
        if len(mine) != 2:
            return []
        return [ComputeCapability(mine, MetaDef("relu_add", ["x", "nb"], ["y"]))]

    def compile(self, fused_node, subgraph):
        return lambda x, nb: (ForeignArray(np.maximum(unwrap(x), 0) + unwrap(nb)),)


ep_core.register_provider("grouping", GroupingProvider)


def test_fused_group_reading_a_value_produced_between_its_members_is_ordered():
    m = make_model([helper.make_node("Relu", ["x"], ["r"], name="a"),
                    helper.make_node("Neg", ["x"], ["nb"], name="b"),
                    helper.make_node("Add", ["r", "nb"], ["y"], name="c")],
                   [("x", F32, [2, 3])], [("y", F32, [2, 3])])
    sess = ep_core.InferenceSession(m.SerializeToString(), providers=["grouping", "cpu"])
    ops = [op for _, op, _ in sess.get_placement()["nodes"] if not op.startswith("Memcpy")]
    assert ops == ["Neg", "relu_add"]
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], np.maximum(x, 0) - x)


class HostInputGroupingProvider(GroupingProvider):
    """The same group, declaring that its callable reads input 1 ('nb') in host memory."""
    type = "grouping_host"

    def get_capability(self, graph_view, kernel_lookup):
        caps = super().get_capability(graph_view, kernel_lookup)
        for c in caps:
            c.meta_def.host_inputs = (1,)
        return caps

    def compile(self, fused_node, subgraph):
        def run(x, nb):
            assert isinstance(nb, np.ndarray), "input 1 was declared host memory"
            return (ForeignArray(np.maximum(unwrap(x), 0) + nb),)
        return run


ep_core.register_provider("grouping_host", HostInputGroupingProvider)


def test_fused_group_host_inputs_are_not_copied_to_the_device():
    m = make_model([helper.make_node("Relu", ["x"], ["r"], name="a"),
                    helper.make_node("Neg", ["x"], ["nb"], name="b"),
                    helper.make_node("Add", ["r", "nb"], ["y"], name="c")],
                   [("x", F32, [2, 3])], [("y", F32, [2, 3])])
    sess = ep_core.InferenceSession(m.SerializeToString(), providers=["grouping_host", "cpu"])
    ops = [op for _, op, _ in sess.get_placement()["nodes"]]
    assert ops.count("MemcpyFromHost") == 1      # x only; 'nb' stays on the host
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], np.maximum(x, 0) - x)


# Ops whose numpy kernels can return a view of an input (or the input itself).
VIEW_OPS = [
    ("Slice", ["x", "starts", "ends"], {}, [1, 2]),
    ("Transpose", ["x"], {"perm": [1, 0]}, [4, 1]),
    ("Expand", ["x", "eshape"], {}, [2, 4]),
    ("Split", ["x"], {"axis": 1, "num_outputs": 2}, [1, 2]),
    ("Cast", ["x"], {"to": TensorProto.FLOAT}, [1, 4]),
    ("Dropout", ["x"], {}, [1, 4]),
    ("Concat", ["x"], {"axis": 0}, [1, 4]),
    ("Squeeze", ["x", "axes"], {}, [4]),
    ("Identity", ["w"], {}, [1, 4]),          # an initializer
    ("Reshape", ["w", "shape"], {}, [4]),
]


@pytest.mark.parametrize("op,inputs,attrs,shape", VIEW_OPS, ids=[f"{v[0]}-{v[1][0]}" for v in VIEW_OPS])
def test_view_returning_ops_give_independent_outputs(op, inputs, attrs, shape):
    """Mutating a returned output changes neither the feed, nor a constant, nor the next run;
    mutating the feed afterwards changes no returned output."""
    n_out = attrs.get("num_outputs", 1)
    outs = [f"y{k}" for k in range(n_out)]
    m = make_model([helper.make_node(op, inputs, outs, **attrs)], [("x", F32, [1, 4])],
                   [(o, F32, shape) for o in outs],
                   [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
                    [("starts", [0, 1]), ("ends", [1, 3]), ("eshape", [2, 4]), ("axes", [0]), ("shape", [4])]]
                   + [numpy_helper.from_array(np.full((1, 4), 3, np.float32), "w")])
    m.opset_import[0].version = 18
    sess = ep_core.InferenceSession(m.SerializeToString(), providers=["cpu"])
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    first = sess.run(None, {"x": x})
    want = [o.copy() for o in first]
    for o in first:
        o[...] = 99
    np.testing.assert_array_equal(x, np.arange(4, dtype=np.float32).reshape(1, 4))
    again = sess.run(None, {"x": x})
    for a, w in zip(again, want):
        np.testing.assert_array_equal(a, w)
    x[...] = -7
    for a, w in zip(again, want):
        np.testing.assert_array_equal(a, w)

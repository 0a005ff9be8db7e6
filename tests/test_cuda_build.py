"""CUDA provider checks that need no GPU: every kernel compiles through NVRTC, the registry lists
without a device, the package imports without CuPy, and the host-side index helpers agree with
numpy. (Not marked `cuda`: these run in CI.)"""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ep_core
from ep_cuda import CUDAExecutionProvider
from ep_cuda.launch import MAXD, broadcast_strides, collapse, contiguous_strides


def _nvrtc_importable() -> bool:
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _nvrtc_importable(), reason="CuPy's NVRTC binding is not importable")
def test_every_kernel_compiles_with_nvrtc(capsys):
    from ep_cuda import check_kernels
    failures = check_kernels.check()
    out = capsys.readouterr().out
    assert failures == 0, out[-5000:]
    summary = out.strip().splitlines()[-1]
    assert "0 failed" in summary and " ok" in summary


def test_manifest_covers_every_kernel_file():
    import kernels_cu
    from ep_cuda import loader
    man = loader.manifest()
    assert set(kernels_cu.categories()) <= set(man)
    assert sum(len(v) for v in man.values()) > 300


def test_registry_lists_without_gpu():
    ops = {o for _, o, _, _ in ep_core.get_registered_ops("cuda")}
    assert len(ops) >= 100
    for op in ("MatMul", "Gemm", "Conv", "Softmax", "LayerNormalization", "Resize", "TopK",
               "NonZero", "ScatterND", "Shape", "Cast", "Where"):
        assert op in ops


def test_host_memory_declarations():
    reg = CUDAExecutionProvider.kernel_registry()
    defs = {d.op_type: d for ds in reg._defs.values() for d in ds}
    assert defs["Reshape"].host_inputs == (1,)
    assert defs["Slice"].host_inputs == (1, 2, 3, 4)
    assert defs["Resize"].host_inputs == (1, 2, 3)
    assert defs["TopK"].host_inputs == (1,)
    assert defs["Shape"].host_outputs == (0,)
    assert defs["Size"].host_outputs == (0,)
    assert defs["ConstantOfShape"].host_inputs == (0,)


def test_imports_and_lists_without_cupy():
    code = textwrap.dedent("""
        import sys
        sys.modules['cupy'] = None          # any 'import cupy' now raises ImportError
        sys.modules['cupy_backends'] = None
        import ep_core, ep_cuda
        ok, reason = ep_cuda.CUDAExecutionProvider.availability()
        assert not ok and 'CuPy' in reason, reason
        ops = {o for _, o, _, _ in ep_core.get_registered_ops('cuda')}
        assert len(ops) >= 100
        assert 'cuda' in ep_core.get_all_providers()
        assert 'cuda' not in ep_core.get_available_providers()
        print('OK')
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def _cupy_importable() -> bool:
    try:
        import cupy  # noqa: F401
        import cuda.pathfinder  # noqa: F401
        return True
    except Exception:
        return False


# Makes CuPy's CUDA header lookup (cuda.pathfinder) find nothing, as on a pip-only machine whose
# extra brought no headers.
HIDE_CUDA_HEADERS = textwrap.dedent("""
    import cuda.pathfinder as pf
    import cuda.pathfinder._headers.find_nvidia_headers as fh
    pf.find_nvidia_header_directory = lambda name: None
    fh.find_nvidia_header_directory = lambda name: None
""")
ONE_RELU = textwrap.dedent("""
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
""")


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))


@pytest.mark.skipif(not _cupy_importable(), reason="CuPy / cuda.pathfinder not importable")
def test_without_cuda_headers_provider_is_unavailable_and_falls_back_once():
    """Issue 13 bug 3: CuPy 14 compiles nothing without the CUDA runtime headers; the probe must
    say so (not 'no GPU', not fail mid-run) and a session falls back to the CPU, warning once."""
    code = HIDE_CUDA_HEADERS + ONE_RELU + textwrap.dedent("""
        import warnings
        import numpy as np
        import ep_core
        from ep_cuda import CUDAExecutionProvider
        ok, why = CUDAExecutionProvider.availability()
        assert not ok and "CUDA headers" in why and "cuda12" in why, why
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            for _ in range(2):
                s = ep_core.InferenceSession(model, providers=["cuda", "cpu"])
                assert s.get_providers() == ["cpu"]
                assert s.run(None, {"x": np.array([-1, 0, 2], np.float32)})[0].tolist() == [0, 0, 2]
        msgs = [str(x.message) for x in w if "not available" in str(x.message)]
        assert len(msgs) == 1 and "CUDA headers" in msgs[0], msgs
        print("OK")
    """)
    r = _run_python(code)
    assert r.returncode == 0 and "OK" in r.stdout, (r.stdout + r.stderr)[-3000:]


@pytest.mark.skipif(not _cupy_importable(), reason="CuPy / cuda.pathfinder not importable")
def test_cupy_compile_path_needs_headers_and_compiles_with_them():
    from ep_cuda import probe
    try:
        probe.compile_options()
    except RuntimeError as e:
        pytest.skip(f"no CUDA headers on this machine: {e}")
    lowered = probe.cupy_compile(probe.PROBE_SOURCE, ["ep_probe"], 75)
    assert lowered == {"ep_probe": "ep_probe"}
    r = _run_python(HIDE_CUDA_HEADERS + textwrap.dedent("""
        from ep_cuda import probe
        try:
            probe.cupy_compile(probe.PROBE_SOURCE, ["ep_probe"], 75)
        except RuntimeError as e:
            print("REFUSED", e)
    """))
    assert "REFUSED Failed to find CUDA headers" in r.stdout, (r.stdout + r.stderr)[-3000:]


def test_availability_is_a_pair():
    ok, reason = CUDAExecutionProvider.availability()
    assert isinstance(ok, bool) and isinstance(reason, str)
    assert ok or reason


# ---------------------------------------------------------------- host-side index helpers
def _emulate(shape, strides_list, n_ops):
    """What the kernels' strided_offsets computes, in numpy."""
    idx = np.arange(int(np.prod(shape)), dtype=np.int64)
    offs = [np.zeros_like(idx) for _ in range(n_ops)]
    rem = idx.copy()
    for d in range(len(shape) - 1, -1, -1):
        c = rem % shape[d]
        rem //= shape[d]
        for k in range(n_ops):
            offs[k] += c * strides_list[k][d]
    return offs


@pytest.mark.parametrize("a_shape,b_shape", [((3, 4), (4,)), ((2, 1, 5), (3, 1)), ((1,), ()),
                                             ((2, 3, 4, 5), (2, 1, 4, 1)), ((6, 1, 1, 7), (1, 5, 1, 1))])
def test_collapse_and_broadcast_match_numpy(a_shape, b_shape):
    rng = np.random.default_rng(0)
    a, b = rng.random(a_shape), rng.random(b_shape)
    out = np.broadcast_shapes(a.shape, b.shape)
    sts = [broadcast_strides(a.shape, [s // 8 for s in a.strides], out),
           broadcast_strides(b.shape, [s // 8 for s in b.strides], out), contiguous_strides(out)]
    shape, cst = collapse(out, sts)
    assert len(shape) <= MAXD
    oa, ob, oy = _emulate(shape, cst, 3)
    y = np.empty(int(np.prod(out)))
    y[oy] = a.reshape(-1)[oa] + b.reshape(-1)[ob]
    np.testing.assert_array_equal(y.reshape(out), a + b)


def test_collapse_strided_views():
    base = np.arange(2 * 3 * 8, dtype=np.int64)
    x = base.reshape(2, 3, 8)[:, ::-2, 1::3]   # non-contiguous view with a negative stride
    first = (x.ctypes.data - base.ctypes.data) // 8
    st = [s // 8 for s in x.strides]
    shape, (s0, s1) = collapse(x.shape, [st, contiguous_strides(x.shape)])
    o0, o1 = _emulate(shape, [s0, s1], 2)
    y = np.empty(x.size, np.int64)
    y[o1] = base[first + o0]
    np.testing.assert_array_equal(y.reshape(x.shape), x)


def test_contiguous_input_collapses_to_one_dim():
    shape, sts = collapse((4, 5, 6), [contiguous_strides((4, 5, 6))] * 2)
    assert shape == [120] and sts == [[1], [1]]


def test_capability_leaves_shape_of_host_tensors_to_cpu():
    from onnx import TensorProto, helper

    from ep_core.graph import graph_from_proto
    from ep_core.provider import GraphView
    g = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["s0"]), helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("Shape", ["r"], ["s1"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(n, TensorProto.INT64, None) for n in ("s0", "s1")]
        + [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)])
    graph = graph_from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).graph,
                             {"": 17})
    ep = object.__new__(CUDAExecutionProvider)   # capability needs no device
    caps = ep.get_capability(GraphView(graph, graph.nodes), CUDAExecutionProvider.kernel_registry().lookup)
    claimed = [c.nodes[0].outputs[0] for c in caps]
    assert claimed == ["r", "s1"]


@pytest.mark.filterwarnings("ignore:provider 'cuda' is not available")
def test_session_falls_back_to_cpu_without_gpu():
    if CUDAExecutionProvider.availability()[0]:
        pytest.skip("a GPU is present")
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    sess = ep_core.InferenceSession(m.SerializeToString(), providers=["CUDAExecutionProvider", "cpu"])
    assert sess.get_providers() == ["cpu"]
    np.testing.assert_array_equal(sess.run(None, {"x": np.array([-1, 0, 2], np.float32)})[0], [0, 0, 2])


def _inferred_graph(nodes, inputs, outputs, inits=()):
    import onnx
    from onnx import helper, numpy_helper

    from ep_core.graph import graph_from_proto
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*i) for i in inputs],
                          [helper.make_tensor_value_info(*o) for o in outputs],
                          initializer=[numpy_helper.from_array(v, k) for k, v in inits])
    m = onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    return graph_from_proto(m.graph, {"": 17})


@pytest.mark.parametrize("options", [{}, {"enable_cuda_graph": 1}])
def test_get_capability_has_no_side_effects_and_compile_needs_only_the_capability(options):
    """Issue 12: get_capability keeps no state for compile (`_groups`, `constant_values`); what
    compile needs travels in the MetaDef's attributes, which become the fused node's attrs."""
    import copy
    import warnings

    from onnx import TensorProto, helper

    from ep_core.graph import Node
    from ep_core.provider import GraphView
    from ep_cuda.testing import EmulatedCUDAProvider
    F = TensorProto.FLOAT
    rng = np.random.default_rng(0)
    graph = _inferred_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
         helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Mul", ["r", "r"], ["q"]),
         helper.make_node("Tanh", ["q"], ["y"])],
        [("x", F, [2, 3])], [("y", F, [2, 4])],
        [("w", rng.standard_normal((3, 4)).astype(np.float32)), ("b", np.ones(4, np.float32))])
    ep = EmulatedCUDAProvider(**options)
    state = copy.deepcopy(vars(ep))
    lookup = ep.get_kernel_registry().lookup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        caps = ep.get_capability(GraphView(graph, graph.nodes), lookup)
        again = ep.get_capability(GraphView(graph, graph.nodes), lookup)
    assert [c.meta_def.name for c in caps if c.meta_def] == [c.meta_def.name for c in again if c.meta_def]
    assert vars(ep).keys() == state.keys() and not hasattr(ep, "_groups") and not hasattr(ep, "constant_values")
    fused = [c for c in caps if c.meta_def is not None]
    assert fused, caps
    other = EmulatedCUDAProvider(**options)     # compile on another instance: nothing kept between
    for cap in fused:
        md = cap.meta_def
        node = Node(md.name, list(md.inputs), list(md.outputs), name=md.name, domain=md.domain,
                    attrs=dict(md.attributes), since_version=1, opset=1)
        assert callable(other.compile(node, None))

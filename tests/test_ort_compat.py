"""ep_core.onnxruntime against onnxruntime itself: names, provider spellings, exceptions, session
and run options, fallback, run_async, the install hook and the `python -m ep_core.shim` runner."""
import logging
import os
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import onnxruntime as real_ort
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import ep_core
import ep_core.onnxruntime as ort
from ep_core import errors
from ep_core.onnxruntime.capi import onnxruntime_pybind11_state as C

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model(nodes, inputs, outputs, inits=(), opset=17, **kw) -> bytes:
    g = helper.make_graph(nodes, "g", inputs, outputs,
                          initializer=[numpy_helper.from_array(v, n) for n, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], **kw)
    return m.SerializeToString()


def vi(name, et, shape):
    return helper.make_tensor_value_info(name, et, shape)


ADD_W = model([helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", T.FLOAT, ["N", 2])],
              [vi("y", T.FLOAT, ["N", 2])], [("w", np.array([1, 2], np.float32))], ir_version=8)
RESHAPE = model([helper.make_node("Reshape", ["x", "s"], ["y"])],
                [vi("x", T.FLOAT, [6]), vi("s", T.INT64, [2])], [vi("y", T.FLOAT, [None, None])])


def both(m, **kw):
    return (real_ort.InferenceSession(m, providers=["CPUExecutionProvider"], **kw),
            ort.InferenceSession(m, providers=["CPUExecutionProvider"], **kw))


# ---- providers ------------------------------------------------------------------------------
def test_provider_spellings_compat_vs_native():
    assert "CPUExecutionProvider" in ort.get_available_providers()
    assert "CPUExecutionProvider" in ort.get_all_providers() and "CUDAExecutionProvider" in ort.get_all_providers()
    assert "cpu" in ep_core.get_available_providers() and "CPUExecutionProvider" not in ep_core.get_available_providers()
    sess = ort.InferenceSession(ADD_W, providers=["CPUExecutionProvider"])
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert ep_core.InferenceSession(ADD_W, providers=["cpu"]).get_providers() == ["cpu"]


def test_get_device_matches_cuda_availability():
    assert ort.get_device() == ("GPU" if "CUDAExecutionProvider" in ort.get_available_providers() else "CPU")


def test_provider_tuples_and_options():
    sess = ort.InferenceSession(ADD_W, providers=[("CPUExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})])
    assert sess.get_provider_options() == {"CPUExecutionProvider": {"arena_extend_strategy": "kSameAsRequested"}}
    sess = ort.InferenceSession(ADD_W, providers=["CPUExecutionProvider"], provider_options=[{"a": 1}])
    assert sess.get_provider_options()["CPUExecutionProvider"] == {"a": "1"}
    with pytest.raises(ValueError):
        ort.InferenceSession(ADD_W, providers=["CPUExecutionProvider"], provider_options=[{}, {}])
    with pytest.raises(ValueError):
        ort.InferenceSession(ADD_W, providers=[("CPUExecutionProvider",)])


@pytest.mark.parametrize("asked", [["TensorrtExecutionProvider", "CPUExecutionProvider"], ["DmlExecutionProvider"],
                                   ["NoSuchExecutionProvider"]])
def test_providers_we_lack_warn_and_fall_to_cpu_as_onnxruntime(asked):
    with pytest.warns(UserWarning, match="not in available provider names"):
        theirs = real_ort.InferenceSession(ADD_W, providers=asked).get_providers()
    with pytest.warns(UserWarning, match="not in available provider names"):
        ours = ort.InferenceSession(ADD_W, providers=asked).get_providers()
    assert ours == theirs == ["CPUExecutionProvider"]


def test_cuda_requested_without_gpu_runs_on_cpu():
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a GPU is present: CUDA is used")
    with pytest.warns(UserWarning):
        sess = ort.InferenceSession(ADD_W, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert sess.get_providers() == ["CPUExecutionProvider"]


def test_set_providers_recreates_the_session():
    sess = ort.InferenceSession(ADD_W, providers=["CPUExecutionProvider"])
    x = np.ones((1, 2), np.float32)
    before = sess.run(None, {"x": x})
    sess.set_providers([("CPUExecutionProvider", {"k": "v"})])
    assert sess.get_provider_options()["CPUExecutionProvider"] == {"k": "v"}
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], before[0])


# ---- a provider that fails as a whole: onnxruntime's EPFail fallback -------------------------
class _FailingProvider(ep_core.provider.ExecutionProvider):
    type = "failing_ep"

    @classmethod
    def kernel_registry(cls):
        from ep_core.kernel import Kernel, KernelRegistry
        reg = KernelRegistry()

        @reg.register("Add", types={"T": [np.float32]})
        class Boom(Kernel):
            def compute(self, a, b):
                raise C.EPFail("device lost")
        return reg


def test_epfail_falls_back_to_cpu_once(recwarn):
    ep_core.register_provider("failing_ep", _FailingProvider)
    x = np.ones((1, 2), np.float32)
    sess = ort.InferenceSession(ADD_W, providers=["failing_ep", "CPUExecutionProvider"])
    assert sess.get_providers() == ["failing_ep", "CPUExecutionProvider"]
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], [[2, 3]])
    assert sess.get_providers() == ["CPUExecutionProvider"]
    sess = ort.InferenceSession(ADD_W, providers=["failing_ep", "CPUExecutionProvider"])
    sess.disable_fallback()
    with pytest.raises(C.EPFail):
        sess.run(None, {"x": x})
    sess.enable_fallback()
    sess.run(None, {"x": x})
    assert sess.get_providers() == ["CPUExecutionProvider"]


# ---- exceptions -----------------------------------------------------------------------------
def _err(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return e
    raise AssertionError("no error raised")


@pytest.mark.parametrize("case", ["missing file", "bad bytes", "wrong dtype", "kernel failure", "unknown output"])
def test_error_classes_match_onnxruntime(case):
    x6, bad = np.zeros(6, np.float32), np.array([4, 4])
    calls = {
        "missing file": lambda m: m.InferenceSession("/nonexistent/model.onnx", providers=["CPUExecutionProvider"]),
        "bad bytes": lambda m: m.InferenceSession(b"garbage", providers=["CPUExecutionProvider"]),
        "wrong dtype": lambda m: m.InferenceSession(RESHAPE, providers=["CPUExecutionProvider"]).run(
            None, {"x": x6.astype(np.float64), "s": np.array([2, 3])}),
        "kernel failure": lambda m: m.InferenceSession(RESHAPE, providers=["CPUExecutionProvider"]).run(
            None, {"x": x6, "s": bad}),
        "unknown output": lambda m: m.InferenceSession(RESHAPE, providers=["CPUExecutionProvider"]).run(
            ["nope"], {"x": x6, "s": np.array([2, 3])}),
    }
    theirs = _err(lambda: calls[case](real_ort))
    ours = _err(lambda: calls[case](ort))
    name = type(theirs).__name__
    assert isinstance(ours, getattr(C, name)), (case, name, type(ours))
    assert isinstance(ours, errors.EPError)


def test_both_except_forms_catch_our_errors():
    sess = ort.InferenceSession(RESHAPE, providers=["CPUExecutionProvider"])
    for cls in (C.InvalidArgument, errors.InvalidArgument):
        with pytest.raises(cls):
            sess.run(None, {"x": np.zeros(6, np.float64), "s": np.array([2, 3])})
    for cls in (C.Fail, C.RuntimeException, errors.Fail):
        with pytest.raises(cls):
            sess.run(None, {"x": np.zeros(6, np.float32), "s": np.array([4, 4])})
    for name in ("EPFail", "EngineError", "NoModel", "ModelLoaded", "NotFound", "ModelLoadCanceled",
                 "ModelRequiresCompilation", "DeviceReset", "NoSuchFile", "InvalidProtobuf", "InvalidGraph",
                 "NotImplemented"):
        assert issubclass(getattr(C, name), errors.EPError), name


def test_missing_feed_is_a_value_error_as_in_onnxruntime():
    sess = ort.InferenceSession(RESHAPE, providers=["CPUExecutionProvider"])
    for cls in (ValueError, errors.InvalidArgument):
        with pytest.raises(cls, match="s"):
            sess.run(None, {"x": np.zeros(6, np.float32)})


# ---- module functions -----------------------------------------------------------------------
def test_module_functions():
    assert ort.get_version_string() == ort.__version__ == ort.version
    assert isinstance(ort.get_build_info(), str) and "ep_core" in ort.get_build_info()
    ort.disable_telemetry_events()
    ort.enable_telemetry_events()
    assert ort.has_collective_ops() is False
    ort.preload_dlls()
    try:
        ort.set_default_logger_severity(3)
        assert logging.getLogger("ep_core").level == logging.ERROR
        ort.set_default_logger_severity(0)
        ort.set_default_logger_verbosity(1)
        assert logging.getLogger("ep_core").level < logging.DEBUG
        with pytest.raises(errors.InvalidArgument):
            ort.set_default_logger_severity(7)
    finally:
        ort.set_default_logger_verbosity(0)
        ort.set_default_logger_severity(2)


def test_default_severity_survives_session_creation():
    try:
        ort.set_default_logger_severity(3)
        ort.InferenceSession(ADD_W, ort.SessionOptions(), providers=["CPUExecutionProvider"])
        assert logging.getLogger("ep_core").level == logging.ERROR
    finally:
        ort.set_default_logger_severity(2)


def test_logger_callback_receives_records():
    got = []
    ort.set_default_logger_callback(lambda sev, cat, logid, loc, msg: got.append((sev, msg)))
    try:
        logging.getLogger("ep_core").warning("hello %s", "there")
    finally:
        ort.set_default_logger_callback(None)
    assert (2, "hello there") in got


def test_model_metadata_as_onnxruntime():
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "graph_n",
                                            [vi("x", T.FLOAT, [2])], [vi("y", T.FLOAT, [2])], doc_string="gdoc"),
                          opset_imports=[helper.make_opsetid("", 17)], producer_name="prod", doc_string="mdoc",
                          domain="dom", model_version=7)
    helper.set_model_props(m, {"k": "v"})
    theirs, ours = both(m.SerializeToString())
    a, b = theirs.get_modelmeta(), ours.get_modelmeta()
    for f in ("producer_name", "graph_name", "domain", "description", "graph_description", "version",
              "custom_metadata_map"):
        assert getattr(a, f) == getattr(b, f), f


# ---- session options ------------------------------------------------------------------------
def test_free_dimension_override_by_name():
    opts = []
    for mod in (real_ort, ort):
        so = mod.SessionOptions()
        so.add_free_dimension_override_by_name("N", 3)
        opts.append(mod.InferenceSession(ADD_W, so, providers=["CPUExecutionProvider"]))
    theirs, ours = opts
    assert [a.shape for a in ours.get_inputs()] == [a.shape for a in theirs.get_inputs()] == [[3, 2]]
    x = np.ones((3, 2), np.float32)
    np.testing.assert_array_equal(ours.run(None, {"x": x})[0], theirs.run(None, {"x": x})[0])
    with pytest.raises(errors.InvalidArgument):
        ours.run(None, {"x": np.ones((1, 2), np.float32)})


def test_free_dimension_override_by_denotation():
    x = vi("x", T.FLOAT, ["B", 2])
    x.type.tensor_type.shape.dim[0].denotation = "DATA_BATCH"
    m = model([helper.make_node("Relu", ["x"], ["y"])], [x], [vi("y", T.FLOAT, ["B", 2])])
    shapes = []
    for mod in (real_ort, ort):
        so = mod.SessionOptions()
        so.add_free_dimension_override_by_denotation("DATA_BATCH", 4)
        shapes.append([a.shape for a in mod.InferenceSession(m, so, providers=["CPUExecutionProvider"]).get_inputs()])
    assert shapes[0] == shapes[1] == [[4, 2]]
    with pytest.raises(errors.InvalidArgument):
        ort.SessionOptions().add_free_dimension_override_by_name("N", 0)


def test_add_initializer_replaces_the_models():
    outs, keep = [], []  # onnxruntime needs the initializer values to outlive the session
    for mod in (real_ort, ort):
        so = mod.SessionOptions()
        keep += [mod.OrtValue.ortvalue_from_numpy(np.array([5, 6], np.float32)),
                 mod.OrtValue.ortvalue_from_numpy(np.array([1], np.float32))]
        so.add_initializer("w", keep[-2])
        so.add_initializer("not_in_model", keep[-1])
        outs.append(mod.InferenceSession(ADD_W, so, providers=["CPUExecutionProvider"]).run(
            None, {"x": np.zeros((1, 2), np.float32)})[0])
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[1], [[5, 6]])
    with pytest.raises(errors.InvalidArgument):
        ort.SessionOptions().add_initializer("w", np.ones(2, np.float32))


def test_register_custom_ops_library_is_refused_clearly():
    with pytest.raises(C.NotImplemented, match="register_custom_op"):
        ort.SessionOptions().register_custom_ops_library("/tmp/libcustom.so")


def test_session_options_defaults_like_onnxruntime():
    ours, theirs = ort.SessionOptions(), real_ort.SessionOptions()
    for name in ("enable_mem_reuse", "use_per_session_threads", "enable_cpu_mem_arena", "enable_mem_pattern",
                 "intra_op_num_threads", "inter_op_num_threads", "enable_profiling", "log_severity_level"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert int(ours.execution_order) == int(theirs.execution_order)
    assert int(ours.graph_optimization_level) == int(theirs.graph_optimization_level)
    assert ours.has_providers() is False
    ours.add_provider("CPUExecutionProvider", {})
    assert ours.has_providers()
    assert ort.InferenceSession(ADD_W, ours).get_providers() == ["CPUExecutionProvider"]


def test_load_cancellation():
    so = ort.SessionOptions()
    so.set_load_cancellation_flag(True)
    with pytest.raises(C.ModelLoadCanceled):
        ort.InferenceSession(ADD_W, so)


def test_run_options_names():
    ro, theirs = ort.RunOptions(), real_ort.RunOptions()
    assert ro.log_severity_level == theirs.log_severity_level and ro.logid == theirs.logid == ""
    ro.logid = "tag"
    assert ro.logid == "tag" and ro.run_tag == "tag"
    ro.add_run_config_entry("k", 1)
    assert ro.get_run_config_entry("k") == "1"
    sess = ort.InferenceSession(ADD_W, providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.zeros((1, 2), np.float32)}, ro)[0].tolist() == [[1, 2]]


def test_profiling_start_time(tmp_path):
    sess = ort.InferenceSession(ADD_W, providers=["CPUExecutionProvider"])
    assert sess.get_profiling_start_time_ns() == 0
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "prof")
    before = time.monotonic_ns()
    sess = ort.InferenceSession(ADD_W, so, providers=["CPUExecutionProvider"])
    assert before <= sess.get_profiling_start_time_ns() <= time.monotonic_ns()
    sess.run(None, {"x": np.zeros((1, 2), np.float32)})
    assert os.path.isfile(sess.end_profiling())


# ---- runs -----------------------------------------------------------------------------------
def test_run_async_delivers_results_and_errors():
    import threading
    sess = ort.InferenceSession(ADD_W, providers=["CPUExecutionProvider"])
    done, got = threading.Event(), {}

    def callback(results, user_data, err):
        got.update(results=results, user_data=user_data, err=err)
        done.set()
    sess.run_async(None, {"x": np.ones((1, 2), np.float32)}, callback, "ud")
    assert done.wait(30)
    assert got["err"] == "" and got["user_data"] == "ud" and got["results"][0].tolist() == [[2, 3]]
    done.clear()
    sess.run_async(None, {"x": np.ones((1, 2), np.float64)}, callback, None)
    assert done.wait(30)
    assert got["results"] == [] and "InvalidArgument" in got["err"]


def test_run_with_ort_values_matches_onnxruntime():
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    theirs, ours = both(ADD_W)
    a = theirs.run_with_ort_values(["y"], {"x": real_ort.OrtValue.ortvalue_from_numpy(x)})
    b = ours.run_with_ort_values(["y"], {"x": ort.OrtValue.ortvalue_from_numpy(x)})
    assert isinstance(b[0], ort.OrtValue) and b[0].device_name() == a[0].device_name() == "cpu"
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    with pytest.raises(errors.InvalidArgument):
        ours.run_with_ort_values(["y"], {"x": x})
    # run() takes OrtValues too
    np.testing.assert_array_equal(ours.run(None, {"x": ort.OrtValue.ortvalue_from_numpy(x)})[0], a[0].numpy())


def test_nodearg_and_types():
    theirs, ours = both(ADD_W)
    for a, b in zip(theirs.get_inputs() + theirs.get_outputs(), ours.get_inputs() + ours.get_outputs()):
        assert (a.name, a.type, a.shape) == (b.name, b.type, b.shape)
    assert isinstance(ours, ep_core.InferenceSession)  # a subclass: the native API is there too


# ---- install hook and shim ------------------------------------------------------------------
@pytest.fixture
def installed():
    mod = ep_core.install_as_onnxruntime()
    try:
        yield mod
    finally:
        ep_core.shim.uninstall()


def test_install_as_onnxruntime(installed):
    import onnxruntime
    assert onnxruntime is installed is ort
    from onnxruntime.capi import _pybind_state as S
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument
    from onnxruntime.capi.onnxruntime_inference_collection import InferenceSession, OrtValue
    assert S.get_available_providers() == ort.get_available_providers()
    assert InvalidArgument is errors.InvalidArgument and Fail is errors.Fail
    assert InferenceSession is ort.InferenceSession and OrtValue is ort.OrtValue
    with pytest.raises(ImportError):
        import onnxruntime.quantization  # noqa: F401 - a tool of onnxruntime's, not provided


def test_uninstall_restores_the_real_module():
    ep_core.install_as_onnxruntime()
    ep_core.shim.uninstall()
    import onnxruntime
    assert onnxruntime is real_ort


def test_shim_runs_a_script_unchanged(tmp_path):
    (tmp_path / "m.onnx").write_bytes(ADD_W)
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent("""
        import sys
        import numpy as np
        import onnxruntime as ort
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument
        sess = ort.InferenceSession(sys.argv[1], providers=ort.get_available_providers())
        y = sess.run(None, {"x": np.ones((2, 2), np.float32)})[0]
        try:
            sess.run(None, {"x": np.ones((2, 2))})
        except InvalidArgument:
            pass
        print(ort.__name__, sess.get_providers()[-1], y.tolist(), sys.argv[2:])
        sys.exit(3)
    """))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "ep_core.shim", str(script), str(tmp_path / "m.onnx"), "a", "b"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 3, r.stderr
    assert r.stdout.split("\n")[0] == "ep_core.onnxruntime CPUExecutionProvider [[2.0, 3.0], [2.0, 3.0]] ['a', 'b']"


def test_shim_runs_a_module_unchanged(tmp_path):
    (tmp_path / "ortapp.py").write_text("import sys, onnxruntime\nprint(onnxruntime.__name__, sys.argv[1:])\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "ep_core.shim", "-m", "ortapp", "x"], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ep_core.onnxruntime ['x']", r.stderr


def test_shim_usage_without_arguments():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "ep_core.shim"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "python -m ep_core.shim" in r.stdout


def test_no_warnings_for_plain_cpu_session():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ort.InferenceSession(ADD_W, providers=["CPUExecutionProvider"]).run(None, {"x": np.zeros((1, 2), np.float32)})

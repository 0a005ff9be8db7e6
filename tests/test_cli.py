"""`python -m ep_core` subcommands: output, --json, exit codes (0 ok, 1 failure, 2 usage, 3 model)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ep_core import cli
from ep_core.cli.flops import estimate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """x[N,4] @ w[4,3] -> Relu -> z[N,3]."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
                           helper.make_node("Relu", ["y"], ["z"], name="relu")], "tiny",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])], [w])
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


@pytest.fixture(scope="module")
def conv(tmp_path_factory) -> str:
    """x[1,3,8,8] -> Conv(8x3x3x3, pad 1) -> Gemm after Flatten of a global pool."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "cw"),
             numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "gw")]
    g = helper.make_graph([helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1, 1, 1]),
                           helper.make_node("GlobalAveragePool", ["c"], ["p"]),
                           helper.make_node("Flatten", ["p"], ["f"]),
                           helper.make_node("Gemm", ["f", "gw"], ["y"])], "conv",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    path = tmp_path_factory.mktemp("models") / "conv.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- exit codes shared by every model subcommand ------------------------------------------------

@pytest.mark.parametrize("sub", ["run", "bench", "profile", "inspect", "tune"])
def test_missing_model_file_exits_3_with_message(capsys, tmp_path, sub):
    code, out, err = run_cli(capsys, sub, str(tmp_path / "nope.onnx"))
    assert code == 3
    assert "model file not found" in err and "nope.onnx" in err


@pytest.mark.parametrize("sub", ["run", "inspect"])
def test_unparseable_model_exits_3(capsys, tmp_path, sub):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \xff\xff\xff")
    code, _, err = run_cli(capsys, sub, str(bad))
    assert code == 3 and "cannot load model" in err


@pytest.mark.parametrize("sub", ["run", "bench", "profile", "inspect", "tune"])
def test_every_subcommand_has_help(capsys, sub):
    code, out, _ = run_cli(capsys, sub, "--help")
    assert code == 0 and f"usage: python -m ep_core {sub}" in out and "--json" in out


def test_usage_errors_exit_2(capsys):
    assert run_cli(capsys, "run")[0] == 2                       # MODEL missing
    assert run_cli(capsys, "bench", "m.onnx", "--runs", "x")[0] == 2
    assert run_cli(capsys, "no-such-subcommand")[0] == 2


def test_top_level_help_lists_subcommands_and_exit_codes(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for sub in ("run", "bench", "profile", "inspect", "tune"):
        assert sub in out
    assert "exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 model" in out


# --- run ----------------------------------------------------------------------------------------

def test_run_random_inputs_prints_output_stats(capsys, tiny):
    code, out, _ = run_cli(capsys, "run", tiny, "--dim", "N=5")
    assert code == 0
    assert "input  x: shape [5, 4] float32" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("z "))
    assert "[5, 3]" in line and "float32" in line


def test_run_json_uses_input_file_and_saves_outputs(capsys, tiny, tmp_path):
    x = np.array([[1, -2, 3, 0.5], [0, 0, 0, 0]], np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, _ = run_cli(capsys, "run", tiny, "--input", f"x={tmp_path / 'x.npy'}", "--json",
                           "--save", str(tmp_path / "out"))
    assert code == 0
    doc = json.loads(out)
    expected = np.maximum(x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10), 0)
    z = doc["outputs"]["z"]
    assert z["shape"] == [2, 3] and z["dtype"] == "float32" and z["nan_count"] == 0
    assert z["max"] == pytest.approx(float(expected.max())) and z["min"] == pytest.approx(0.0)
    np.testing.assert_allclose(np.load(doc["saved"]["z"]), expected, rtol=1e-6)


def test_run_counts_nans(capsys, tiny, tmp_path):
    np.save(tmp_path / "x.npy", np.array([[np.nan, 1, 1, 1]], np.float32))
    code, out, _ = run_cli(capsys, "run", tiny, "--input", f"x={tmp_path / 'x.npy'}", "--json")
    assert code == 0 and json.loads(out)["outputs"]["z"]["nan_count"] == 3


@pytest.mark.parametrize("arg, message", [
    ("q={npy}", "the model has no input 'q'"),
    ("x={missing}", "cannot read"),
    ("x", "expected NAME=FILE.npy"),
    ("x={wrong_shape}", "the inputs do not match the model"),
])
def test_run_bad_input_is_usage_error_with_message(capsys, tiny, tmp_path, arg, message):
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    np.save(tmp_path / "wrong.npy", np.zeros((1, 7), np.float32))
    arg = arg.format(npy=tmp_path / "x.npy", missing=tmp_path / "missing.npy",
                     wrong_shape=tmp_path / "wrong.npy")
    code, _, err = run_cli(capsys, "run", tiny, "--input", arg)
    assert code == 2 and message in err


def test_run_bad_dim_is_usage_error(capsys, tiny):
    code, _, err = run_cli(capsys, "run", tiny, "--dim", "N")
    assert code == 2 and "--dim" in err


# --- bench --------------------------------------------------------------------------------------

def test_bench_json_and_png(capsys, tiny, tmp_path):
    png = tmp_path / "bench.png"
    code, out, _ = run_cli(capsys, "bench", tiny, "--runs", "6", "--warmup", "1", "--json",
                           "--compare-onnxruntime", "--plot", str(png))
    assert code == 0
    doc = json.loads(out)
    for name in ("ep_core", "onnxruntime"):
        s = doc["stats"][name]
        assert s["runs"] == 6 and s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] and s["throughput_per_s"] > 0
        assert len(doc["times_ms"][name]) == 6
    assert doc["ratio_p50_ep_core_over_onnxruntime"] > 0
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_bench_text_table(capsys, tiny):
    code, out, _ = run_cli(capsys, "bench", tiny, "--runs", "3", "--no-progress")
    assert code == 0 and "p50 ms" in out and "runs/s" in out and out.count("ep_core") >= 1


def test_bench_rejects_zero_runs(capsys, tiny):
    code, _, err = run_cli(capsys, "bench", tiny, "--runs", "0")
    assert code == 2 and "--runs" in err


# --- profile ------------------------------------------------------------------------------------

def test_profile_trace_table_and_png(capsys, tiny, tmp_path):
    trace, png = tmp_path / "t" / "trace.json", tmp_path / "prof.png"
    code, out, _ = run_cli(capsys, "profile", tiny, "--runs", "4", "--trace", str(trace),
                           "--plot", str(png), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["runs"] == 4                                   # the warm-up run is left out
    rows = {r["op_type"]: r for r in doc["op_types"]}
    assert set(rows) == {"MatMul", "Relu"} and rows["MatMul"]["count"] == 4
    assert 0 < sum(r["percent"] for r in rows.values()) <= 100.0
    assert "traceEvents" in json.loads(trace.read_text())
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_profile_text(capsys, tiny, tmp_path):
    code, out, _ = run_cli(capsys, "profile", tiny, "--runs", "2", "--trace", str(tmp_path / "t.json"))
    assert code == 0 and "% of run" in out and "MatMul" in out and "trace:" in out


# --- inspect ------------------------------------------------------------------------------------

def test_inspect_json_flops_and_placement(capsys, tiny):
    code, out, _ = run_cli(capsys, "inspect", tiny, "--dim", "N=7", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["inputs"] == [{"name": "x", "type": "tensor(float)", "shape": ["N", 4]}]
    assert doc["opsets"] == {"ai.onnx": 17}
    assert doc["op_counts"] == {"MatMul": 1, "Relu": 1}
    assert doc["placement"]["nodes_by_provider"]["cpu"] == {"MatMul": 1, "Relu": 1}
    assert doc["total_flops"] == 2 * 7 * 4 * 3
    assert doc["weight_bytes"] == 48


def test_inspect_text(capsys, conv):
    code, out, _ = run_cli(capsys, "inspect", conv)
    assert code == 0
    for part in ("opsets: ai.onnx 17", "Conv 1", "estimated FLOPs", "weights:", "placement with providers"):
        assert part in out


def test_flops_of_conv_gemm_and_attention_like_matmul(conv):
    cost = estimate(onnx.load(conv))
    assert cost["flops"]["Conv"] == 2 * (8 * 8 * 8) * (3 * 3 * 3)
    assert cost["flops"]["Gemm"] == 2 * 1 * 5 * 8
    # Attention-like: Q[1,2,4,8] x K^T[1,2,8,4], both activations.
    g = helper.make_graph([helper.make_node("MatMul", ["q", "k"], ["s"])], "att",
                          [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["B", 2, 4, 8]),
                           helper.make_tensor_value_info("k", TensorProto.FLOAT, ["B", 2, 8, 4])],
                          [helper.make_tensor_value_info("s", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    cost = estimate(m, {"B": 3})
    assert cost["flops"] == {"MatMul (activation x activation: attention-like)": 2 * 3 * 2 * 4 * 4 * 8}
    # q, k and s all live at the MatMul: 3*2*4*8*4 * 2 + 3*2*4*4*4 bytes.
    assert cost["peak_activation_bytes"] == 3 * 2 * 4 * 8 * 4 * 2 + 3 * 2 * 4 * 4 * 4


# --- tune (the tuner itself: tests/test_tune.py) -------------------------------------------------

def test_tune_writes_config_png_and_reuses_cache(capsys, tiny, tmp_path):
    cfg, png, cache = tmp_path / "cfg.json", tmp_path / "tune.png", tmp_path / "cache"
    code, out, _ = run_cli(capsys, "tune", tiny, "--runs", "2", "--cache-dir", str(cache), "--out", str(cfg),
                           "--plot", str(png), "--no-progress")
    assert code == 0
    assert "median ms" in out and "chosen:" in out and "cached result" not in out
    assert json.loads(cfg.read_text())["format"] == "ep_core-tune-config/1"
    assert png.read_bytes()[:8] == PNG_MAGIC
    code, out, _ = run_cli(capsys, "tune", tiny, "--runs", "2", "--cache-dir", str(cache), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["cached"] is True and doc["trials"]


# --- the dispatcher -----------------------------------------------------------------------------

def test_optional_subcommand_with_missing_dependency_says_what_to_install(capsys, tmp_path, monkeypatch):
    (tmp_path / "fake_optional_cli.py").write_text(textwrap.dedent("""
        import surely_not_installed_dependency_xyz
        def register(subparsers):
            raise AssertionError("never reached")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "OPTIONAL", (("fake_optional_cli", "fancy", "the fancy extra"),
                                          ("ep_core.not_in_this_build", "absent", "nothing")))
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "fancy" in out and "absent" not in out
    for argv in (["fancy", "--help"], ["fancy", "x.onnx"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 1 and "the fancy extra" in err and "surely_not_installed_dependency_xyz" in err


def test_python_dash_m_entry_point(tiny):
    root = Path(__file__).resolve().parent.parent     # this checkout's ep_core, not an installed one
    proc = subprocess.run([sys.executable, "-m", "ep_core", "inspect", tiny, "--json"],
                          capture_output=True, text=True, timeout=120, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["op_counts"] == {"MatMul": 1, "Relu": 1}


def test_model_no_provider_runs_exits_3(capsys, tmp_path):
    g = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="my.domain")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "noop.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.domain", 1)]),
              path)
    for sub in ("run", "tune"):
        code, _, err = run_cli(capsys, sub, str(path))
        assert code == 3 and "NotImplemented" in err and "Frobnicate" in err


def test_kernel_failure_at_run_time_exits_1(capsys, tmp_path):
    g = helper.make_graph([helper.make_node("Reshape", ["x", "s"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                           helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "reshape.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    np.save(tmp_path / "s.npy", np.array([5, 5], np.int64))
    code, _, err = run_cli(capsys, "run", str(path), "--input", f"s={tmp_path / 's.npy'}", "--random")
    assert code == 1 and "run failed: Fail" in err and "Reshape" in err
    # without --random the missing input is a usage error
    code, _, err = run_cli(capsys, "run", str(path), "--input", f"s={tmp_path / 's.npy'}")
    assert code == 2 and "no value for input(s) ['x']" in err


# --- warmup -------------------------------------------------------------------------------------

def test_warmup_runs_every_probe_and_takes_each_compiled_path(capsys, monkeypatch):
    """`warmup` runs one model per compiled CPU path; each probe's path is really taken (the
    compiled entry points are counted), so the cache it fills is the one sessions load."""
    from ep_cpu import (conv_implicit, conv_thin, depthwise_direct, depthwise_flat, depthwise_padded,
                        microkernel, ml_jit, norm_jit, pool_jit, warmup)
    from ep_cpu.kernels import rnn_jit
    if not microkernel.available():
        pytest.skip("the compiled kernels need numba and an AVX2 or AVX-512 CPU")
    hits = []
    for module, name in ((conv_implicit.ImplicitConv, "__call__"), (conv_thin.ThinConv, "__call__"), (depthwise_direct, "depthwise_2d"),
                         (depthwise_flat.FlatPlan, "__call__"), (depthwise_direct, "max_pool_2d"), (depthwise_flat, "max_pool_2d"),
                         (depthwise_padded.PaddedPlan, "__call__"), (pool_jit, "max_pool_2d"),
                         (rnn_jit.PackedRecurrent, "run_sequence"), (rnn_jit, "steps_parts"),
                         (norm_jit, "skip_layer_norm"), (ml_jit, "linear_scores")):
        real, label = getattr(module, name), f"{module.__name__.split('.')[-1]}.{name}"
        monkeypatch.setattr(module, name, lambda *a, real=real, label=label, **k: hits.append(label) or real(*a, **k))
    code, out, _ = run_cli(capsys, "warmup", "--json")
    assert code == 0
    report = json.loads(out)
    assert [p["name"] for p in report["probes"]] == [p.name for p in warmup.probes()]
    # the masked-vector depthwise and pooling kernels and the implicit-GEMM conv are AVX-512's;
    # AVX2 CPUs take the zero-padded depthwise planes, the phase-plane pool and BLAS
    per_cpu = ({"ImplicitConv.__call__", "depthwise_direct.depthwise_2d", "FlatPlan.__call__",
                "depthwise_direct.max_pool_2d", "depthwise_flat.max_pool_2d"} if microkernel.wide()
               else {"PaddedPlan.__call__", "pool_jit.max_pool_2d"})
    # (the probes run at two intra-op threads: a one-direction layer's steps split in two parts)
    assert {"ThinConv.__call__", "PackedRecurrent.run_sequence", "rnn_jit.steps_parts",
            "ml_jit.linear_scores", "norm_jit.skip_layer_norm"} | per_cpu <= set(hits)

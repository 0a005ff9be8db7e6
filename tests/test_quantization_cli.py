"""The `quantize` subcommand (through a parser built with cli.register), the per-layer report,
calibration methods on known data, and quant_pre_process."""
from __future__ import annotations

import argparse
import io
import json

import numpy as np
import onnx
import pytest

import ep_core
from ep_core.errors import InvalidArgument, NoSuchFile
from ep_core.quantization import CalibrationMethod, quant_pre_process
from ep_core.quantization.calibrate import Calibrator, _AbsHistogram
from ep_core.quantization.cli import register
from ep_core.quantization.report import layer_errors
from quantization_models import ListReader, cnn_classifier, digits, gpt2_shaped_decoder, mlp_classifier


def parse(argv):
    parser = argparse.ArgumentParser(prog="ep_core")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def run(argv) -> tuple[int, str]:
    args = parse(argv)
    out = io.StringIO()
    return args.func(args, out), out.getvalue()


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("m") / "mlp.onnx"
    onnx.save(mlp_classifier(), str(p))
    return p


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    x = digits()[0]
    for i in range(4):
        np.savez(d / f"batch{i:02d}.npz", X=x[i * 32:(i + 1) * 32])
    return d


def test_dynamic_command_reports_size_and_layers(mlp_path, tmp_path):
    rc, text = run(["quantize", str(mlp_path), str(tmp_path / "q.onnx"), "--per-channel",
                    "--report", str(tmp_path / "r.json")])
    assert rc == 0 and "dynamic INT8" in text and "size:" in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["size_after"] < report["size_before"]
    layers = {e["tensor"]: e for e in report["layers"]}
    assert {"h1", "logits"} <= set(layers)        # h0's MatMul and bias Add are one node now
    assert all(e["cosine"] > 0.99 for e in layers.values()), layers


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_static_command_with_progress(mlp_path, calib_dir, tmp_path, fmt):
    rc, text = run(["quantize", str(mlp_path), str(tmp_path / "q.onnx"), "--static", str(calib_dir),
                    "--format", fmt, "--per-channel", "--report", str(tmp_path / "r.json")])
    assert rc == 0 and f"static INT8 ({fmt}" in text
    assert "4/4" in text            # the progress bar reached the last batch
    layers = {e["tensor"]: e for e in json.loads((tmp_path / "r.json").read_text())["layers"]}
    assert "h0" in layers and layers["logits"]["cosine"] > 0.99   # QOperator's h0 exists only quantized
    y = ep_core.InferenceSession(str(tmp_path / "q.onnx"), providers=["cpu"]).run(None, {"X": digits()[1]})[0]
    assert (y.argmax(1) == digits()[3]).mean() > 0.95


def test_4bit_command(tmp_path):
    src = tmp_path / "dec.onnx"
    onnx.save(gpt2_shaped_decoder(d=64, layers=1, vocab=64), str(src))
    rc, text = run(["quantize", str(src), str(tmp_path / "q.onnx"), "--4bit", "--block-size", "16"])
    assert rc == 0 and "4-bit MatMulNBits, block 16" in text
    assert "MatMulNBits" in {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}


def test_command_errors(mlp_path, tmp_path):
    with pytest.raises(NoSuchFile):
        run(["quantize", str(tmp_path / "none.onnx"), str(tmp_path / "q.onnx")])
    with pytest.raises(NoSuchFile):
        run(["quantize", str(mlp_path), str(tmp_path / "q.onnx"), "--static", str(tmp_path / "nodir")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match="no \\*.npz"):
        run(["quantize", str(mlp_path), str(tmp_path / "q.onnx"), "--static", str(tmp_path / "empty")])
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "b.npz", Y=np.zeros((1, 64), np.float32))
    with pytest.raises(InvalidArgument, match="lacks inputs"):
        run(["quantize", str(mlp_path), str(tmp_path / "q.onnx"), "--static", str(bad)])
    with pytest.raises(SystemExit):
        parse(["quantize", str(mlp_path), "out.onnx", "--format", "qxx"])


def test_layer_errors_see_a_broken_layer(mlp_path, tmp_path):
    """The report can fail: a quantized model with a corrupted weight shows a low cosine there."""
    m = mlp_classifier()
    bad = onnx.ModelProto()
    bad.CopyFrom(m)
    w = next(t for t in bad.graph.initializer if t.name == "W1")
    w.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(w), "W1"))
    errs = {e.tensor: e for e in layer_errors(m, bad, {"X": digits()[1][:16]})}
    assert errs["h0"].cosine < 0 and errs["h0"].max_abs > 0.1


def test_calibration_methods_on_known_data():
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal(20000).astype(np.float32)} for _ in range(3)]
    batches[1]["x"][0] = 40.0           # one outlier
    ranges = {}
    for method in CalibrationMethod:
        c = Calibrator(model, ["x", "y"], method, {"CalibPercentile": 99.99})
        c.collect(ListReader(batches))
        ranges[method] = c.compute_ranges()["y"]
        assert c.compute_ranges()["x"] == ranges[method]
    assert ranges[CalibrationMethod.MinMax][1] == 40.0
    assert 3.5 < ranges[CalibrationMethod.Percentile][1] < 4.5      # 99.99th percentile of |N(0,1)|: 3.9
    assert 2.0 < ranges[CalibrationMethod.Entropy][1] < 10.0        # the outlier is clipped
    c = Calibrator(model, ["y"], CalibrationMethod.MinMax, {"CalibMovingAverage": True})
    c.collect(ListReader(batches))
    assert c.compute_ranges()["y"][1] < 10.0


def test_histogram_widening_keeps_counts():
    h = _AbsHistogram(8)
    h.add(np.array([0.1, 0.2, 1.0], np.float32))
    h.add(np.array([3.9, -0.5], np.float32))     # exceeds the span twice: bins merge pairwise
    assert h.top == 4.0 and h.hist.sum() == 5
    # Bins of 0.5 now: 0.1 and 0.2 in the first, 1.0 (merged twice) and |-0.5| in the second.
    assert list(h.hist) == [2, 2, 0, 0, 0, 0, 0, 1]


def test_quant_pre_process(tmp_path):
    src, out = tmp_path / "cnn.onnx", tmp_path / "pre.onnx"
    onnx.save(cnn_classifier(), str(src))
    quant_pre_process(str(src), str(out))
    m = onnx.load(str(out))
    assert len(m.graph.value_info) >= 5      # shapes of the intermediate values are recorded
    x = {"X": digits()[1][:32]}
    a = ep_core.InferenceSession(str(src), providers=["cpu"]).run(None, x)[0]
    b = ep_core.InferenceSession(str(out), providers=["cpu"]).run(None, x)[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidArgument):
        quant_pre_process(str(src))


def test_docs_code_blocks_run(tmp_path, monkeypatch):
    """docs/quantization.md's Python blocks run as written, in order, in a scratch folder."""
    import re
    from pathlib import Path
    doc = (Path(__file__).resolve().parent.parent / "docs" / "quantization.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    exec(compile("\n".join(blocks), "docs/quantization.md", "exec"), {"__name__": "docs"})
    for name in ("model_int8.onnx", "model_qdq.onnx", "model_qop.onnx", "model_q4.onnx"):
        assert (tmp_path / name).is_file(), name

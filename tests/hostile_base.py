"""Shared pieces of the hostile-model suite: case records, base models, oracles, classification.

The cases themselves are in tests/hostile_cases.py. Each builds its input in a folder of its
own (files, symlinks, FIFOs) and says what must happen:
  "refuse": a typed error; running it is silently wrong (every file-read case is one)
  "run":    it must load and run, and match an oracle (lenient where onnxruntime is)
  "any":    a typed error, or a run whose result matches an oracle (mutations of real models)
`run_case` (in a child process, see tests/test_hostile_models.py) returns the outcome.
"""
from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

F32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
FOLDER_KEY = "session.model_external_initializers_file_folder_path"
SECRET = b"ep_core-hostile-secret\n" * 64     # planted outside a model's folder; must never load


@dataclass
class Input:
    model: Any                              # path (str), bytes or onnx.ModelProto
    feeds: dict[str, np.ndarray] | None     # None: made from the model's declared inputs
    config: dict[str, str] = field(default_factory=dict)


@dataclass
class Case:
    name: str
    category: str
    expect: str                             # "refuse" | "run" | "any"
    build: Callable[[Path], Input]


# --- base models: real architectures at toy sizes (benchmarks.models), control flow ---------------

_BASES: dict[str, tuple[onnx.ModelProto, dict[str, np.ndarray]]] = {}


def _bert():
    from benchmarks.models import transformer
    c = dict(layers=1, hidden=32, heads=2, ffn=64, vocab=1024, max_pos=16, seq=8)
    m = transformer.bert_base(seed=0, **c)
    rng = np.random.default_rng(1)
    feeds = {"input_ids": rng.integers(0, c["vocab"], (1, 8), dtype=np.int64),
             "attention_mask": np.array([[1] * 6 + [0] * 2], np.int64),
             "token_type_ids": np.array([[0] * 4 + [1] * 4], np.int64)}
    return m, feeds


def _lstm():
    from benchmarks.models import rnn
    m = rnn.lstm_classifier(seed=0, batch=2, seq=4, features=8, hidden=8, classes=3)
    return m, {"input": np.random.default_rng(1).standard_normal((2, 4, 8)).astype(np.float32)}


def _gpt2():
    from benchmarks.models import transformer
    m = transformer.gpt2_decoder_step(seed=0, layers=1, hidden=32, heads=2, ffn=64, vocab=600,
                                      max_pos=16, past=3)
    rng = np.random.default_rng(1)
    feeds = {"input_ids": np.array([[5]], np.int64), "position_ids": np.array([[3]], np.int64),
             "attention_mask": np.ones((1, 4), np.int64),
             "past_key_values.0.key": rng.standard_normal((1, 2, 3, 16)).astype(np.float32),
             "past_key_values.0.value": rng.standard_normal((1, 2, 3, 16)).astype(np.float32)}
    return m, feeds


def _cnn():
    """Conv (a 73 KB weight: lifted out of the protobuf at load) + pooling + Gemm head."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 32, 3, 3)) * 0.05).astype(np.float32)
    inits = [numpy_helper.from_array(w, "conv.w"),
             numpy_helper.from_array(np.zeros(64, np.float32), "conv.b"),
             numpy_helper.from_array((rng.standard_normal((10, 64)) * 0.1).astype(np.float32), "fc.w"),
             numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")]
    nodes = [helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("GlobalAveragePool", ["p"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1, name="fc")]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", F32, ["n", 32, 8, 8])],
                          [helper.make_tensor_value_info("y", F32, ["n", 10])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, {"x": rng.standard_normal((2, 32, 8, 8)).astype(np.float32)}


def _control():
    """If (two bodies reading outer values), Loop (carried + scan outputs), Scan."""
    vi = helper.make_tensor_value_info
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["t"])], "then", [], [vi("t", F32, [3])])
    else_g = helper.make_graph([helper.make_node("Sub", ["x", "k"], ["e"])], "else", [], [vi("e", F32, [3])])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc", "y_if"], ["acc2"]),
         helper.make_node("Cast", ["i"], ["i_f"], to=F32),
         helper.make_node("Mul", ["acc2", "i_f"], ["scan_out"])],
        "body", [vi("i", I64, []), vi("cond_in", BOOL, []), vi("acc", F32, [3])],
        [vi("cond_out", BOOL, []), vi("acc2", F32, [3]), vi("scan_out", F32, [3])])
    scan_body = helper.make_graph(
        [helper.make_node("Add", ["s", "xs_i"], ["s2"]), helper.make_node("Identity", ["s2"], ["so"])],
        "scan_body", [vi("s", F32, [3]), vi("xs_i", F32, [3])], [vi("s2", F32, [3]), vi("so", F32, [3])])
    nodes = [helper.make_node("If", ["c"], ["y_if"], then_branch=then_g, else_branch=else_g, name="if"),
             helper.make_node("Loop", ["n", "true", "x"], ["acc_final", "scans"], body=body, name="loop"),
             helper.make_node("Scan", ["x", "scans"], ["s_final", "s_all"], body=scan_body,
                              num_scan_inputs=1, name="scan")]
    inits = [numpy_helper.from_array(np.array([2, 3, 4], np.float32), "k"),
             numpy_helper.from_array(np.array(3, np.int64), "n"),
             numpy_helper.from_array(np.array(True), "true")]
    g = helper.make_graph(nodes, "control", [vi("x", F32, [3]), vi("c", BOOL, [])],
                          [vi("acc_final", F32, [3]), vi("s_final", F32, [3]), vi("s_all", F32, [None, 3])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, {"x": np.array([1, -2, 3], np.float32), "c": np.array(True)}


_BUILDERS = {"bert": _bert, "lstm": _lstm, "gpt2": _gpt2, "cnn": _cnn, "control": _control}


def base(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A fresh copy of base model `name` and its feeds."""
    if name not in _BASES:
        _BASES[name] = _BUILDERS[name]()
    m, feeds = _BASES[name]
    out = onnx.ModelProto()
    out.CopyFrom(m)
    return out, dict(feeds)


def feeds_for(model: onnx.ModelProto, known: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Feeds for the model's declared inputs: the base model's where name, dtype and rank fit."""
    inits = {t.name for t in model.graph.initializer}
    out = {}
    rng = np.random.default_rng(3)
    for vi in model.graph.input:
        if vi.name in inits or vi.type.WhichOneof("value") != "tensor_type":
            continue
        tt = vi.type.tensor_type
        try:
            dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        except Exception:
            dtype = np.dtype(np.float32)
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 2 for d in tt.shape.dim]
        base_value = known.get(vi.name)
        if base_value is not None and base_value.dtype == dtype and (
                not tt.HasField("shape") or base_value.ndim == len(shape)):
            out[vi.name] = base_value
        elif np.dtype(dtype).kind == "f":
            out[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            out[vi.name] = np.zeros(shape, dtype=dtype)
    return out


# --- helpers to write models with external data ----------------------------------------------------

def _write(folder: Path, model: onnx.ModelProto, name: str = "model.onnx") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return str(path)


def _externalize(model: onnx.ModelProto, folder: Path, names: list[str] | None = None,
                 location: str = "weights.bin") -> dict[str, tuple[int, int]]:
    """Move initializers to `folder/location`; returns name -> (offset, length)."""
    folder.mkdir(parents=True, exist_ok=True)
    spans, blob = {}, bytearray()
    for t in model.graph.initializer:
        if names is not None and t.name not in names or not t.HasField("raw_data"):
            continue
        raw = t.raw_data
        spans[t.name] = (len(blob), len(raw))
        blob += raw
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", str(spans[t.name][0])),
                     ("length", str(len(raw)))):
            e = t.external_data.add()
            e.key, e.value = k, v
    (folder / location).write_bytes(bytes(blob))
    return spans


def _set_external(t: TensorProto, **entries: str) -> None:
    del t.external_data[:]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in entries.items():
        e = t.external_data.add()
        e.key, e.value = k, v


def _cnn_weight(model: onnx.ModelProto) -> TensorProto:
    return next(t for t in model.graph.initializer if t.name == "conv.w")


# --- running one case -------------------------------------------------------------------------------

OUTCOMES = ("typed", "correct", "unverified", "refused_valid", "wrong", "untyped", "oom", "hang", "crash")


def model_proto(inp: Input) -> onnx.ModelProto | None:
    """The case's model parsed without external data (for feeds and oracles), or None."""
    try:
        if isinstance(inp.model, onnx.ModelProto):
            return inp.model
        if isinstance(inp.model, (bytes, bytearray)):
            return onnx.load_model_from_string(bytes(inp.model))
        return onnx.load(inp.model, load_external_data=False)
    except Exception:
        return None


def close(ours: list, ref: list) -> bool:
    if len(ours) != len(ref):
        return False
    for a, b in zip(ours, ref):
        if isinstance(b, list) or isinstance(a, list):
            if not (isinstance(a, list) and isinstance(b, list) and close(a, b)):
                return False
            continue
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return False
        if a.dtype.kind in "OUS" or b.dtype.kind in "OUS":
            if not np.array_equal(a.astype(str), b.astype(str)):
                return False
            continue
        if a.dtype.kind == "f" or b.dtype.kind == "f":
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            if not np.array_equal(np.isnan(a64), np.isnan(b64)):
                return False
            finite = np.isfinite(b64)
            scale = max(1.0, float(np.abs(b64[finite]).max())) if finite.any() else 1.0
            # mutated weights can make intermediates huge: float32 rounding then shows in O(1)
            # outputs; a loading bug (weights misplaced) is off by far more than this
            if not np.allclose(a64, b64, rtol=1e-3, atol=2e-3 * scale, equal_nan=True):
                return False
        elif not np.array_equal(a, b):
            return False
    return True


def ort_run(inp: Input, feeds: dict) -> list | None:
    """onnxruntime's outputs for the case, or None when it cannot run it."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 4
    for k, v in inp.config.items():
        so.add_session_config_entry(k, v)
    model = inp.model.SerializeToString() if isinstance(inp.model, onnx.ModelProto) else inp.model
    try:
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)
    except Exception:
        return None


def reference_run(inp: Input, feeds: dict) -> list | None:
    """onnx.reference's outputs (external data loaded by onnx's own loader), or None."""
    from onnx.reference import ReferenceEvaluator
    try:
        if isinstance(inp.model, (str, os.PathLike)):
            proto = onnx.load(inp.model)
        else:
            proto = model_proto(inp)
            if proto is None:
                return None
            proto = copy.deepcopy(proto)
            if FOLDER_KEY in inp.config:
                onnx.external_data_helper.load_external_data_for_model(proto, inp.config[FOLDER_KEY])
        return ReferenceEvaluator(proto).run(None, feeds)
    except Exception:
        return None


def oracle(inp: Input, feeds: dict, prefer_ort: bool = True) -> list | None:
    got = ort_run(inp, feeds) if prefer_ort else None
    return got if got is not None else reference_run(inp, feeds)


def run_ours(inp: Input) -> tuple[list, dict]:
    import ep_core
    opts = ep_core.SessionOptions()
    for k, v in inp.config.items():
        opts.add_session_config_entry(k, v)
    sess = ep_core.InferenceSession(inp.model, opts, providers=["cpu"])
    feeds = _feeds(inp)
    return sess.run(None, feeds), feeds


def _feeds(inp: Input) -> dict:
    proto = model_proto(inp)
    known = inp.feeds or {}
    return feeds_for(proto, known) if proto is not None else dict(known)


def classify(case: Case, inp: Input, runner: str = "ours") -> tuple[str, str]:
    """(outcome, detail) of running the case with our runtime or onnxruntime ("ort")."""
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if runner == "ours":
                outs, feeds = run_ours(inp)
            else:
                outs, feeds = _run_ort_subject(inp)
    except MemoryError as e:
        return "oom", f"MemoryError: {e}"[:300]
    except Exception as e:
        typed = _is_typed(e, runner)
        if typed:
            if case.expect == "run":
                return "refused_valid", f"{type(e).__name__}: {e}"[:300]
            return "typed", f"{type(e).__name__}: {str(e)[:200]}"
        return "untyped", f"{type(e).__name__}: {e}"[:300]
    if case.expect == "refuse":
        return "wrong", "ran a model that must be refused"
    ref = oracle(inp, feeds, prefer_ort=(runner == "ours"))
    if ref is None:
        return "unverified", "no oracle runs it"
    return ("correct", "") if close(outs, ref) else ("wrong", "outputs differ from the oracle")


def _run_ort_subject(inp: Input) -> tuple[list, dict]:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 4
    for k, v in inp.config.items():
        so.add_session_config_entry(k, v)
    model = inp.model.SerializeToString() if isinstance(inp.model, onnx.ModelProto) else inp.model
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    feeds = _feeds(inp)
    return sess.run(None, feeds), feeds


def _is_typed(e: BaseException, runner: str) -> bool:
    if runner == "ours":
        from ep_core.errors import EPError
        return isinstance(e, EPError)
    # onnxruntime's own status exceptions (Fail, InvalidArgument, InvalidGraph, NoSuchFile, ...)
    return type(e).__module__.startswith("onnxruntime")

"""Opt-in pytest plugin: every one-node model the contrib-op tests run in onnxruntime is also
loaded here, and the types our load stage infers for its outputs (ep_core/contrib_schemas.py)
are compared with onnxruntime's (`get_outputs()`) and with the shapes onnxruntime returned.

    PYTHONPATH=tests python -m pytest -q -p contrib_inference_oracle tests/test_contrib_*.py

The terminal summary counts outputs: `ok` (dtype and known dims as onnxruntime's),
`ok-shape-unknown-to-ort` (onnxruntime infers no shape; ours matches the result), `untyped`,
`dtype`, `dims` (differs from onnxruntime's inferred dims) and `wrong` (differs from the result).
"""
from __future__ import annotations

import collections
import warnings

import onnx

_counts: collections.Counter = collections.Counter()
_bad: list[str] = []


def pytest_configure(config) -> None:
    import test_contrib_common as common
    original = common.run_ort

    def run_ort(model, feeds):
        refs = original(model, feeds)
        _compare(common.ort, model, refs)
        return refs
    common.run_ort = run_ort


def pytest_terminal_summary(terminalreporter) -> None:
    terminalreporter.write_line(f"contrib inference vs onnxruntime: {dict(_counts)}")
    for line in _bad[:30]:
        terminalreporter.write_line("  " + line)


def _dims(t: onnx.TypeProto):
    tt = t.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]


def _compare(ort, model: onnx.ModelProto, refs) -> None:
    from ep_core.load import load
    so = ort.SessionOptions()
    so.log_severity_level = 3
    outs = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).get_outputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = load(model).graph
    op = "+".join(sorted({n.op_type for n in graph.nodes}))
    for o, ref in zip(outs, refs):
        t = graph.type_of(o.name)
        if t is None or not t.tensor_type.elem_type:
            status = "untyped"
        else:
            name = onnx.helper.tensor_dtype_to_string(t.tensor_type.elem_type).split(".")[-1].lower()
            dims, real = _dims(t), list(getattr(ref, "shape", ()))
            status = "ok"
            if f"tensor({name})" != o.type:
                status = "dtype"
            elif dims is not None and (len(dims) != len(real) or
                                       any(a is not None and a != b for a, b in zip(dims, real))):
                status = "wrong"
            elif dims is not None and not o.shape:
                status = "ok-shape-unknown-to-ort"
            elif dims is not None and any(a is not None and isinstance(b, int) and a != b
                                          for a, b in zip(dims, o.shape)):
                status = "dims"
        _counts[status] += 1
        if not status.startswith("ok"):
            _bad.append(f"{op} {o.name}: {status} (ours {t and _dims(t)}, onnxruntime {o.type} "
                        f"{o.shape}, result {getattr(ref, 'shape', None)})")

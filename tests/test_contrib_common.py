"""Shared helpers for the `com.microsoft` contrib-op tests, and the registry listing test.

Every contrib test builds a one-node model, runs it in onnxruntime (the oracle) and in our CPU
provider, and compares. onnxruntime infers the outputs' types from its own schemas; our loader
runs `onnx.checker`, which wants typed graph outputs, so the outputs are typed from
onnxruntime's results before our session is built (a test-side workaround; see the report).

Set CONTRIB_ERRLOG=<file> to append "op<TAB>max-abs-error" lines for every comparison.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import ep_core

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the test oracle ([dev] extra)")

MS = "com.microsoft"

# Every op of the com.microsoft domain this provider implements (docs/contrib-ops.md).
CONTRIB_OPS = [
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "RotaryEmbedding",
    "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization",
    "BiasGelu", "FastGelu", "Gelu", "QuickGelu", "BiasAdd", "BiasSoftmax", "BiasSplitGelu",
    "GroupNorm", "FusedConv", "FusedGemm", "FusedMatMul", "NhwcConv", "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM", "MatMulInteger16", "MatMulIntegerToFloat", "MatMulNBits",
    "GatherBlockQuantized", "QAttention", "QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
    "QLinearLeakyRelu", "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool",
    "QLinearSoftmax", "QuantizeLinear", "DequantizeLinear", "Inverse", "CDist", "CropAndResize",
    "MurmurHash3", "Tokenizer", "WordConvEmbedding", "ExpandDims", "QEmbedLayerNormalization",
]

def tensor_type_of(a: np.ndarray) -> int:
    if a.dtype == object or a.dtype.kind in "US":
        return onnx.TensorProto.STRING
    return helper.np_dtype_to_tensor_dtype(a.dtype)

def node_model(op: str, inputs: Sequence[tuple[str, Any]], n_outputs: int | Sequence[str] = 1,
               attrs: dict | None = None, domain: str = MS, consts: Sequence[str] = (),
               opset: int = 17, output_types: Sequence[tuple[int, Any]] | None = None
               ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A one-node model and its feeds.

    `inputs`: (name, array) pairs in the op's input order; None (or name "") for an omitted
    optional input. Names in `consts` become initializers, the others graph inputs (fed).
    `n_outputs`: a count or output names ("" skips an optional output).
    `output_types`: (elem_type, shape) per output, else the outputs are left untyped.
    """
    names, graph_inputs, inits, feeds = [], [], [], {}
    for name, value in inputs:
        if value is None or not name:
            names.append("")
            continue
        names.append(name)
        arr = np.asarray(value)
        if name in consts:
            inits.append(numpy_helper.from_array(arr, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, tensor_type_of(arr), arr.shape))
            feeds[name] = arr
    while names and not names[-1]:
        names.pop()
    outs = [f"out{k}" for k in range(n_outputs)] if isinstance(n_outputs, int) else list(n_outputs)
    node = helper.make_node(op, names, outs, domain=domain, **(attrs or {}))
    present = [o for o in outs if o]
    if output_types is None:
        graph_outputs = [onnx.ValueInfoProto(name=o) for o in present]
    else:
        graph_outputs = [helper.make_tensor_value_info(o, t, s) for o, (t, s) in zip(present, output_types)]
    graph = helper.make_graph([node], f"{op}_test", graph_inputs, graph_outputs, initializer=inits)
    imports = [helper.make_opsetid("", opset)]
    if domain:
        imports.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = min(model.ir_version, 10)  # what this onnxruntime reads
    return model, feeds

def typed_outputs(model: onnx.ModelProto, results: Sequence[np.ndarray]) -> onnx.ModelProto:
    """A copy of the model whose graph outputs carry the types of `results` (dims left free)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi, r in zip(m.graph.output, results):
        r = np.asarray(r)
        vi.CopyFrom(helper.make_tensor_value_info(vi.name, tensor_type_of(r), [None] * r.ndim))
    return m

def run_ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # One thread: some of onnxruntime's kernels split work in a thread-count dependent way that
    # changes results (DynamicQuantizeLSTM quantizes H per chunk of batch rows per thread).
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)

def run_ours(model: onnx.ModelProto, feeds: dict, **options) -> list[np.ndarray]:
    so = ep_core.SessionOptions()
    for k, v in options.items():
        setattr(so, k, v)
    s = ep_core.InferenceSession(model.SerializeToString(), so, providers=["cpu"])
    return s.run(None, feeds)

def record(op: str, err: float) -> None:
    path = os.environ.get("CONTRIB_ERRLOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{op}\t{err:.3g}\n")

def compare(op: str, ours: Sequence, refs: Sequence, rtol: float = 1e-5, atol: float = 1e-5,
            int_tol: int = 0) -> float:
    """Assert ours ~ refs (floats: |d| <= atol + rtol*|ref|; integers: |d| <= int_tol); returns
    the largest absolute difference."""
    assert len(ours) == len(refs), f"{op}: {len(ours)} outputs vs onnxruntime's {len(refs)}"
    worst = 0.0
    for k, (o, r) in enumerate(zip(ours, refs)):
        o, r = np.asarray(o), np.asarray(r)
        assert o.shape == r.shape, f"{op} output {k}: shape {o.shape} vs onnxruntime {r.shape}"
        assert o.dtype == r.dtype, f"{op} output {k}: dtype {o.dtype} vs onnxruntime {r.dtype}"
        if r.dtype == object or r.dtype.kind in "USb":
            np.testing.assert_array_equal(o, r, err_msg=f"{op} output {k}")
            continue
        if r.size == 0:
            continue
        d = np.abs(o.astype(np.float64) - r.astype(np.float64))
        if r.dtype.kind in "iu":
            assert d.max() <= int_tol, f"{op} output {k}: max |ours - ort| = {d.max()} > {int_tol}"
        else:
            assert np.array_equal(np.isnan(o), np.isnan(r)), f"{op} output {k}: NaN positions differ"
            d = np.where(np.isnan(r.astype(np.float64)), 0, d)
            bound = atol + rtol * np.abs(r.astype(np.float64))
            bad = d > bound
            assert not bad.any(), (f"{op} output {k}: {int(bad.sum())} of {d.size} values off, "
                                   f"max |ours - ort| = {d.max():.3g} (rtol {rtol}, atol {atol})")
        worst = max(worst, float(d.max()))
    record(op, worst)
    return worst

def check(op: str, inputs: Sequence[tuple[str, Any]], n_outputs: int | Sequence[str] = 1,
          attrs: dict | None = None, rtol: float = 1e-5, atol: float = 1e-5, int_tol: int = 0,
          consts: Sequence[str] = (), domain: str = MS, opset: int = 17,
          output_types: Sequence[tuple[int, Any]] | None = None) -> float:
    """Run a one-node model in onnxruntime and here; compare every output."""
    model, feeds = node_model(op, inputs, n_outputs, attrs, domain, consts, opset, output_types)
    refs = run_ort(model, feeds)
    ours = run_ours(typed_outputs(model, refs), feeds)
    return compare(op, ours, refs, rtol, atol, int_tol)

def check_against_graph(op: str, inputs: Sequence[tuple[str, Any]], reference: onnx.ModelProto,
                        attrs: dict | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                        consts: Sequence[str] = ()) -> float:
    """For ops onnxruntime implements only on GPUs: compare with onnxruntime running an
    equivalent graph of standard ops (`reference`, same input names and feeds)."""
    model, feeds = node_model(op, inputs, 1, attrs, MS, consts)
    refs = run_ort(reference, {k: v for k, v in feeds.items()
                               if k in {i.name for i in reference.graph.input}})
    ours = run_ours(typed_outputs(model, refs), feeds)
    return compare(op, ours, refs, rtol, atol)

def rand(rng: np.random.Generator, *shape, scale: float = 1.0, dtype=np.float32) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(dtype)

def test_registered_ops_list_every_contrib_op():
    listed = {(d, op) for d, op, _since, _end in ep_core.get_registered_ops("cpu")}
    missing = [op for op in CONTRIB_OPS if (MS, op) not in listed]
    assert not missing, f"not registered for com.microsoft on cpu: {missing}"
    # onnxruntime's transformer optimizer writes these two in the ONNX domain (not com.microsoft).
    assert ("", "SimplifiedLayerNormalization") in listed
    assert ("", "LayerNormalization") in listed

def test_docs_code_block_runs():
    """docs/contrib-ops.md's example is real code."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "docs" / "contrib-ops.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/contrib-ops.md", "exec"), {})

def test_missing_required_attribute_is_named():
    from ep_core.errors import InvalidGraph
    model, feeds = node_model("Attention", [("x", np.ones((1, 2, 4), np.float32)),
                                            ("w", np.ones((4, 12), np.float32))], 1)
    with pytest.raises(InvalidGraph, match="required attribute 'num_heads'"):
        run_ours(typed_outputs(model, [np.zeros((1, 2, 4), np.float32)]), feeds)

# Models onnxruntime loads that onnx.checker refuses; the load stage takes them (load_lenient.py).

def _gelu_model(typed_output: bool = True, import_domain: bool = True) -> onnx.ModelProto:
    out = (helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3]) if typed_output
           else onnx.ValueInfoProto(name="y"))
    g = helper.make_graph([helper.make_node("Gelu", ["x"], ["y"], domain=MS)], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])], [out])
    imports = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(MS, 1)] if import_domain else [])
    return helper.make_model(g, opset_imports=imports)

def test_loader_takes_untyped_outputs():
    m = _gelu_model(typed_output=False)
    x = {"x": np.ones((2, 3), np.float32)}
    np.testing.assert_allclose(run_ours(m, x)[0], run_ort(m, x)[0], rtol=1e-6)

def test_loader_takes_missing_contrib_opset_import():
    m = _gelu_model(import_domain=False)
    x = {"x": np.ones((2, 3), np.float32)}
    np.testing.assert_allclose(run_ours(m, x)[0], run_ort(m, x)[0], rtol=1e-6)

def test_loader_takes_onnx_domain_simplified_layer_norm():
    g = helper.make_graph([helper.make_node("SimplifiedLayerNormalization", ["x", "s"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
                          initializer=[numpy_helper.from_array(np.ones(3, np.float32), "s")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    np.testing.assert_allclose(run_ours(m, x)[0], run_ort(m, x)[0], rtol=1e-5)

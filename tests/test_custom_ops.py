"""Custom ops (schema + Python kernel), custom graph rewrites, and the docs' runnable examples."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from opt_helpers import F32, init, model, ops, options, session

from ep_core import GraphOptimizationLevel as L
from ep_core.custom_ops import register_custom_op, register_transformer, unregister_transformer
from ep_core.kernel import Kernel
from ep_core.optimizer import Rewrite, registered_rewrites

ROOT = Path(__file__).resolve().parents[1]


def test_function_op_schema_checker_inference_and_run():
    register_custom_op("ScaleShift", lambda x, scale=2.0, shift=0.0: (x * scale + shift).astype(x.dtype),
                       domain="test.custom", attributes={"scale": 2.0, "shift": 0.0},
                       types=["tensor(float)", "tensor(double)"])
    node = helper.make_node("ScaleShift", ["x"], ["y"], domain="test.custom", shift=1.0)
    m = model([node], [("x", F32, [2, 2])], [("y", F32, [2, 2])], domains=[("test.custom", 1)])
    onnx.checker.check_model(m)
    schema = onnx.defs.get_schema("ScaleShift", 1, "test.custom")
    assert sorted(schema.attributes) == ["scale", "shift"]
    inner = helper.make_node("ScaleShift", ["x"], ["t"], domain="test.custom")
    m2 = model([inner, helper.make_node("Relu", ["t"], ["y"])], [("x", F32, [2, 2])], [("y", F32, [2, 2])],
               domains=[("test.custom", 1)])
    inferred = onnx.shape_inference.infer_shapes(m2)
    assert [d.dim_value for d in inferred.graph.value_info[0].type.tensor_type.shape.dim] == [2, 2]
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    np.testing.assert_array_equal(session(m).run(None, {"x": x})[0], x * 2 + 1)


def test_kernel_class_with_two_outputs_and_required_attribute():
    class MinMax(Kernel):
        def __init__(self, node, ctx):
            super().__init__(node, ctx)
            self.axis = int(self.attr("axis"))

        def compute(self, x):
            return x.min(axis=self.axis), x.max(axis=self.axis)
    register_custom_op("MinMax", MinMax, domain="test.custom", outputs=["Min", "Max"], attributes={"axis": int})
    node = helper.make_node("MinMax", ["x"], ["lo", "hi"], domain="test.custom", axis=1)
    m = model([node], [("x", F32, [2, 3])], [("lo", F32, [2]), ("hi", F32, [2])], domains=[("test.custom", 1)])
    onnx.checker.check_model(m)
    with pytest.raises(onnx.checker.ValidationError):   # the schema says axis is required
        bad = model([helper.make_node("MinMax", ["x"], ["lo", "hi"], domain="test.custom")],
                    [("x", F32, [2, 3])], [("lo", F32, [2]), ("hi", F32, [2])], domains=[("test.custom", 1)])
        onnx.checker.check_model(bad)
    x = np.array([[3, 1, 2], [0, 5, 4]], np.float32)
    lo, hi = session(m).run(None, {"x": x})
    np.testing.assert_array_equal(lo, [1, 0])
    np.testing.assert_array_equal(hi, [3, 5])


def test_custom_ops_are_not_folded_or_merged():
    calls = []

    def tick(x):
        calls.append(1)
        return x + np.float32(len(calls))
    register_custom_op("Tick", tick, domain="test.custom")
    nodes = [helper.make_node("Tick", ["c"], ["a"], domain="test.custom"),
             helper.make_node("Tick", ["c"], ["b"], domain="test.custom"),
             helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Add", ["s", "x"], ["y"])]
    m = model(nodes, [("x", F32, [2])], [("y", F32, [2])], [init("c", np.zeros(2, np.float32))],
              domains=[("test.custom", 1)])
    sess = session(m)
    assert ops(sess).count("Tick") == 2 and not calls       # nothing evaluated at build
    sess.run(None, {"x": np.zeros(2, np.float32)})
    assert len(calls) == 2


class FoldDoubleNeg(Rewrite):
    name = "TestFoldDoubleNeg"

    def apply(self, graph):
        ed = self.editor(graph)
        for node in ed.nodes():
            inner = ed.producer_of(node.inputs[0], "Neg") if node.op_type == "Neg" and ed.alive(node) else None
            if inner is not None:
                ed.bypass(node, inner.inputs[0], node.outputs[0])
        return ed.commit()


def test_custom_transformer_runs_at_its_level_and_can_be_disabled():
    nodes = [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
             helper.make_node("Exp", ["b"], ["y"])]
    m = model(nodes, [("x", F32, [3])], [("y", F32, [3])])
    register_transformer(FoldDoubleNeg, level=L.ORT_ENABLE_EXTENDED)
    try:
        assert (2, "TestFoldDoubleNeg") in registered_rewrites()
        assert ops(session(m, options(L.ORT_ENABLE_BASIC))) == ["Neg", "Neg", "Exp"]
        assert ops(session(m, options(L.ORT_ENABLE_EXTENDED))) == ["Exp"]
        assert ops(session(m, options(L.ORT_ENABLE_ALL, ["TestFoldDoubleNeg"]))) == ["Neg", "Neg", "Exp"]
        x = np.array([1, -2, 3], np.float32)
        np.testing.assert_allclose(session(m).run(None, {"x": x})[0], np.exp(x), rtol=1e-6)
    finally:
        unregister_transformer("TestFoldDoubleNeg")
    assert ops(session(m, options(L.ORT_ENABLE_ALL))) == ["Neg", "Neg", "Exp"]


def python_blocks(doc: str) -> list[str]:
    text = (ROOT / "docs" / doc).read_text()
    return re.findall(r"^```python\n(.*?)^```$", text, re.S | re.M)


@pytest.mark.parametrize("doc", ["custom-ops.md", "optimizer.md"])
def test_doc_examples_run(doc, tmp_path):
    blocks = python_blocks(doc)
    assert len(blocks) >= 2
    for k, code in enumerate(blocks):       # each block is a complete, separate program
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                           env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
        assert r.returncode == 0, f"{doc} block {k} failed:\n{r.stderr[-3000:]}"

"""A small graph builder on top of onnx.helper: named weights with a fixed-seed RNG, node helpers.

The builders in this package write graphs the way exporters do (torch.onnx, skl2onnx): plain
ONNX ops, weights as initializers, no custom fused ops.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17          # LayerNormalization exists from 17; onnxruntime supports it everywhere
IR_VERSION = 9      # readable by every onnxruntime that supports opset 17


class GraphBuilder:
    """Accumulates nodes/initializers; every helper returns the output value name(s)."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count: dict[str, int] = {}

    # --- names -----------------------------------------------------------------------------
    def uniq(self, prefix: str) -> str:
        k = self._count.get(prefix, 0)
        self._count[prefix] = k + 1
        return f"{prefix}_{k}" if k else prefix

    # --- values ----------------------------------------------------------------------------
    def input(self, name: str, elem_type: int, shape: Sequence[Any]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(self, value: str, name: str, elem_type: int, shape: Sequence[Any] | None) -> str:
        """Expose `value` as graph output `name` (an Identity when the names differ)."""
        if value != name:
            self.nodes.append(helper.make_node("Identity", [value], [name], name=self.uniq("out")))
        self.outputs.append(helper.make_tensor_value_info(name, elem_type,
                                                          None if shape is None else list(shape)))
        return name

    def const(self, name: str, array: np.ndarray) -> str:
        name = self.uniq(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def normal(self, name: str, shape: Sequence[int], std: float, mean: float = 0.0) -> str:
        w = self.rng.standard_normal(tuple(shape), dtype=np.float32) * np.float32(std)
        if mean:
            w += np.float32(mean)
        return self.const(name, w)

    def uniform(self, name: str, shape: Sequence[int], lo: float, hi: float) -> str:
        return self.const(name, self.rng.uniform(lo, hi, tuple(shape)).astype(np.float32))

    def scalar(self, name: str, value: float, dtype=np.float32) -> str:
        return self.const(name, np.array(value, dtype=dtype))

    def ints(self, name: str, values: Sequence[int]) -> str:
        return self.const(name, np.array(list(values), dtype=np.int64))

    # --- nodes -----------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, name: str | None = None,
           domain: str = "", **attrs: Any) -> Any:
        base = self.uniq(name or op_type)
        outs = [base if n_out == 1 else f"{base}:{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=base, domain=domain,
                                           **attrs))
        return outs[0] if n_out == 1 else outs

    def linear(self, x: str, d_in: int, d_out: int, name: str, std: float | None = None,
               bias: bool = True) -> str:
        """torch nn.Linear as exported: MatMul with W^T stored (d_in, d_out), then Add bias."""
        std = 1.0 / math.sqrt(d_in) if std is None else std
        y = self.op("MatMul", [x, self.normal(f"{name}.weight", (d_in, d_out), std)],
                    name=f"{name}/MatMul")
        if bias:
            y = self.op("Add", [y, self.normal(f"{name}.bias", (d_out,), 0.02)], name=f"{name}/Add")
        return y

    # --- model -----------------------------------------------------------------------------
    def model(self, opset: int = OPSET, extra_opsets: dict[str, int] | None = None,
              doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs,
                                  initializer=self.initializers)
        imports = [helper.make_opsetid("", opset)]
        imports += [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
        m = helper.make_model(graph, opset_imports=imports, producer_name="ep-runtime-benchmarks",
                              doc_string=doc)
        m.ir_version = IR_VERSION
        return m


F32, I64 = TensorProto.FLOAT, TensorProto.INT64

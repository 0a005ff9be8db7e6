"""4-bit block-wise weight-only quantization: MatMul(A, W) with a constant float W (K, N) becomes
com.microsoft::MatMulNBits(A, B, scales[, zero_points]) with onnxruntime's layout:

- B: uint8 (N, k_blocks, block_size / 2), column n's K values block by block, two per byte, the
  earlier value in the low nibble; K is zero-padded to a whole block.
- scales: float (N * k_blocks), row-major over (n, block).
- zero_points (asymmetric only): uint8 (N * ceil(k_blocks / 2)), two blocks per byte, low nibble
  first, each row of N padded to a whole byte; symmetric omits them (the op's default 8).
With "Gather" in `op_types_to_quantize`, constant embedding tables (V, D) become
com.microsoft::GatherBlockQuantized with the same 4-bit packing along D (quantize_axis 1).
Symmetric blocks map the value of largest magnitude to -8 (the scale carries its sign), so the
whole 16-level range is used; asymmetric blocks span [min(w, 0), max(w, 0)] over 0..15.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import onnx
from onnx import helper

from ep_core.errors import InvalidArgument

from .model_edit import MS_DOMAIN, GraphIndex, ensure_opset, load_model, remove_unused_initializers, save_model
from .quant_types import QuantFormat


def quantize_blocks(w: np.ndarray, block_size: int, symmetric: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(packed B (N, k_blocks, block/2) uint8, scales (N*k_blocks) float32, packed zero points or None)."""
    k, n = w.shape
    k_blocks = -(-k // block_size)
    wt = np.zeros((n, k_blocks * block_size), np.float32)
    wt[:, :k] = w.T
    blocks = wt.reshape(n, k_blocks, block_size)
    if symmetric:
        idx = np.abs(blocks).argmax(axis=2)[..., None]
        extreme = np.take_along_axis(blocks, idx, axis=2)[..., 0]
        scale = extreme / np.float32(-8.0)
        zp = np.full((n, k_blocks), 8.0, np.float32)
    else:
        lo = np.minimum(blocks.min(axis=2), 0.0)
        hi = np.maximum(blocks.max(axis=2), 0.0)
        scale = (hi - lo) / np.float32(15.0)
        safe = np.where(scale != 0, scale, 1.0)
        zp = np.clip(np.rint(-lo / safe), 0, 15).astype(np.float32)
    scale = scale.astype(np.float32)
    safe = np.where(scale != 0, scale, np.float32(1.0))
    q = np.clip(np.rint(blocks / safe[..., None]) + zp[..., None], 0, 15).astype(np.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    zeros = None
    if not symmetric:
        zq = zp.astype(np.uint8)
        if k_blocks % 2:
            zq = np.concatenate([zq, np.zeros((n, 1), np.uint8)], axis=1)
        zeros = (zq[:, 0::2] | (zq[:, 1::2] << 4)).astype(np.uint8).reshape(-1)
    return packed, scale.reshape(-1), zeros


class ONNXModelHolder:
    """The `.model` of a quantizer: the ModelProto, and `save_model_to_file` as onnxruntime's has."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model

    def save_model_to_file(self, output_path: "str | os.PathLike", use_external_data_format: bool = False) -> None:
        save_model(self.model, output_path, use_external_data_format)

    def graph(self) -> onnx.GraphProto:
        return self.model.graph


class DefaultWeightOnlyQuantConfig:
    """Round-to-nearest block-wise settings (onnxruntime's default algorithm's config)."""

    def __init__(self, block_size: int = 128, is_symmetric: bool = False, accuracy_level: int | None = None,
                 quant_format: QuantFormat = QuantFormat.QOperator, op_types_to_quantize: Sequence[str] | None = None,
                 quant_axes=None, bits: int = 4, channel_wised_quantize: bool = False) -> None:
        self.algorithm = "DEFAULT"
        self.block_size, self.is_symmetric, self.accuracy_level = block_size, is_symmetric, accuracy_level
        self.quant_format, self.bits = quant_format, bits
        self.op_types_to_quantize = tuple(op_types_to_quantize or ("MatMul",))


class MatMulNBitsQuantizer:
    """`MatMulNBitsQuantizer(model, bits=4, block_size=128, is_symmetric=False, ...)`; `.process()`
    rewrites the model, `.model.model` is the result (`.model.save_model_to_file(path)`)."""

    def __init__(self, model: "onnx.ModelProto | str | os.PathLike", bits: int = 4, block_size: int = 128,
                 is_symmetric: bool = False, accuracy_level: int | None = None,
                 nodes_to_exclude: Sequence[str] | None = None, nodes_to_include: Sequence[str] | None = None,
                 quant_format: QuantFormat = QuantFormat.QOperator, op_types_to_quantize=None, quant_axes=None,
                 channel_wised_quantize: bool = False, algo_config: DefaultWeightOnlyQuantConfig | None = None) -> None:
        if algo_config is not None:
            block_size, is_symmetric = algo_config.block_size, algo_config.is_symmetric
            accuracy_level, bits = algo_config.accuracy_level, algo_config.bits
        if bits != 4:
            raise InvalidArgument(f"only bits=4 is implemented, got bits={bits}")
        if block_size < 16 or block_size & (block_size - 1):
            raise InvalidArgument(f"block_size must be a power of two >= 16, got {block_size}")
        if getattr(quant_format, "name", quant_format) not in ("QOperator", QuantFormat.QOperator):
            raise InvalidArgument("only QuantFormat.QOperator (MatMulNBits) is implemented for 4-bit weights")
        self.model = ONNXModelHolder(load_model(model))
        self.block_size, self.is_symmetric, self.accuracy_level = block_size, is_symmetric, accuracy_level
        self.nodes_to_exclude = set(nodes_to_exclude or ())
        self.nodes_to_include = set(nodes_to_include or ())
        if algo_config is not None and op_types_to_quantize is None:
            op_types_to_quantize = algo_config.op_types_to_quantize
        self.op_types = set(op_types_to_quantize or ("MatMul",))
        unknown = self.op_types - {"MatMul", "Gather"}
        if unknown:
            raise InvalidArgument(f"4-bit quantization handles MatMul and Gather, not {sorted(unknown)}")

    def process(self) -> None:
        m = self.model.model
        g = m.graph
        idx = GraphIndex(g)
        nodes, used = [], False
        for node in g.node:
            new = None
            if self._chosen(node):
                new = self._convert(node, idx) if node.op_type == "MatMul" else self._convert_gather(node, idx)
            nodes.append(new or node)
            used |= new is not None
        del g.node[:]
        g.node.extend(nodes)
        g.initializer.extend(idx.new_initializers())
        remove_unused_initializers(g)
        if used:
            ensure_opset(m, MS_DOMAIN, 1)

    def _chosen(self, node: onnx.NodeProto) -> bool:
        if node.op_type not in self.op_types or node.domain not in ("", "ai.onnx") or node.name in self.nodes_to_exclude:
            return False
        return not self.nodes_to_include or node.name in self.nodes_to_include

    def _convert(self, node: onnx.NodeProto, idx: GraphIndex) -> onnx.NodeProto | None:
        w = idx.constant(node.input[1])
        if w is None or w.ndim != 2 or w.dtype != np.float32:
            return None
        k, n = w.shape
        packed, scales, zeros = quantize_blocks(w, self.block_size, self.is_symmetric)
        base = node.input[1].replace(":", "_")
        inputs = [node.input[0], idx.add_initializer(base + "_Q4", packed), idx.add_initializer(base + "_scales", scales)]
        if zeros is not None:
            inputs.append(idx.add_initializer(base + "_zero_points", zeros))
        attrs = dict(K=k, N=n, bits=4, block_size=self.block_size)
        if self.accuracy_level is not None:
            attrs["accuracy_level"] = int(self.accuracy_level)
        return helper.make_node("MatMulNBits", inputs, list(node.output), domain=MS_DOMAIN,
                                name=idx.unique((node.name or node.output[0]) + "_Q4"), **attrs)


    def _convert_gather(self, node: onnx.NodeProto, idx: GraphIndex) -> onnx.NodeProto | None:
        table = idx.constant(node.input[0])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table is None or table.ndim != 2 or table.dtype != np.float32 or axis != 0 \
                or table.shape[1] % self.block_size:
            return None
        v, d = table.shape
        packed, scales, zeros = quantize_blocks(np.ascontiguousarray(table.T), self.block_size, self.is_symmetric)
        base = node.input[0].replace(":", "_")
        inputs = [idx.add_initializer(base + "_Q4", packed.reshape(v, d // 2)), node.input[1],
                  idx.add_initializer(base + "_scales", scales.reshape(v, d // self.block_size))]
        if zeros is not None:
            inputs.append(idx.add_initializer(base + "_zero_points", zeros.reshape(v, -1)))
        return helper.make_node("GatherBlockQuantized", inputs, list(node.output), domain=MS_DOMAIN,
                                name=idx.unique((node.name or node.output[0]) + "_Q4"), gather_axis=0,
                                quantize_axis=1, block_size=self.block_size, bits=4)


class MatMul4BitsQuantizer(MatMulNBitsQuantizer):
    """onnxruntime's older 4-bit entry point: `MatMul4BitsQuantizer(model, block_size=128,
    is_symmetric=False, accuracy_level=None, nodes_to_exclude=None, ...)`."""

    def __init__(self, model, block_size: int = 128, is_symmetric: bool = False, accuracy_level: int | None = None,
                 nodes_to_exclude: Sequence[str] | None = None, nodes_to_include: Sequence[str] | None = None,
                 quant_format: QuantFormat = QuantFormat.QOperator, op_types_to_quantize=None, quant_axes=None,
                 algo_config: DefaultWeightOnlyQuantConfig | None = None) -> None:
        super().__init__(model, 4, block_size, is_symmetric, accuracy_level, nodes_to_exclude, nodes_to_include,
                         quant_format, op_types_to_quantize, quant_axes, algo_config=algo_config)


def quantize_matmul_4bits(model: "onnx.ModelProto | str | os.PathLike", block_size: int = 32,
                          is_symmetric: bool = True, accuracy_level: int | None = None,
                          nodes_to_exclude: Sequence[str] | None = None,
                          op_types_to_quantize: Sequence[str] = ("MatMul",)) -> onnx.ModelProto:
    """The model with every constant-weight MatMul as a 4-bit MatMulNBits (and embedding Gathers as
    GatherBlockQuantized when "Gather" is listed); a new ModelProto."""
    q = MatMul4BitsQuantizer(model, block_size, is_symmetric, accuracy_level, nodes_to_exclude,
                             op_types_to_quantize=op_types_to_quantize)
    q.process()
    return q.model.model

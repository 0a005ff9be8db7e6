"""Kernel definitions and registries: how a provider says which (op, domain, versions, types) it runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import onnx

from .graph import Node
from .types import tensor_dtype

ANY_VERSION = 2**31 - 1


@dataclass(frozen=True)
class KernelDef:
    """What one kernel implementation covers.

    `types` maps a schema type-constraint name (e.g. "T") to the numpy dtypes accepted for it;
    `host_inputs` / `host_outputs` list positions that live in host memory whatever the provider's
    device (shapes, axes, indices read on the host).
    """
    op_type: str
    domain: str = ""
    since: int = 1
    end: int = ANY_VERSION
    types: dict[str, tuple] = field(default_factory=dict)
    host_inputs: tuple[int, ...] = ()
    host_outputs: tuple[int, ...] = ()
    factory: Any = None  # the Kernel subclass

    def covers_version(self, since_version: int) -> bool:
        return self.since <= since_version <= self.end


class Kernel:
    """Base of every kernel. `__init__` parses attributes once; `compute(*inputs)` returns outputs.

    Inputs arrive in node order (None for omitted optionals), followed by the values of
    `node.implicit_inputs` for nodes with subgraphs. `compute` returns a tuple/list of outputs or a
    single array for single-output ops.
    """

    def __init__(self, node: Node, ctx: "KernelContext"):
        self.node = node
        self.ctx = ctx

    def attr(self, name: str, default: Any = None) -> Any:
        return self.node.attrs.get(name, default)

    def compute(self, *inputs):  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class KernelContext:
    """What a kernel may ask of its surroundings at build time."""
    provider: Any                       # the ExecutionProvider the node was assigned to
    make_subgraph_runner: Callable | None = None  # (Graph) -> runner(feeds: list, outer: dict) -> list
    session_options: Any = None


def _type_constraint_positions(node: Node) -> dict[str, list[tuple[str, int]]]:
    """For each type constraint name of the node's schema: the ('in'|'out', index) using it."""
    try:
        schema = onnx.defs.get_schema(node.op_type, node.opset, node.domain)
    except onnx.defs.SchemaError:
        return {}
    where: dict[str, list[tuple[str, int]]] = {}
    for kind, formals, actual in (("in", schema.inputs, node.inputs), ("out", schema.outputs, node.outputs)):
        for k in range(len(actual)):
            if not formals:
                break
            f = formals[min(k, len(formals) - 1)]
            if k >= len(formals) and f.option != onnx.defs.OpSchema.FormalParameterOption.Variadic:
                break
            where.setdefault(f.type_str, []).append((kind, k))
    return where


class KernelRegistry:
    """All kernels of one provider, looked up by (domain, op_type) and version."""

    def __init__(self) -> None:
        self._defs: dict[tuple[str, str], list[KernelDef]] = {}

    def register(self, op_types: str | Iterable[str], domain: str = "", since: int = 1,
                 end: int | None = None, types: dict[str, Iterable] | None = None,
                 host_inputs: Iterable[int] = (), host_outputs: Iterable[int] = ()):
        """Class decorator registering a Kernel subclass for one or several ops."""
        names = [op_types] if isinstance(op_types, str) else list(op_types)
        tmap = {k: tuple(np.dtype(t) for t in v) for k, v in (types or {}).items()}

        def deco(cls):
            for name in names:
                self.add(KernelDef(name, domain, since, end or ANY_VERSION, tmap,
                                   tuple(host_inputs), tuple(host_outputs), cls))
            return cls
        return deco

    def add(self, kdef: KernelDef) -> None:
        self._defs.setdefault((kdef.domain, kdef.op_type), []).append(kdef)

    def lookup(self, node: Node, value_type: Callable[[str], Any] | None = None) -> KernelDef | None:
        """The kernel def covering the node's op, schema version and value types, or None."""
        candidates = [d for d in self._defs.get((node.domain, node.op_type), ())
                      if d.covers_version(node.since_version)]
        if not candidates:
            return None
        positions = None
        for d in candidates:
            if not d.types:
                return d
            if positions is None:
                positions = _type_constraint_positions(node)
            if self._types_ok(d, node, positions):
                return d
        return None

    @staticmethod
    def _types_ok(d: KernelDef, node: Node, positions) -> bool:
        for constraint, allowed in d.types.items():
            for kind, k in positions.get(constraint, ()):
                names = node.inputs if kind == "in" else node.outputs
                types = node.input_types if kind == "in" else node.output_types
                if k >= len(names) or not names[k]:
                    continue
                dt = tensor_dtype(types[k]) if k < len(types) else None
                if dt is not None and dt not in allowed:
                    return False
        return True

    def ops(self) -> list[tuple[str, str, int, int]]:
        """(domain, op_type, since, end) for every registered def."""
        return sorted({(d.domain, d.op_type, d.since, d.end) for defs in self._defs.values() for d in defs})

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._defs

"""Kernel definitions and registries: how a provider says which (op, domain, versions, types) it runs."""
from __future__ import annotations

import os
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
    """Base of every kernel, CPU, CUDA or a plugin's.

    Contract (the executor relies on it; `normalize_outputs` enforces it in one place):
    * `__init__(node, ctx)` runs once per node at session build. It parses attributes (`self.attr`
      already has the schema's defaults filled in), may precompute from constant inputs
      (`ctx.constant_input(k)`) and takes its subgraph runners from `ctx.subgraph_runners`. It may
      not call back into the session or keep references to other nodes.
    * `compute(*inputs)` runs once per execution of the node, possibly from several threads at
      once (different runs): it may not mutate `self`. Inputs arrive in node order (None for
      omitted optionals), followed by the values of `node.implicit_inputs` for nodes with
      subgraphs. It may not write into its inputs. It returns one value for a single-output op,
      or a tuple with one entry per node output (None for an omitted optional output). A list
      returned for a single-output op is a sequence value.
    """

    def __init__(self, node: Node, ctx: "KernelContext"):
        self.node = node
        self.ctx = ctx

    def attr(self, name: str, default: Any = None) -> Any:
        """Attribute value: the node's, else the schema's default, else `default`."""
        value = self.node.attrs.get(name)
        if value is not None:
            return value
        defaults = schema_defaults(self.node)
        return defaults.get(name, default)

    def compute(self, *inputs):  # pragma: no cover - abstract
        raise NotImplementedError


def normalize_outputs(outs: Any, n_outputs: int) -> tuple:
    """The one place a kernel's return value becomes a tuple of outputs (see Kernel)."""
    if isinstance(outs, tuple):
        return outs
    if isinstance(outs, list) and n_outputs > 1:
        return tuple(outs)
    return (outs,)


@dataclass
class KernelContext:
    """What a kernel learns about its node at creation (as onnxruntime's OpKernelInfo).

    Built by the plan stage for every kernel of every provider, plugins included.
    """
    provider: Any                                   # the ExecutionProvider the node was assigned to
    session_options: Any = None
    constant_inputs: dict[int, Any] = field(default_factory=dict)  # input position -> host value
    subgraph_runners: dict[str, Any] = field(default_factory=dict)  # attribute name -> runner
    intra_op_threads: int = 0                        # 0: the provider's default
    max_tensor_bytes: int = 0                        # 0: no limit but the machine's memory

    def constant_input(self, k: int) -> Any | None:
        """The value of input `k` when it is a constant of the session (never a feed), else None.

        Kernels may cache anything derived from it (packed weights, folded shapes)."""
        return self.constant_inputs.get(k)

    def is_constant(self, k: int) -> bool:
        return k in self.constant_inputs

    def check_output_size(self, node: Node, shape: Iterable[int], dtype: Any) -> None:
        """Raise ResourceLimit *before* allocating an output of `shape` x `dtype` larger than the
        session's limit. Kernels whose output size comes from input data (ConstantOfShape, Expand,
        Tile, Range, Resize, Pad, ...) call it; a negative dim is Fail (bad data at run time)."""
        from .errors import Fail, ResourceLimit
        shape = [int(d) for d in shape]
        count = 1
        for d in shape:
            if d < 0:
                raise Fail(f"{node.describe()}: output shape {shape} has a negative dim")
            count *= d
        nbytes = count * np.dtype(dtype).itemsize
        if self.max_tensor_bytes and nbytes > self.max_tensor_bytes:
            raise ResourceLimit(f"{node.describe()}: output of shape {list(shape)} ({np.dtype(dtype)}) "
                                f"needs {nbytes} bytes, above the session's max_tensor_bytes "
                                f"{self.max_tensor_bytes}")
        if nbytes > _PHYSICAL_BYTES:   # would be overcommitted, then killed by the OOM killer
            raise ResourceLimit(f"{node.describe()}: output of shape {list(shape)} ({np.dtype(dtype)}) "
                                f"needs {nbytes} bytes, more than this machine's memory "
                                f"({_PHYSICAL_BYTES} bytes)")

    def subgraph_runner(self, attribute: str) -> Any:
        """The ready runner of a graph attribute: `run(feeds: list, outer: dict) -> list`.

        `outer` maps the node's `implicit_inputs` names (as in the model) to their values."""
        try:
            return self.subgraph_runners[attribute]
        except KeyError:
            raise RuntimeError(f"no runner was planned for graph attribute '{attribute}'") from None


def _physical_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):   # no sysconf (Windows): no machine limit
        return 1 << 62


_PHYSICAL_BYTES = _physical_bytes()

_schema_defaults: dict[tuple[str, str, int], dict[str, Any]] = {}


def schema_defaults(node: Node) -> dict[str, Any]:
    """Attribute defaults of the node's ONNX schema (decoded to Python values), cached per schema."""
    key = (node.domain, node.op_type, node.since_version)
    found = _schema_defaults.get(key)
    if found is None:
        found = {}
        try:
            schema = onnx.defs.get_schema(node.op_type, node.opset or node.since_version, node.domain)
        except onnx.defs.SchemaError:
            schema = None
        if schema is not None:
            for name, a in schema.attributes.items():
                if a.default_value is not None and a.default_value.type != 0:
                    found[name] = onnx.helper.get_attribute_value(a.default_value)
                    if isinstance(found[name], bytes):
                        found[name] = found[name].decode("utf-8", errors="surrogateescape")
                    elif isinstance(found[name], list) and found[name] and isinstance(found[name][0], bytes):
                        found[name] = [s.decode("utf-8", errors="surrogateescape") for s in found[name]]
        _schema_defaults[key] = found
    return found


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

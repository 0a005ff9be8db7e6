"""The plugin ABI: the one module a third-party execution provider imports from ep_core.

Everything a provider needs is re-exported here, so the rest of ep_core can change without breaking
plugins. `ABI_VERSION` is "major.minor": a plugin built for the same major and an older or equal
minor loads; a different major, or a newer minor than this core's, is refused with
`IncompatiblePlugin` naming the plugin.

    from ep_core.plugin import ExecutionProvider, ComputeCapability, Device, ...

    class MyProvider(ExecutionProvider):
        type = "mine"
        abi_version = "1.0"      # the ABI_VERSION this plugin was written against
"""
from __future__ import annotations

from typing import Any, Iterable

from .errors import (EPError, Fail, IncompatiblePlugin, InvalidArgument, InvalidGraph,
                     NotImplemented)
from .graph import Graph, Node, ValueInfo
from .kernel import ANY_VERSION, Kernel, KernelContext, KernelDef, KernelRegistry
from .provider import (HOST, Allocator, ComputeCapability, DataTransfer, Device,
                       ExecutionProvider, GraphView, MetaDef)
from .types import elem_type, np_dtype, tensor_dtype, tensor_shape

ABI_VERSION = "1.0"

__all__ = [
    "ABI_VERSION", "ExecutionProvider", "ComputeCapability", "MetaDef", "KernelDef",
    "KernelRegistry", "Kernel", "KernelContext", "ANY_VERSION", "Allocator", "DataTransfer",
    "Device", "HOST", "GraphView", "Node", "Graph", "ValueInfo", "EPError", "Fail",
    "IncompatiblePlugin", "InvalidArgument", "InvalidGraph", "NotImplemented", "np_dtype",
    "elem_type", "tensor_dtype", "tensor_shape", "parse_abi_version", "check_abi_version",
    "check_provider_class", "make_meta_def",
]


def parse_abi_version(version: Any, plugin: str = "?") -> tuple[int, int]:
    """'1.0' -> (1, 0); anything else is an IncompatiblePlugin naming the plugin."""
    try:
        major, minor = str(version).strip().split(".")
        return int(major), int(minor)
    except (ValueError, AttributeError):
        raise IncompatiblePlugin(f"provider plugin '{plugin}' declares ABI version {version!r}; "
                                 f"expected 'major.minor' such as '{ABI_VERSION}'") from None


def check_abi_version(version: Any, plugin: str, core: str = ABI_VERSION) -> None:
    """Refuse a plugin built for another major ABI version or a newer minor than the core's."""
    p_major, p_minor = parse_abi_version(version, plugin)
    c_major, c_minor = parse_abi_version(core, "ep_core")
    if p_major != c_major:
        raise IncompatiblePlugin(
            f"provider plugin '{plugin}' was built for ep_core plugin ABI {p_major}.{p_minor}, but "
            f"this ep_core implements ABI {core}: major versions must match; rebuild the plugin "
            f"against ABI {c_major}.x")
    if p_minor > c_minor:
        raise IncompatiblePlugin(
            f"provider plugin '{plugin}' needs ep_core plugin ABI {p_major}.{p_minor}, newer than "
            f"this ep_core's ABI {core}; upgrade ep_core")


def check_provider_class(cls: Any, plugin: str) -> None:
    """A plugin class must subclass ExecutionProvider and declare a compatible `abi_version`."""
    if not (isinstance(cls, type) and issubclass(cls, ExecutionProvider)):
        raise IncompatiblePlugin(f"provider plugin '{plugin}': {cls!r} is not a subclass of "
                                 f"ep_core.plugin.ExecutionProvider")
    check_abi_version(getattr(cls, "abi_version", None), plugin)


def make_meta_def(graph_view: GraphView, nodes: Iterable[Node], name: str,
                  domain: str = "ep_core.fused", attributes: dict | None = None) -> MetaDef:
    """The MetaDef of a group of nodes: inputs are values the group reads but does not produce
    (first-use order); outputs are values it produces that a node outside the group or the
    graph's outputs read (production order)."""
    members = list(nodes)
    ids = {id(n) for n in members}
    produced = {o for n in members for o in n.outputs if o}
    inputs: list[str] = []
    for n in members:
        for i in list(n.inputs) + list(n.implicit_inputs):
            if i and i not in produced and i not in inputs:
                inputs.append(i)
    consumers = graph_view.consumers()
    graph_outputs = {v.name for v in graph_view.graph.outputs}
    outputs = [o for n in members for o in n.outputs if o and (
        o in graph_outputs or any(id(c) not in ids for c in consumers.get(o, ())))]
    return MetaDef(name, inputs, outputs, domain, dict(attributes or {}))

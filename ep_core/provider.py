"""The execution-provider interface every provider (ours or a plugin's) implements."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .graph import Graph, Node
from .kernel import KernelDef, KernelRegistry


@dataclass(frozen=True)
class Device:
    """A memory space: ('cpu', 0) is host memory; anything else is a provider's own."""
    kind: str = "cpu"
    index: int = 0

    @property
    def is_host(self) -> bool:
        return self.kind == "cpu"

    def __str__(self) -> str:
        return f"{self.kind}:{self.index}"


HOST = Device("cpu", 0)


@dataclass
class MetaDef:
    """A group of nodes a provider wants to run as one fused, compiled node."""
    name: str
    inputs: list[str]
    outputs: list[str]
    domain: str = "ep_core.fused"
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class ComputeCapability:
    """Nodes a provider claims; with a MetaDef they become one node compiled by the provider."""
    nodes: list[Node]
    meta_def: MetaDef | None = None


class GraphView:
    """Read-only view of the nodes still unassigned when a provider is asked for its capability."""

    def __init__(self, graph: Graph, nodes: Sequence[Node]):
        self.graph = graph
        self.nodes = list(nodes)

    def type_of(self, name: str):
        return self.graph.type_of(name)

    def producers(self) -> dict[str, Node]:
        return self.graph.producers()

    def consumers(self) -> dict[str, list[Node]]:
        return self.graph.consumers()

    @property
    def opset_imports(self) -> dict[str, int]:
        return self.graph.opset_imports


class Allocator:
    """Hands out memory on one device. The host allocator just makes numpy arrays."""
    device: Device = HOST

    def empty(self, shape, dtype) -> Any:
        return np.empty(shape, dtype)

    def release_unused(self) -> None:
        """Give cached blocks back to the system (arena shrink)."""


class DataTransfer:
    """Copies values between memory spaces."""

    def can_copy(self, src: Device, dst: Device) -> bool:
        raise NotImplementedError

    def copy(self, value: Any, dst: Device, stream: Any = None) -> Any:
        raise NotImplementedError


class ExecutionProvider:
    """Base class of providers. Subclasses set `type`, `device` and return their kernel registry."""
    type: str = ""
    device: Device = HOST
    abi_version: str = "1.0"

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """(can run here, reason if not). Overridden by providers that need hardware."""
        return True, ""

    @classmethod
    def kernel_registry(cls) -> KernelRegistry:
        """The provider's kernels; a classmethod so it can be listed without the hardware."""
        return KernelRegistry()

    def get_kernel_registry(self) -> KernelRegistry:
        return self.kernel_registry()

    def get_capability(self, graph_view: GraphView,
                       kernel_lookup: Callable[[Node], KernelDef | None]) -> list[ComputeCapability]:
        """Default: claim every single node this provider has a kernel for."""
        return [ComputeCapability([n]) for n in graph_view.nodes if kernel_lookup(n) is not None]

    def compile(self, fused_node: Node, subgraph: Graph) -> Callable[..., Sequence[Any]]:
        raise NotImplementedError(f"provider '{self.type}' does not compile fused nodes")

    def get_allocator(self, mem_type: str = "default") -> Allocator:
        return Allocator()

    def get_data_transfer(self) -> DataTransfer | None:
        return None

    def device_of(self, value: Any) -> Device:
        """Where a value produced by this provider lives."""
        return self.device

    def on_run_start(self, run_options: Any = None) -> None:
        pass

    def on_run_end(self, run_options: Any = None) -> None:
        """Called after every run (also a failed one): synchronize, shrink arenas if asked."""

    def sync(self) -> None:
        pass

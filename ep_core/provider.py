"""The execution-provider interface every provider (ours or a plugin's) implements."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
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
    """A group of nodes a provider wants to run as one fused, compiled node.

    `attributes` become the fused node's `attrs`: the way a provider hands `compile` what it
    decided in `get_capability` (any Python value; never serialized). `host_inputs` /
    `host_outputs` are positions in `inputs` / `outputs` the compiled callable reads or writes in
    host memory (shape tensors, scalars), as a KernelDef's `host_inputs` are: placement copies
    accordingly. `min_level`: the lowest `graph_optimization_level` at which the session makes the
    group (0: always); below it the nodes run one by one with their registered kernels, so a
    provider whose grouping is only an optimization sets it (the CPU provider: 2, with the
    level-2 fusions)."""
    name: str
    inputs: list[str]
    outputs: list[str]
    domain: str = "ep_core.fused"
    attributes: dict[str, Any] = field(default_factory=dict)
    host_inputs: tuple[int, ...] = ()
    host_outputs: tuple[int, ...] = ()
    min_level: int = 0


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
    """Base class of every execution provider, ours or a plugin's.

    One instance per session (`InferenceSession` creates it from the registered factory with the
    user's provider options), used only by that session. The session's build stages call, in
    order: `get_kernel_registry` / `get_capability` (partition), `compile` (compile),
    `get_data_transfer` / `get_allocator` (placement and plan). Each run calls `limit_threads`,
    `on_run_start`, the kernels, `on_run_end`. Runs may overlap when the user calls `run` from
    several threads: every run-time method must be thread-safe.
    """
    type: str = ""
    """Short name used in `providers=[...]` ("cpu", "cuda", a plugin's own)."""
    device: Device = HOST
    """Where the outputs of this provider's kernels live unless a KernelDef says host memory."""
    abi_version: str = "1.0"

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """(can run here, reason if not). Called before instantiation, possibly many times: cheap,
        cached by the provider if it probes hardware. Overridden by providers that need hardware."""
        return True, ""

    @classmethod
    def kernel_registry(cls) -> KernelRegistry:
        """The provider's kernels; a classmethod so it can be listed without the hardware."""
        return KernelRegistry()

    def get_kernel_registry(self) -> KernelRegistry:
        """Called by partitioning and by level-2 rewrites (`OptimizerContext.supports`)."""
        return self.kernel_registry()

    def nchwc_block(self) -> int:
        """Channels a block of the channel-blocked layout (NCHWc) this provider's kernels take
        (`com.ep_core::NchwcConv`, `ReorderInput`, `ReorderOutput`), 0 for none (the default).
        Called by the level-3 `NchwcLayout` rewrite at session build, for each conv the provider
        owns: cheap, no side effects; the rewrite converts only where it returns 16."""
        return 0

    def get_capability(self, graph_view: GraphView,
                       kernel_lookup: Callable[[Node], KernelDef | None]) -> list[ComputeCapability]:
        """Which of `graph_view.nodes` (the nodes no higher-priority provider took) this provider
        runs. Called once per graph and per control-flow body at session build.

        Must have no side effects: everything `compile` needs travels in the capability's
        `MetaDef.attributes` (they become the fused node's `attrs`). A capability naming a node
        another capability already claimed is ignored (the first claim wins). A capability
        without a MetaDef claims its nodes one by one, each run by its registered kernel; one
        with a MetaDef is replaced by a single fused node that `compile` turns into a callable.
        Default: every node `kernel_lookup` finds a kernel for."""
        return [ComputeCapability([n]) for n in graph_view.nodes if kernel_lookup(n) is not None]

    def compile(self, fused_node: Node, subgraph: Graph) -> Callable[..., Sequence[Any]]:
        """Turn one fused node (from a MetaDef capability) into its compute callable. Called once
        per fused node at session build, after level-2 rewrites.

        `fused_node.inputs/outputs` are the MetaDef's, `fused_node.attrs` its attributes;
        `subgraph` holds the member nodes (it may read constants of the enclosing graph, listed
        in `subgraph.outer_scope`). The callable receives the input values in
        `fused_node.inputs` order, on this provider's device, and returns one value per output
        (a tuple or list); it may be called concurrently from several runs."""
        raise NotImplementedError(f"provider '{self.type}' does not compile fused nodes")

    def get_allocator(self, mem_type: str = "default") -> Allocator:
        """Memory on this provider's device (or pinned host memory for mem_type="pinned")."""
        return Allocator()

    def get_data_transfer(self) -> DataTransfer | None:
        """Copies between host and this provider's device; None for a host provider. Placement
        asks every provider for a transfer that `can_copy(src, dst)`."""
        return None

    def limit_threads(self, intra_op_threads: int) -> AbstractContextManager:
        """A context the session enters around each run: this provider's kernels use at most
        `intra_op_threads` threads inside it (0: the provider's default). Leaving it restores
        whatever process-wide setting it changed, also when runs overlap."""
        return nullcontext()

    def on_run_start(self, run_options: Any = None) -> None:
        """Called before every run, from the thread calling `run`."""

    def on_run_end(self, run_options: Any = None) -> None:
        """Called after every run (also a failed one): synchronize, shrink arenas if asked."""

    def sync(self) -> None:
        """Wait for all work this provider queued (device providers)."""

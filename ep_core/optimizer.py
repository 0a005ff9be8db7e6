"""Graph optimizer: rewrites applied by level, with onnxruntime's `GraphOptimizationLevel` meaning.

* Level 1 (`ORT_ENABLE_BASIC`): semantics-preserving, provider-independent rewrites — constant
  folding, redundant-node elimination, Conv/BatchNormalization/Mul/Add folding, MatMul+Add→Gemm,
  common-subexpression and dead-node elimination.
* Level 2 (`ORT_ENABLE_EXTENDED`): fusions into ops of our own domain (`com.ep_core`), done only
  where the provider that would run the original node has a kernel for the fused op.
* Level 3 (`ORT_ENABLE_LAYOUT`): layout rewrites (none built in; custom ones may register here).
* `ORT_ENABLE_ALL` (99): everything.

Each rewrite is a small class with `apply(graph) -> bool`. The built-in list is `builtin_rewrites()`
below — the one place that names them all, in the order they run. `register_transformer` adds
custom ones; `SessionOptions.disabled_optimizers` names rewrites to skip. Each level runs its
rewrites in passes until a pass changes nothing, then recurses into If/Loop/Scan bodies.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import onnx

from .graph import Graph, Node
from .graph_edit import GraphEditor, refresh_implicit_inputs
from .options import GraphOptimizationLevel, SessionOptions

log = logging.getLogger("ep_core")

MAX_PASSES = 10


@dataclass
class OptimizerContext:
    """What rewrites may ask: the options, the session's providers and the model's IR version."""
    options: SessionOptions
    providers: list = field(default_factory=list)
    ir_version: int = onnx.IR_VERSION
    stats: dict[str, int] = field(default_factory=dict)

    def overridable(self, graph: Graph) -> set[str]:
        """Initializers a user may override with a feed: not constants (IR >= 4, as onnxruntime)."""
        if self.ir_version < 4:
            return set()
        return {v.name for v in graph.inputs if v.name in graph.initializers}

    @property
    def cpu_provider(self):
        for p in self.providers:
            if p.type == "cpu":
                return p
        from . import providers as registry
        cpu = registry.provider_factory("cpu")()
        self.providers.append(cpu)
        return cpu

    def provider_for(self, node: Node):
        """The provider that will take `node` (first in priority order with a kernel for it)."""
        for p in self.providers or [self.cpu_provider]:
            if p.get_kernel_registry().lookup(node) is not None:
                return p
        return None

    def supports(self, anchor: Node, fused: Node) -> bool:
        """Whether the provider that would run `anchor` also has a kernel for `fused`."""
        p = self.provider_for(anchor)
        return p is not None and p.get_kernel_registry().lookup(fused) is not None


class Rewrite:
    """One graph rewrite; `apply` returns True when it changed the graph.

    `self.ctx` (an OptimizerContext) is set by the optimizer before `apply` runs.
    """
    name = ""
    level: int = GraphOptimizationLevel.ORT_ENABLE_BASIC
    ctx: OptimizerContext | None = None

    def apply(self, graph: Graph) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def editor(self, graph: Graph) -> GraphEditor:
        """A GraphEditor that knows which initializers are overridable (hence not constant)."""
        ctx = self.ctx or OptimizerContext(SessionOptions())
        return GraphEditor(graph, ctx.overridable(graph))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(level={int(self.level)})"


# --- the list ---------------------------------------------------------------------------------

def builtin_rewrites() -> list[type[Rewrite]]:
    """Every built-in rewrite, in the order they run within their level."""
    from . import rewrites_affine as a
    from . import rewrites_basic as b
    from . import rewrites_fusion as f
    from . import rewrites_transformer as t
    return [
        # Level 1: basic, provider independent.
        b.ConstantFolding,          # incl. ConstantOfShape, Shape/Size of static shapes, Constant
        b.EliminateIdentity,
        b.EliminateDropout,
        b.EliminateNoopCast,
        b.EliminateNoopTranspose,   # identity perms; Transpose∘Transpose composed
        b.EliminateUnsqueezeSqueeze,
        b.FuseReshapeChain,         # Reshape of Reshape/Flatten/Squeeze/Unsqueeze; no-op Reshape
        a.FuseConvBatchNorm,
        a.FuseConvMulAdd,           # Conv followed by a per-channel Mul/Div/Add/Sub constant
        a.FuseBatchNormMulAdd,      # BatchNormalization followed by a per-channel Mul/Add constant
        a.FuseMatMulAddToGemm,
        b.DeduplicateInitializers,  # equal constants under one name (lets CSE see equal nodes)
        b.CommonSubexpressionElimination,
        b.EliminateDeadNodes,
        # Level 2: extended fusions into com.ep_core ops (checked against the provider's kernels).
        t.FuseGelu,
        t.FuseFastGelu,
        t.FuseLayerNormalization,
        t.FuseSkipLayerNormalization,
        t.FuseAttention,
        f.FuseMatMulBiasActivation,  # MatMul(N-D A) + bias [+ act]; before FuseAddActivation
        f.FuseConvAddActivation,
        f.FuseConvActivation,
        f.FuseGemmActivation,
        f.FuseAddActivation,
        b.EliminateDeadNodesExtended,
    ]


_custom: list[tuple[int, Any]] = []   # (level, Rewrite subclass or instance) added by users


def register_transformer(transformer: Any, level: int | None = None) -> None:
    """Add a custom rewrite (a Rewrite subclass or instance) to run at `level` (default: its own).

    Custom rewrites run after the built-in ones of the same level, in registration order.
    """
    lvl = int(level if level is not None else getattr(transformer, "level", 1))
    name = getattr(transformer, "name", "") or getattr(transformer, "__name__", "")
    if not name:
        raise ValueError("a custom transformer needs a `name` (used by disabled_optimizers)")
    unregister_transformer(name)
    _custom.append((lvl, transformer))


def unregister_transformer(name: str) -> None:
    _custom[:] = [(lvl, t) for lvl, t in _custom if _name_of(t) != name]


def _name_of(t: Any) -> str:
    return getattr(t, "name", "") or getattr(t, "__name__", "") or type(t).__name__


def registered_rewrites() -> list[tuple[int, str]]:
    """(level, name) of every rewrite the optimizer knows, built-in then custom."""
    return [(int(c.level), c.name) for c in builtin_rewrites()] + [(lvl, _name_of(t)) for lvl, t in _custom]


def _instantiate(entry: Any, ctx: OptimizerContext, level: int) -> Rewrite:
    r = entry() if isinstance(entry, type) else copy.copy(entry)
    r.ctx = ctx
    r.level = level
    return r


def rewrites_for(ctx: OptimizerContext) -> dict[int, list[Rewrite]]:
    """Active rewrites grouped by level (levels above the session's are left out)."""
    level = int(ctx.options.graph_optimization_level)
    disabled = set(getattr(ctx.options, "disabled_optimizers", None) or ())
    entries = [(int(c.level), c) for c in builtin_rewrites()] + list(_custom)
    by_level: dict[int, list[Rewrite]] = {}
    for lvl, entry in entries:
        if lvl > level or _name_of(entry) in disabled:
            continue
        by_level.setdefault(lvl, []).append(_instantiate(entry, ctx, lvl))
    return dict(sorted(by_level.items()))


def _run_level(graph: Graph, rewrites: list[Rewrite], ctx: OptimizerContext) -> None:
    for _ in range(MAX_PASSES):
        changed = False
        for r in rewrites:
            if r.apply(graph):
                changed = True
                ctx.stats[r.name] = ctx.stats.get(r.name, 0) + 1
        if not changed:
            break
    # Bodies of If/Loop/Scan are graphs too; their outer references may change with them.
    touched = False
    for n in graph.nodes:
        for g in n.subgraphs:
            _run_level(g, rewrites, ctx)
            touched = True
    if touched:
        refresh_implicit_inputs(graph)


def optimize(graph: Graph, options: SessionOptions, providers: list | None = None,
             ir_version: int | None = None) -> OptimizerContext:
    """Apply every enabled rewrite up to the session's level; returns the context (with stats)."""
    ctx = OptimizerContext(options, list(providers or []),
                           onnx.IR_VERSION if ir_version is None else int(ir_version))
    before = len(graph.nodes)
    t0 = time.perf_counter()
    for level, rewrites in rewrites_for(ctx).items():
        _run_level(graph, rewrites, ctx)
    log.info("optimizer: %d -> %d nodes in %.1f ms (level %d; rewrites applied: %s)", before,
             len(graph.nodes), (time.perf_counter() - t0) * 1e3, int(options.graph_optimization_level),
             ctx.stats)
    return ctx

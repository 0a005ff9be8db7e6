"""Graph optimizer: rewrites applied by level, with onnxruntime's `GraphOptimizationLevel` meaning.

* Level 1 (`ORT_ENABLE_BASIC`): semantics-preserving, provider-independent rewrites — constant
  folding, redundant-node elimination, Conv/BatchNormalization/Mul/Add folding, MatMul+Add→Gemm,
  common-subexpression and dead-node elimination.
  They run before partitioning (`rewrite_level1`), bodies of If/Loop/Scan included.
* Level 2 (`ORT_ENABLE_EXTENDED`): fusions into fused ops, run after partitioning on assigned
  nodes (`rewrite_assigned`), each only where the provider that owns the anchor node has a
  kernel for the fused op — as onnxruntime runs its level-2 transformers after partitioning.
* Level 3 (`ORT_ENABLE_LAYOUT`): layout rewrites (none built in; custom ones may register here).
* `ORT_ENABLE_ALL` (99): everything.

Each rewrite is a small class with `apply(graph) -> bool` (`ep_core.rewrite.Rewrite`). The built-in
list is `builtin_rewrites()` below — the one place that names them all, in the order they run.
`register_transformer` adds custom ones; `SessionOptions.disabled_optimizers` names rewrites to
skip. Each level runs its rewrites in passes until a pass changes nothing.
"""
from __future__ import annotations

import copy
import logging
import time
from typing import Any

from . import rewrites_affine as a
from . import rewrites_basic as b
from . import rewrites_fusion as f
from . import rewrites_layout as lay
from . import rewrites_quant as q
from . import rewrites_transformer as t
from .graph import Graph, Node
from .graph_edit import refresh_implicit_inputs
from .partition import Assignment
from .rewrite import OptimizerContext, Rewrite

log = logging.getLogger("ep_core")

MAX_PASSES = 10


# --- the list ---------------------------------------------------------------------------------

def builtin_rewrites() -> list[type[Rewrite]]:
    """Every built-in rewrite, in the order they run within their level."""
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
        q.FuseMatMulIntegerToFloat,  # dynamic quantization's integer MatMul chains; first, so
        q.FuseDynamicQuantizeMatMul,  # their bias Add stays theirs
        t.FuseGelu,
        t.FuseFastGelu,
        t.FuseLayerNormalization,
        t.FuseSkipLayerNormalization,
        t.FuseAttention,
        t.FuseTransposeMatMul,       # after FuseAttention, which matches the Transposes it reads
        f.FuseMatMulBiasActivation,  # MatMul(N-D A) + bias [+ act]; before FuseAddActivation
        f.FuseConvAddActivation,
        f.FuseConvActivation,
        f.FuseGemmActivation,
        f.FuseAddActivation,
        b.EliminateDeadNodesExtended,
        # Level 3: layout (the CPU provider's channel-blocked convolution chains).
        lay.NchwcLayout,
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


def rewrites_for(ctx: OptimizerContext, levels: range) -> dict[int, list[Rewrite]]:
    """Active rewrites of `levels` grouped by level (levels above the session's are left out)."""
    level = int(ctx.options.graph_optimization_level)
    disabled = set(getattr(ctx.options, "disabled_optimizers", None) or ())
    entries = [(int(c.level), c) for c in builtin_rewrites()] + list(_custom)
    by_level: dict[int, list[Rewrite]] = {}
    for lvl, entry in entries:
        if lvl > level or lvl not in levels or _name_of(entry) in disabled:
            continue
        by_level.setdefault(lvl, []).append(_instantiate(entry, ctx, lvl))
    return dict(sorted(by_level.items()))


def _run_passes(graph: Graph, rewrites: list[Rewrite], ctx: OptimizerContext) -> None:
    for _ in range(MAX_PASSES):
        changed = False
        for r in rewrites:
            if r.apply(graph):
                changed = True
                ctx.stats[r.name] = ctx.stats.get(r.name, 0) + 1
        if not changed:
            break


def _run_level1(graph: Graph, rewrites: list[Rewrite], ctx: OptimizerContext) -> None:
    _run_passes(graph, rewrites, ctx)
    # Bodies of If/Loop/Scan are graphs too; their outer references may change with them.
    touched = False
    for n in graph.nodes:
        for g in n.subgraphs:
            _run_level1(g, rewrites, ctx)
            touched = True
    if touched:
        refresh_implicit_inputs(graph)


LEVEL1 = range(1, 2)
ASSIGNED_LEVELS = range(2, 100)


def rewrite_level1(graph: Graph, ctx: OptimizerContext) -> None:
    """Stage 2: provider-independent rewrites (level 1), in place, bodies included.

    Runs before partitioning: `ctx.assigned` is None and no rewrite may depend on placement."""
    t0 = time.perf_counter()
    before = len(graph.nodes)
    for rewrites in rewrites_for(ctx, LEVEL1).values():
        _run_level1(graph, rewrites, ctx)
    log.info("level-1 rewrites: %d -> %d nodes in %.1f ms (%s)", before, len(graph.nodes),
             (time.perf_counter() - t0) * 1e3, ctx.stats)


def rewrite_assigned(graph: Graph, assigned: dict[Node, Assignment], ctx: OptimizerContext
                     ) -> dict[Node, Assignment]:
    """Stage 4: level-2/3 fusions on partitioned nodes of `graph` (not its bodies: each body runs
    this stage when it is built). A fusion applies only where the provider that owns its anchor
    has a kernel for the fused op (`OptimizerContext.supports`, which assigns the new node).

    Returns the assignment of the rewritten graph's nodes; nodes a rewrite created without
    `supports` are missing from it (the caller partitions them)."""
    ctx.assigned = dict(assigned)
    for rewrites in rewrites_for(ctx, ASSIGNED_LEVELS).values():
        _run_passes(graph, rewrites, ctx)
    out = {n: ctx.assigned[n] for n in graph.nodes if n in ctx.assigned}
    ctx.assigned = None
    return out

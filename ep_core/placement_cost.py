"""Stage 3 by cost (`providers="auto"` or `SessionOptions.placement = "cost"`): which provider
runs each node, chosen to minimise the whole graph's time, copies included.

Each node may go to any provider that claims it (`get_capability` over the whole graph, as
`partition` asks). Its cost on each is measured (`placement_measure`); the copies a placement
implies cost per byte per direction. The total is

    sum over nodes of cost(node, provider) + sum over values of one copy per memory space that
    reads the value away from where it is produced (fan-out shares one copy)

and the assignment minimising it is found with minimum s-t cuts:
* two providers: one cut, exact. Node costs are terminal edges; a copy is a hyperedge ("the
  producer is on one side and *any* reader on the other") built with one auxiliary vertex, so a
  value read by many nodes costs one copy, as placement inserts it.
* more providers: alpha-expansion. Starting from the best fixed priority order, each move lets
  every node keep its provider or switch to provider alpha; the move is one two-label cut (terms
  that are not representable in a cut are left out of that move's graph), accepted only if the
  exact total falls. Rounds repeat until no move improves.

Nodes that only one provider can run are not measured. Constant initializers cost nothing to
move (placement copies them once at build). Only the top-level graph is placed by cost; the
bodies of If/Loop/Scan follow the provider order.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .graph import Graph, Node
from .kernel import KernelDef
from .mincut import FlowGraph
from .partition import Assignment, partition
from .placement_measure import CostCache, Measurer, cache_dir, value_bytes
from .provider import HOST, Device, ExecutionProvider, GraphView

_INF = math.inf
_PRIORITY_BIAS = 1e-9   # s per rank: equal estimated costs go by the provider order
_MAX_ROUNDS = 4


@dataclass
class NodeCost:
    """Why one node went where it did."""
    node: str
    op: str
    provider: str
    seconds: dict[str, float]          # provider type -> cost of the node alone (s)
    source: dict[str, str]             # provider type -> "measured" | "cached" | "estimated"
    copy_seconds: float                # copies into this node under the chosen placement (s)
    reason: str


@dataclass
class PartitionCost:
    """A connected group of nodes run by one provider."""
    provider: str
    nodes: list[str]
    measured_ms: float                 # nodes whose cost was measured (now or from the cache)
    estimated_ms: float                # nodes costed by formula (not measurable alone)
    copies_ms: float                   # copies into the group's nodes


@dataclass
class PlacementReport:
    """The cost-model placement of one session (`InferenceSession.get_placement_report()`)."""
    method: str                        # "min-cut", "alpha-expansion" or "single provider"
    providers: list[str]
    total_ms: float                    # estimated time of the chosen placement, copies included
    copies_ms: float
    fixed_orders_ms: dict[str, float]  # "a>b" -> the same estimate for that greedy priority order
    partitions: list[PartitionCost]
    nodes: list[NodeCost]
    measured: int                      # kernels run now
    cached: int                        # kernel costs read from the cache
    estimated: int                     # kernel costs from the formula
    cache_path: str

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"placement by {self.method} over {self.providers}: {self.total_ms:.3f} ms estimated "
                 f"(copies {self.copies_ms:.3f} ms); fixed orders: "
                 + ", ".join(f"{k} {v:.3f} ms" for k, v in self.fixed_orders_ms.items()),
                 f"kernels measured {self.measured}, from cache {self.cached}, estimated {self.estimated}"]
        for p in self.partitions:
            lines.append(f"  [{p.provider}] {len(p.nodes)} nodes: measured {p.measured_ms:.3f} ms, "
                         f"estimated {p.estimated_ms:.3f} ms, copies in {p.copies_ms:.3f} ms")
        lines += [f"  {n.node} ({n.op}) -> {n.reason}" for n in self.nodes]
        return "\n".join(lines)


@dataclass
class CostPartition:
    """What the stage returns: the assignment of every node, and the report."""
    assigned: dict[Node, Assignment]
    report: PlacementReport


@dataclass
class _Value:
    name: str
    producer: tuple[int, int] | None            # (node index, output position); None: a feed
    readers: list[tuple[int, int]] = field(default_factory=list)   # (node index, input position)
    graph_output: bool = False
    nbytes: int = 0


class _Problem:
    """The nodes, what each provider can run, and the exact total cost of a labeling."""

    def __init__(self, graph: Graph, providers: list[ExecutionProvider], measurer: Measurer,
                 node_seconds: Any = None, copy_seconds: Any = None):
        self.graph, self.providers, self.measurer = graph, providers, measurer
        self.copy_seconds = copy_seconds or measurer.copy_seconds
        self.nodes = list(graph.nodes)
        index = {id(n): k for k, n in enumerate(self.nodes)}
        self.kdefs: list[dict[int, KernelDef | None]] = [dict() for _ in self.nodes]
        for p_ix, p in enumerate(providers):
            registry = p.get_kernel_registry()
            for cap in p.get_capability(GraphView(graph, self.nodes), registry.lookup):
                for n in cap.nodes:
                    k = index.get(id(n))
                    kdef = registry.lookup(n)
                    if k is not None and (kdef is not None or cap.meta_def is not None):
                        self.kdefs[k].setdefault(p_ix, kdef)
        self.cost: list[list[float]] = [[_INF] * len(providers) for _ in self.nodes]
        self.source: list[dict[int, str]] = [dict() for _ in self.nodes]
        for k, n in enumerate(self.nodes):
            can = self.kdefs[k]
            for p_ix, kdef in can.items():
                if node_seconds is not None:
                    seconds, how = node_seconds(n, providers[p_ix])
                elif len(can) == 1:   # nothing to decide: not worth a measurement
                    seconds, how = _estimate(n), "estimated"
                    measurer.estimated += 1
                else:
                    seconds, how = measurer.node_seconds(n, providers[p_ix], kdef)
                if how == "estimated":
                    seconds += _PRIORITY_BIAS * p_ix
                self.cost[k][p_ix], self.source[k][p_ix] = seconds, how
        self.values = self._values(index)
        self._paths: dict[tuple[Device, Device, int], float] = {}

    def _values(self, index: dict[int, int]) -> list[_Value]:
        constants = self.graph.constant_initializers()
        values: dict[str, _Value] = {}
        for v in self.graph.inputs:
            values[v.name] = _Value(v.name, None)
        for name in self.graph.initializers:
            if name not in constants:
                values.setdefault(name, _Value(name, None))
        for k, n in enumerate(self.nodes):
            for j, name in enumerate(n.inputs):
                if name and name in values:
                    values[name].readers.append((k, j))
            for j, name in enumerate(n.outputs):
                if name:
                    values[name] = _Value(name, (k, j))
        for v in self.graph.outputs:
            if v.name in values:
                values[v.name].graph_output = True
        for v in values.values():
            v.nbytes = value_bytes(self.graph.type_of(v.name))
        return [v for v in values.values() if v.readers or v.graph_output]

    # --- devices of a labeling -------------------------------------------------------------------
    def in_device(self, k: int, p_ix: int, j: int) -> Device:
        kdef = self.kdefs[k].get(p_ix)
        return HOST if kdef is not None and j in kdef.host_inputs else self.providers[p_ix].device

    def out_device(self, k: int, p_ix: int, j: int) -> Device:
        kdef = self.kdefs[k].get(p_ix)
        return HOST if kdef is not None and j in kdef.host_outputs else self.providers[p_ix].device

    def path(self, src: Device, dst: Device, nbytes: int) -> float:
        key = (src, dst, nbytes)
        if key not in self._paths:
            self._paths[key] = self.copy_seconds(src, dst, nbytes)
        return self._paths[key]

    def copies(self, labels: list[int]) -> list[tuple[_Value, Device, Device, int, float]]:
        """Every copy a labeling implies: (value, src, dst, first reader index or -1, seconds)."""
        out = []
        for v in self.values:
            src = HOST if v.producer is None else self.out_device(v.producer[0], labels[v.producer[0]],
                                                                  v.producer[1])
            first: dict[Device, int] = {}
            for k, j in v.readers:
                first.setdefault(self.in_device(k, labels[k], j), k)
            if v.graph_output:
                first.setdefault(HOST, -1)
            for dst, k in first.items():
                if dst != src:
                    out.append((v, src, dst, k, self.path(src, dst, v.nbytes)))
        return out

    def total(self, labels: list[int]) -> float:
        return sum(self.cost[k][p] for k, p in enumerate(labels)) + \
            sum(c[-1] for c in self.copies(labels))

    # --- one two-label move ----------------------------------------------------------------------
    def best_move(self, lab0: list[int], lab1: list[int]) -> list[int]:
        """The labeling minimising the (cut-representable part of the) total where each node
        takes lab0[k] or lab1[k]. Exact when each value's terms are representable (always with
        two providers one of which is on the host)."""
        scale = 1e6   # capacities in microseconds
        g = FlowGraph(2 + len(self.nodes))
        s, t = FlowGraph.SOURCE, FlowGraph.SINK
        u0 = [self.cost[k][lab0[k]] for k in range(len(self.nodes))]
        u1 = [self.cost[k][lab1[k]] for k in range(len(self.nodes))]

        def aux() -> int:
            return g.add_vertex()

        for v in self.values:
            dsts = {self.in_device(k, lab, j) for k, j in v.readers for lab in (lab0[k], lab1[k])}
            if v.graph_output:
                dsts.add(HOST)
            for d in dsts:
                if v.producer is None:
                    src0 = src1 = HOST
                else:
                    pk, pj = v.producer
                    src0, src1 = self.out_device(pk, lab0[pk], pj), self.out_device(pk, lab1[pk], pj)
                c0 = self.path(src0, d, v.nbytes) if src0 != d else 0.0
                c1 = self.path(src1, d, v.nbytes) if src1 != d else 0.0
                if c0 == 0 and c1 == 0:
                    continue
                always = v.graph_output and d == HOST
                pos, neg = [], []   # readers reading on d only with label 1 / only with label 0
                for k, j in v.readers:
                    r0, r1 = self.in_device(k, lab0[k], j) == d, self.in_device(k, lab1[k], j) == d
                    if r0 and r1:
                        always = True
                    elif r1:
                        pos.append(k)
                    elif r0:
                        neg.append(k)
                if always:
                    if v.producer is not None:
                        u0[v.producer[0]] += c0
                        u1[v.producer[0]] += c1
                    continue
                m = min(c0, c1)
                e0, e1 = c0 - m, c1 - m
                if m > 0 and pos:   # m * [some pos reader takes label 1]
                    z = aux()
                    g.add_edge(s, z, m * scale)
                    for k in pos:
                        g.add_edge(z, 2 + k, _INF)
                if m > 0 and neg:   # m * [some neg reader takes label 0]
                    z = aux()
                    g.add_edge(z, t, m * scale)
                    for k in neg:
                        g.add_edge(2 + k, z, _INF)
                if v.producer is not None and e0 > 0 and pos:   # producer label 0, a pos reader label 1
                    z = aux()
                    g.add_edge(2 + v.producer[0], z, e0 * scale)
                    for k in pos:
                        g.add_edge(z, 2 + k, _INF)
                if v.producer is not None and e1 > 0 and neg:   # producer label 1, a neg reader label 0
                    z = aux()
                    g.add_edge(z, 2 + v.producer[0], e1 * scale)
                    for k in neg:
                        g.add_edge(2 + k, z, _INF)
        for k in range(len(self.nodes)):
            base = min(u0[k], u1[k])
            g.add_edge(s, 2 + k, (u1[k] - base) * scale if u1[k] != _INF else _INF)  # paid at label 1
            g.add_edge(2 + k, t, (u0[k] - base) * scale if u0[k] != _INF else _INF)  # paid at label 0
        value, source_side = g.min_cut()
        if math.isinf(value):
            return list(lab0)
        return [lab0[k] if 2 + k in source_side else lab1[k] for k in range(len(self.nodes))]


def _estimate(node: Node) -> float:
    from .placement_measure import estimate_seconds
    return estimate_seconds(node)


def choose_by_cost(graph: Graph, providers: list[ExecutionProvider], options: Any = None,
                   node_seconds: Any = None, copy_seconds: Any = None,
                   cache: CostCache | None = None) -> CostPartition:
    """Stage 3 by cost: returns the assignment of every node and the report; modifies nothing.

    `node_seconds(node, provider) -> (seconds, source)` and `copy_seconds(src, dst, nbytes)`
    replace measurement (tests inject costs with them); `cache` replaces the on-disk cache named
    by the session's options."""
    priority = partition(graph, providers)
    types = [p.type for p in providers]
    cache = cache if cache is not None else CostCache(cache_dir(options))
    measurer = Measurer(graph, options, providers, cache)
    if len(providers) == 1:
        report = PlacementReport("single provider", types, 0.0, 0.0, {}, [], [], 0, 0, 0,
                                 str(cache.path))
        return CostPartition(priority, report)
    problem = _Problem(graph, providers, measurer, node_seconds, copy_seconds)
    rank = {id(p): k for k, p in enumerate(providers)}
    fixed: dict[str, tuple[float, list[int]]] = {}
    orders = itertools.permutations(providers) if len(providers) <= 4 else [providers]
    for order in orders:
        greedy = partition(graph, list(order))
        labels = [rank[id(greedy[n].provider)] for n in problem.nodes]
        fixed[">".join(p.type for p in order)] = (problem.total(labels), labels)
    best_total, best = fixed[">".join(types)]   # the user's order wins ties
    for total, labels in fixed.values():
        if total < best_total * (1 - 1e-9):
            best_total, best = total, labels
    if len(providers) == 2:
        method = "min-cut"
        feasible = lambda k, p: problem.cost[k][p] < _INF   # noqa: E731
        lab0 = [1 if feasible(k, 1) else 0 for k in range(len(problem.nodes))]
        lab1 = [0 if feasible(k, 0) else 1 for k in range(len(problem.nodes))]
        cut = problem.best_move(lab0, lab1)
        if problem.total(cut) < best_total * (1 - 1e-9):
            best_total, best = problem.total(cut), cut
    else:
        method = "alpha-expansion"
        for _ in range(_MAX_ROUNDS):
            improved = False
            for alpha in range(len(providers)):
                lab1 = [alpha if problem.cost[k][alpha] < _INF else best[k]
                        for k in range(len(problem.nodes))]
                moved = problem.best_move(best, lab1)
                total = problem.total(moved)
                if total < best_total * (1 - 1e-9):
                    best_total, best, improved = total, moved, True
            if not improved:
                break
    cache.save()
    assigned = {n: Assignment(providers[p], problem.kdefs[k][p]) for k, (n, p) in
                enumerate(zip(problem.nodes, best))}
    report = _report(problem, best, method, {k: v[0] for k, v in fixed.items()}, measurer, cache)
    return CostPartition(assigned, report)


def _report(problem: _Problem, labels: list[int], method: str, fixed: dict[str, float],
            measurer: Measurer, cache: CostCache) -> PlacementReport:
    types = [p.type for p in problem.providers]
    copies_in = [0.0] * len(problem.nodes)
    copy_total = 0.0
    for _, _, _, k, seconds in problem.copies(labels):
        copy_total += seconds
        if k >= 0:
            copies_in[k] += seconds
    nodes = []
    for k, n in enumerate(problem.nodes):
        p = labels[k]
        alone = {types[q]: problem.cost[k][q] for q in sorted(problem.kdefs[k])}
        source = {types[q]: problem.source[k][q] for q in sorted(problem.kdefs[k])}
        others = ", ".join(f"{types[q]} {problem.cost[k][q] * 1e3:.3f} ms"
                           for q in sorted(problem.kdefs[k]) if q != p)
        reason = f"{types[p]}: {problem.cost[k][p] * 1e3:.3f} ms"
        reason += f" vs {others}" if others else " (the only provider that runs it)"
        if copies_in[k]:
            reason += f"; copies in {copies_in[k] * 1e3:.3f} ms"
        cheapest = min(problem.kdefs[k], key=lambda q: problem.cost[k][q])
        if problem.cost[k][cheapest] < problem.cost[k][p] and cheapest != p:
            reason += f"; kept on {types[p]}: moving it to {types[cheapest]} costs more in copies " \
                      f"than it saves"
        if source[types[p]] == "estimated":
            reason += " (estimated)"
        nodes.append(NodeCost(n.name, n.op_type, types[p], alone, source, copies_in[k], reason))
    return PlacementReport(method, types, problem.total(labels) * 1e3, copy_total * 1e3,
                           {k: v * 1e3 for k, v in fixed.items()}, _partitions(problem, labels, copies_in),
                           nodes, measurer.measured, measurer.cached, measurer.estimated,
                           str(cache.path))


def _partitions(problem: _Problem, labels: list[int], copies_in: list[float]) -> list[PartitionCost]:
    """Connected groups of nodes with one provider (union-find over the data edges)."""
    parent = list(range(len(problem.nodes)))

    def find(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k
    for v in problem.values:
        if v.producer is None:
            continue
        for k, _ in v.readers:
            if labels[k] == labels[v.producer[0]]:
                parent[find(k)] = find(v.producer[0])
    groups: dict[int, list[int]] = {}
    for k in range(len(problem.nodes)):
        groups.setdefault(find(k), []).append(k)
    out = []
    for members in sorted(groups.values()):
        p = labels[members[0]]
        measured = sum(problem.cost[k][p] for k in members if problem.source[k][p] != "estimated")
        estimated = sum(problem.cost[k][p] for k in members if problem.source[k][p] == "estimated")
        out.append(PartitionCost(problem.providers[p].type, [problem.nodes[k].name for k in members],
                                 measured * 1e3, estimated * 1e3, sum(copies_in[k] for k in members) * 1e3))
    return out

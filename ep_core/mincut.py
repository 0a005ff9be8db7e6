"""Minimum s-t cut on a small directed graph with float capacities (Edmonds-Karp).

Used by cost-model placement (`placement_cost`): vertices are nodes of the model (plus a few
auxiliary vertices), so a few thousand at most; breadth-first augmenting paths keep it iterative
(no recursion depth limit) and exact for float capacities, `inf` included.
"""
from __future__ import annotations

import math
from collections import deque

_EPS = 1e-12


class FlowGraph:
    """Vertices 0..n-1 (add more with `add_vertex`); `add_edge(u, v, cap)` adds capacity."""

    SOURCE, SINK = 0, 1

    def __init__(self, n: int = 2):
        self.cap: list[dict[int, float]] = [dict() for _ in range(n)]

    def add_vertex(self) -> int:
        self.cap.append({})
        return len(self.cap) - 1

    def add_edge(self, u: int, v: int, capacity: float) -> None:
        if capacity <= 0 or u == v:
            return
        self.cap[u][v] = self.cap[u].get(v, 0.0) + capacity
        self.cap[v].setdefault(u, 0.0)   # the residual back edge

    def min_cut(self) -> tuple[float, set[int]]:
        """(cut value, vertices on the source side). The cut value is inf when every cut crosses
        an infinite edge."""
        s, t = self.SOURCE, self.SINK
        residual = [dict(edges) for edges in self.cap]
        total = 0.0
        while True:
            parent = {s: s}
            queue = deque([s])
            while queue and t not in parent:
                u = queue.popleft()
                for v, c in residual[u].items():
                    if c > _EPS and v not in parent:
                        parent[v] = u
                        queue.append(v)
            if t not in parent:
                break
            bottleneck, v = math.inf, t
            while v != s:
                bottleneck = min(bottleneck, residual[parent[v]][v])
                v = parent[v]
            if math.isinf(bottleneck):
                return math.inf, {s}
            v = t
            while v != s:
                u = parent[v]
                residual[u][v] -= bottleneck
                residual[v][u] = residual[v].get(u, 0.0) + bottleneck
                v = u
            total += bottleneck
        return total, set(parent)

"""Minimum s-t cut on a directed graph with float capacities (Dinic's algorithm).

Used by cost-model placement (`placement_cost`): vertices are the model's nodes plus a few
auxiliary vertices per value. Written here rather than taken from scipy because
`scipy.sparse.csgraph.maximum_flow` takes int32 capacities only (times in seconds would have to be
rounded, and larger integers are silently truncated); the search is iterative (no recursion
limit on deep graphs) and handles `inf` capacities.
"""
from __future__ import annotations

import math
from collections import deque

_EPS = 1e-12


class FlowGraph:
    """Vertices 0..n-1 (add more with `add_vertex`); `add_edge(u, v, cap)` adds capacity.
    Vertex 0 is the source, 1 the sink."""

    SOURCE, SINK = 0, 1

    def __init__(self, n: int = 2):
        self.adj: list[list[int]] = [[] for _ in range(n)]
        self.to: list[int] = []
        self.cap: list[float] = []   # edge e and its reverse e ^ 1

    def add_vertex(self) -> int:
        self.adj.append([])
        return len(self.adj) - 1

    def add_edge(self, u: int, v: int, capacity: float) -> None:
        if capacity <= 0 or u == v:
            return
        self.adj[u].append(len(self.to))
        self.to.append(v)
        self.cap.append(float(capacity))
        self.adj[v].append(len(self.to))
        self.to.append(u)
        self.cap.append(0.0)

    def min_cut(self) -> tuple[float, set[int]]:
        """(cut value, vertices on the source side). The value is inf when every cut crosses an
        infinite edge. Consumes the capacities (call once)."""
        s, t = self.SOURCE, self.SINK
        adj, cap = self.adj, self.cap
        total = 0.0
        while True:
            level = self._levels()
            if level[t] < 0:
                break
            pointer = [0] * len(adj)
            while True:
                path = self._augmenting_path(level, pointer)
                if path is None:
                    break
                pushed = min(cap[e] for e in path)
                if math.isinf(pushed):
                    return math.inf, {s}
                for e in path:
                    cap[e] -= pushed
                    cap[e ^ 1] += pushed
                total += pushed
        level = self._levels()
        return total, {v for v, d in enumerate(level) if d >= 0}

    def _levels(self) -> list[int]:
        """Breadth-first distance from the source over edges with residual capacity (-1: none)."""
        level = [-1] * len(self.adj)
        level[self.SOURCE] = 0
        queue = deque([self.SOURCE])
        while queue:
            u = queue.popleft()
            for e in self.adj[u]:
                v = self.to[e]
                if level[v] < 0 and self.cap[e] > _EPS:
                    level[v] = level[u] + 1
                    queue.append(v)
        return level

    def _augmenting_path(self, level: list[int], pointer: list[int]) -> list[int] | None:
        """One source-sink path in the level graph (edge ids), skipping dead ends for good."""
        adj, to, cap = self.adj, self.to, self.cap
        path: list[int] = []
        u = self.SOURCE
        while u != self.SINK:
            edges = adj[u]
            while pointer[u] < len(edges):
                e = edges[pointer[u]]
                v = to[e]
                if cap[e] > _EPS and level[v] == level[u] + 1:
                    break
                pointer[u] += 1
            else:
                if u == self.SOURCE:
                    return None
                level[u] = -1             # nothing reaches the sink from here in this phase
                e = path.pop()
                u = to[e ^ 1]
                pointer[u] += 1
                continue
            path.append(edges[pointer[u]])
            u = to[edges[pointer[u]]]
        return path

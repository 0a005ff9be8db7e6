"""Control flow: If, Loop, Scan. Bodies run through the session's subgraph runner (host values)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ep_core.graph import Graph
from ep_core.kernel import Kernel
from ep_cpu.registry import kernel


def _split(k: Kernel, inputs: tuple) -> tuple[list, dict[str, Any]]:
    """Own inputs (padded with None) and the outer-scope dict for the body."""
    n = len(k.node.inputs)
    own = list(inputs[:n]) + [None] * max(0, n - len(inputs))
    implicit = inputs[n:]
    outer = dict(zip(k.node.implicit_inputs, implicit))
    return own, outer


def _empty_stack(graph: Graph, index: int, fallback_dtype) -> np.ndarray:
    """Scan output of zero iterations: shape (0, *element shape) when the body declares it."""
    vi = graph.outputs[index]
    dtype = vi.dtype if vi.dtype is not None else (fallback_dtype or np.float32)
    shape = vi.shape
    if shape is not None and all(isinstance(d, int) for d in shape):
        return np.zeros((0, *shape), dtype=dtype)
    return np.zeros((0,), dtype=dtype)


@kernel("If")
class If(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.then_run = ctx.subgraph_runner("then_branch")
        self.else_run = ctx.subgraph_runner("else_branch")

    def compute(self, *inputs):
        own, outer = _split(self, inputs)
        cond = own[0]
        if cond is None or np.size(cond) != 1:
            raise ValueError("If: cond must hold exactly one element")
        run = self.then_run if bool(np.asarray(cond).reshape(-1)[0]) else self.else_run
        return tuple(run([], outer))


@kernel("Loop")
class Loop(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.body: Graph = self.attr("body")
        self.run = ctx.subgraph_runner("body")
        # body: (iter_num, cond, v_1..v_N) -> (cond, v_1..v_N, scan_1..scan_K)
        self.n_carried = len(self.body.inputs) - 2
        self.n_scan = len(self.body.outputs) - 1 - self.n_carried

    def compute(self, *inputs):
        own, outer = _split(self, inputs)
        trip, cond = own[0], own[1]
        carried = list(own[2:2 + self.n_carried])
        max_trip = int(np.asarray(trip).reshape(-1)[0]) if trip is not None else None
        keep_going = bool(np.asarray(cond).reshape(-1)[0]) if cond is not None else True
        scans: list[list] = [[] for _ in range(self.n_scan)]
        i = 0
        while keep_going and (max_trip is None or i < max_trip):
            feeds = [np.array(i, dtype=np.int64), np.array(keep_going, dtype=np.bool_)] + carried
            outs = self.run(feeds, outer)
            # With no cond input the body's cond output is ignored (spec: a pure for-loop).
            if cond is not None:
                keep_going = bool(np.asarray(outs[0]).reshape(-1)[0])
            carried = list(outs[1:1 + self.n_carried])
            for k in range(self.n_scan):
                scans[k].append(outs[1 + self.n_carried + k])
            i += 1
        results = carried
        out_dtypes = self.node.output_dtypes
        for k in range(self.n_scan):
            if scans[k]:
                results.append(np.stack([np.asarray(s) for s in scans[k]]))
            else:
                pos = self.n_carried + k
                dt = out_dtypes[pos] if pos < len(out_dtypes) else None
                results.append(_empty_stack(self.body, 1 + self.n_carried + k, dt))
        return tuple(results)


def _take(x: np.ndarray, axis: int, t: int) -> np.ndarray:
    return np.take(x, t, axis=axis)


@kernel("Scan", since=9)
class Scan(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.body: Graph = self.attr("body")
        self.run = ctx.subgraph_runner("body")
        self.m = int(self.attr("num_scan_inputs"))
        self.n = len(self.body.inputs) - self.m
        self.k = len(self.body.outputs) - self.n
        self.in_axes = list(self.attr("scan_input_axes", [0] * self.m))
        self.in_dirs = list(self.attr("scan_input_directions", [0] * self.m))
        self.out_axes = list(self.attr("scan_output_axes", [0] * self.k))
        self.out_dirs = list(self.attr("scan_output_directions", [0] * self.k))

    def compute(self, *inputs):
        own, outer = _split(self, inputs)
        states = list(own[:self.n])
        scan_in = [np.asarray(x) for x in own[self.n:self.n + self.m]]
        axes = [a + x.ndim if a < 0 else a for a, x in zip(self.in_axes, scan_in)]
        lengths = {x.shape[a] for a, x in zip(axes, scan_in)}
        if len(lengths) > 1:
            raise ValueError(f"Scan: scan inputs disagree on sequence length {sorted(lengths)}")
        seq_len = lengths.pop() if lengths else 0
        collected: list[list] = [[] for _ in range(self.k)]
        for t in range(seq_len):
            slices = [_take(x, a, seq_len - 1 - t if d else t)
                      for x, a, d in zip(scan_in, axes, self.in_dirs)]
            outs = self.run(states + slices, outer)
            states = list(outs[:self.n])
            for j in range(self.k):
                collected[j].append(np.asarray(outs[self.n + j]))
        results = states
        for j in range(self.k):
            items = collected[j]
            if self.out_dirs[j]:
                items = items[::-1]
            if items:
                rank = items[0].ndim + 1
                axis = self.out_axes[j] + rank if self.out_axes[j] < 0 else self.out_axes[j]
                results.append(np.stack(items, axis=axis))
            else:
                results.append(_empty_stack(self.body, self.n + j, None))
        return tuple(results)


@kernel("Scan", since=8, end=8)
class Scan8(Kernel):
    """Opset 8: batch axis 0, sequence axis 1, optional per-batch sequence_lens."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.body: Graph = self.attr("body")
        self.run = ctx.subgraph_runner("body")
        self.m = int(self.attr("num_scan_inputs"))
        self.n = len(self.body.inputs) - self.m
        self.k = len(self.body.outputs) - self.n
        self.dirs = list(self.attr("directions", [0] * self.m))

    def compute(self, *inputs):
        own, outer = _split(self, inputs)
        seq_lens = own[0]
        init = list(own[1:1 + self.n])
        scan_in = [np.asarray(x) for x in own[1 + self.n:1 + self.n + self.m]]
        batch = scan_in[0].shape[0] if scan_in else (init[0].shape[0] if init else 0)
        max_len = scan_in[0].shape[1] if scan_in else 0
        lens = (np.asarray(seq_lens).reshape(-1).astype(np.int64) if seq_lens is not None
                else np.full(batch, max_len, dtype=np.int64))
        final_states: list[list] = [[] for _ in range(self.n)]
        scan_out: list[list] = [[] for _ in range(self.k)]
        for b in range(batch):
            states = [np.asarray(s)[b] for s in init]
            n_steps = int(lens[b])
            per_step: list[list] = [[] for _ in range(self.k)]
            for t in range(n_steps):
                slices = [x[b, n_steps - 1 - t if d else t] for x, d in zip(scan_in, self.dirs)]
                outs = self.run(states + slices, outer)
                states = list(outs[:self.n])
                for j in range(self.k):
                    per_step[j].append(np.asarray(outs[self.n + j]))
            for i in range(self.n):
                final_states[i].append(np.asarray(states[i]))
            for j in range(self.k):
                scan_out[j].append(per_step[j])
        results = [np.stack(s) if s else np.asarray(init[i])
                   for i, s in enumerate(final_states)]
        for j in range(self.k):
            # Pad shorter sequences with zeros up to max_len (spec leaves them undefined).
            template = next((steps[0] for steps in scan_out[j] if steps), None)
            if template is None:
                vi = self.body.outputs[self.n + j]
                shape = vi.shape if vi.shape and all(isinstance(d, int) for d in vi.shape) else []
                template = np.zeros(shape, dtype=vi.dtype or np.float32)
            out = np.zeros((batch, max_len, *template.shape), dtype=template.dtype)
            for b, steps in enumerate(scan_out[j]):
                if steps:
                    out[b, :len(steps)] = np.stack(steps)
            results.append(out)
        return tuple(results)

"""Compute callables the CUDA provider's `compile(fused_node, subgraph)` returns.

* `FusedGemm`: a MatMul/Gemm with its epilogue chain (ep_cuda.fusion 'gemm' groups), one launch.
* `codegen.FusedElementwise`: a generated element-wise kernel ('elementwise' groups).
* `GraphRegion`: a convex region run as a CUDA graph (provider option `enable_cuda_graph`).
  First call with a set of input shapes: eager (kernels compile, the autotuner measures, the
  arena grows). Second call: the region's launches are captured by stream capture
  (`cupy.cuda.Stream.begin_capture` / `end_capture`) from static input buffers, then replayed.
  Later calls copy the inputs into the static buffers and replay the graph: one launch, no
  Python per node. Every block allocated during capture stays reserved for the graph, so its
  addresses stay valid. Shapes not seen before get their own warm-up and graph.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ep_core.graph import Node
from ep_core.kernel import KernelContext

from .codegen import FusedElementwise
from .fusion import Group
from .launch import EMULATED, copy_into, empty

log = logging.getLogger("ep_cuda")
# process-wide CUDA-graph counters (tests and benchmarks/gpu_verify.sh assert captures happened)
GRAPH_STATS = {"captured": 0, "failed": 0, "replayed": 0}


def _scoped(provider: Any, fn: Callable) -> Callable:
    scope = getattr(provider, "scope", None)
    if scope is None:
        return fn

    def run(*args):
        with scope():
            return fn(*args)
    return run


class FusedGemm:
    """act(alpha * A @ B [+ beta * C] + add1 [+ add2]) for a 'gemm' group."""

    def __init__(self, provider: Any, group: Group) -> None:
        from .kernels.gemm import Gemm
        self.provider = provider
        self.group = group
        anchor = group.nodes[0]
        self.anchor = anchor
        self.gemm = Gemm(anchor, kernel_context(provider, anchor, group.info.get("constants", {}))) \
            if anchor.op_type == "Gemm" else None
        self.pos = {name: k for k, name in enumerate(group.inputs)}
        self.adds = list(group.info["adds"])
        self.alpha = float(group.info["alpha"])
        self.act = tuple(group.info["act"])

    def __call__(self, *inputs: Any) -> tuple:
        return _scoped(self.provider, self.run)(*inputs)

    def run(self, *inputs: Any) -> tuple:
        from .kernels.gemm import matmul
        get = lambda name: inputs[self.pos[name]] if name else None  # noqa: E731
        a, b = get(self.anchor.inputs[0]), get(self.anchor.inputs[1])
        adds = [get(n) for n in self.adds]
        code, p0, p1 = self.act
        if self.gemm is not None:
            c = get(self.anchor.inputs[2]) if len(self.anchor.inputs) > 2 else None
            r = adds[0] if adds else None
            if c is None and adds:   # the first Add plays C, with beta 1 (this call only)
                c, r = adds[0], (adds[1] if len(adds) > 1 else None)
                return (self.gemm.gemm(a, b, c, code, p0, p1, r=r, beta=1.0),)
            return (self.gemm.gemm(a, b, c, code, p0, p1, r=r),)
        c = adds[0] if adds else None
        r = adds[1] if len(adds) > 1 else None
        return (matmul(a, b, c=c, alpha=self.alpha, r=r, act=code, p0=p0, p1=p1),)


def kernel_context(provider: Any, node: Node, constants: dict[str, Any]) -> KernelContext:
    """The context of a kernel a compiled group creates: which of its inputs are constants."""
    return KernelContext(provider, constant_inputs={k: constants[i] for k, i in enumerate(node.inputs)
                                                    if i in constants})


def fused_callable(provider: Any, group: Group) -> Callable:
    """The callable computing a gemm or element-wise group (prepared by fusion.prepare_for_compile)."""
    if group.kind == "gemm":
        return FusedGemm(provider, group)
    return FusedElementwise(provider, group, group.info["dtypes"])


# ------------------------------------------------------------------------------- CUDA graphs
@dataclass
class _Step:
    fn: Callable
    inputs: list[str]
    outputs: list[str]
    host_inputs: tuple = ()


@dataclass
class _Captured:
    graph: Any
    inputs: list[Any]
    outputs: tuple
    memory: list[Any]


def _in_dependency_order(steps: list[_Step], available: set[str]) -> list[_Step]:
    """Steps ordered so each runs after the steps producing its inputs (a fused sub-group's step
    stands for nodes that were not adjacent in the region's order)."""
    done, out, todo = set(available), [], list(steps)
    while todo:
        ready = [s for s in todo if all(not i or i in done for i in s.inputs)]
        if not ready:
            raise RuntimeError("CUDA graph region: its steps have a dependency cycle")
        for s in ready:
            out.append(s)
            done.update(o for o in s.outputs if o)
        todo = [s for s in todo if not any(s is r for r in ready)]
    return out


class GraphRegion:
    """A convex region of CUDA nodes run as one node, captured into a CUDA graph."""

    def __init__(self, provider: Any, group: Group) -> None:
        self.provider = provider
        self.name = group.info.get("name", "region")
        self.inputs = list(group.inputs)
        self.outputs = list(group.outputs)
        registry = provider.get_kernel_registry()
        # constants the region reads (initializers are not fused-node inputs: baked here)
        self.constants = {i: v for i, v in group.info["constants"].items() if i not in self.inputs}
        self._device_consts: dict[str, Any] | None = None
        self.host_consts: set[str] = set()
        steps: list[_Step] = []
        sub: list[Group] = group.info.get("subgroups", [])
        first = {id(g.nodes[0]): g for g in sub}
        members = {id(n) for g in sub for n in g.nodes}
        for n in group.nodes:   # in topological order (fusion.plan_regions)
            g = first.get(id(n))
            if g is not None:
                c = fused_callable(None, g)
                steps.append(_Step(c, list(g.inputs), list(g.outputs)))
                continue
            if id(n) in members:
                continue
            kdef = registry.lookup(n)
            kern = kdef.factory(n, kernel_context(provider, n, self.constants))
            steps.append(_Step(kern.compute, list(n.inputs), list(n.outputs), tuple(kdef.host_inputs)))
            for k in kdef.host_inputs:
                if k < len(n.inputs) and n.inputs[k] in self.constants:
                    self.host_consts.add(n.inputs[k])
        self.steps = _in_dependency_order(steps, set(self.inputs) | set(self.constants))
        self.states: dict[tuple, Any] = {}
        self.capture_ok = True

    def _consts(self) -> dict[str, Any]:
        if self._device_consts is None:
            p = self.provider
            self._device_consts = {k: p.to_device(v) for k, v in self.constants.items()
                                   if k not in self.host_consts or self._used_on_device(k)}
        return self._device_consts

    def _used_on_device(self, name: str) -> bool:
        return any(name in s.inputs and s.inputs.index(name) not in s.host_inputs for s in self.steps)

    def run_eager(self, inputs: tuple) -> tuple:
        env: dict[str, Any] = dict(self._consts())
        env.update(zip(self.inputs, inputs))
        for s in self.steps:
            args = []
            for k, name in enumerate(s.inputs):
                if not name:
                    args.append(None)
                elif k in s.host_inputs and name in self.constants:
                    args.append(self.constants[name])
                else:
                    args.append(env[name])
            outs = s.fn(*args)
            if not isinstance(outs, (tuple, list)) or (isinstance(outs, list) and len(s.outputs) == 1):
                outs = (outs,)
            for name, v in zip(s.outputs, outs):
                if name:
                    env[name] = v
        return tuple(env[o] for o in self.outputs)

    def __call__(self, *inputs: Any) -> tuple:
        p = self.provider
        with p.scope():
            if not self.capture_ok or not getattr(p, "cuda_graph", False):
                return self.run_eager(inputs)
            key = tuple((tuple(x.shape), x.dtype.str) for x in inputs)
            st = self.states.get(key)
            if st is None:          # first run with these shapes: warm up
                self.states[key] = "warm"
                return self.run_eager(inputs)
            if st == "warm":
                try:
                    st = self.states[key] = self._capture(inputs)
                except Exception as e:  # noqa: BLE001 - any capture failure falls back
                    self.capture_ok = False
                    GRAPH_STATS["failed"] += 1
                    warnings.warn(f"CUDA graph capture of '{self.name}' failed "
                                  f"({type(e).__name__}: {e}); running it without a graph",
                                  RuntimeWarning, stacklevel=2)
                    return self.run_eager(inputs)
                GRAPH_STATS["captured"] += 1
                return self._replay(st, inputs)
            for buf, x in zip(st.inputs, inputs):
                if buf is not x:
                    copy_into(buf, x)
            return self._replay(st, inputs)

    def _replay(self, st: "_Captured", inputs: tuple) -> tuple:
        GRAPH_STATS["replayed"] += 1
        if EMULATED[0]:   # the emulator has no graphs: the "replay" runs the steps again
            return self.run_eager(tuple(st.inputs))
        st.graph.launch(self.provider.stream)
        return st.outputs

    def _capture(self, inputs: tuple) -> _Captured:
        p = self.provider
        statics = [copy_into(empty(x.shape, x.dtype), x) for x in inputs]
        if EMULATED[0]:
            return self._capture_emulated(statics)
        memory: list[Any] = []
        p.allocator.recording = memory
        stream = p.stream
        stream.begin_capture()
        try:
            outs = self.run_eager(tuple(statics))
        except BaseException:
            try:
                stream.end_capture()
            except Exception:  # noqa: BLE001 - the capture is already invalid
                pass
            raise
        finally:
            p.allocator.recording = None
        graph = stream.end_capture()
        log.info("captured CUDA graph for %s (%d steps, %d blocks reserved)", self.name,
                 len(self.steps), len(memory))
        return _Captured(graph, statics, outs, memory)


    def _capture_emulated(self, statics: list) -> _Captured:
        """Run the steps once under the emulator's capture rules (any device->host read raises,
        as it fails a real stream capture), so capturability is tested without a GPU."""
        from . import emulator
        emulator.CAPTURING[0] = True
        try:
            outs = self.run_eager(tuple(statics))
        finally:
            emulator.CAPTURING[0] = False
        return _Captured(None, statics, outs, [])


__all__ = ["FusedGemm", "GraphRegion", "fused_callable", "Node", "np"]

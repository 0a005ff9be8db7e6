"""Fused element-wise groups on the CPU (compile API): one generated numba kernel per group.

`ep_core.fusion` finds the groups (the finder the CUDA provider uses too); `elementwise_spec` says
which nodes this code generator computes. A group's kernel reads each input element once,
evaluates the members in topological order in registers, rounding every member's value to the
group's dtype as the unfused graph stores it, and writes the group's outputs: one pass over
memory instead of one per node, and one call instead of one per node.

The kernel iterates the output (the inputs' broadcast shape) as rows of its last collapsed
dimension; each input's last-dimension stride is 1 or 0 (a broadcast input's value is read once
a row), which is known per call and makes one variant of the kernel (`fused_codegen.generate`).
One-element constants and the members' parameters are the kernel's `lits` argument, so groups
that differ only in them share one kernel. Calls of 64K elements and more are split
between the session's threads (the kernel's native_call range callback, on numba's threads).

Each variant's source is written to `<cache>/<signature>.py` and compiled by numba with its disk
cache, so later sessions load it (`cache_dir`: EP_CPU_CACHE_DIR, else ~/.cache/ep_cpu/fused).
Compiles run through `ep_cpu.jit_tier`: until a variant is ready, and without numba, the same
expressions run over whole arrays in numpy (`numpy_program`, `_numpy_helpers`).
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ep_core.fusion import Analysis, Group, clip_bounds, plan_elementwise_groups
from ep_core.graph import Graph, Node

from . import jit_tier
from .fused_codegen import (ACTIVATIONS, BINARY, OUTER_DIMS, UNARY, VECTOR_KINDS, Spec, _numpy_helpers,
                            constants, generate, numpy_program)

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
MAX_IN, MAX_OUT, MAX_NODES = 8, 4, 48
# output elements a thread takes where a call is split between threads: numba's TBB threads, or
# (without them) the Python pool, whose hand-off costs ~20-60 us
PARALLEL_MIN, POOL_MIN = 1 << 15, 1 << 18
# output elements below which numpy's ufuncs run the group, and a group of static shape is not
# fused: VAD's Mul+Add+Sqrt over 387 floats took 2.4 us unfused and 6-7 us fused in the model
NUMPY_MAX = 1024


def elementwise_spec(an: Analysis, node: Node) -> Spec | None:
    """How the generated kernel computes `node`, else None: a float32/float64 node of the ops
    above (and the optimizer's FusedAdd with one of the activations) whose values share one
    dtype; Clip's bounds constant scalars."""
    if len(node.outputs) != 1 or not node.outputs[0]:
        return None
    op, domain = node.op_type, node.domain or ""
    given = [i for i in node.inputs if i]
    names = given + [node.outputs[0]]
    dtypes = {an.dtype(v) for v in names}
    if len(dtypes) != 1 or next(iter(dtypes)) not in DTYPES:
        return None
    if domain == "com.ep_core" and op == "FusedAdd":
        if len(given) != 2 or len(node.inputs) != 2:
            return None
        act = node.attr("activation") or None
        if act is None:
            return Spec(BINARY["Add"])
        if act not in ACTIVATIONS:
            return None
        params = [float(p) for p in (node.attr("activation_params") or [])]
        defaults = [d for _, d in ACTIVATIONS[act][1]]
        values = params[:len(defaults)] + defaults[len(params):] + [0.0, 0.0]
        template = ACTIVATIONS[act][0].replace("{0}", BINARY["Add"])
        return Spec(template, values[0], values[1], act if act in VECTOR_KINDS else None, BINARY["Add"])
    if domain not in ("", "ai.onnx"):
        return None
    if op == "Clip":
        bounds = clip_bounds(node, an.const)
        return None if bounds is None else Spec(ACTIVATIONS["Clip"][0], bounds[0], bounds[1])
    if op in BINARY:
        template, arity, params = BINARY[op], 2, ()
    elif op in UNARY:
        template, arity, params = UNARY[op], 1, ()
    elif op in ACTIVATIONS:
        template, params = ACTIVATIONS[op]
        arity = 1
        if op == "Gelu" and node.attr("approximate", "none") != "none":
            return None
    else:
        return None
    if len(given) != arity or len(node.inputs) != arity:
        return None
    values = [float(node.attr(name, default)) for name, default in params] + [0.0, 0.0]
    return Spec(template, values[0], values[1], op if op in VECTOR_KINDS else None)


def _literals(an: Analysis, nodes: list[Node]) -> dict[str, tuple[float, int]]:
    """Inputs the kernel takes as constants, not arrays: constants of one element (Clip's bounds
    among them), each as (value, rank): a (1, 1) constant still broadcasts the output to rank 2."""
    out = {}
    for n in nodes:
        for name in n.inputs:
            if not name:
                continue
            v = an.const(name)
            if v is not None and np.asarray(v).size == 1:
                out[name] = (float(np.asarray(v).reshape(())), np.ndim(v))
    return out


def plan_groups(graph: Graph, nodes: list[Node]) -> list[Group]:
    """The element-wise groups among `nodes`, each with what `FusedElementwise` needs in `info`:
    'specs', 'dtype', 'literals' (the one-element constant inputs' values), 'rank' (the largest of
    theirs) and 'shape'."""
    an = Analysis(graph)

    def large(node: Node) -> bool:   # a lone node worth the kernel: threads split it
        shape = an.shape(node.outputs[0])
        return shape is not None and all(isinstance(d, int) for d in shape) and \
            math.prod(shape) >= 2 * PARALLEL_MIN

    groups = plan_elementwise_groups(an, nodes, set(), elementwise_spec, max_in=MAX_IN,
                                     max_out=MAX_OUT, max_nodes=MAX_NODES,
                                     baked=lambda members: set(_literals(an, members)),
                                     keep_single=large)
    out = []
    for g in groups:
        shape = an.shape(g.outputs[0])
        if not g.inputs or all(isinstance(d, int) for d in shape) and math.prod(shape) < NUMPY_MAX:
            continue   # on so few elements the unfused nodes are as fast (the call costs ~2 us)
        g.info["dtype"] = an.dtype(g.outputs[0])
        held = {k: v for k, v in _literals(an, g.nodes).items() if k not in g.inputs}
        g.info["literals"] = {k: value for k, (value, _) in held.items()}
        g.info["rank"] = max([rank for _, rank in held.values()], default=0)   # the output's at least
        g.info["shape"] = shape
        out.append(g)
    return out


def cache_dir() -> Path:
    """Where generated kernel modules (and numba's cache of them) live."""
    root = os.environ.get("EP_CPU_CACHE_DIR")
    return Path(root) / "fused" if root else Path.home() / ".cache" / "ep_cpu" / "fused"


_modules: dict[str, Any] = {}
_modules_lock = threading.Lock()


def _load(signature: str, text: str) -> Any:
    """The generated module, its `fused` compiled: written to the cache folder and imported
    (numba's disk cache keys on the file), compiled on import."""
    with _modules_lock:
        mod = _modules.get(signature)
        if mod is not None:
            return mod
        name = f"ep_cpu_fused_{signature}"
        try:
            folder = cache_dir()
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{signature}.py"
            if not path.exists() or path.read_text() != text:
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(text)
                os.replace(tmp, path)   # whole or absent: another process may be importing it
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        except OSError:   # no writable cache folder: compile from the text, without the disk cache
            import types
            mod = types.ModuleType(name)
            exec(compile(text.replace("cache=True", "cache=False"), f"<{name}>", "exec"), mod.__dict__)
        _modules[signature] = mod
        return mod


def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


class _Layout:
    """How one set of input shapes runs: output shape, collapsed rows and strides, variant."""
    __slots__ = ("shape", "rows", "n1", "geom", "unit", "kernel", "module", "signature")

    def __init__(self, shapes: tuple[tuple[int, ...], ...], rank: int = 0) -> None:
        shape = tuple(int(d) for d in np.broadcast_shapes(*shapes, (1,) * rank))
        self.shape = shape
        self.kernel = self.module = self.signature = None
        nd = len(shape)
        st = []
        for s in shapes:
            s = (1,) * (nd - len(s)) + tuple(s)
            own = [0] * nd
            acc = 1
            for d in range(nd - 1, -1, -1):
                own[d] = 0 if s[d] == 1 else acc
                acc *= s[d]
            st.append(own)
        # collapse: drop size-1 dims, merge neighbours every input walks contiguously
        dims = [d for d in range(nd) if shape[d] != 1]
        cshape: list[int] = []
        cst: list[list[int]] = [[] for _ in st]
        for d in dims:
            if cshape and all(cs[-1] == s[d] * shape[d] for cs, s in zip(cst, st)):
                cshape[-1] *= shape[d]
                for cs, s in zip(cst, st):
                    cs[-1] = s[d]
                continue
            cshape.append(shape[d])
            for cs, s in zip(cst, st):
                cs.append(s[d])
        if not cshape:
            cshape, cst = [1], [[0] for _ in st]
        self.n1 = cshape[-1]
        self.unit = tuple(cs[-1] == 1 for cs in cst)
        outer = cshape[:-1]
        if len(outer) > OUTER_DIMS:
            self.rows = -1   # numpy runs it
            return
        pad = OUTER_DIMS - len(outer)
        # the outer dims, then each input's strides along them
        geom = [1] * pad + outer
        for cs in cst:
            geom += [0] * pad + cs[:-1]
        self.geom = np.array(geom, np.int64)
        self.rows = int(np.prod(outer, dtype=np.int64))


class FusedElementwise:
    """Compute callable of a fused element-wise node (the CPU provider's `compile` result)."""

    def __init__(self, group: Group, threads: Callable[[], int] | None = None) -> None:
        self.group = group
        self.dtype = np.dtype(group.info["dtype"])
        self.n_out = len(group.outputs)
        self.threads = threads
        self.layouts: dict[tuple, _Layout] = {}
        self.ranges: dict[str, Any] = {}   # kernel signature -> its range callback (cfunc)
        self.sources: dict[tuple, tuple[str, str]] = {}   # variant -> (source, signature)
        self.numba = _numba_available()
        self.lits = np.array(constants(group), self.dtype)   # the kernel's constants (`constants`)
        scope = _numpy_helpers(self.dtype)
        exec(compile(numpy_program(group), f"<fused {group.info.get('name', '')}>", "exec"), scope)
        self._numpy_run = scope["run"]

    def run_numpy(self, *inputs: np.ndarray, shape: tuple | None = None) -> tuple:
        """The group over whole arrays in numpy (same expressions, same per-member rounding);
        outputs of the inputs' broadcast `shape`, new arrays in the dtype."""
        outs = self._numpy_run(*inputs)
        if shape is None:
            shape = np.broadcast_shapes(*[np.shape(x) for x in inputs], (1,) * self.group.info.get("rank", 0))
        dt = self.dtype
        return tuple(v if type(v) is np.ndarray and v.dtype == dt and v.shape == shape and v.base is None
                     else np.array(np.broadcast_to(v, shape), dtype=dt) for v in outs)

    def __call__(self, *inputs: np.ndarray) -> tuple:
        key = tuple([x.shape for x in inputs])
        layout = self.layouts.get(key)
        if layout is None:
            layout = self.layouts[key] = _Layout(key, self.group.info.get("rank", 0))
        total = layout.rows * layout.n1
        if total < NUMPY_MAX or layout.kernel is None and (
                not self.numba or layout.rows < 0 or not self._ready(layout)):
            return self.run_numpy(*inputs, shape=layout.shape)
        dt = self.dtype
        flat = []
        for x in inputs:
            if x.dtype != dt or not x.flags.c_contiguous:
                x = np.ascontiguousarray(x, dtype=dt)
            flat.append(x.reshape(-1))
        outs = [np.empty(layout.shape, dt) for _ in range(self.n_out)]
        flat += [o.reshape(-1) for o in outs]
        workers = 1
        if self.threads is not None and total >= 2 * PARALLEL_MIN:
            from . import native_call   # (numba's: not imported while a session only plans groups)
            per = PARALLEL_MIN if native_call.parallel_ok() else POOL_MIN
            workers = min(self.threads(), total // per)
        if workers > 1 and self._range_ready(layout):
            from .gemm import _get_pool
            args = [total, layout.n1, native_call.address(layout.geom)]
            for x in [self.lits] + flat[:len(inputs)]:
                args += [native_call.address(x), x.size]
            args += [native_call.address(o) for o in flat[len(inputs):]]
            native_call.run_ranges(self.ranges[layout.signature], native_call.pack(*args), total, 1,
                                   workers, True, _get_pool)
        else:
            layout.kernel(0, total, layout.n1, layout.geom, self.lits, *flat)
        return tuple(outs)

    def _ready(self, layout: _Layout) -> bool:
        # (the text once per variant: calls until its build finishes ask again)
        text, signature = self.sources.get(layout.unit) or self.sources.setdefault(
            layout.unit, generate(self.group, layout.unit))
        if not jit_tier.ready(f"fused:{signature}", lambda: _load(signature, text)):
            return False
        layout.module, layout.signature = _load(signature, text), signature
        layout.kernel = layout.module.fused
        return True

    def _range_ready(self, layout: _Layout) -> bool:
        """Whether the kernel's range callback (for calls split between threads) is compiled;
        the first request starts its build."""
        if layout.signature in self.ranges:
            return True
        module = layout.module
        if not jit_tier.ready(f"fused-range:{layout.signature}", module.range_callback):
            return False
        self.ranges[layout.signature] = module.range_callback()
        return True

"""Code generation for fused element-wise groups (ep_cuda.fusion 'elementwise' groups).

One kernel per group: every thread reads its element of each group input (broadcast through
strides), evaluates the group's nodes in topological order in fp32 registers, rounding a value
to float16 wherever the unfused graph stores it as float16, and writes the group outputs. The
scalar math is the same code the unfused kernels use (binop/unop of ew_ops.cuh, act of act.cuh),
so fused and unfused results agree.

The source is keyed by a signature (hash of its text); ep_cuda.loader compiles it with NVRTC once
and keeps the text in the on-disk cache (<cache>/generated/<signature>.cu).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

import kernels_cu

from . import loader
from .fusion import Group
from .launch import (MAXD, blob, broadcast_strides, collapse, ctype, elem_strides, empty, grid,
                     BLOCK)

PRELUDE_FILES = ("common.cuh", "act.cuh", "ew_ops.cuh")


def _prelude() -> str:
    return "\n".join((kernels_cu.DIR / f).read_text() for f in PRELUDE_FILES)


def _flt(v: float) -> str:
    if math.isnan(v):
        return "ep_nan()"
    if math.isinf(v):
        return "ep_inf()" if v > 0 else "(-ep_inf())"
    return f"{float(np.float32(v))!r}f"


def node_expr(spec: tuple, args: list[str]) -> str:
    """C++ expression computing one node from its (fp32) argument variables."""
    kind = spec[0]
    if kind == "b":
        return f"binop<{spec[1]}, float, float>({args[0]}, {args[1]})"
    if kind == "u":
        return f"unop<{spec[1]}, float, float>({args[0]}, 0.0f, 0.0f)"
    if kind == "a":
        code, p0, p1 = spec[1:]
        if code == 17:  # Clip: unop's rule (NaN passes, max wins when min > max)
            return f"unop<25, float, float>({args[0]}, {_flt(p0)}, {_flt(p1)})"
        return f"act<{code}>({args[0]}, {_flt(p0)}, {_flt(p1)})"
    if kind == "addact":
        code, p0, p1 = spec[1:]
        s = f"({args[0]} + {args[1]})"
        if code < 0:
            return s
        if code == 17:
            return f"unop<25, float, float>({s}, {_flt(p0)}, {_flt(p1)})"
        return f"act<{code}>({s}, {_flt(p0)}, {_flt(p1)})"
    if kind == "prelu":
        return f"({args[0]} < 0.0f ? {args[0]} * {args[1]} : {args[0]})"
    if kind in ("cast", "pass"):
        return args[0]
    raise ValueError(f"no code for {spec}")


def generate(group: Group, dtypes: dict[str, np.dtype]) -> tuple[str, str]:
    """(source, signature) of the fused kernel `fused_k` of an element-wise group."""
    ins, outs = group.inputs, group.outputs
    nops = len(ins) + len(outs)
    lines = [f"// fused element-wise kernel: {' -> '.join(group.ops())}",
             "struct FStrides { i64 ndim; i64 shape[EP_MAXD]; i64 st[%d][EP_MAXD]; };" % nops]
    params = [f"const {ctype(dtypes[v])}* __restrict__ in{k}" for k, v in enumerate(ins)]
    params += [f"{ctype(dtypes[v])}* __restrict__ out{k}" for k, v in enumerate(outs)]
    lines.append(f"__global__ void fused_k({', '.join(params)}, i64 n, FStrides s) {{")
    lines.append("  EP_LOOP(i, n) {")
    lines.append(f"    i64 off[{nops}];")
    lines.append(f"    for (int k = 0; k < {nops}; ++k) off[k] = 0;")
    lines.append("    i64 r = i;")
    lines.append("    for (int d = (int)s.ndim - 1; d >= 0; --d) {")
    lines.append("      const i64 c = r % s.shape[d];")
    lines.append("      r /= s.shape[d];")
    lines.append(f"      for (int k = 0; k < {nops}; ++k) off[k] += c * s.st[k][d];")
    lines.append("    }")
    var: dict[str, str] = {}
    for k, v in enumerate(ins):
        var[v] = f"v_in{k}"
        lines.append(f"    const float v_in{k} = cvt<float>(in{k}[off[{k}]]);")
    for j, (node, spec) in enumerate(zip(group.nodes, group.info["specs"])):
        args = [var[i] for i in node.inputs if i][:2] if spec[0] not in ("a", "u", "cast", "pass") \
            else [var[node.inputs[0]]]
        name = f"v{j}"
        expr = node_expr(spec, args)
        if dtypes[node.outputs[0]] == np.float16:   # the unfused graph stores it as float16
            expr = f"h2f(f2h({expr}))"
        lines.append(f"    const float {name} = {expr};  // {node.op_type} {node.name}")
        var[node.outputs[0]] = name
    for k, v in enumerate(outs):
        lines.append(f"    out{k}[off[{len(ins) + k}]] = cvt<{ctype(dtypes[v])}>({var[v]});")
    lines += ["  }", "}"]
    body = "\n".join(lines) + "\n"
    text = _prelude() + "\n" + body
    return text, loader.signature(text)


class FusedElementwise:
    """Compute callable of a fused element-wise node (the provider's `compile` result)."""

    def __init__(self, provider: Any, group: Group, dtypes: dict[str, np.dtype]) -> None:
        self.provider = provider
        self.group = group
        self.dtypes = dtypes
        self.source, self.key = generate(group, dtypes)
        self.out_dtypes = [np.dtype(dtypes[o]) for o in group.outputs]

    def __call__(self, *inputs: Any) -> tuple:
        scope = getattr(self.provider, "scope", None)
        if scope is None:
            return self.run(*inputs)
        with scope():
            return self.run(*inputs)

    def run(self, *inputs: Any) -> tuple:
        shape = tuple(int(d) for d in np.broadcast_shapes(*[tuple(x.shape) for x in inputs]))
        outs = [empty(shape, dt) for dt in self.out_dtypes]
        n = int(np.prod(shape, dtype=np.int64))
        if n == 0:
            return tuple(outs)
        sts = [broadcast_strides(x.shape, elem_strides(x), shape) for x in inputs]
        sts += [list(elem_strides(o)) for o in outs]
        cshape, csts = collapse(shape, sts)
        if len(cshape) > MAXD:
            raise NotImplementedError(f"fused kernel over {len(cshape)} dimensions (at most {MAXD})")
        vals = np.zeros(1 + MAXD + len(csts) * MAXD, np.int64)
        vals[0] = len(cshape)
        vals[1:1 + len(cshape)] = cshape
        for k, st in enumerate(csts):
            base = 1 + MAXD + k * MAXD
            vals[base:base + len(cshape)] = st
        fn = loader.get_source_kernel(self.key, self.source, "fused_k")
        fn(grid(n), (BLOCK,), tuple(inputs) + tuple(outs) + (np.int64(n), blob(vals)))
        return tuple(outs)


__all__ = ["generate", "FusedElementwise", "node_expr", "Sequence"]

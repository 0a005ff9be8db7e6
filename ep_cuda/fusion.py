"""Which nodes the CUDA provider fuses (compile API): pure graph analysis, no CuPy.

Three kinds of groups, each a convex set of nodes the provider claims as one `MetaDef`:

* ``gemm``: a MatMul/Gemm and the chain that follows it when the chain fits the GEMM epilogue:
  scalar Mul/Div by a constant (folded into alpha), up to two Adds of tensors that broadcast
  into the product (C and the residual R), then one activation. One kernel launch.
* ``elementwise``: a chain/DAG of element-wise ops on float32/float16 tensors of one shape
  (inputs broadcast into it): one generated kernel (ep_cuda.codegen).
* ``region`` (provider option ``enable_cuda_graph``): every capturable node, captured into a
  CUDA graph by ep_cuda.compiled.GraphRegion (gemm/elementwise groups are fused inside it).

The graph analysis and the element-wise group finder are shared with the CPU provider
(`ep_core.fusion`); this module says what CUDA's generated code computes (`elementwise_spec`)
and plans the gemm groups and CUDA-graph regions.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import numpy as np

from ep_core.fusion import Analysis, Group, _same_shape, add_to_group, clip_bounds
from ep_core.fusion import plan_elementwise_groups as find_elementwise_groups
from ep_core.graph import Node

FLOAT_TYPES = (np.dtype(np.float32), np.dtype(np.float16))
FUSED_DOMAIN = "com.ep_core"

# element-wise ONNX ops -> (kind, code) ; kinds: 'b' binop, 'u' unop, 'a' activation
BINARY = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3, "Pow": 4, "Max": 7, "Min": 8}
UNARY = {"Abs": 0, "Neg": 1, "Exp": 2, "Log": 3, "Sqrt": 4, "Reciprocal": 5, "Floor": 6,
         "Ceil": 7, "Round": 8, "Sign": 9, "Sin": 10, "Cos": 11, "Tan": 12, "Asin": 13,
         "Acos": 14, "Atan": 15, "Sinh": 16, "Cosh": 17, "Asinh": 18, "Acosh": 19, "Atanh": 20}
U_CLIP = 25
A_CLIP, A_GELU_TANH = 17, 9
PASS = ("Identity", "Dropout")
SYNC_OPS = ("NonZero",)   # read device data on the host mid-run: never captured in a CUDA graph


def activation_of(node: Node, const: Callable[[str], Any]) -> tuple[int, float, float] | None:
    """(act.cuh code, p0, p1) when `node` is a pure activation of its first input."""
    from .kernels.activation import ACTIVATIONS
    from .kernels.fused import FUSED_ACTIVATIONS
    if node.domain in ("", "ai.onnx") and node.op_type in ACTIVATIONS:
        if len([i for i in node.inputs if i]) != 1:
            return None
        code, _, params = ACTIVATIONS[node.op_type]
        if node.op_type == "Gelu" and node.attr("approximate", "none") == "tanh":
            code = A_GELU_TANH
        vals = [float(node.attr(n, d)) for n, d in params] + [0.0, 0.0]
        return code, vals[0], vals[1]
    if node.domain in ("", "ai.onnx") and node.op_type == "Clip":
        bounds = clip_bounds(node, const)
        return None if bounds is None else (A_CLIP, bounds[0], bounds[1])
    if node.domain == FUSED_DOMAIN and node.op_type in ("Gelu", "FastGelu"):
        if len([i for i in node.inputs if i]) != 1:
            return None
        return FUSED_ACTIVATIONS[node.op_type][0], 0.0, 0.0
    return None   # (FusedAdd is an add and an activation: see fused_add_activation)


def fused_add_activation(node: Node) -> tuple[int, float, float] | None:
    """FusedAdd's activation as (code, p0, p1); code -1 when it has none."""
    from .kernels.fused import _DEFAULTS, FUSED_ACTIVATIONS
    act = node.attr("activation") or None
    if act is None:
        return -1, 0.0, 0.0
    if act not in FUSED_ACTIVATIONS:
        return None
    names = FUSED_ACTIVATIONS[act][1]
    given = [float(p) for p in (node.attr("activation_params") or [])]
    vals = [given[k] if k < len(given) else _DEFAULTS.get((act, n), 0.0) for k, n in enumerate(names)]
    vals += [0.0, 0.0]
    return FUSED_ACTIVATIONS[act][0], vals[0], vals[1]


def _all_float(an: Analysis, node: Node) -> bool:
    names = [i for i in node.inputs if i] + [o for o in node.outputs if o]
    return all(an.dtype(v) in FLOAT_TYPES for v in names)


def elementwise_spec(an: Analysis, node: Node) -> tuple | None:
    """How the generated kernel computes `node` (None: not fusible)."""
    if not _all_float(an, node) or len([o for o in node.outputs if o]) != 1:
        return None
    dom = node.domain or ""
    if dom in ("", "ai.onnx"):
        op = node.op_type
        n_in = len([i for i in node.inputs if i])
        if op in BINARY and n_in == 2 and len(node.inputs) == 2:
            return ("b", BINARY[op])
        if op in UNARY and n_in == 1:
            return ("u", UNARY[op])
        if op == "PRelu" and n_in == 2:
            return ("prelu",)
        if op == "Cast" and n_in == 1:
            return ("cast",)
        if op in PASS and n_in == 1 and len(node.outputs) == 1 and \
                not (op == "Dropout" and (len(node.inputs) > 2 and node.inputs[2])):
            return ("pass",)
        act = activation_of(node, an.const)
        if act is not None:
            return ("a",) + act
        return None
    if dom == FUSED_DOMAIN and node.op_type == "FusedAdd":
        act = fused_add_activation(node)
        return None if act is None else ("addact",) + act
    if dom == FUSED_DOMAIN:
        act = activation_of(node, an.const)
        return None if act is None else ("a",) + act
    return None


# ------------------------------------------------------------------------------- planning
MAX_IN, MAX_OUT = 8, 4


def plan_gemm_groups(an: Analysis, eligible: list[Node], taken: set[int]) -> list[Group]:
    """MatMul/Gemm + epilogue chains."""
    groups = []
    elig = set(map(id, eligible))
    for anchor in eligible:
        if id(anchor) in taken or (anchor.domain or "") not in ("", "ai.onnx"):
            continue
        if anchor.op_type not in ("MatMul", "Gemm") or not _all_float(an, anchor):
            continue
        out_shape = an.shape(anchor.outputs[0])
        if anchor.op_type == "MatMul":
            ra, rb = (an.shape(i) for i in anchor.inputs[:2])
            if ra is None or rb is None or len(ra) < 2 or len(rb) < 2:
                continue
        chain, info = [anchor], {"alpha": 1.0, "adds": [], "act": (-1, 0.0, 0.0)}
        has_c = anchor.op_type == "Gemm" and len(anchor.inputs) > 2 and bool(anchor.inputs[2])
        cur = anchor.outputs[0]
        while True:
            users = an.consumers.get(cur, [])
            if len(users) != 1 or cur in an.graph_outputs:
                break
            nxt = users[0]
            if id(nxt) not in elig or id(nxt) in taken or not _all_float(an, nxt):
                break
            mask = an.mask(chain)
            if not an.can_join(nxt, mask) or not _same_shape(an.shape(nxt.outputs[0]), out_shape):
                break
            spec = elementwise_spec(an, nxt)
            if spec is None:
                break
            other = [i for i in nxt.inputs if i and i != cur]
            n_adds = len(info["adds"]) + int(has_c)
            if info["act"][0] >= 0:
                break
            if spec[0] == "b" and spec[1] in (2, 3) and not info["adds"] and anchor.op_type == "MatMul" \
                    and len(other) == 1 and nxt.inputs[0] == cur:
                v = an.const(other[0])
                if v is None or np.asarray(v).size != 1:
                    break
                s = float(np.asarray(v).reshape(()))
                info["alpha"] *= s if spec[1] == 2 else 1.0 / s
            elif spec[0] == "b" and spec[1] == 0 and len(other) == 1 and n_adds < 2:
                info["adds"].append(other[0])
            elif spec[0] == "addact" and len(other) == 1 and n_adds < 2:
                info["adds"].append(other[0])
                info["act"] = spec[1:]
            elif spec[0] == "a":
                info["act"] = spec[1:]
            else:
                break
            chain.append(nxt)
            cur = nxt.outputs[0]
        if len(chain) < 2:
            continue
        ins, outs = an.boundary(chain)
        if len(outs) != 1:
            continue
        baked = {i for n in chain[1:] for i in n.inputs if i and i not in info["adds"]
                 and i != n.inputs[0] and an.const(i) is not None} - set(anchor.inputs)
        ins = [i for i in ins if i not in baked]
        taken.update(map(id, chain))
        groups.append(Group("gemm", chain, ins, outs, info))
    return groups


def _baked_clip_bounds(nodes: list[Node]) -> set[str]:
    """Clip bounds the generated code holds as literals, unless a node of the group also reads
    the same value as a tensor (then it stays a group input)."""
    bounds = {n.inputs[k] for n in nodes if n.op_type == "Clip"
              for k in (1, 2) if len(n.inputs) > k and n.inputs[k]}
    read = {i for n in nodes for k, i in enumerate(n.inputs)
            if i and not (n.op_type == "Clip" and k in (1, 2))}
    return bounds - read


# The shared finder with what CUDA's generated code computes and holds as literals.
plan_elementwise_groups = partial(find_elementwise_groups, spec_of=elementwise_spec, max_in=MAX_IN,
                                  max_out=MAX_OUT, baked=_baked_clip_bounds)


def capturable(an: Analysis, node: Node, kdef: Any) -> str:
    """'' when `node` can run inside a captured CUDA graph, else the reason it cannot."""
    if node.op_type in SYNC_OPS:
        return "reads device data on the host (data-dependent output size)"
    host_in = set(getattr(kdef, "host_inputs", ()) or ())
    for k, name in enumerate(node.inputs):
        if not name:
            continue
        p = an.producer.get(name)
        host_value = p is not None and _is_host_output(p, name)
        if k in host_in and not (name in an.constants or host_value):
            return f"input '{name}' is read on the host but computed at run time"
        if k not in host_in and host_value:
            return f"input '{name}' is a host value produced mid-run"
    return ""


def host_reads_from_outside(an: Analysis, group: Group, kernel_lookup: Callable) -> list[tuple[Node, str]]:
    """Nodes of a region reading a host-memory input that is neither a constant nor produced
    inside the region: the region (a fused node) would get it uploaded to the device and read it
    back while capturing, which a capture forbids. They must run outside the region."""
    inside = {o for n in group.nodes for o in n.outputs if o}
    out = []
    for n in group.nodes:
        kdef = kernel_lookup(n)
        for k in getattr(kdef, "host_inputs", ()) or ():
            name = n.inputs[k] if k < len(n.inputs) else ""
            if name and name not in an.constants and name not in inside:
                out.append((n, f"input '{name}' is read on the host and produced outside the region"))
                break
    return out


def _is_host_output(node: Node, name: str) -> bool:
    return node.op_type in ("Shape", "Size") and (node.domain or "") in ("", "ai.onnx")


def prepare_for_compile(an: Analysis, g: Group, fuse: bool = True) -> Group:
    """Record in `g.info` everything compile needs, so compile works from the group alone:
    'dtypes' of its values, 'constants' (host values of the session constants its nodes read)
    and, for a CUDA-graph region, the gemm/element-wise 'subgroups' fused inside it."""
    names = set(g.inputs) | {v for n in g.nodes for v in list(n.inputs) + list(n.outputs) if v}
    g.info["dtypes"] = {v: an.dtype(v) for v in names}
    g.info["constants"] = {i: an.constants[i] for n in g.nodes for i in n.inputs if i in an.constants}
    if g.kind == "region":
        taken: set[int] = set()
        subs = (plan_gemm_groups(an, g.nodes, taken) + plan_elementwise_groups(an, g.nodes, taken)) if fuse else []
        g.info["subgroups"] = [prepare_for_compile(an, sub) for sub in subs]
    return g


def plan_regions(an: Analysis, eligible: list[Node]) -> list[Group]:
    """Maximal convex groups of capturable nodes (CUDA graphs)."""
    elig = {id(n) for n in eligible}
    groups: list[dict] = []
    member: dict[int, int] = {}
    for n in an.order:
        if id(n) not in elig:
            continue
        for gi in sorted({member[id(p)] for i in n.inputs
                          if (p := an.producer.get(i)) is not None and id(p) in member}
                         | ({len(groups) - 1} if groups else set())):
            if an.can_join(n, groups[gi]["mask"]):
                add_to_group(an, groups, member, n, gi)
                break
        else:
            add_to_group(an, groups, member, n)
    out = []
    for g in groups:
        ins, outs = an.boundary(g["nodes"])
        # constants are baked into the region (host-read ones must not be uploaded per run)
        out.append(Group("region", g["nodes"], [i for i in ins if i not in an.constants], outs, {}))
    return out

"""Protobuf field edits of real models: seeded, structure-aware mutations (1 to 3 per case) of
initializers, nodes, attributes, value types, opsets and bodies. Expectation "any": a typed
error, or a run that matches an oracle.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from hostile_base import Case, Input, base
from onnx import AttributeProto, TensorProto, helper

_BASES = ("bert", "lstm", "gpt2", "cnn", "control")
_ODD_INTS = [-(2 ** 63), -(2 ** 31), -7, -1, 0, 1, 2, 3, 63, 2 ** 31 - 1, 2 ** 40, 2 ** 63 - 1]
_OPS = ["Relu", "Conv", "MatMul", "Foo", "", "If", "Loop", "Reshape", "Gather", "Identity", "Einsum",
        "Resize", "NonZero", "Scan", "Softmax", "Cast", "Unique"]
_DOMAINS = ["", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.ep_core", "bogus.domain"]
_LOCATIONS = ["/etc/passwd", "../../etc/passwd", "weights.bin", "", ".", "/dev/zero", "a/../../b"]


def _graphs(m: onnx.ModelProto) -> list[onnx.GraphProto]:
    out, stack = [], [m.graph]
    while stack:
        g = stack.pop()
        out.append(g)
        for n in g.node:
            for a in n.attribute:
                if a.HasField("g"):
                    stack.append(a.g)
                stack.extend(a.graphs)
    return out


def _pick(rng, seq):
    seq = list(seq)
    return seq[int(rng.integers(0, len(seq)))] if seq else None


def _values(g: onnx.GraphProto) -> list[str]:
    names = [v.name for v in g.input] + [t.name for t in g.initializer]
    return names + [o for n in g.node for o in n.output]


# Each edit mutates the model in place; returns False when it does not apply.
def e_init_dims(m, rng):
    t = _pick(rng, m.graph.initializer)
    if t is None:
        return False
    dims = list(t.dims)
    choice = int(rng.integers(0, 5))
    if choice == 0 and dims:
        dims[int(rng.integers(0, len(dims)))] = _pick(rng, _ODD_INTS)
    elif choice == 1:
        dims.append(int(rng.integers(0, 4)))
    elif choice == 2 and dims:
        dims.pop()
    elif choice == 3:
        dims = dims[::-1]
    else:
        dims = [0] + dims
    del t.dims[:]
    t.dims.extend(dims)
    return True


def e_init_dtype(m, rng):
    t = _pick(rng, m.graph.initializer)
    if t is None:
        return False
    t.data_type = _pick(rng, [0, 1, 2, 6, 7, 8, 10, 11, 16, 17, 21, 22, 23, 29, 99, -1, 2 ** 31 - 1])
    return True


def e_init_raw(m, rng):
    ts = [t for t in m.graph.initializer if t.HasField("raw_data")]
    t = _pick(rng, ts)
    if t is None:
        return False
    raw = t.raw_data
    k = int(rng.integers(0, 3))
    t.raw_data = raw[: len(raw) // 2] if k == 0 else raw + b"\0" * int(rng.integers(1, 9)) if k == 1 else b""
    return True


def e_init_field(m, rng):
    t = _pick(rng, m.graph.initializer)
    if t is None:
        return False
    n = int(np.prod(t.dims)) if len(t.dims) else 1
    field = _pick(rng, ["float_data", "int32_data", "int64_data", "double_data", "string_data"])
    t.ClearField("raw_data")
    vals = [b"x"] * min(n, 64) if field == "string_data" else [1] * min(n, 64)
    getattr(t, field).extend(vals)
    return True


def e_init_external(m, rng):
    t = _pick(rng, m.graph.initializer)
    if t is None:
        return False
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", _pick(rng, _LOCATIONS)
    return True


def e_init_rename(m, rng):
    t = _pick(rng, m.graph.initializer)
    if t is None:
        return False
    t.name = _pick(rng, ["", "renamed", t.name + "_x"] + _values(m.graph)[:5])
    return True


def e_node_op(m, rng):
    n = _pick(rng, [n for g in _graphs(m) for n in g.node])
    if n is None:
        return False
    n.op_type = _pick(rng, _OPS)
    return True


def e_node_domain(m, rng):
    n = _pick(rng, [n for g in _graphs(m) for n in g.node])
    if n is None:
        return False
    n.domain = _pick(rng, _DOMAINS)
    return True


def e_node_delete(m, rng):
    g = _pick(rng, _graphs(m))
    if not len(g.node):
        return False
    del g.node[int(rng.integers(0, len(g.node)))]
    return True


def e_node_duplicate(m, rng):
    g = _pick(rng, _graphs(m))
    n = _pick(rng, g.node)
    if n is None:
        return False
    c = onnx.NodeProto()
    c.CopyFrom(n)
    g.node.insert(int(rng.integers(0, len(g.node) + 1)), c)
    return True


def e_node_swap(m, rng):
    g = _pick(rng, _graphs(m))
    if len(g.node) < 2:
        return False
    i, j = (int(x) for x in rng.choice(len(g.node), 2, replace=False))
    a, b = onnx.NodeProto(), onnx.NodeProto()
    a.CopyFrom(g.node[i])
    b.CopyFrom(g.node[j])
    g.node[i].CopyFrom(b)
    g.node[j].CopyFrom(a)
    return True


def e_node_input(m, rng):
    g = _pick(rng, _graphs(m))
    n = _pick(rng, [n for n in g.node if len(n.input)])
    if n is None:
        return False
    k = int(rng.integers(0, len(n.input)))
    n.input[k] = _pick(rng, ["", "nobody", *_values(g)])
    return True


def e_node_output(m, rng):
    g = _pick(rng, _graphs(m))
    n = _pick(rng, [n for n in g.node if len(n.output)])
    if n is None:
        return False
    n.output[int(rng.integers(0, len(n.output)))] = _pick(rng, ["", *_values(g)])
    return True


def e_node_arity(m, rng):
    g = _pick(rng, _graphs(m))
    n = _pick(rng, g.node)
    if n is None:
        return False
    if rng.integers(0, 2) and len(n.input):
        del n.input[-1]
    else:
        n.input.append(_pick(rng, _values(g)) or "x")
    return True


def e_attr_drop(m, rng):
    n = _pick(rng, [n for g in _graphs(m) for n in g.node if len(n.attribute)])
    if n is None:
        return False
    del n.attribute[int(rng.integers(0, len(n.attribute)))]
    return True


def e_attr_value(m, rng):
    n = _pick(rng, [n for g in _graphs(m) for n in g.node if len(n.attribute)])
    if n is None:
        return False
    a = n.attribute[int(rng.integers(0, len(n.attribute)))]
    if a.type == AttributeProto.INT:
        a.i = _pick(rng, _ODD_INTS)
    elif a.type == AttributeProto.INTS:
        del a.ints[:]
        a.ints.extend(_pick(rng, _ODD_INTS) for _ in range(int(rng.integers(0, 5))))
    elif a.type == AttributeProto.FLOAT:
        a.f = _pick(rng, [float("nan"), float("inf"), -1e30, 0.0])
    elif a.type == AttributeProto.STRING:
        a.s = _pick(rng, [b"", b"BOGUS", b"\xff\xfe"])
    elif a.type == AttributeProto.GRAPH:
        a.g.ClearField("node")
    else:
        return False
    return True


def e_attr_type(m, rng):
    n = _pick(rng, [n for g in _graphs(m) for n in g.node if len(n.attribute)])
    if n is None:
        return False
    a = n.attribute[int(rng.integers(0, len(n.attribute)))]
    a.type = _pick(rng, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14])
    return True


def e_attr_add(m, rng):
    n = _pick(rng, [n for g in _graphs(m) for n in g.node])
    if n is None:
        return False
    n.attribute.append(helper.make_attribute(_pick(rng, ["bogus", "axis", "perm", "to"]), int(rng.integers(-3, 4))))
    return True


def e_value_type(m, rng):
    vis = [v for g in _graphs(m) for v in list(g.input) + list(g.output) + list(g.value_info)]
    v = _pick(rng, vis)
    if v is None:
        return False
    k = int(rng.integers(0, 4))
    if k == 0:
        v.type.tensor_type.elem_type = _pick(rng, [0, 1, 7, 8, 9, 11, 29, 99])
    elif k == 1:
        v.ClearField("type")
    elif k == 2:
        dims = v.type.tensor_type.shape.dim
        if len(dims):
            dims[int(rng.integers(0, len(dims)))].dim_value = _pick(rng, _ODD_INTS)
    else:
        v.type.sequence_type.elem_type.tensor_type.elem_type = 1
    return True


def e_graph_io(m, rng):
    g = m.graph
    k = int(rng.integers(0, 4))
    if k == 0 and len(g.output):
        del g.output[int(rng.integers(0, len(g.output)))]
    elif k == 1:
        g.output.append(helper.make_tensor_value_info(_pick(rng, ["nobody", *_values(g)]), 1, None))
    elif k == 2 and len(g.input):
        del g.input[int(rng.integers(0, len(g.input)))]
    else:
        g.input.append(helper.make_tensor_value_info(_pick(rng, ["extra", *_values(g)]), 1, [2]))
    return True


def e_opset(m, rng):
    k = int(rng.integers(0, 4))
    if k == 0:
        m.opset_import[0].version = int(rng.integers(0, 30))
    elif k == 1:
        m.ClearField("opset_import")
    elif k == 2:
        m.opset_import.append(helper.make_opsetid(_pick(rng, ["", "ai.onnx", "com.microsoft"]), int(rng.integers(1, 25))))
    else:
        m.opset_import[0].domain = _pick(rng, ["ai.onnx.ml", "bogus", "ai.onnx"])
    return True


def e_ir_version(m, rng):
    m.ir_version = int(rng.integers(0, 16))
    return True


def e_metadata(m, rng):
    helper.set_model_props(m, {"ep_core.optimized": "1", "ep_core.placement": "{bogus"})
    return True


def e_body(m, rng):
    bodies = _graphs(m)[1:]
    g = _pick(rng, bodies)
    if g is None:
        return False
    k = int(rng.integers(0, 4))
    if k == 0 and len(g.input):
        del g.input[int(rng.integers(0, len(g.input)))]
    elif k == 1 and len(g.output):
        del g.output[int(rng.integers(0, len(g.output)))]
    elif k == 2:
        g.output.append(helper.make_tensor_value_info(_pick(rng, _values(g) or ["z"]), 1, None))
    else:
        g.input.append(helper.make_tensor_value_info("extra_in", 1, [3]))
    return True


EDITS: list[Callable] = [e_init_dims, e_init_dtype, e_init_raw, e_init_field, e_init_external,
                         e_init_rename, e_node_op, e_node_domain, e_node_delete, e_node_duplicate,
                         e_node_swap, e_node_input, e_node_output, e_node_arity, e_attr_drop,
                         e_attr_value, e_attr_type, e_attr_add, e_value_type, e_graph_io, e_opset,
                         e_ir_version, e_metadata, e_body]


def edited(name: str, seed: int) -> Input:
    m, feeds = base(name)
    rng = np.random.default_rng(10_000 + seed)
    applied = 0
    for _ in range(20):
        if applied >= int(rng.integers(1, 4)):
            break
        applied += bool(_pick(rng, EDITS)(m, rng))
    try:
        data = m.SerializeToString()
    except Exception:   # an edit protobuf itself refuses to write: keep the in-memory proto
        return Input(m, feeds)
    return Input(data, feeds)


def edit_cases(long: bool) -> list[Case]:
    per_base = 26 if not long else 300
    return [Case(f"edit_{name}_{k}", "edit", "any", lambda d, n=name, k=k: edited(n, k))
            for name in _BASES for k in range(per_base)]

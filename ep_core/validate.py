"""Model checks that onnx's checker and strict shape inference do not make.

Before onnx sees the model (`check_structure`, `check_opsets`, `check_value_types`): every
string is valid UTF-8 (protobuf hands invalid ones to Python as bytes), nesting is bounded (a
2000-level If chain must be a typed error, not a RecursionError), element types are known codes,
opset imports are unambiguous and no newer than onnx's schemas.

After the graph is built (`check_graph`): schema knowledge onnx leaves to the kernels — Conv and
ConvTranspose weights against `group`, `kernel_shape`, bias and input channels; pooling pads
smaller than the kernel; `auto_pad` values; windows that fit the padded input. Each failure is
an `InvalidGraph` naming the node.
"""
from __future__ import annotations

from typing import Any, Callable

import onnx
from onnx import TensorProto

from .errors import InvalidGraph, InvalidProtobuf, ResourceLimit
from .graph import Graph, Node
from .types import tensor_shape

MAX_MESSAGE_DEPTH = 100   # protobuf's own parse limit: a ModelProto built in Python gets no deeper
MAX_SPARSE_DENSE_BYTES = 2 << 30   # sparse tensors are densified at load; above this only by option
_KNOWN_ELEM_TYPES = frozenset(v for k, v in TensorProto.DataType.items() if k != "UNDEFINED")
_AUTO_PAD = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


# --- structure --------------------------------------------------------------------------------

_FIELD_CACHE: dict[str, tuple[list, list]] = {}


def _fields(desc: Any) -> tuple[list, list]:
    """(string fields, message fields) of a message type as (name, repeated) pairs."""
    got = _FIELD_CACHE.get(desc.full_name)
    if got is None:
        strings, messages = [], []
        for fd in desc.fields:
            repeated = fd.is_repeated
            if fd.type == fd.TYPE_STRING:
                strings.append((fd.name, repeated))
            elif fd.type == fd.TYPE_MESSAGE:
                messages.append((fd.name, repeated))
        got = _FIELD_CACHE[desc.full_name] = (strings, messages)
    return got


def check_structure(model: onnx.ModelProto, label: str) -> None:
    """Every string field is valid UTF-8 and messages nest at most MAX_MESSAGE_DEPTH deep."""
    stack: list[tuple[Any, int, tuple]] = [(model, 0, ())]
    while stack:
        msg, depth, path = stack.pop()
        strings, messages = _fields(msg.DESCRIPTOR)
        for name, repeated in strings:
            if repeated:
                for k, v in enumerate(getattr(msg, name)):
                    if type(v) is not str:
                        _bad_string(label, path + ((name, k),), v)
            elif msg.HasField(name) and type(getattr(msg, name)) is not str:
                _bad_string(label, path + ((name, None),), getattr(msg, name))
        for name, repeated in messages:
            if repeated:
                children = getattr(msg, name)
                if not len(children):
                    continue
                if depth + 1 > MAX_MESSAGE_DEPTH:
                    _too_deep(label, path)
                stack.extend((c, depth + 1, path + ((name, k),)) for k, c in enumerate(children))
            elif msg.HasField(name):
                if depth + 1 > MAX_MESSAGE_DEPTH:
                    _too_deep(label, path)
                stack.append((getattr(msg, name), depth + 1, path + ((name, None),)))


def _path(path: tuple) -> str:
    return ".".join(n if k is None else f"{n}[{k}]" for n, k in path) or "model"


def _bad_string(label: str, path: tuple, value: Any) -> None:
    raise InvalidProtobuf(f"{label}: {_path(path)} is not valid UTF-8 ({bytes(value)[:40]!r})")


def _too_deep(label: str, path: tuple) -> None:
    raise InvalidGraph(f"{label}: messages nest more than {MAX_MESSAGE_DEPTH} levels deep (at "
                       f"{_path(path)[:200]}...); deeper models cannot be parsed from a file either")


def opset_map(model: onnx.ModelProto) -> dict[str, int]:
    """Domain ("" for ai.onnx) -> opset version."""
    ops = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
    ops.setdefault("", 1)
    return ops


def check_opsets(model: onnx.ModelProto, label: str) -> None:
    seen: dict[str, int] = {}
    for o in model.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        if o.version < 1:
            raise InvalidGraph(f"{label}: opset import for domain '{o.domain}' has version {o.version}")
        if seen.get(domain, o.version) != o.version:
            raise InvalidGraph(f"{label}: domain '{o.domain or 'ai.onnx'}' is imported at two "
                               f"versions, {seen[domain]} and {o.version}")
        seen[domain] = o.version
    newest = onnx.defs.onnx_opset_version()
    if seen.get("", 0) > newest:
        raise InvalidGraph(f"{label}: imports ai.onnx opset {seen['']}; the newest this runtime "
                           f"knows is {newest}")


def _types_of(vi: onnx.ValueInfoProto):
    stack = [vi.type] if vi.HasField("type") else []
    while stack:
        tp = stack.pop()
        kind = tp.WhichOneof("value")
        if kind in ("tensor_type", "sparse_tensor_type"):
            yield getattr(tp, kind).elem_type
        elif kind in ("sequence_type", "optional_type"):
            inner = getattr(tp, kind)
            if inner.HasField("elem_type"):
                stack.append(inner.elem_type)
        elif kind == "map_type":
            yield tp.map_type.key_type
            if tp.map_type.HasField("value_type"):
                stack.append(tp.map_type.value_type)


def check_value_types(model: onnx.ModelProto, label: str) -> None:
    """Element types of every declared value are known codes (an unknown one is no type)."""
    stack = [(model.graph, "main graph")]
    while stack:
        g, where = stack.pop()
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            for code in _types_of(vi):
                if code not in _KNOWN_ELEM_TYPES:
                    raise InvalidGraph(f"{label}: value '{vi.name}' of the {where} has unknown "
                                       f"element type {code}")
        for n in g.node:
            for a in n.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    stack.append((sub, f"body '{a.name}' of node '{n.name}'"))


def check_sparse_sizes(model: onnx.ModelProto, label: str, max_tensor_bytes: int = 0) -> None:
    """Sparse initializers and attributes are densified at load: refuse sizes above the session's
    `max_tensor_bytes` (or MAX_SPARSE_DENSE_BYTES when unset) before anything is allocated."""
    from .load_tensors import byte_size, check_data_type, elem_count
    limit = max_tensor_bytes or MAX_SPARSE_DENSE_BYTES
    stack = [(model.graph, "main graph")] + [(f, f"function '{f.name}'") for f in model.functions]
    while stack:
        g, where = stack.pop()
        found = [(sp, f"{where}: sparse initializer '{sp.values.name}'")
                 for sp in getattr(g, "sparse_initializer", ())]
        for n in g.node:
            for a in n.attribute:
                at = f"{where}: node '{n.name}' attribute '{a.name}'"
                found += [(sp, at) for sp in ([a.sparse_tensor] if a.HasField("sparse_tensor") else [])]
                found += [(sp, at) for sp in a.sparse_tensors]
                stack += [(sub, at) for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs)]
        for sp, at in found:
            check_data_type(sp.values.data_type, f"{label}: {at}")
            dense = onnx.TensorProto(dims=list(sp.dims))
            nbytes = byte_size(sp.values.data_type, elem_count(dense, f"{label}: {at}"))
            if nbytes > limit:
                raise ResourceLimit(f"{label}: {at} densifies to {nbytes} bytes, above the limit of "
                                    f"{limit} bytes (SessionOptions.max_tensor_bytes)")


# --- nodes --------------------------------------------------------------------------------------

def check_graph(graph: Graph) -> None:
    """Node checks with schema knowledge, over the graph and every body."""
    stack = [graph]
    while stack:
        g = stack.pop()
        for n in g.nodes:
            check = _NODE_CHECKS.get((n.domain, n.op_type))
            if check is not None:
                check(n, g)
            for name, allowed in _ENUM_ATTRS.get((n.domain, n.op_type), {}).items():
                value = n.attrs.get(name)
                for v in value if isinstance(value, list) else [] if value is None else [value]:
                    if v not in allowed:
                        _fail(n, f"attribute {name}={v!r} is not one of {', '.join(sorted(allowed))}")
            stack.extend(n.subgraphs)


def _shape(g: Graph, name: str) -> list | None:
    if not name:
        return None
    if name in g.initializers:
        return list(g.initializers[name].shape)
    return tensor_shape(g.type_of(name))


def _known(d: Any) -> bool:
    return isinstance(d, int) and d > 0


def _fail(n: Node, what: str) -> None:
    raise InvalidGraph(f"{n.describe()}: {what}")


def _auto_pad(n: Node) -> str:
    pad = n.attr("auto_pad", "NOTSET")
    if pad not in _AUTO_PAD:
        _fail(n, f"auto_pad '{pad}' is not one of {', '.join(_AUTO_PAD)}")
    return pad


def _window_fits(n: Node, x: list | None, kernel: list, what: str) -> None:
    """With explicit pads, every spatial output has at least one element."""
    if x is None or _auto_pad(n) != "NOTSET":
        return
    spatial = len(kernel)
    if len(x) != spatial + 2:
        return
    pads = n.attr("pads") or [0] * (2 * spatial)
    dilations = n.attr("dilations") or [1] * spatial
    if len(pads) != 2 * spatial or len(dilations) != spatial:
        return
    for i, k in enumerate(kernel):
        size = x[2 + i]
        if _known(size) and _known(k) and size + pads[i] + pads[i + spatial] < dilations[i] * (k - 1) + 1:
            _fail(n, f"the {what} window ({k}, dilation {dilations[i]}) is larger than the padded "
                     f"input ({size} + pads {pads[i]}, {pads[i + spatial]}) along spatial axis {i}")


def _conv_shapes(n: Node, g: Graph) -> tuple[int, list | None, list, list | None] | None:
    """Checks Conv and ConvTranspose share (group, auto_pad, kernel_shape against the weight);
    (group, X's shape, W's shape, kernel_shape) when W's shape is known."""
    group = n.attr("group", 1)
    if group < 1:
        _fail(n, f"group must be >= 1, got {group}")
    _auto_pad(n)
    x, w = _shape(g, n.inputs[0]), _shape(g, n.inputs[1])
    if w is None or len(w) < 3:
        return None
    kernel = n.attr("kernel_shape")
    if kernel is not None and any(_known(d) and d != k for d, k in zip(w[2:], kernel)):
        _fail(n, f"kernel_shape {list(kernel)} disagrees with the weight's shape {w}")
    return group, x, w, kernel


def _check_conv(n: Node, g: Graph) -> None:
    shapes = _conv_shapes(n, g)
    if shapes is None:
        return
    group, x, w, kernel = shapes
    m = w[0]
    if _known(m) and m % group:
        _fail(n, f"the weight's {m} output channels are not divisible by group {group}")
    if x is not None and len(x) == len(w) and _known(x[1]) and _known(w[1]) and x[1] != w[1] * group:
        _fail(n, f"input has {x[1]} channels; weight {w} with group {group} expects {w[1] * group}")
    if len(n.inputs) > 2:
        b = _shape(g, n.inputs[2])
        if b is not None and _known(m) and b != [m] and all(isinstance(d, int) for d in b):
            _fail(n, f"bias has shape {b}; the weight has {m} output channels")
    _window_fits(n, x, list(kernel or w[2:]), "kernel")


def _check_conv_transpose(n: Node, g: Graph) -> None:
    shapes = _conv_shapes(n, g)
    if shapes is None:
        return
    group, x, w, _ = shapes
    spatial = len(w) - 2
    if x is not None and len(x) == len(w) and _known(x[1]) and _known(w[0]) and x[1] != w[0]:
        _fail(n, f"input has {x[1]} channels; the weight {w} expects {w[0]}")
    strides = n.attr("strides") or [1] * spatial
    dilations = n.attr("dilations") or [1] * spatial
    for i, p in enumerate(n.attr("output_padding") or []):
        if i < spatial and p >= strides[i] and p >= dilations[i]:
            _fail(n, f"output_padding {p} along axis {i} must be smaller than the stride "
                     f"({strides[i]}) or the dilation ({dilations[i]})")
    if len(n.inputs) > 2:
        b = _shape(g, n.inputs[2])
        if b is not None and _known(w[1]) and all(isinstance(d, int) for d in b) and b != [w[1] * group]:
            _fail(n, f"bias has shape {b}; the weight has {w[1] * group} output channels")


def _check_pool(n: Node, g: Graph) -> None:
    kernel = list(n.attr("kernel_shape") or [])
    pads = n.attr("pads") or []
    spatial = len(kernel)
    if len(pads) == 2 * spatial:
        for i, k in enumerate(kernel):
            if pads[i] >= k or pads[i + spatial] >= k:
                _fail(n, f"pads {list(pads)} must be smaller than kernel_shape {kernel}")
    _window_fits(n, _shape(g, n.inputs[0]), kernel, "pooling")


_NODE_CHECKS: dict[tuple[str, str], Callable[[Node, Graph], None]] = {
    ("", "Conv"): _check_conv,
    ("", "ConvTranspose"): _check_conv_transpose,
    ("", "MaxPool"): _check_pool,
    ("", "AveragePool"): _check_pool,
    ("", "LpPool"): _check_pool,
}


# String attributes whose values the ONNX spec enumerates (onnx's checker does not check them;
# a kernel would otherwise fall back to some default and compute something else).
_ACTIVATIONS = {"Relu", "Tanh", "Sigmoid", "Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh",
                "HardSigmoid", "Elu", "Softsign", "Softplus"}
_RNN = {"direction": {"forward", "reverse", "bidirectional"}, "activations": _ACTIVATIONS}
_RESIZE = {"mode": {"nearest", "linear", "cubic"},
           "coordinate_transformation_mode": {"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel",
                                              "align_corners", "asymmetric", "tf_crop_and_resize"},
           "nearest_mode": {"round_prefer_floor", "round_prefer_ceil", "floor", "ceil"},
           "keep_aspect_ratio_policy": {"stretch", "not_larger", "not_smaller"}}
_PADDED = {"auto_pad": set(_AUTO_PAD)}
_REDUCTION = {"reduction": {"none", "add", "mul", "max", "min"}}
_ENUM_ATTRS: dict[tuple[str, str], dict[str, set]] = {
    ("", "RNN"): _RNN, ("", "GRU"): _RNN, ("", "LSTM"): _RNN,
    ("", "Resize"): _RESIZE, ("", "Upsample"): {"mode": {"nearest", "linear", "bilinear"}},
    ("", "Pad"): {"mode": {"constant", "reflect", "edge", "wrap"}},
    ("", "GridSample"): {"mode": {"bilinear", "nearest", "bicubic", "linear", "cubic"},
                         "padding_mode": {"zeros", "border", "reflection"}},
    ("", "DepthToSpace"): {"mode": {"DCR", "CRD"}},
    ("", "ScatterElements"): _REDUCTION, ("", "ScatterND"): _REDUCTION,
    ("", "RoiAlign"): {"mode": {"avg", "max"},
                       "coordinate_transformation_mode": {"half_pixel", "output_half_pixel"}},
    ("", "Gelu"): {"approximate": {"none", "tanh"}},
    ("", "StringNormalizer"): {"case_change_action": {"LOWER", "UPPER", "NONE"}},
    ("", "TfIdfVectorizer"): {"mode": {"TF", "IDF", "TFIDF"}},
    **{("", op): _PADDED for op in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool",
                                    "AveragePool", "LpPool")},
}

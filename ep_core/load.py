"""Load stage: a path, serialized bytes or an `onnx.ModelProto` -> `LoadedModel` (Graph, opsets).

Steps, each refusing with a typed error from `ep_core.errors`:
1. read: a path must name a regular file (opened without blocking, so a FIFO never hangs) and
   is parsed once; nothing is ever read a second time.
2. structure (`validate.check_structure`, `validate.check_opsets`): every string is UTF-8,
   nesting is bounded, element types and opset imports are known.
3. weights aside: every main-graph initializer is checked (type, dims against data). Weights
   above `INLINE_BYTES` become typed graph inputs (name, type, dims) in a weightless copy of the
   model, so the checker and shape inference never serialize them. (onnx's external-data form
   would not do: the checker looks for the named file relative to the current directory.) External data is
   read only through `external_data.ExternalFiles` (regular files inside the model's folder).
4. `onnx.checker` and strict shape inference on the weightless copy. Where onnx is stricter than
   onnxruntime (old IR versions, main-graph values without shapes, unsorted nodes, duplicate
   initializers, declared shapes that disagree with inferred ones) a `LenientLoadWarning` is
   issued and loading goes on; anything unsafe or undefined is refused.
5. `graph_from_proto`, the weights put back, `validate.check_graph` (node checks onnx misses).

A model written by `offline.save_optimized` (metadata `ep_core.optimized`) goes through every
step too; only the optimizer is skipped by the session, and its copy nodes are dropped here.
"""
from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from typing import Any

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from . import validate
from .errors import InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile
from .external_data import ExternalFiles, byte_size, check_tensor, elem_count, iter_tensors, to_array
from .graph import Graph, graph_from_proto
from .graph_edit import OWN_DOMAIN, GraphEditor
from .options import SessionOptions

META_OPTIMIZED = "ep_core.optimized"
COPY_OPS = ("MemcpyFromHost", "MemcpyToHost", "Memcpy")
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
INLINE_BYTES = 64 << 10          # weights above this are stubs in the weightless copy ...
INLINE_SHAPE_BYTES = 8 << 20     # ... except rank <= 1 integer tensors (shape data) up to this
MAX_MODEL_BYTES = (2 << 30) - 1  # protobuf cannot parse more; larger models use external data
_INT_TYPES = (TensorProto.INT64, TensorProto.INT32)


class LenientLoadWarning(UserWarning):
    """A model onnx's checker refuses but onnxruntime runs is loaded; the warning says why."""


@dataclass
class LoadedModel:
    model: onnx.ModelProto   # as parsed, without its main-graph weights (they are in graph)
    graph: Graph             # shapes inferred, weights as numpy arrays
    opsets: dict[str, int]   # domain ("" for ai.onnx) -> version
    preoptimized: bool       # written by ep_core's optimizer (validated all the same)


def load(path_or_bytes: Any, options: SessionOptions | None = None) -> LoadedModel:
    """Read, validate and shape-infer a model; see the module docstring for the steps."""
    options = options or SessionOptions()
    model, folder, owned, label = _read(path_or_bytes)
    if folder is None:
        folder = options.config.get(EXTERNAL_FOLDER_KEY) or None
        hint = (f"the model was given as {'bytes' if owned else 'a ModelProto'}; name the folder "
                f"holding its external data with the session config entry '{EXTERNAL_FOLDER_KEY}'")
    else:
        hint = ""
    validate.check_structure(model, label)
    validate.check_opsets(model, label)
    validate.check_value_types(model, label)
    opsets = validate.opset_map(model)
    preoptimized = any(p.key == META_OPTIMIZED for p in model.metadata_props)
    meta = _without_initializers(model) if owned else model
    with ExternalFiles(folder, hint) as files:
        light, big = _weightless(model, files, label)
        inferred = _check_and_infer(light, label)
        del light
        graph = _build_graph(inferred, big, opsets, model.ir_version,
                             [v.name for v in model.graph.input], files, label)
    del model, big, inferred
    if preoptimized:
        _drop_copy_nodes(graph)
    validate.check_graph(graph)
    return LoadedModel(meta, graph, opsets, preoptimized)


# --- 1. read ----------------------------------------------------------------------------------

def _read(src: Any) -> tuple[onnx.ModelProto, str | None, bool, str]:
    """(model, folder of its external data or None, parsed here?, label for messages)."""
    if isinstance(src, onnx.ModelProto):
        if not src.HasField("graph"):
            raise InvalidProtobuf("the ModelProto given holds no graph")
        return src, None, False, f"model '{src.graph.name}'"
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, folder, label = bytes(src), None, f"model bytes ({len(src)} bytes)"
    elif isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        data = _read_file(path)
        folder, label = os.path.dirname(os.path.abspath(path)), f"model file '{path}'"
    else:
        raise InvalidArgument(f"a model is a path, bytes or an onnx.ModelProto, not "
                              f"{type(src).__name__}")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as e:
        raise InvalidProtobuf(f"{label} is not a valid ONNX ModelProto: {e}") from e
    if not model.HasField("graph"):
        raise InvalidProtobuf(f"{label} parses but holds no graph")
    return model, folder, True, label


def _read_file(path: str) -> bytes:
    try:   # O_NONBLOCK: a FIFO opens at once (and is refused below) instead of waiting
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise NoSuchFile(f"model file '{path}' does not exist") from e
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"cannot open model file '{path}': {e}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"model path '{path}' is not a regular file")
        if st.st_size > MAX_MODEL_BYTES:
            raise InvalidProtobuf(f"model file '{path}' has {st.st_size} bytes; a protobuf holds at "
                                  f"most 2 GiB (store the weights as external data)")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


# --- 3. weights aside -------------------------------------------------------------------------

def _copy_fields(src: Any, dst: Any, skip: str) -> None:
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        if fd.is_repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose main graph has no dense initializers (weights are not copied)."""
    out = onnx.ModelProto()
    _copy_fields(model, out, "graph")
    _copy_fields(model.graph, out.graph, "initializer")
    return out


def _keep_inline(t: TensorProto, nbytes: int) -> bool:
    """Small tensors, and shape-like ones shape inference may read, keep their data."""
    if nbytes <= INLINE_BYTES:
        return True
    return t.data_type in _INT_TYPES and len(t.dims) <= 1 and nbytes <= INLINE_SHAPE_BYTES


def _weightless(model: onnx.ModelProto, files: ExternalFiles, label: str
                ) -> tuple[onnx.ModelProto, dict[str, TensorProto]]:
    """(weightless copy, {name: original tensor} of the weights left out of it).

    Weights left out become graph inputs of their type and dims in the copy. Every tensor of
    the model is checked here; external data other than those weights is read now and put
    inline in the copy (graph_from_proto must never meet external data: onnx would read it
    relative to the current directory).
    """
    light = _without_initializers(model)
    chosen: dict[str, TensorProto] = {}
    for t in model.graph.initializer:
        check_tensor(t, f"{label}: initializer '{t.name}'")
        if t.name in chosen:
            _warn(f"{label}: initializer '{t.name}' is defined twice; the last definition is used "
                  f"(as onnxruntime does)")
        chosen[t.name] = t
    inputs = {v.name for v in light.graph.input}
    big: dict[str, TensorProto] = {}
    for name, t in chosen.items():
        nbytes = byte_size(t.data_type, elem_count(t, name))
        if t.data_type != TensorProto.STRING and not _keep_inline(t, nbytes):
            big[name] = t
            if name not in inputs:
                light.graph.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
        elif t.data_location == TensorProto.EXTERNAL:
            light.graph.initializer.append(_inlined(t, files.read(t, f"{label}: initializer '{name}'")))
        else:
            light.graph.initializer.append(t)
    for t, where in list(iter_tensors(light)):
        check_tensor(t, f"{label}: {where}")
        if t.data_location == TensorProto.EXTERNAL:
            t.CopyFrom(_inlined(t, files.read(t, f"{label}: {where}")))
    return light, big


def _inlined(t: TensorProto, raw: Any) -> TensorProto:
    out = TensorProto()
    out.CopyFrom(t)
    del out.external_data[:]
    out.data_location = TensorProto.DEFAULT
    out.raw_data = bytes(raw)
    return out


# --- 4. checker and inference -----------------------------------------------------------------

def _warn(message: str) -> None:
    warnings.warn(message, LenientLoadWarning, stacklevel=4)


def _check_and_infer(light: onnx.ModelProto, label: str) -> onnx.ModelProto:
    from .load_lenient import relax_for_checker, sort_nodes, strip_declared_shapes
    sort_nodes(light, label, _warn)
    undo = relax_for_checker(light, label, _warn)
    try:
        onnx.checker.check_model(light)
    except onnx.checker.ValidationError as e:
        raise InvalidGraph(f"{label} failed the ONNX checker: {e}") from e
    for fix in undo:
        fix()
    try:
        return _infer(light)
    except onnx.shape_inference.InferenceError as e:
        if not _only_shape_conflicts(str(e)):
            raise InvalidGraph(f"{label} failed shape inference: {e}") from e
        _warn(f"{label}: declared shapes disagree with the inferred ones ({_first_line(e)}); "
              f"the declared shapes are ignored, as onnxruntime does")
    strip_declared_shapes(light)
    try:
        return _infer(light)
    except onnx.shape_inference.InferenceError as e:
        raise InvalidGraph(f"{label} failed shape inference: {e}") from e


def _infer(light: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True,
                                                 data_prop=True)
    except onnx.checker.ValidationError as e:
        raise InvalidGraph(f"model '{light.graph.name}' failed shape inference: {e}") from e


_SHAPE_CONFLICT = "Inferred shape and existing shape differ"


def _only_shape_conflicts(message: str) -> bool:
    """True when every error onnx reports is a declared-vs-inferred shape disagreement (which
    onnxruntime merges leniently); any other error keeps the model refused."""
    body = message.split("Inference error(s):", 1)[-1]
    lines = [ln for ln in body.splitlines() if ln.strip()]
    return bool(lines) and all(_SHAPE_CONFLICT in ln for ln in lines)


def _first_line(e: Exception) -> str:
    body = str(e).split("Inference error(s):", 1)[-1].strip()
    return body.splitlines()[0] if body else str(e)


# --- 5. graph -----------------------------------------------------------------------------------

def _build_graph(inferred: onnx.ModelProto, big: dict[str, TensorProto], opsets: dict[str, int],
                 ir_version: int, inputs: list[str], files: ExternalFiles, label: str) -> Graph:
    """Graph of the inferred weightless copy with the weights left out put back as arrays;
    `inputs` are the model's own graph inputs (those the copy gained for weights are dropped)."""
    gp = inferred.graph
    if big:
        typed = {v.name: v for v in list(gp.input) + list(gp.value_info)}
        own = set(inputs)
        kept = [v for v in gp.input if v.name in own]
        gained = [typed[n] for n in big if n not in own]
        del gp.input[:]
        gp.input.extend(kept)
        gp.value_info.extend(gained)
    graph = graph_from_proto(gp, opsets, ir_version=ir_version)
    if big:
        for name, t in big.items():
            where = f"{label}: initializer '{name}'"
            raw = files.read(t, where) if t.data_location == TensorProto.EXTERNAL else None
            graph.initializers[name] = to_array(t, raw)
        _add_outer_names(graph, set(big))
    return graph


def _add_outer_names(graph: Graph, names: set[str]) -> None:
    """Weights put back after graph_from_proto are visible to every nested body."""
    stack = [sub for n in graph.nodes for sub in n.subgraphs]
    while stack:
        g = stack.pop()
        g.outer_scope |= names
        stack.extend(sub for n in g.nodes for sub in n.subgraphs)


def _drop_copy_nodes(graph: Graph) -> None:
    """Copy nodes belong to the providers of the session that wrote an optimized model."""
    ed = GraphEditor(graph)
    for n in ed.nodes():
        if n.domain == OWN_DOMAIN and n.op_type in COPY_OPS:
            ed.remove(n)
            ed.replace_uses(n.outputs[0], n.inputs[0])
    ed.commit()

"""Load stage: a path, serialized bytes or an `onnx.ModelProto` -> `LoadedModel` (Graph, opsets).

Steps, each refusing with a typed error from `ep_core.errors`:
1. read: a path must name a regular file (opened without blocking, so a FIFO never hangs) and
   is parsed once; nothing is ever read a second time.
2. structure (`validate.check_structure`, `validate.check_opsets`): every string is UTF-8,
   nesting is bounded, element types and opset imports are known.
3. weights aside: every main-graph initializer is checked (type, dims against data). Weights
   above `INLINE_BYTES` become typed graph inputs (name, type, dims) in a weightless copy of the
   model, so the checker and shape inference never serialize them (onnx's external-data form
   would not do: its checker looks for the named file relative to the current directory). A
   model file is parsed with those weights' bytes lifted out of it (`load_wire`): each is read
   once, straight into its array. External data is read only through
   `load_tensors.ExternalFiles` (regular files inside the model's folder).
4. `onnx.checker` and strict shape inference on the weightless copy; onnxruntime's com.microsoft
   ops are typed by our rules (`contrib_schemas`, registered with onnx only while it runs), so
   the values after them are typed too. Where onnx is stricter than onnxruntime (old IR
   versions, main-graph values without shapes, unsorted nodes, duplicate initializers,
   declared shapes that disagree with inferred ones) a `LenientLoadWarning` is issued and
   loading goes on; anything unsafe or undefined is refused.
5. `graph_from_proto`, the weights put back, `validate.check_graph` (node checks onnx misses).

A model written by `offline.save_optimized` (metadata `ep_core.optimized`) goes through every
step too; only the optimizer is skipped by the session, and its copy nodes are dropped here.
"""
from __future__ import annotations

import functools
import os
import stat
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from . import contrib_schemas, validate
from .errors import InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile
from .graph import Graph, graph_from_proto
from .graph_edit import OWN_DOMAIN, GraphEditor
from .load_tensors import (ExternalFiles, byte_size, check_tensor, elem_count, iter_tensors,
                           sparse_to_array, to_array)
from .load_wire import Source, Span, split_weights
from .options import SessionOptions

META_OPTIMIZED = "ep_core.optimized"
COPY_OPS = ("MemcpyFromHost", "MemcpyToHost", "Memcpy")
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
INLINE_BYTES = 64 << 10          # weights above this stay out of the weightless copy ...
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
    with _Input(path_or_bytes, options) as src, ExternalFiles(src.folder, src.hint) as files:
        model = src.model
        label = src.label
        validate.check_structure(model, label)
        validate.check_opsets(model, label)
        validate.check_value_types(model, label)
        validate.check_sparse_sizes(model, label, int(getattr(options, "max_tensor_bytes", 0) or 0))
        opsets = validate.opset_map(model)
        preoptimized = any(p.key == META_OPTIMIZED for p in model.metadata_props)
        meta = _without_initializers(model) if src.owned else model
        light, big = _weightless(model, src, files)
        inferred = _check_and_infer(light, label, opsets)
        del light
        graph = _build_graph(inferred, big, opsets, model.ir_version, model)
        del model, big, inferred
    if preoptimized:
        _drop_copy_nodes(graph)
    validate.check_graph(graph)
    return LoadedModel(meta, graph, opsets, preoptimized)


def read_model(path_or_bytes: Any, options: SessionOptions | None = None) -> onnx.ModelProto:
    """The model as a ModelProto with every weight inline, read under the same rules as `load`
    (one parse, UTF-8 and nesting checked, external data only from the allowed folder), for a
    caller that edits a model before building a session from it. Not validated further: `load`
    does that when the session is built. A ModelProto given is returned as is unless it has
    external data (then a copy with the data inline)."""
    options = options or SessionOptions()
    with _Input(path_or_bytes, options) as src, ExternalFiles(src.folder, src.hint) as files:
        model = src.model
        validate.check_structure(model, src.label)
        for k, span in src.spans.items():
            model.graph.initializer[k].raw_data = src.source.array(span.offset, span.length).tobytes()
        tensors = [(t, f"initializer '{t.name}'") for t in model.graph.initializer]
        tensors += list(iter_tensors(model))
        if not any(t.data_location == TensorProto.EXTERNAL for t, _ in tensors):
            return model
        if not src.owned:
            model = onnx.ModelProto()
            model.CopyFrom(src.model)
            tensors = [(t, f"initializer '{t.name}'") for t in model.graph.initializer]
            tensors += list(iter_tensors(model))
        for t, where in tensors:
            if t.data_location == TensorProto.EXTERNAL:
                check_tensor(t, f"{src.label}: {where}")
                t.CopyFrom(_inlined(t, files.read(t, f"{src.label}: {where}")))
        return model


# --- 1. read ----------------------------------------------------------------------------------

class _Input:
    """The model as given, parsed once: `model` (big raw weights lifted out when we parsed it),
    `spans` (initializer index -> where its lifted bytes lie in `source`), the folder external
    data may come from, and a label naming the model in messages."""

    def __init__(self, src: Any, options: SessionOptions) -> None:
        self.fd: int | None = None
        self.source: Source | None = None
        self.spans: dict[int, Span] = {}
        self.folder: str | None = None
        self.owned = True
        if isinstance(src, onnx.ModelProto):
            self.owned, self.model = False, src
            self.label = f"model '{src.graph.name}'"
            if not src.HasField("graph"):
                raise InvalidProtobuf("the ModelProto given holds no graph")
        elif isinstance(src, (bytes, bytearray, memoryview)):
            data = bytes(src)
            self.label = f"model bytes ({len(data)} bytes)"
            self._parse(Source(len(data), data=data, label=self.label))
        elif isinstance(src, (str, os.PathLike)):
            path = os.fsdecode(os.fspath(src))
            self.label = f"model file '{path}'"
            self.folder = os.path.dirname(os.path.abspath(path))
            try:
                self._parse(Source(self._open(path), fd=self.fd, label=self.label))
            except BaseException:
                self.close()
                raise
        else:
            raise InvalidArgument(f"a model is a path, bytes or an onnx.ModelProto, not "
                                  f"{type(src).__name__}")
        self.hint = ""
        if self.folder is None:
            self.folder = options.config.get(EXTERNAL_FOLDER_KEY) or None
            kind = "bytes" if self.owned else "a ModelProto"
            self.hint = (f"the model was given as {kind}; name the folder holding its external "
                         f"data with the session config entry '{EXTERNAL_FOLDER_KEY}'")

    def _open(self, path: str) -> int:
        try:   # O_NONBLOCK: a FIFO opens at once (and is refused below) instead of waiting
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise NoSuchFile(f"model file '{path}' does not exist") from e
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"cannot open model file '{path}': {e}") from e
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"model path '{path}' is not a regular file")
        if st.st_size > MAX_MODEL_BYTES:
            raise InvalidProtobuf(f"model file '{path}' has {st.st_size} bytes; a protobuf holds at "
                                  f"most 2 GiB (store the weights as external data)")
        return st.st_size

    def _parse(self, source: Source) -> None:
        self.source = source
        light, self.spans = split_weights(source, INLINE_BYTES)
        self.model = onnx.ModelProto()
        try:
            self.model.ParseFromString(light)
        except DecodeError as e:
            raise InvalidProtobuf(f"{self.label} is not a valid ONNX ModelProto: {e}") from e
        if not self.model.HasField("graph"):
            raise InvalidProtobuf(f"{self.label} parses but holds no graph")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "_Input":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --- 3. weights aside -------------------------------------------------------------------------

def _copy_fields(src: Any, dst: Any, skip: tuple[str, ...]) -> None:
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if fd.is_repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose main graph has no initializers (weights are not copied)."""
    out = onnx.ModelProto()
    _copy_fields(model, out, ("graph",))
    _copy_fields(model.graph, out.graph, ("initializer", "sparse_initializer"))
    return out


def _keep_inline(t: TensorProto, nbytes: int) -> bool:
    """Small tensors, and shape-like ones shape inference may read, keep their data."""
    if nbytes <= INLINE_BYTES:
        return True
    return t.data_type in _INT_TYPES and len(t.dims) <= 1 and nbytes <= INLINE_SHAPE_BYTES


@dataclass
class _Weight:
    """A main-graph weight left out of the weightless copy: its type, and how to make its array."""
    data_type: int
    dims: list[int]
    array: Callable[[], np.ndarray]


def _tensor_weight(t: TensorProto, read: Callable[[], Any] | None) -> _Weight:
    return _Weight(t.data_type, list(t.dims), lambda: to_array(t, None if read is None else read()))


def _sparse_weight(sp: onnx.SparseTensorProto, where: str, files: ExternalFiles) -> _Weight:
    """A sparse initializer, densified as onnxruntime does (onnx's shape inference would type it
    sparse_tensor, which no ONNX op but a few accepts)."""
    parts = []
    for t, what in ((sp.values, "values"), (sp.indices, "indices")):
        check_tensor(t, f"{where} {what}")
        raw = files.read(t, f"{where} {what}") if t.data_location == TensorProto.EXTERNAL else None
        parts.append(to_array(t, raw))
    dense = sparse_to_array(sp, parts[0], parts[1], where)
    return _Weight(sp.values.data_type, [int(d) for d in sp.dims], lambda: dense)


def _weightless(model: onnx.ModelProto, src: _Input, files: ExternalFiles
                ) -> tuple[onnx.ModelProto, dict[str, _Weight]]:
    """(weightless copy, the weights left out of it by name).

    Weights left out become graph inputs of their type and dims in the copy. Every tensor of
    the model is checked here; external data other than those weights is read now and put
    inline in the copy (graph_from_proto must never meet external data: onnx would read it
    relative to the current directory).
    """
    label = src.label
    light = _without_initializers(model)
    chosen: dict[str, tuple[TensorProto, Callable[[], Any] | None]] = {}
    for k, t in enumerate(model.graph.initializer):
        where = f"{label}: initializer '{t.name}'"
        span = src.spans.get(k)
        check_tensor(t, where, span.length if span else None)
        if t.name in chosen:
            _warn(f"{label}: initializer '{t.name}' is defined twice; the last definition is used "
                  f"(as onnxruntime does)")
        if span is not None:
            read = functools.partial(src.source.array, span.offset, span.length)
        elif t.data_location == TensorProto.EXTERNAL:
            read = functools.partial(files.read, t, where)
        else:
            read = None
        chosen[t.name] = (t, read)
    inputs = {v.name for v in light.graph.input}
    big: dict[str, _Weight] = {}
    for name, (t, read) in chosen.items():
        nbytes = byte_size(t.data_type, elem_count(t, name))
        if t.data_type != TensorProto.STRING and not _keep_inline(t, nbytes):
            big[name] = _tensor_weight(t, read)
        elif read is not None:
            light.graph.initializer.append(_inlined(t, read()))
        else:
            light.graph.initializer.append(t)
    for sp in model.graph.sparse_initializer:
        name = sp.values.name
        if name in big or name in chosen:
            raise InvalidGraph(f"{label}: '{name}' is both a dense and a sparse initializer")
        big[name] = _sparse_weight(sp, f"{label}: sparse initializer '{name}'", files)
    light.graph.input.extend(helper.make_tensor_value_info(name, w.data_type, w.dims)
                             for name, w in big.items() if name not in inputs)
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


def _check_and_infer(light: onnx.ModelProto, label: str, opsets: dict[str, int]) -> onnx.ModelProto:
    from .load_lenient import (fill_function_defaults, hide_onnx_domain_contrib, import_contrib_domain,
                               relax_for_checker, sort_nodes, strip_declared_shapes)
    sort_nodes(light, label, _warn)
    fill_function_defaults(light, opsets)
    import_contrib_domain(light, opsets, label, _warn)
    restore_domains = hide_onnx_domain_contrib(light, opsets)
    undo = relax_for_checker(light, label, _warn)
    with contrib_schemas.LOCK:   # never while another load has its contrib schemas registered
        try:
            onnx.checker.check_model(light)
        except onnx.checker.ValidationError as e:
            raise InvalidGraph(f"{label} failed the ONNX checker: {e}") from e
    for fix in undo:
        fix()
    try:
        inferred = _infer(light)
        restore_domains(inferred)
        return inferred
    except onnx.shape_inference.InferenceError as e:
        if _SHAPE_CONFLICT not in str(e):
            raise InvalidGraph(f"{label} failed shape inference: {e}") from e
        first = e
    # Declared shapes contradict inferred ones (onnxruntime merges them leniently). Drop the
    # declared shapes and infer again, strictly: any other error still refuses the model.
    strip_declared_shapes(light)
    try:
        inferred = _infer(light)
    except onnx.shape_inference.InferenceError as e:
        raise InvalidGraph(f"{label} failed shape inference: {e}") from e
    restore_domains(inferred)
    _warn(f"{label}: declared shapes disagree with the inferred ones ({_first_conflict(first)}); "
          f"the declared shapes are ignored, as onnxruntime does")
    return inferred


def _infer(light: onnx.ModelProto) -> onnx.ModelProto:
    """Strict inference, typing onnxruntime's com.microsoft ops by our rules (contrib_schemas).

    onnx stops being strict after the first node it has no schema for; with our schemas it
    stays strict downstream of contrib ops. So where a rule leaves an output untyped, or the
    model trips strict inference past a contrib op (which onnxruntime may load), inference runs
    again without the schemas of the ops whose rules could not decide, then without any: the
    last try is onnx's own behaviour, and its error is the model's. A shape conflict with
    declared shapes is left to the caller (it strips them and infers again, with our rules).
    """
    skip: set[str] = set()
    while True:
        with contrib_schemas.registered(light, skip) as window:
            try:
                return _infer_strict(light)
            except onnx.shape_inference.InferenceError as e:
                if not window.registered or _SHAPE_CONFLICT in str(e):
                    raise
        skip |= window.undecided if window.undecided - skip else window.registered


def _infer_strict(light: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True,
                                                 data_prop=True)
    except onnx.checker.ValidationError as e:
        raise InvalidGraph(f"model '{light.graph.name}' failed shape inference: {e}") from e


_SHAPE_CONFLICT = "Inferred shape and existing shape differ"


def _first_conflict(e: Exception) -> str:
    return next((ln.strip() for ln in str(e).splitlines() if _SHAPE_CONFLICT in ln), str(e))[:200]


# --- 5. graph -----------------------------------------------------------------------------------

def _build_graph(inferred: onnx.ModelProto, big: dict[str, _Weight], opsets: dict[str, int],
                 ir_version: int, model: onnx.ModelProto) -> Graph:
    """Graph of the inferred weightless copy with the weights left out put back as arrays, in
    the model's order; graph inputs the copy gained for the weights are dropped again."""
    inputs = [v.name for v in model.graph.input]
    order = list(dict.fromkeys(t.name for t in model.graph.initializer))
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
        arrays = {name: w.array() for name, w in big.items()}
        arrays.update(graph.initializers)
        order += [n for n in arrays if n not in order]     # sparse initializers come last
        graph.initializers = {n: arrays[n] for n in order}
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

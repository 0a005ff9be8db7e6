"""Feeds as a session takes them: names, types and shapes checked against the model's inputs.

`check_feeds` is the one place a user's `input_feed` is validated and converted before a run.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidArgument
from .graph import Graph, ValueInfo
from .types import tensor_dtype, tensor_shape, type_string


@dataclass(frozen=True)
class DeclaredInput:
    """One input's declared type, read out of its TypeProto once (not on every run)."""
    kind: str | None                  # "tensor_type", "sequence_type", ... (None: no type)
    dtype: np.dtype | None            # tensors: the element type
    type_string: str
    shape: list | None                # tensors: ints for static dims, None/str for dynamic ones

    @functools.cached_property
    def static_shape(self) -> tuple | None:
        """The declared shape where every dim is static (a feed of exactly that shape needs no
        per-dim check), else None."""
        if self.shape is None or not all(isinstance(d, int) for d in self.shape):
            return None
        return tuple(self.shape)


@dataclass(frozen=True, eq=False)
class FeedSpec:
    """The model's input signature as loaded (before any rewrite can drop an initializer)."""
    inputs: tuple[ValueInfo, ...]
    initializers: frozenset[str]      # names of the top-level initializers
    constants: frozenset[str]         # initializers no feed may replace (Graph.constant_initializers)
    ir_version: int
    declared: dict[str, DeclaredInput] = field(default_factory=dict)   # by input name

    @classmethod
    def of(cls, graph: Graph) -> "FeedSpec":
        declared = {}
        for v in graph.inputs:
            kind = v.type.WhichOneof("value") if v.type is not None else None
            tensor = kind == "tensor_type"
            declared[v.name] = DeclaredInput(kind, tensor_dtype(v.type) if tensor else None,
                                             type_string(v.type) if v.type is not None else "",
                                             tensor_shape(v.type) if tensor else None)
        return cls(tuple(graph.inputs), frozenset(graph.initializers),
                   frozenset(graph.constant_initializers()), graph.ir_version, declared)

    @property
    def required(self) -> list[ValueInfo]:
        """Inputs that must be fed (those not backed by an initializer)."""
        return [v for v in self.inputs if v.name not in self.initializers]

    @functools.cached_property
    def required_names(self) -> frozenset[str]:
        return frozenset(v.name for v in self.required)

    @functools.cached_property
    def static_tensors(self) -> dict[str, tuple[np.dtype, tuple]]:
        """name -> (dtype, shape) of the tensor inputs whose shape is wholly static."""
        return {name: (d.dtype, d.static_shape) for name, d in self.declared.items()
                if d.kind == "tensor_type" and d.dtype is not None and d.static_shape is not None}

    @property
    def overridable(self) -> list[ValueInfo]:
        return [v for v in self.inputs if v.name in self.initializers and v.name not in self.constants]


def plain_feeds(input_feed: Any, spec: FeedSpec) -> dict[str, Any] | None:
    """`input_feed` itself when it needs no conversion: exactly the required inputs, each a
    C-contiguous host array of its declared dtype and static shape (the VAD step's three feeds:
    2.5 us in the run against 3.8 through the general check, per-call timers included); else
    None (take `check_feeds`)."""
    if type(input_feed) is not dict or input_feed.keys() != spec.required_names:
        return None
    static = spec.static_tensors
    for name, value in input_feed.items():
        want = static.get(name)
        # `is`: numpy's built-in dtypes are singletons; any other equal dtype takes check_feeds
        if (want is None or type(value) is not np.ndarray or value.dtype is not want[0]
                or value.shape != want[1] or not value.flags.c_contiguous):
            return None
    return input_feed


def check_feeds(input_feed: Any, spec: FeedSpec, on_device: frozenset[str] = frozenset()
                ) -> dict[str, Any]:
    """Validate `input_feed` against the model's declared inputs; returns the converted feeds.

    Constant initializers cannot be fed; every input that is not an initializer must be. Feeds
    named in `on_device` are device arrays: only their dtype and shape are checked (never read).
    """
    if not isinstance(input_feed, dict):
        raise InvalidArgument(f"input_feed must be a dict of name -> value, got {type(input_feed).__name__}")
    declared = spec.declared
    if input_feed.keys() != spec.required_names:   # else: exactly the required inputs, checked below
        _check_names(input_feed, spec)
    feeds = {}
    for name, value in input_feed.items():
        d = declared[name]
        if d.kind == "tensor_type" and name in on_device:
            check_device_feed(name, value, d)
        elif d.kind == "tensor_type":
            value = check_tensor_feed(name, value, d)
        feeds[name] = value
    return feeds


def _check_names(input_feed: dict, spec: FeedSpec) -> None:
    """Every name a declared input, no constant fed, every required input fed."""
    declared = spec.declared
    unknown = [n for n in input_feed if n not in declared]
    if unknown:
        raise InvalidArgument(f"invalid feed name(s) {unknown}; the model's inputs are "
                              f"{[v.name for v in spec.inputs]}")
    fixed = [n for n in input_feed if n in spec.constants]
    if fixed:
        raise InvalidArgument(f"feed(s) {fixed} name initializers of an IR version "
                              f"{spec.ir_version} model, which are constants")
    required = [v.name for v in spec.required]
    missing = [n for n in required if n not in input_feed]
    if missing:
        raise InvalidArgument(f"missing feed(s) for required input(s) {missing}")


def check_tensor_feed(name: str, value: Any, declared: DeclaredInput) -> np.ndarray:
    """One tensor feed as onnxruntime takes it, converted to a native-order contiguous array.

    Arrays must already have the declared element type (a float64 array for a float input is
    refused, as in onnxruntime); Python lists, tuples and numbers are converted to it.
    """
    if type(value) is np.ndarray and value.dtype == declared.dtype and value.dtype != object \
            and value.flags.c_contiguous:
        pass                            # the usual case: nothing to convert
    else:
        value = _as_array(name, value, declared.dtype, declared.type_string)
    _check_shape(name, value, declared)
    return value


def check_device_feed(name: str, value: Any, declared: DeclaredInput) -> None:
    """A feed already on a device: dtype and shape from its metadata, as for a host array."""
    want = declared.dtype
    got = getattr(value, "dtype", None)
    if want is not None and got is not None and np.dtype(got) != want:
        raise InvalidArgument(f"feed '{name}' (on a device) has dtype {got} but the model expects "
                              f"{declared.type_string} ({want})")
    _check_shape(name, value, declared)


def _check_shape(name: str, value: Any, declared: DeclaredInput) -> None:
    shape = declared.shape
    if shape is not None and value.shape != declared.static_shape:
        if len(value.shape) != len(shape):
            raise InvalidArgument(f"feed '{name}' has rank {len(value.shape)} (shape {list(value.shape)}) "
                                  f"but the model expects rank {len(shape)} (shape {shape})")
        for axis, (d, w) in enumerate(zip(value.shape, shape)):
            if isinstance(w, int) and d != w:
                raise InvalidArgument(f"feed '{name}' has dimension {d} at axis {axis} but the "
                                      f"model expects {w} (shape {shape})")


def _as_array(name: str, value: Any, want: np.dtype | None, declared: str) -> np.ndarray:
    if isinstance(value, (list, tuple)) or (isinstance(value, (bool, int, float, str, bytes))
                                             and not isinstance(value, np.generic)):
        return _from_python(name, value, want, declared)
    if isinstance(value, np.generic):  # a numpy scalar keeps its dtype, like a 0-d array
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        if value is None or isinstance(value, dict) or not hasattr(value, "__array__"):
            raise InvalidArgument(f"feed '{name}' is a {type(value).__name__}; the model expects "
                                  f"{declared}: give a numpy array or a list")
        try:
            value = np.asarray(value)
        except Exception as e:
            raise InvalidArgument(f"feed '{name}': cannot convert {type(value).__name__} to an "
                                  f"array: {e}") from e
    got = value.dtype
    if want is not None:
        if want == object:
            if got.kind not in "OUS":
                raise InvalidArgument(f"feed '{name}' has dtype {got} but the model expects "
                                      f"{declared}: give str values")
            return _strings(name, value)
        if (got if got.isnative else got.newbyteorder("=")) != want:
            raise InvalidArgument(f"feed '{name}' has dtype {got} but the model expects "
                                  f"{declared} ({want})")
    if not got.isnative:  # onnxruntime would read the bytes as native-order: convert instead
        value = value.astype(got.newbyteorder("="))
    if not value.flags.c_contiguous:
        value = np.ascontiguousarray(value)
    return value


def _from_python(name: str, value: Any, want: np.dtype | None, declared: str) -> np.ndarray:
    """Lists and Python scalars take the declared element type, converted as numpy converts each
    element (as onnxruntime does: '1.5' -> 1.5, 1.5 -> 1 for an integer input); what the type
    cannot hold (out of range, not a number, ragged nesting) is refused."""
    try:
        if want is None:
            return np.asarray(value)
        if want == object:
            return _strings(name, np.asarray(value, dtype=object))
        return np.array(value, dtype=want)
    except (OverflowError, ValueError, TypeError) as e:
        raise InvalidArgument(f"feed '{name}': cannot make a {declared} of the given "
                              f"{type(value).__name__}: {e}") from e


def _strings(name: str, value: np.ndarray) -> np.ndarray:
    """String tensors are object arrays of str; bytes are decoded as UTF-8, numbers written out."""
    out = np.empty(value.shape, dtype=object)
    flat = out.reshape(-1)
    for k, v in enumerate(value.reshape(-1)):
        if isinstance(v, (bytes, np.bytes_)):
            try:
                v = bytes(v).decode("utf-8")
            except UnicodeDecodeError as e:
                raise InvalidArgument(f"feed '{name}': element {k} is not UTF-8 text: {e}") from e
        elif not isinstance(v, str):
            if not isinstance(v, (int, float, bool, np.number, np.bool_)):
                raise InvalidArgument(f"feed '{name}': element {k} is a {type(v).__name__}, not "
                                      f"a string")
            v = str(v)
        flat[k] = str(v)
    return out

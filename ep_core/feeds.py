"""Feeds as a session takes them: names, types and shapes checked against the model's inputs.

`check_feeds` is the one place a user's `input_feed` is validated and converted before a run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidArgument
from .graph import Graph, ValueInfo
from .types import tensor_dtype, tensor_shape, type_string


@dataclass(frozen=True)
class FeedSpec:
    """The model's input signature as loaded (before any rewrite can drop an initializer)."""
    inputs: tuple[ValueInfo, ...]
    initializers: frozenset[str]      # names of the top-level initializers
    constants: frozenset[str]         # initializers no feed may replace (Graph.constant_initializers)
    ir_version: int

    @classmethod
    def of(cls, graph: Graph) -> "FeedSpec":
        return cls(tuple(graph.inputs), frozenset(graph.initializers),
                   frozenset(graph.constant_initializers()), graph.ir_version)

    @property
    def required(self) -> list[ValueInfo]:
        """Inputs that must be fed (those not backed by an initializer)."""
        return [v for v in self.inputs if v.name not in self.initializers]

    @property
    def overridable(self) -> list[ValueInfo]:
        return [v for v in self.inputs if v.name in self.initializers and v.name not in self.constants]


def check_feeds(input_feed: Any, spec: FeedSpec) -> dict[str, Any]:
    """Validate `input_feed` against the model's declared inputs; returns the converted feeds.

    Constant initializers cannot be fed; every input that is not an initializer must be.
    """
    if not isinstance(input_feed, dict):
        raise InvalidArgument(f"input_feed must be a dict of name -> value, got {type(input_feed).__name__}")
    declared = {v.name: v for v in spec.inputs}
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
    feeds = {}
    for name, value in input_feed.items():
        vi = declared[name]
        kind = vi.type.WhichOneof("value") if vi.type is not None else None
        if kind == "tensor_type":
            value = check_tensor_feed(name, value, vi)
        feeds[name] = value
    return feeds


def check_tensor_feed(name: str, value: Any, vi) -> np.ndarray:
    """One tensor feed: converted to an array, dtype and static dims checked."""
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except Exception as e:
            raise InvalidArgument(f"feed '{name}': cannot convert {type(value).__name__} to an "
                                  f"array: {e}") from e
    want = tensor_dtype(vi.type)
    got = value.dtype
    if want is not None:
        same = got == want or (want == object and got.kind in "OUS")
        if not same:
            raise InvalidArgument(f"feed '{name}' has dtype {got} but the model expects "
                                  f"{type_string(vi.type)} ({want})")
        if want == object and got.kind in "US":
            value = value.astype(object)
    shape = tensor_shape(vi.type)
    if shape is not None:
        if value.ndim != len(shape):
            raise InvalidArgument(f"feed '{name}' has rank {value.ndim} (shape {list(value.shape)}) "
                                  f"but the model expects rank {len(shape)} (shape {shape})")
        for axis, (d, w) in enumerate(zip(value.shape, shape)):
            if isinstance(w, int) and d != w:
                raise InvalidArgument(f"feed '{name}' has dimension {d} at axis {axis} but the "
                                      f"model expects {w} (shape {shape})")
    return value

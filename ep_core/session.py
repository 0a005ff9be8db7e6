"""InferenceSession: load -> optimize -> partition -> compile -> insert copies -> plan -> run."""
from __future__ import annotations

import copy
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import onnx

from . import providers as provider_registry
from .errors import InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile
from .executor import Plan, build_plan
from .feeds import FeedSpec, check_feeds
from .graph import Graph, graph_from_proto
from . import load, offline, profiling
from .optimizer import optimize
from .options import RunOptions, SessionOptions
from .parallel import run_plan
from .partition import COPY_OPS, insert_copy_nodes, partition
from .provider import ExecutionProvider
from .types import type_string

log = logging.getLogger("ep_core")


@dataclass
class NodeArg:
    """Name, type string and shape (ints, symbolic names or None) of a graph input/output."""
    name: str
    type: str
    shape: list | None


@dataclass
class ModelMetadata:
    producer_name: str
    graph_name: str
    domain: str
    description: str
    graph_description: str
    version: int
    custom_metadata_map: dict[str, str]


# --- 3. Providers -------------------------------------------------------------------------------

_warned_unavailable: set[str] = set()


def resolve_providers(providers: Sequence | None, provider_options: Sequence[dict] | None
                      ) -> list[ExecutionProvider]:
    """Instantiate the requested providers in priority order; CPU is always appended last.

    Unavailable providers warn once and are skipped, as onnxruntime does.
    """
    if providers is None:  # built-in providers only; plugins run when named, as in onnxruntime
        providers = [n for n in ("cuda", "cpu") if provider_registry.availability(n)[0]]
    if provider_options is not None and len(provider_options) != len(providers):
        raise InvalidArgument(f"provider_options has {len(provider_options)} entries for "
                              f"{len(providers)} providers; give one dict per provider")
    out: list[ExecutionProvider] = []
    for k, entry in enumerate(providers):
        name, opts = (entry if isinstance(entry, (tuple, list)) else (entry, {}))
        opts = dict(opts or {})
        if provider_options is not None:
            opts.update(provider_options[k] or {})
        canon = provider_registry.canonical_name(name)
        ok, reason = provider_registry.availability(canon)
        if not ok:
            if canon not in _warned_unavailable:
                _warned_unavailable.add(canon)
                warnings.warn(f"provider '{canon}' is not available ({reason}); "
                              f"continuing with the remaining providers", RuntimeWarning, stacklevel=3)
            continue
        if any(p.type == canon for p in out):
            continue
        out.append(provider_registry.provider_factory(canon)(**opts))
    out = [p for p in out if p.type != "cpu"] + (
        [p for p in out if p.type == "cpu"] or [provider_registry.provider_factory("cpu")()])
    return out


# --- The session ------------------------------------------------------------------------------

class InferenceSession:
    """Runs an ONNX model on a list of execution providers (onnxruntime-compatible API)."""

    def __init__(self, path_or_bytes: Any, sess_options: SessionOptions | None = None,
                 providers: Sequence | None = None, provider_options: Sequence[dict] | None = None,
                 **kwargs: Any) -> None:
        self._options = sess_options or SessionOptions()
        self._profiler = profiling.Profiler.for_session(self._options)
        # 1. Load (validated always; a model written via optimized_model_filepath skips the optimizer)
        with self._profiler.phase("load"):
            loaded = load.load(path_or_bytes, self._options)
            self._model, graph, self._opsets = loaded.model, loaded.graph, loaded.opsets
            preoptimized = loaded.preoptimized
        # Taken before optimizing (folding may drop initializers).
        self._feed_spec = FeedSpec.of(graph)
        self._outputs_vi = list(graph.outputs)
        # 2. Optimize (fusions are checked against the providers' kernels, so resolve them first)
        self._providers = resolve_providers(providers, provider_options)
        if not preoptimized:
            with self._profiler.phase("optimize"):
                optimize(graph, self._options, self._providers, self._model.ir_version)
        # 3. Partition, 4. fuse/compile
        self._graph = graph
        self._plan, self._placement, assigned = self._build(graph)
        if self._options.optimized_model_filepath:  # offline mode: write what was built
            offline.save_optimized(self._options.optimized_model_filepath, self._model, graph,
                                   assigned, self._options, self._providers)

    def _build(self, graph: Graph) -> tuple[Plan, dict, dict]:
        with self._profiler.phase("partition"):
            assigned = partition(graph, self._providers)
        # 5. Copy insertion
        report = insert_copy_nodes(graph, assigned, self._providers)
        # 6. Plan
        with self._profiler.phase("plan"):
            plan = build_plan(graph, assigned, report.placed_initializers, self._providers,
                              self._make_subgraph_runner, self._options)
        placement = {
            "nodes": [(n.name, n.op_type, assigned[n].provider.type) for n in graph.nodes],
            "copy_nodes": report.copy_nodes,
            "initializer_copies": report.initializer_copies,
        }
        return plan, placement, assigned

    def _make_subgraph_runner(self, sub: Graph):
        """Plan a control-flow body with the session's providers; feeds/outer values on the host."""
        sub = copy.copy(sub)
        sub.nodes = [copy.copy(n) for n in sub.nodes]  # copy insertion renames inputs: keep the body intact
        plan, _, _ = self._build(sub)
        names = [v.name for v in sub.inputs]

        def run(feeds: Sequence[Any], outer: dict[str, Any]) -> list[Any]:
            values = dict(outer)
            values.update(zip(names, feeds))
            return plan.run(values, plan.output_slots)
        return run

    # --- 7. Run ---------------------------------------------------------------------------------
    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any],
            run_options: RunOptions | None = None) -> list[Any]:
        feeds = check_feeds(input_feed, self._feed_spec)
        fetch_slots = self._fetch_slots(output_names)
        for p in self._providers:
            p.on_run_start(run_options)
        try:
            outputs = run_plan(self._plan, feeds, fetch_slots, self._options, self._profiler)
            # Constants are read-only and shared between runs: hand the caller its own copy.
            return [o.copy() if isinstance(o, np.ndarray) and not o.flags.writeable else o
                    for o in outputs]
        finally:
            for p in self._providers:
                p.on_run_end(run_options)

    def end_profiling(self) -> str:
        """Write the profile (Chrome trace JSON) and return its path; "" if profiling is off."""
        return self._profiler.end()

    def _fetch_slots(self, output_names: Sequence[str] | None) -> list[int]:
        if not output_names:
            return self._plan.output_slots
        by_name = {v.name: s for v, s in zip(self._outputs_vi, self._plan.output_slots)}
        missing = [n for n in output_names if n not in by_name]
        if missing:
            raise InvalidArgument(f"unknown output name(s) {missing}; the model's outputs are "
                                  f"{list(by_name)}")
        return [by_name[n] for n in output_names]

    # --- Introspection (onnxruntime names) ------------------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        return [NodeArg(v.name, type_string(v.type), v.shape) for v in self._feed_spec.required]

    def get_outputs(self) -> list[NodeArg]:
        return [NodeArg(v.name, type_string(v.type), v.shape) for v in self._outputs_vi]

    def get_overridable_initializers(self) -> list[NodeArg]:
        return [NodeArg(v.name, type_string(v.type), v.shape) for v in self._feed_spec.overridable]

    def get_providers(self) -> list[str]:
        return [p.type for p in self._providers]

    def get_provider_options(self) -> dict[str, dict]:
        return {p.type: {k: str(v) for k, v in p.options.items()} for p in self._providers}

    def get_session_options(self) -> SessionOptions:
        return self._options

    def get_modelmeta(self) -> ModelMetadata:
        m = self._model
        return ModelMetadata(m.producer_name, m.graph.name, m.domain, m.doc_string,
                             m.graph.doc_string, m.model_version,
                             {p.key: p.value for p in m.metadata_props})

    def get_placement(self) -> dict:
        """Which provider runs each node, and how many copies the session inserted."""
        return dict(self._placement)

    def copy_node_count(self) -> int:
        return sum(1 for n in self._graph.nodes if n.op_type in COPY_OPS)

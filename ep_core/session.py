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
from . import offline, profiling
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


# --- 1. Load ----------------------------------------------------------------------------------

def load_model(path_or_bytes: str | bytes | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Parse a path, serialized bytes or ModelProto; typed errors for missing files / bad bytes."""
    if isinstance(path_or_bytes, onnx.ModelProto):
        return path_or_bytes
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        model = onnx.ModelProto()
        try:
            model.ParseFromString(bytes(path_or_bytes))
        except Exception as e:
            raise InvalidProtobuf(f"model bytes ({len(path_or_bytes)} bytes) are not a valid ONNX "
                                  f"ModelProto: {e}") from e
        if not model.HasField("graph"):
            raise InvalidProtobuf(f"model bytes ({len(path_or_bytes)} bytes) parse but hold no graph")
        return model
    path = os.fspath(path_or_bytes)
    if not os.path.isfile(path):
        raise NoSuchFile(f"model file '{path}' does not exist")
    try:
        model = onnx.load(path)
    except Exception as e:
        raise InvalidProtobuf(f"model file '{path}' is not a valid ONNX model: {e}") from e
    if not model.HasField("graph"):
        raise InvalidProtobuf(f"model file '{path}' holds no graph")
    return model


def check_and_infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx.checker then shape inference (best effort: models with custom ops keep their types)."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise InvalidGraph(f"model '{model.graph.name}' failed the ONNX checker: {e}") from e
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False,
                                                 data_prop=True)
    except Exception as e:  # inference is an aid, not a requirement (custom domains, odd models)
        log.warning("shape inference failed for model '%s': %s", model.graph.name, e)
        return model


def opset_imports(model: onnx.ModelProto) -> dict[str, int]:
    ops = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
    ops.setdefault("", 1)
    return ops


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
        # 1. Load (a model written via optimized_model_filepath comes back typed and optimized)
        with self._profiler.phase("load"):
            self._model, graph = offline.load(path_or_bytes)
            preoptimized = graph is not None
            if not preoptimized:
                self._model = check_and_infer(self._model)
                graph = graph_from_proto(self._model.graph, opset_imports(self._model),
                                         ir_version=self._model.ir_version)
            self._opsets = opset_imports(self._model)
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

    # --- Bound run (IO binding, OrtValues on devices) --------------------------------------------
    def run_bound(self, feeds: dict[str, Any], feed_devices: dict[str, Any],
                  output_names: Sequence[str] | None, fetch_devices: Sequence[Any] | None = None,
                  run_options: RunOptions | None = None) -> list[tuple[Any, Any]]:
        """Run with feeds that may already live on a device and fetches left on a device.

        feeds: input name -> value; feed_devices[name]: the `Device` of a feed that is not a host
        array (absent: host). A device feed goes straight to the nodes that read it on that
        device (the plan's MemcpyFromHost for it is skipped); readers elsewhere get one copy.
        fetch_devices[k]: where output k must end (None: where its producer left it; HOST: the
        host); the MemcpyToHost of a fetch wanted where it was produced is skipped. Returns
        (value, Device) per output. Sequential, no profiling events. Written against the current
        Plan (steps, slots, copy steps); the IO binding layer (ep_core/iobinding.py) needs only
        this signature.
        """
        from .errors import RunTerminated
        from .parallel import intra_op_limit
        from .provider import HOST

        plan = self._plan
        device_of = {n: d for n, d in feed_devices.items() if not d.is_host}
        checked = check_feeds(feeds, self._feed_spec, frozenset(device_of))
        names = list(output_names) if output_names else [v.name for v in self._outputs_vi]
        fetch_slots = self._fetch_slots(names)
        wants = list(fetch_devices) if fetch_devices is not None else [HOST] * len(names)
        if len(wants) != len(names):
            raise InvalidArgument(f"{len(wants)} fetch devices for {len(names)} outputs")

        def is_copy(st) -> bool:
            return st.node.op_type in COPY_OPS and hasattr(st.kernel, "dst")

        producer = {s: st for st in plan.steps for s in st.outputs if s is not None}
        skipped: set[int] = set()            # id() of copy steps a bound value makes unnecessary
        slots = plan.initial_slots({n: v for n, v in checked.items() if n not in device_of})
        for name, dev in device_of.items():
            s = plan.slot_of.get(name)
            if s is None:
                continue
            for st in plan.steps:
                if is_copy(st) and st.inputs[0] == s and st.kernel.dst == dev:
                    slots[st.outputs[0]] = checked[name]
                    skipped.add(id(st))
            if any(s in st.inputs for st in plan.steps if id(st) not in skipped) or s in fetch_slots:
                slots[s] = self._bound_copy(checked[name], dev, HOST)
        # Fetches wanted where they were produced: read the copy's source, skip the copy.
        sources: list[int] = []
        for fs, want in zip(fetch_slots, wants):
            st = producer.get(fs)
            src = fs
            if st is not None and is_copy(st) and (want is None or not want.is_host):
                readers = [o for o in plan.steps if fs in o.inputs]
                if not readers:
                    skipped.add(id(st))
                    src = st.inputs[0]
            sources.append(src)
        keep = set(sources)
        for p in self._providers:
            p.on_run_start(run_options)
        try:
            with intra_op_limit(int(getattr(self._options, "intra_op_num_threads", 0) or 0)):
                for st in plan.steps:
                    if run_options is not None and getattr(run_options, "terminate", False):
                        raise RunTerminated("run terminated: RunOptions.terminate was set")
                    if id(st) in skipped:
                        continue
                    outs = st.execute([slots[s] if s is not None else None for s in st.inputs])
                    for s, v in zip(st.outputs, outs):
                        if s is not None:
                            slots[s] = v
                    for s in st.release:
                        if s not in keep:
                            slots[s] = None
            results = []
            for src, want in zip(sources, wants):
                value = slots[src]
                st = producer.get(src)
                if st is not None:
                    where = st.provider.device_of(value) if not is_copy(st) else st.kernel.dst
                else:  # a feed, constant or host copy of a device feed
                    where = HOST
                if want is not None and want != where:
                    value, where = self._bound_copy(value, where, want), want
                if isinstance(value, np.ndarray) and not value.flags.writeable:
                    value = value.copy()  # a constant: the caller gets its own copy
                results.append((value, where))
            return results
        finally:
            for p in self._providers:
                p.on_run_end(run_options)

    def _bound_copy(self, value: Any, src: Any, dst: Any) -> Any:
        """One copy between memory spaces with this session's providers' transfers (through the
        host when no provider copies directly)."""
        from .provider import HOST

        if src == dst:
            return value
        for p in self._providers:
            t = p.get_data_transfer()
            if t is not None and t.can_copy(src, dst):
                out = t.copy(value, dst)
                p.sync()
                return out
        if not src.is_host and not dst.is_host:
            return self._bound_copy(self._bound_copy(value, src, HOST), HOST, dst)
        raise InvalidArgument(f"no provider of this session ({[p.type for p in self._providers]}) "
                              f"copies values from {src} to {dst}")

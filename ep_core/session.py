"""InferenceSession: the build stages read in order (load -> level-1 rewrites -> partition ->
level-2/3 rewrites -> compile -> placement -> plan), then run."""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from . import providers as provider_registry
from .errors import InvalidArgument
from .executor import Plan, build_plan, RunControl, current_run
from .feeds import FeedSpec, check_feeds, plain_feeds
from .graph import Graph
from . import load, offline, profiling
from .optimizer import rewrite_assigned, rewrite_level1
from .options import RunOptions, SessionOptions
from .ortvalue import device_of_array
from .parallel import run_plan
from .partition import compile_fused, group_fused, partition
from .placement import Placement, place
from .placement_cost import PlacementReport, choose_by_cost
from .provider import Device, ExecutionProvider
from .rewrite import OptimizerContext
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


# --- Build: stages 3-7 for one graph (the model's, or a control-flow body's) -----------------

@dataclass
class Built:
    """What building one graph produced: its placement (graph with copies) and its plan."""
    placement: Placement
    plan: Plan
    cost_report: PlacementReport | None = None   # set when the partition was chosen by cost


def build_graph(graph: Graph, providers: list[ExecutionProvider], options: SessionOptions,
                opt: OptimizerContext | None, profiler: profiling.Profiler,
                outer_devices: dict[str, Device] | None = None,
                outer_constants: dict[str, Any] | None = None, by_cost: bool = False) -> Built:
    """Partition -> level-2/3 rewrites -> group + compile -> placement -> plan, for one graph level.

    Control-flow bodies are built the same way when the plan creates their node's kernel, knowing
    where each outer value lives. `opt` is None for a graph that must not be rewritten (an
    ep_core-optimized model). The graph passes the validity check after every stage. A body's
    kernels see the enclosing graphs' constants (`outer_constants`) as constant inputs.
    `by_cost`: stage 3 chooses by measured cost (`placement_cost`) instead of the provider order
    (bodies keep the order)."""
    cost_report = None
    with profiler.phase("partition"):
        if by_cost:
            chosen = choose_by_cost(graph, providers, options)
            assigned, cost_report = chosen.assigned, chosen.report
        else:
            assigned = partition(graph, providers)
    if opt is not None and int(options.graph_optimization_level) >= 2:
        with profiler.phase("optimize_assigned"):
            assigned = rewrite_assigned(graph, assigned, opt)
            assigned = partition(graph, providers, assigned)  # nodes made without supports()
            graph.check_valid()
    with profiler.phase("compile"):
        graph, assigned = group_fused(graph, assigned, providers, int(options.graph_optimization_level))
        graph.check_valid()
        assigned = compile_fused(assigned)
    placement = place(graph, assigned, providers, outer_devices)
    placement.graph.check_valid(placement.device_constants)
    with profiler.phase("plan"):
        def make_runner(body: Graph, outer: dict[str, Device], constants: dict[str, Any]):
            return _body_runner(build_graph(body, providers, options, opt, profiler, outer, constants))
        plan = build_plan(placement, providers, options, make_runner, outer_constants)
    return Built(placement, plan, cost_report)


def _body_runner(built: Built):
    """`run(feeds: list, outer: dict) -> list` of a built body (feeds in body-input order)."""
    plan = built.plan
    names = [v.name for v in built.placement.graph.inputs]

    def run(feeds: Sequence[Any], outer: dict[str, Any]) -> list[Any]:
        values = dict(outer)
        values.update(zip(names, feeds))
        return plan.run(values, plan.output_slots)
    return run


# --- The session ------------------------------------------------------------------------------

class InferenceSession:
    """Runs an ONNX model on a list of execution providers (onnxruntime-compatible API).

    The stages, in order: load -> level-1 rewrites -> (per graph level) partition -> level-2/3
    rewrites -> compile -> placement -> plan; then `run`."""

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
        graph.check_valid()
        # Taken before optimizing (folding may drop initializers).
        self._feed_spec = FeedSpec.of(graph)
        self._outputs_vi = list(graph.outputs)
        requested, by_cost = provider_registry.parse_request(providers, provider_options)
        if self._options.placement not in ("priority", "cost"):
            raise InvalidArgument(f"SessionOptions.placement is '{self._options.placement}'; "
                                  f"expected 'priority' or 'cost'")
        by_cost = by_cost or self._options.placement == "cost"
        self._providers = resolve_providers(requested, provider_options)
        opt = None
        if not preoptimized:
            opt = OptimizerContext(self._options, self._providers[-1])
            # 2. Level-1 rewrites (provider independent)
            with self._profiler.phase("optimize"):
                rewrite_level1(graph, opt)
            graph.check_valid()
        # 3-7. Partition, level-2/3 rewrites, compile, placement, plan
        built = build_graph(graph, self._providers, self._options, opt, self._profiler, by_cost=by_cost)
        self._placement, self._plan = built.placement, built.plan
        # providers whose run hooks do something (the base class's are no-ops: ~0.2 us a run)
        self._run_hooks = [p for p in self._providers
                           if type(p).on_run_start is not ExecutionProvider.on_run_start
                           or type(p).on_run_end is not ExecutionProvider.on_run_end]
        self._cost_report = built.cost_report
        if self._options.optimized_model_filepath:  # offline mode: write what was built
            offline.save_optimized(self._options.optimized_model_filepath, self._model, built.placement,
                                   self._options, self._providers)

    # --- 8. Run ---------------------------------------------------------------------------------
    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any],
            run_options: RunOptions | None = None) -> list[Any]:
        """Compute `output_names` (all outputs when None/empty) from `input_feed`.

        Returned arrays never alias a feed, a constant or each other. `run_options.terminate`, set
        from another thread, and `run_options.timeout_s` stop the run with RunTerminated. Feeds
        that are device arrays (CuPy, PyTorch CUDA tensors, DLPack producers) are used where they
        live, as IO binding does; the outputs are host arrays."""
        feeds = plain_feeds(input_feed, self._feed_spec)
        if feeds is None:
            on_device = {n: d for n, v in input_feed.items()
                         if type(v) is not np.ndarray and (d := device_of_array(v)) is not None} \
                if isinstance(input_feed, dict) else {}
            if on_device:
                return [v for v, _ in self.run_bound(input_feed, on_device, output_names, None,
                                                     run_options)]
            feeds = check_feeds(input_feed, self._feed_spec)
        fetch_slots = self._fetch_slots(output_names)
        control = RunControl(run_options, getattr(run_options, "timeout_s", 0.0)) \
            if run_options is not None else None
        token = current_run.set(control)
        hooked = self._run_hooks
        for p in hooked:
            p.on_run_start(run_options)
        try:
            outputs = run_plan(self._plan, feeds, fetch_slots, self._options, self._profiler,
                               only_fetches=bool(getattr(run_options, "only_execute_path_to_fetches", False)),
                               run_tag=getattr(run_options, "run_tag", "") or "")
            return _unaliased(outputs, feeds)
        finally:
            current_run.reset(token)
            for p in hooked:
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
        """Which provider runs each node, and how many copies the session inserted. "mode" is
        "priority" (provider order) or "cost"; "cost" is `get_placement_report().as_dict()` in
        cost mode (estimated and measured cost per partition, why each node went where it did),
        else None."""
        pl = self._placement
        return {
            "nodes": [(n.name, n.op_type, pl.assigned[n].provider.type) for n in pl.graph.nodes],
            "copy_nodes": pl.copy_nodes,
            "initializer_copies": pl.initializer_copies,
            "mode": "cost" if self._cost_report is not None else "priority",
            "cost": self._cost_report.as_dict() if self._cost_report is not None else None,
        }

    def get_placement_report(self) -> PlacementReport | None:
        """The cost-model placement report (`str()` of it is a readable table); None when the
        session placed by provider order."""
        return self._cost_report

    def copy_node_count(self) -> int:
        return self._placement.copy_nodes

    @property
    def _graph(self) -> Graph:
        """The placed graph the plan runs (for tests and tools that inspect the build)."""
        return self._placement.graph

    # --- Bound run (IO binding, OrtValues on devices) --------------------------------------------
    def run_bound(self, feeds: dict[str, Any], feed_devices: dict[str, Device],
                  output_names: Sequence[str] | None, fetch_devices: Sequence[Device | None] | None = None,
                  run_options: RunOptions | None = None) -> list[tuple[Any, Device]]:
        """Run with feeds that may already live on a device and fetches left on a device.

        feeds: input name -> value; feed_devices[name]: the Device of a feed that is not a host
        array (absent: host). A device feed goes straight to the nodes that read it on that
        device (the plan's MemcpyFromHost for it is skipped); readers elsewhere get one copy.
        fetch_devices[k]: where output k must end (None: where its producer left it; HOST: the
        host); the MemcpyToHost of a fetch wanted where it was produced is skipped. Returns
        (value, Device) per output. Sequential executor, cancellation as in `run`, no profiling
        events. Written against the current Plan (steps, slots, copy steps) and Placement
        (value locations); the IO binding layer (ep_core/iobinding.py) needs only this signature.
        """
        from contextlib import ExitStack

        from .partition import COPY_OPS
        from .provider import HOST

        plan, where_is = self._plan, self._placement.locations
        on_device = {n: d for n, d in feed_devices.items() if not d.is_host}
        checked = check_feeds(feeds, self._feed_spec, frozenset(on_device))
        names = list(output_names) if output_names else [v.name for v in self._outputs_vi]
        fetch_slots = self._fetch_slots(names)
        wants = list(fetch_devices) if fetch_devices is not None else [HOST] * len(names)
        if len(wants) != len(names):
            raise InvalidArgument(f"{len(wants)} fetch devices for {len(names)} outputs")

        def is_copy(st) -> bool:
            return st.node.op_type in COPY_OPS and hasattr(st.kernel, "dst")

        producer = {s: st for st in plan.steps for s in st.outputs if s is not None}
        skipped: set[int] = set()            # id() of copy steps a bound value makes unnecessary
        slots = plan.initial_slots({n: v for n, v in checked.items() if n not in on_device})
        for name, dev in on_device.items():
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
        sources: list[tuple[int, Device]] = []
        for fs, want in zip(fetch_slots, wants):
            st = producer.get(fs)
            src = (fs, HOST)
            if st is not None and is_copy(st) and (want is None or not want.is_host) \
                    and not any(fs in o.inputs for o in plan.steps):
                skipped.add(id(st))
                src = (st.inputs[0], where_is.get(st.node.inputs[0], HOST))
            sources.append(src)
        keep = {s for s, _ in sources}
        control = RunControl(run_options, getattr(run_options, "timeout_s", 0.0))
        token = current_run.set(control)
        for p in self._providers:
            p.on_run_start(run_options)
        try:
            with ExitStack() as stack:
                stack.enter_context(np.errstate(all="ignore"))   # as run_plan: IEEE results wanted
                intra = int(getattr(self._options, "intra_op_num_threads", 0) or 0)
                for p in plan.providers:
                    stack.enter_context(p.limit_threads(intra))
                for st in plan.steps:
                    control.check()
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
            for (src, where), want in zip(sources, wants):
                value = slots[src]
                if want is not None and want != where:
                    value, where = self._bound_copy(value, where, want), want
                results.append((value, where))
            host = _unaliased([v for v, _ in results], {n: checked[n] for n in checked if n not in on_device})
            return [(h if w.is_host else v, w) for h, (v, w) in zip(host, results)]
        finally:
            current_run.reset(token)
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



def _unaliased(outputs: list[Any], feeds: dict[str, Any]) -> list[Any]:
    """Outputs the caller owns: a host array that is a constant (read-only), or shares memory with
    a feed or an earlier output, is copied, so mutating one value never changes another."""
    # The usual case: distinct arrays that own their memory cannot overlap one another, nor a
    # feed they are not (no may_share_memory pass: ~0.5 us a pair). Plain loops: the
    # generator expressions this was written with took ~3 us of a streaming model's run.
    fed = feeds.values()
    plain = True
    for k, o in enumerate(outputs):
        if type(o) is not np.ndarray or o.base is not None or not o.flags.writeable:
            plain = False
            break
        for other in fed:   # identity only (`in` would compare arrays element-wise)
            if other is o:
                plain = False
        for other in outputs[:k]:
            if other is o:
                plain = False
        if not plain:
            break
    if plain:
        return list(outputs)
    arrays = [v for v in feeds.values() if isinstance(v, np.ndarray)]
    out: list[Any] = []
    for o in outputs:
        if isinstance(o, np.ndarray) and (not o.flags.writeable
                                          or any(np.may_share_memory(o, a) for a in arrays)):
            o = o.copy()
        out.append(o)
        if isinstance(o, np.ndarray):
            arrays.append(o)
    return out

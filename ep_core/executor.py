"""Stage 7 (plan) and the sequential executor: kernels created once with their kernel context,
value slots, release after last use, cancellation between steps.
"""
from __future__ import annotations

import bisect
import contextvars
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import EPError, Fail, ResourceLimit, RunTerminated
from .graph import Graph, Node
from .kernel import KernelContext, normalize_outputs
from .partition import Assignment
from .placement import Placement
from .provider import HOST


class RunControl:
    """Cancellation of one `InferenceSession.run`: `RunOptions.terminate` (set from any thread)
    and an optional deadline. Checked before every step, in bodies of Loop/Scan/If too."""

    __slots__ = ("run_options", "deadline")

    def __init__(self, run_options: Any, timeout_s: float = 0.0):
        self.run_options = run_options
        self.deadline = time.monotonic() + timeout_s if timeout_s and timeout_s > 0 else None

    def check(self) -> None:
        if self.run_options is not None and self.run_options.terminate:
            raise RunTerminated("run terminated: RunOptions.terminate was set"
                                + _tag(self.run_options))
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise RunTerminated(f"run exceeded its deadline (RunOptions.timeout_s="
                                f"{self.run_options.timeout_s})" + _tag(self.run_options))


def _tag(run_options: Any) -> str:
    tag = getattr(run_options, "run_tag", "")
    return f" (run_tag '{tag}')" if tag else ""


# The control of the run in progress on this thread (the parallel executor copies the context
# into its worker threads), so that bodies run by control-flow kernels see it too.
current_run: contextvars.ContextVar[RunControl | None] = contextvars.ContextVar("ep_core_run", default=None)


def kernel_error(step: "Step", e: Exception) -> Fail:
    """The typed error for an exception a kernel raised (MemoryError: ResourceLimit)."""
    what = f"{step.node.describe()} on provider '{step.provider.type}' failed: {type(e).__name__}: {e}"
    if isinstance(e, MemoryError):
        return ResourceLimit(what + " (out of memory; SessionOptions.max_tensor_bytes refuses such "
                                    "outputs before allocating)")
    return Fail(what)


class _CopyKernel:
    """Runs a copy node through the owning provider's DataTransfer."""

    def __init__(self, transfer, dst):
        self.transfer, self.dst = transfer, dst

    def compute(self, value):
        return (self.transfer.copy(value, self.dst),)


class _CompiledKernel:
    def __init__(self, fn: Callable):
        self.fn = fn

    def compute(self, *inputs):
        return self.fn(*inputs)


@dataclass
class Step:
    node: Node
    provider: Any
    kernel: Any
    inputs: list[int | None]        # slot per input (None: omitted optional)
    outputs: list[int | None]
    release: list[int] = field(default_factory=list)  # slots dead after this step

    def execute(self, args: list, observer: Callable | None = None) -> tuple:
        """Run the kernel; returns its outputs as a tuple. Kernel errors become Fail."""
        t0 = time.perf_counter() if observer else 0.0
        try:
            outs = self.kernel.compute(*args)
        except EPError:
            raise
        except Exception as e:
            raise kernel_error(self, e) from e
        if observer:
            observer(self, args, time.perf_counter() - t0)
        return normalize_outputs(outs, len(self.outputs))


@dataclass
class Plan:
    """Everything needed to run a graph repeatedly."""
    steps: list[Step]
    slot_of: dict[str, int]
    constants: dict[int, Any]       # slot -> initializer value (host or pre-copied to a device)
    input_slots: list[int | None]   # per graph input
    output_slots: list[int]         # per graph output (host copies)
    n_slots: int
    providers: list[Any]
    schedule: Any = None            # the parallel executor's dependency schedule, made on first use
    straight: dict[bool, Any] = field(default_factory=dict)  # checked? -> generated straight-line run
    pruned: dict[tuple, list[Step]] = field(default_factory=dict)  # fetch slots -> steps they need
    slot_template: list | None = None   # the constants in their slots, copied by every run

    def steps_for(self, fetch_slots: list[int]) -> list[Step]:
        """Only the steps the fetches depend on (RunOptions.only_execute_path_to_fetches)."""
        key = tuple(fetch_slots)
        found = self.pruned.get(key)
        if found is None:
            producer = {s: st for st in self.steps for s in st.outputs if s is not None}
            needed: set[int] = set()
            todo = [producer[s] for s in fetch_slots if s in producer]
            while todo:
                st = todo.pop()
                if id(st) in needed:
                    continue
                needed.add(id(st))
                todo.extend(producer[s] for s in st.inputs if s is not None and s in producer)
            found = self.pruned[key] = [st for st in self.steps if id(st) in needed]
        return found

    def initial_slots(self, feeds: dict[str, Any]) -> list[Any]:
        """A fresh slot table holding the constants and the feeds."""
        template = self.slot_template
        if template is None:   # made on first use: `constants` is complete once planned
            template = [None] * self.n_slots
            for s, v in self.constants.items():
                template[s] = v
            self.slot_template = template
        slots = template.copy()
        for name, value in feeds.items():
            s = self.slot_of.get(name)
            if s is not None:
                slots[s] = value
        return slots

    def run(self, feeds: dict[str, Any], fetch_slots: list[int], observer=None,
            steps: list[Step] | None = None) -> list[Any]:
        """Sequential executor: steps in topological order; dead values are dropped at once."""
        control = current_run.get()
        slots = self.initial_slots(feeds)
        if control is not None:
            control.check()
        if observer is None and steps is None:
            checked = control is not None
            fast = self.straight.get(checked)
            if fast is None:
                fast = self.straight[checked] = _straight_line(self.steps, checked)
            fast.run(slots, control.check if checked else None)
            return [slots[s] for s in fetch_slots]
        for step in self.steps if steps is None else steps:
            if control is not None:
                control.check()
            outs = step.execute([slots[s] if s is not None else None for s in step.inputs], observer)
            for s, v in zip(step.outputs, outs):
                if s is not None:
                    slots[s] = v
            for s in step.release:
                slots[s] = None
        return [slots[s] for s in fetch_slots]


class _StraightLine:
    """The plan's steps as one generated Python function: one line per kernel call and per slot
    write, no per-step lookups (the per-node overhead of the sequential executor). A kernel error
    is attributed to its step by the line it was raised on."""

    def __init__(self, fn: Callable, call_lines: list[int], steps: list[Step], code):
        self.fn, self.call_lines, self.steps, self.code = fn, call_lines, steps, code

    def run(self, slots: list, check: Callable | None) -> None:
        try:
            self.fn(slots, check)
        except EPError:
            raise
        except Exception as e:
            step = self._failed_step(e)
            if step is None:
                raise
            raise kernel_error(step, e) from e

    def _failed_step(self, e: BaseException) -> Step | None:
        tb = e.__traceback__
        line = None
        while tb is not None:
            if tb.tb_frame.f_code is self.code:
                line = tb.tb_lineno
            tb = tb.tb_next
        if line is None:
            return None
        k = bisect.bisect_right(self.call_lines, line) - 1
        return self.steps[k] if k >= 0 else None


def _pad(outs: Any, n: int) -> tuple:
    outs = normalize_outputs(outs, n)
    return outs + (None,) * (n - len(outs)) if len(outs) < n else outs


def _straight_line(steps: list[Step], checked: bool) -> _StraightLine:
    env: dict[str, Any] = {"_pad": _pad, "tuple": tuple}
    lines = ["def run(s, check):"]
    call_lines = []
    for k, st in enumerate(steps):
        env[f"k{k}"] = st.kernel.compute
        if checked:
            lines.append("    check()")
        args = ", ".join("None" if i is None else f"s[{i}]" for i in st.inputs)
        lines.append(f"    r = k{k}({args})")
        call_lines.append(len(lines))
        outs = st.outputs
        if len(outs) == 1:
            if outs[0] is not None:
                lines.append(f"    s[{outs[0]}] = r[0] if r.__class__ is tuple else r")
        elif outs:
            lines.append(f"    r = _pad(r, {len(outs)})")
            lines.extend(f"    s[{o}] = r[{j}]" for j, o in enumerate(outs) if o is not None)
        lines.extend(f"    s[{r}] = None" for r in st.release)
    lines.append("    return None")
    code = compile("\n".join(lines), "<ep_core plan>", "exec")
    exec(code, env)
    fn = env.pop("run")   # the function must not be in its own globals: a cycle
    return _StraightLine(fn, call_lines, steps, fn.__code__)


RunnerFactory = Callable[[Graph, dict, dict], Callable]
"""(body graph, where each outer value lives, host values of the outer constants)
-> runner(feeds: list, outer: dict) -> list"""


def build_plan(placement: Placement, providers: list[Any], session_options: Any,
               make_runner: RunnerFactory, outer_constants: dict[str, Any] | None = None) -> Plan:
    """Create each node's kernel once (with its kernel context) and lay out value slots.

    `outer_constants` (a control-flow body's plan): host values of the enclosing graphs'
    constants; a body kernel reading one sees it as a constant input (`ctx.constant_input`), so
    weights an If/Loop/Scan body reads from outside are prepared at build time too."""
    graph = placement.graph
    slot_of: dict[str, int] = {}

    def slot(name: str) -> int:
        if name not in slot_of:
            slot_of[name] = len(slot_of)
        return slot_of[name]

    constant_names = graph.constant_initializers()
    constants: dict[int, Any] = {}
    for name, value in graph.initializers.items():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False  # shared by every run: no kernel may write into it
        constants[slot(name)] = value
    host_value = {name: graph.initializers[name] for name in constant_names}
    for placed, (name, dst) in placement.device_constants.items():
        transfer = next(t for t in (p.get_data_transfer() for p in providers)
                        if t is not None and t.can_copy(HOST, dst))
        constants[slot(placed)] = transfer.copy(graph.initializers[name], dst)
        host_value[placed] = graph.initializers[name]
    input_slots = [slot(v.name) for v in graph.inputs]
    for name in sorted(graph.outer_scope):
        slot(name)
    if outer_constants:
        # Only names the body reads from outside: not its own inputs or values (no shadowing).
        local = {v.name for v in graph.inputs} | {o for n in graph.nodes for o in n.outputs}
        for name in graph.outer_scope:
            if name in outer_constants and name not in host_value and name not in local:
                host_value[name] = outer_constants[name]
    threads = int(getattr(session_options, "intra_op_num_threads", 0) or 0)
    max_bytes = int(getattr(session_options, "max_tensor_bytes", 0) or 0)
    steps = []
    for node in graph.nodes:   # placement left them in topological order
        a = placement.assigned[node]
        kern = _make_kernel(node, a, host_value, placement, session_options, threads, max_bytes,
                            make_runner)
        ins = [slot(i) if i else None for i in list(node.inputs) + node.implicit_inputs]
        outs = [slot(o) if o else None for o in node.outputs]
        steps.append(Step(node, a.provider, kern, ins, outs))
    output_slots = [slot(name) for name in placement.fetches]
    # Release each non-constant, non-output slot after its last reader (or its producer if unread).
    keep = set(constants) | set(output_slots)
    last_use: dict[int, int] = {}
    for k, st in enumerate(steps):
        for s in st.outputs + st.inputs:
            if s is not None:
                last_use[s] = k
    for s, k in last_use.items():
        if s not in keep:
            steps[k].release.append(s)
    return Plan(steps, slot_of, constants, input_slots, output_slots, len(slot_of), providers)


def _make_kernel(node: Node, a: Assignment, host_value: dict[str, Any], placement: Placement,
                 session_options: Any, threads: int, max_bytes: int, make_runner: RunnerFactory):
    if a.transfer is not None:
        return _CopyKernel(a.transfer[0], a.transfer[1])
    if a.compiled is not None:
        return _CompiledKernel(a.compiled)
    runners: dict[str, Any] = {}
    for attr, v in node.attrs.items():
        if isinstance(v, Graph):
            runners[attr] = make_runner(v, placement.locations, host_value)
        elif isinstance(v, list) and v and isinstance(v[0], Graph):
            runners[attr] = [make_runner(g, placement.locations, host_value) for g in v]
    ctx = KernelContext(
        a.provider, session_options,
        constant_inputs={k: host_value[i] for k, i in enumerate(node.inputs) if i in host_value},
        subgraph_runners=runners, intra_op_threads=threads, max_tensor_bytes=max_bytes)
    try:
        return a.kernel_def.factory(node, ctx)
    except EPError:
        raise
    except Exception as e:
        raise Fail(f"{node.describe()}: creating the '{a.provider.type}' kernel failed: "
                   f"{type(e).__name__}: {e}") from e

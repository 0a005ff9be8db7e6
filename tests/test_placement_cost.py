"""Cost-model placement (providers="auto", SessionOptions.placement="cost"): the cut, the copy
model, the cache, the report. Costs are injected where an assignment is asserted (no timing)."""
import itertools
import math

import numpy as np
import pytest
from conftest import F32, make_model
from foreign_provider import FOREIGN, ForeignProvider
from onnx import helper, numpy_helper
from slow_fast_provider import SlowFastProvider

import ep_core
from ep_core import load, placement_cost, providers as provider_registry
from ep_core.errors import InvalidArgument
from ep_core.mincut import FlowGraph
from ep_core.placement_cost import _Problem, choose_by_cost
from ep_core.placement_measure import CostCache, Measurer, cache_dir
from ep_core.provider import HOST
from ep_cpu import CPUExecutionProvider

ep_core.register_provider("foreign", ForeignProvider)
ep_core.register_provider("slowfast", SlowFastProvider)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test measures into its own cache directory (never the user's)."""
    monkeypatch.setenv("EP_CORE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "placement"


def graph_of(model):
    return load.load(model).graph


def table(costs, default=1e-3):
    """node_seconds from {(op_type or node name, provider type): seconds}."""
    def node_seconds(node, provider):
        for key in ((node.name, provider.type), (node.op_type, provider.type)):
            if key in costs:
                return costs[key], "measured"
        return default, "measured"
    return node_seconds


def per_byte(latency=10e-6, seconds_per_byte=1e-9):
    return lambda src, dst, nbytes: latency + seconds_per_byte * nbytes


def placed(result):
    return {n.name: a.provider.type for n, a in result.assigned.items()}


def mixed_model(n=64, layers=3):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32), f"w{k}")
             for k in range(layers)]
    nodes, prev = [], "x"
    for k in range(layers):
        nodes += [helper.make_node("MatMul", [prev, f"w{k}"], [f"m{k}"], name=f"mm{k}"),
                  helper.make_node("Softplus", [f"m{k}"], [f"s{k}"], name=f"sp{k}")]
        prev = f"s{k}"
    return make_model(nodes, [("x", F32, [n, n])], [(prev, F32, [n, n])], inits)


MIXED_COSTS = {("MatMul", "slowfast"): 3e-3, ("MatMul", "cpu"): 1e-3,
               ("Softplus", "slowfast"): 0.3e-3, ("Softplus", "cpu"): 4e-3}


# --- the cut ---------------------------------------------------------------------------------

def test_min_cut_matches_brute_force_on_random_graphs():
    rng = np.random.default_rng(1)
    for _ in range(30):
        n = 6
        caps = {}
        for u, v in itertools.permutations(range(n), 2):
            if rng.random() < 0.4:
                caps[(u, v)] = float(rng.integers(1, 10)) if rng.random() < 0.9 else math.inf
        g = FlowGraph(n)
        for (u, v), c in caps.items():
            g.add_edge(u, v, c)
        value, side = g.min_cut()
        best = math.inf
        for bits in itertools.product([0, 1], repeat=n - 2):
            s_side = {0} | {k + 2 for k, b in enumerate(bits) if b == 0}
            best = min(best, sum(c for (u, v), c in caps.items() if u in s_side and v not in s_side))
        assert value == best
        if not math.isinf(value):
            assert sum(c for (u, v), c in caps.items() if u in side and v not in side) == best


def random_model(rng, n_nodes):
    """A random DAG of ops both providers run (Relu, Add, Mul) and one only the CPU runs (Exp)."""
    names, nodes = ["x"], []
    for k in range(n_nodes):
        op = rng.choice(["Relu", "Add", "Mul", "Exp"])
        if op in ("Add", "Mul"):
            a, b = rng.choice(names, 2)
            ins = [str(a), str(b)]
        else:
            ins = [str(rng.choice(names))]
        nodes.append(helper.make_node(op, ins, [f"v{k}"], name=f"n{k}"))
        names.append(f"v{k}")
    outputs = [("v%d" % (n_nodes - 1), F32, [256])]
    read = {i for nd in nodes for i in nd.input}
    outputs += [(v, F32, [256]) for v in names[1:-1] if v not in read]
    return make_model(nodes, [("x", F32, [256])], outputs)


def test_two_provider_cut_is_the_exact_optimum(private_cache):
    """Against every labeling of random graphs with random costs: fan-out copies shared, graph
    outputs copied back, graph inputs copied in."""
    rng = np.random.default_rng(2)
    for trial in range(12):
        model = random_model(rng, 7)
        graph = graph_of(model)
        providers = [ForeignProvider(), CPUExecutionProvider()]
        costs = {(f"n{k}", p): float(rng.uniform(1e-6, 40e-6)) for k in range(7) for p in ("foreign", "cpu")}
        copy = per_byte(float(rng.uniform(1e-6, 20e-6)), 1e-9)
        result = choose_by_cost(graph, providers, node_seconds=table(costs), copy_seconds=copy,
                                cache=CostCache(private_cache))
        problem = _Problem(graph, providers, Measurer(graph, None, providers, CostCache(private_cache)),
                           table(costs), copy)
        feasible = [sorted(problem.kdefs[k]) for k in range(len(problem.nodes))]
        best = min(problem.total(list(labels)) for labels in itertools.product(*feasible))
        assert result.report.method == "min-cut"
        assert result.report.total_ms == pytest.approx(best * 1e3, rel=1e-9), trial


def test_three_providers_never_worse_than_a_fixed_order(private_cache):
    rng = np.random.default_rng(3)
    for _ in range(6):
        graph = graph_of(random_model(rng, 6))
        providers = [ForeignProvider(), SlowFastProvider(), CPUExecutionProvider()]
        costs = {(f"n{k}", p): float(rng.uniform(1e-6, 40e-6)) for k in range(6)
                 for p in ("foreign", "slowfast", "cpu")}
        result = choose_by_cost(graph, providers, node_seconds=table(costs),
                                copy_seconds=per_byte(5e-6), cache=CostCache(private_cache))
        assert result.report.method == "alpha-expansion"
        assert len(result.report.fixed_orders_ms) == 6   # every order of three providers
        assert result.report.total_ms <= min(result.report.fixed_orders_ms.values()) + 1e-12


# --- decisions -------------------------------------------------------------------------------

def test_mixed_model_splits_by_op_cost(private_cache):
    graph = graph_of(mixed_model())
    result = choose_by_cost(graph, [SlowFastProvider(), CPUExecutionProvider()],
                            node_seconds=table(MIXED_COSTS), copy_seconds=per_byte(20e-6),
                            cache=CostCache(private_cache))
    assert placed(result) == {"mm0": "cpu", "sp0": "slowfast", "mm1": "cpu", "sp1": "slowfast",
                              "mm2": "cpu", "sp2": "slowfast"}
    report = result.report
    fixed = report.fixed_orders_ms
    assert report.total_ms < 0.8 * min(fixed["slowfast>cpu"], fixed["cpu>slowfast"])
    assert [p.provider for p in report.partitions] == ["cpu", "slowfast"] * 3
    sp0 = next(n for n in report.nodes if n.node == "sp0")
    assert sp0.reason.startswith("slowfast: 0.300 ms vs cpu 4.000 ms; copies in")


def test_expensive_copies_keep_the_whole_model_on_one_side(private_cache):
    graph = graph_of(mixed_model())
    result = choose_by_cost(graph, [SlowFastProvider(), CPUExecutionProvider()],
                            node_seconds=table(MIXED_COSTS), copy_seconds=per_byte(50e-3),
                            cache=CostCache(private_cache))
    assert set(placed(result).values()) == {"cpu"}


def test_small_op_between_device_ops_stays_put(private_cache):
    """Add is 1 us cheaper on the CPU, but moving it costs two copies: it stays on the device.
    With free copies it would move (the test can fail)."""
    model = make_model([helper.make_node("Relu", ["x"], ["a"], name="r0"),
                        helper.make_node("Add", ["a", "a"], ["b"], name="add"),
                        helper.make_node("Relu", ["b"], ["y"], name="r1")],
                       [("x", F32, [64])], [("y", F32, [64])])
    costs = {("Relu", "foreign"): 1e-6, ("Relu", "cpu"): 100e-6,
             ("Add", "foreign"): 3e-6, ("Add", "cpu"): 2e-6}
    graph = graph_of(model)
    providers = [ForeignProvider(), CPUExecutionProvider()]
    stays = choose_by_cost(graph, providers, node_seconds=table(costs), copy_seconds=per_byte(10e-6),
                           cache=CostCache(private_cache))
    assert placed(stays) == {"r0": "foreign", "add": "foreign", "r1": "foreign"}
    add = next(n for n in stays.report.nodes if n.node == "add")
    assert "kept on foreign" in add.reason
    free = choose_by_cost(graph, providers, node_seconds=table(costs),
                          copy_seconds=lambda s, d, b: 0.0, cache=CostCache(private_cache))
    assert placed(free)["add"] == "cpu"


def test_host_memory_declarations_count_no_copy(private_cache):
    """Shape's output and Reshape's shape input live on the host for the foreign provider: a
    labeling that runs them there implies only the boundary copies."""
    model = make_model([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                        helper.make_node("Shape", ["r"], ["s"], name="shape"),
                        helper.make_node("Reshape", ["r", "s"], ["y"], name="reshape")],
                       [("x", F32, [2, 3])], [("y", F32, [2, 3])])
    graph = graph_of(model)
    providers = [ForeignProvider(), CPUExecutionProvider()]
    problem = _Problem(graph, providers, Measurer(graph, None, providers, CostCache(private_cache)),
                       table({}), per_byte())
    copies = problem.copies([0, 0, 0])
    assert [(v.name, src, dst) for v, src, dst, _, _ in copies] == [("x", HOST, FOREIGN), ("y", FOREIGN, HOST)]


# --- sessions ----------------------------------------------------------------------------------

def test_auto_with_only_the_cpu_equals_the_cpu_placement(monkeypatch, rng):
    monkeypatch.setattr(provider_registry, "get_available_providers", lambda: ["cpu"])
    model = mixed_model()
    auto = ep_core.InferenceSession(model, providers="auto")
    cpu = ep_core.InferenceSession(model, providers=["cpu"])
    assert auto.get_providers() == ["cpu"]
    assert auto.get_placement()["nodes"] == cpu.get_placement()["nodes"]
    assert auto.get_placement_report().method == "single provider"
    assert auto.get_placement_report().measured == 0
    x = rng.standard_normal((64, 64)).astype(np.float32)
    np.testing.assert_array_equal(auto.run(None, {"x": x})[0], cpu.run(None, {"x": x})[0])


def test_auto_chooses_among_available_providers(monkeypatch, rng):
    """providers="auto" with injected costs: the assignment the costs imply, outputs right."""
    monkeypatch.setattr(provider_registry, "get_available_providers", lambda: ["slowfast", "cpu"])
    monkeypatch.setattr(Measurer, "node_seconds",
                        lambda self, node, provider, kdef: table(MIXED_COSTS)(node, provider))
    model = mixed_model()
    sess = ep_core.InferenceSession(model, providers="auto")
    placement = sess.get_placement()
    assert placement["mode"] == "cost" and placement["cost"]["method"] == "min-cut"
    assert {n: p for n, op, p in placement["nodes"] if not op.startswith("Memcpy")} == \
        {"mm0": "cpu", "sp0": "slowfast", "mm1": "cpu", "sp1": "slowfast", "mm2": "cpu", "sp2": "slowfast"}
    assert placement["copy_nodes"] == 6
    x = rng.standard_normal((64, 64)).astype(np.float32)
    ref = ep_core.InferenceSession(model, providers=["cpu"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-4, atol=1e-5)


def test_explicit_list_with_cost_placement_and_the_second_session_measures_nothing(rng, private_cache):
    model = mixed_model(n=32, layers=2)
    options = ep_core.SessionOptions()
    options.placement = "cost"
    first = ep_core.InferenceSession(model, options, providers=["slowfast", "cpu"])
    report = first.get_placement_report()
    assert report.measured > 0 and report.cache_path.startswith(str(private_cache))
    assert all(src in ("measured", "cached") for n in report.nodes for src in n.source.values())
    second = ep_core.InferenceSession(model, options, providers=["slowfast", "cpu"])
    again = second.get_placement_report()
    assert again.measured == 0 and again.cached == report.measured + report.cached
    assert second.get_placement()["nodes"] == first.get_placement()["nodes"]
    x = rng.standard_normal((32, 32)).astype(np.float32)
    ref = ep_core.InferenceSession(model, providers=["cpu"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(second.run(None, {"x": x})[0], ref, rtol=1e-4, atol=1e-5)
    # The priority mode is unchanged: no report, old keys as before.
    plain = ep_core.InferenceSession(model, providers=["slowfast", "cpu"]).get_placement()
    assert plain["mode"] == "priority" and plain["cost"] is None
    assert {p for _, op, p in plain["nodes"] if not op.startswith("Memcpy")} == {"slowfast"}


def test_cache_directory_overrides(tmp_path, monkeypatch):
    options = ep_core.SessionOptions()
    assert cache_dir(options) == tmp_path / "cache" / "placement"          # EP_CORE_CACHE_DIR
    options.add_session_config_entry("ep_core.placement.cache_dir", str(tmp_path / "mine"))
    assert cache_dir(options) == tmp_path / "mine"
    monkeypatch.delenv("EP_CORE_CACHE_DIR")
    assert str(cache_dir(None)).endswith("/.cache/ep_core/placement")


def test_unmeasurable_nodes_are_estimated_and_remembered(private_cache):
    """A Reshape whose shape input is not constant gets zeros as made-up data, which it refuses:
    the node is estimated, and the next measurer does not try again. A foreign Relu is measured
    on a foreign copy of its input (else it would refuse a host array)."""
    model = make_model([helper.make_node("Relu", ["x"], ["r"]),
                        helper.make_node("Reshape", ["r", "s"], ["y"])],
                       [("x", F32, [2, 3]), ("s", 7, [2])], [("y", F32, None)])
    graph = graph_of(model)
    foreign = ForeignProvider()
    relu, reshape = graph.nodes
    registry = foreign.get_kernel_registry()
    m = Measurer(graph, None, [foreign], CostCache(private_cache))
    assert m.node_seconds(relu, foreign, registry.lookup(relu))[1] == "measured"
    assert m.node_seconds(reshape, foreign, registry.lookup(reshape))[1] == "estimated"
    m.cache.save()
    again = Measurer(graph, None, [foreign], CostCache(private_cache))
    assert again.node_seconds(reshape, foreign, registry.lookup(reshape))[1] == "estimated"
    assert again.node_seconds(relu, foreign, registry.lookup(relu))[1] == "cached"
    assert again.measured == 0


def test_bad_requests_are_refused():
    model = mixed_model(n=4, layers=1)
    with pytest.raises(InvalidArgument, match="'auto'"):
        ep_core.InferenceSession(model, providers=["auto", "cpu"])
    with pytest.raises(InvalidArgument, match="provider options"):
        ep_core.InferenceSession(model, providers="auto", provider_options=[{}])
    options = ep_core.SessionOptions()
    options.placement = "fastest"
    with pytest.raises(InvalidArgument, match="'priority' or 'cost'"):
        ep_core.InferenceSession(model, options, providers=["cpu"])


def test_report_text_names_every_node(private_cache):
    graph = graph_of(mixed_model())
    result = choose_by_cost(graph, [SlowFastProvider(), CPUExecutionProvider()],
                            node_seconds=table(MIXED_COSTS), copy_seconds=per_byte(20e-6),
                            cache=CostCache(private_cache))
    text = str(result.report)
    assert "placement by min-cut" in text and all(f"mm{k} (MatMul) -> cpu" in text for k in range(3))
    assert placement_cost.PlacementReport(**result.report.as_dict()).total_ms == result.report.total_ms


def test_doc_code_blocks_run(tmp_path):
    """Every ```python block of docs/placement.md, in order, as one script from the repo root."""
    import re
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "placement.md").read_text()
    code = "\n".join(m.group(1) for m in re.finditer(r"^```python\n(.*?)^```$", text, re.S | re.M))
    assert code
    env = {**__import__("os").environ, "EP_CORE_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "softplus (Softplus) -> " in done.stdout


def test_control_flow_node_is_estimated_and_its_body_follows_the_order(rng):
    """An If at the top level is costed by formula; its bodies are placed by provider order and
    read the outer value wherever the cut put its producer."""
    then_g = helper.make_graph([helper.make_node("Relu", ["r"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", F32, [2, 3])])
    else_g = helper.make_graph([helper.make_node("Neg", ["r"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", F32, [2, 3])])
    model = make_model([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                        helper.make_node("If", ["c"], ["y"], name="if", then_branch=then_g,
                                         else_branch=else_g)],
                       [("x", F32, [2, 3]), ("c", 9, [])], [("y", F32, [2, 3])])
    options = ep_core.SessionOptions()
    options.placement = "cost"
    sess = ep_core.InferenceSession(model, options, providers=["foreign", "cpu"])
    report = sess.get_placement_report()
    if_cost = next(n for n in report.nodes if n.node == "if")
    assert set(if_cost.source.values()) == {"estimated"}
    x = rng.standard_normal((2, 3)).astype(np.float32)
    for c in (True, False):
        got = sess.run(None, {"x": x, "c": np.array(c)})[0]
        np.testing.assert_array_equal(got, np.maximum(x, 0) if c else -np.maximum(x, 0))

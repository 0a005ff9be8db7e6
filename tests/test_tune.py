"""The tuner: selection with injected timings (no timing assertions), the cache, the config file."""
from __future__ import annotations

import importlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ep_core
from ep_core.errors import InvalidArgument, NoSuchFile
from ep_core.options import ExecutionMode, GraphOptimizationLevel, SessionOptions
from ep_core.tune import TrialResult, measure_alternating, noise_ms, select
from ep_core.tune_config import DEFAULTS, Trial, load_config

# `ep_core.tune` is the function (ep_core/__init__.py exports it); the module is reached this way.
tune_module = importlib.import_module("ep_core.tune")
FEEDS = {"x": np.ones((2, 4), np.float32)}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
                          "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])], [w])
    path = tmp_path_factory.mktemp("m") / "t.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def result(name: str, times, stage: str = "s", error: str = "") -> TrialResult:
    return TrialResult(Trial.make(name, session_options={"intra_op_num_threads": len(name)}), stage,
                       list(times), error)


# --- selection ----------------------------------------------------------------------------------

def test_select_prefers_reference_within_noise():
    ref = result("defaults", [10.0, 10.5, 9.5, 10.2, 9.8])       # robust sigma ~0.3 ms
    close = result("close", [9.9, 10.4, 9.4, 10.1, 9.7])         # 0.1 ms faster: noise
    assert select([ref, close], 0) == 0


def test_select_takes_a_win_larger_than_noise():
    ref = result("defaults", [10.0, 10.5, 9.5, 10.2, 9.8])
    fast = result("fast", [8.0, 8.2, 7.9, 8.1, 8.0])
    faster_but_failed = result("failed", [], error="InvalidArgument: no")
    assert select([ref, fast, faster_but_failed], 0) == 1
    assert noise_ms(ref, fast) < 10.0 - 8.0


def test_select_noise_floor_is_relative():
    ref = result("defaults", [10.0] * 5)                          # zero spread: the 1% floor decides
    assert select([ref, result("a", [9.95] * 5)], 0) == 0
    assert select([ref, result("b", [9.8] * 5)], 0) == 1


def test_select_a_noisy_candidate_must_win_by_its_own_spread():
    ref = result("defaults", [10.0, 10.1, 9.9, 10.0, 10.0])
    noisy = result("noisy", [5.0, 9.0, 13.0, 1.0, 17.0])          # median 9, sigma ~5.9: SE ~3.3
    assert select([ref, noisy], 0) == 0


def test_noise_is_standard_errors_of_the_medians_not_the_spread_of_one_run():
    """A trial twice as fast is a win even when single runs spread widely, given enough runs."""
    ref = result("defaults", [60.0, 100.0] * 20)                 # sigma of one run ~30 ms
    fast = result("fast", [30.0, 40.0] * 20)
    assert ref.sigma_ms > 20 and noise_ms(ref, fast) < 20
    assert select([ref, fast], 0) == 1
    assert select([result("d", [60.0, 100.0]), result("f", [30.0, 40.0])], 0) == 0   # 2 runs: no


def test_select_falls_back_when_the_reference_failed():
    assert select([result("defaults", [], error="x"), result("b", [3.0, 3.0])], 0) == 1


def test_measure_alternating_rotates_the_order_in_blocks():
    calls = []
    runners = [lambda k=k: calls.append(k) for k in range(3)]
    times = measure_alternating(runners, 3, settle_s=0, block_s=0)     # blocks of one timed run
    assert [len(t) for t in times] == [3, 3, 3]
    # after 2 warm-up rounds: each block is an untimed run and a timed one
    assert calls[6:] == [0, 0, 1, 1, 2, 2, 1, 1, 2, 2, 0, 0, 2, 2, 0, 0, 1, 1]
    calls.clear()
    times = measure_alternating(runners[:2], 5, settle_s=0, block_s=10.0)  # one block of 5 each
    assert [len(t) for t in times] == [5, 5] and calls[4:] == [0] * 6 + [1] * 6


# --- tune with injected timings -----------------------------------------------------------------

class FakeSession:
    created: list[Trial] = []

    def __init__(self, trial: Trial) -> None:
        self.trial = trial
        FakeSession.created.append(trial)
        self.last = None

    def run(self, names, feeds):
        FakeSession.last_run = self.trial
        return []


def fake_measure(latency):
    """A measure function giving each trial `latency(trial) -> list of ms` (identifies the runner's
    trial by calling it once)."""
    def measure(runners, runs, bar):
        out = []
        for fn in runners:
            fn()
            out.append(list(latency(FakeSession.last_run))[:runs])
        return out
    return measure


@pytest.fixture
def fake_sessions(monkeypatch):
    FakeSession.created = []
    monkeypatch.setattr(tune_module, "_build_session", lambda model, trial: FakeSession(trial))
    return FakeSession


def jitter(median: float, n: int = 9) -> list[float]:
    return [median * (1 + 0.002 * ((k % 3) - 1)) for k in range(n)]


def test_tune_picks_a_clearly_faster_trial_and_reports_every_trial(model_path, tmp_path, fake_sessions):
    def latency(trial: Trial):
        so = dict(trial.session_options)
        return jitter(7.0 if so["intra_op_num_threads"] == 1 else 10.0)
    res = ep_core.tune(model_path, FEEDS, runs=9, cache_dir=tmp_path, progress=False,
                       measure=fake_measure(latency))
    assert dict(res.best.session_options)["intra_op_num_threads"] == 1
    assert res.speedup == pytest.approx(10.0 / 7.0)
    assert res.chosen.median_ms == pytest.approx(7.0) and res.default.median_ms == pytest.approx(10.0)
    stages = {r.stage for r in res.trials}
    assert {"intra_op_threads", "execution_mode", "optimization_level", "final"} <= stages
    # every stage times the defaults beside its variations
    assert all(any(r.trial.identity() == DEFAULTS.identity() for r in res.trials if r.stage == s)
               for s in stages)
    assert any(r.trial.providers == "auto" for r in res.trials if r.stage == "providers")
    assert not res.cached and res.cache_path


def test_tune_keeps_defaults_when_nothing_beats_the_noise(model_path, tmp_path, fake_sessions):
    def latency(trial: Trial):
        return jitter(9.97 if trial.identity() != DEFAULTS.identity() else 10.0)
    res = ep_core.tune(model_path, FEEDS, runs=9, cache_dir=tmp_path, progress=False,
                       measure=fake_measure(latency))
    assert res.best.identity() == DEFAULTS.identity() and res.speedup == 1.0


def test_tune_final_round_reverts_to_defaults(model_path, tmp_path, fake_sessions):
    """A stage winner that does not beat the defaults in the final round is dropped."""
    seen = {"final": 0}

    def latency(trial: Trial):
        if dict(trial.session_options)["intra_op_num_threads"] == 1:
            seen["final"] += 1
            return jitter(7.0 if seen["final"] < 4 else 10.0)   # fast in its stages, not at the end
        return jitter(10.0)
    res = ep_core.tune(model_path, FEEDS, runs=9, cache_dir=tmp_path, progress=False,
                       measure=fake_measure(latency))
    assert res.best.identity() == DEFAULTS.identity()
    final = [r for r in res.trials if r.stage == "final"]
    assert [r.trial.name for r in final] == ["defaults", "intra_op_threads=1"]   # both reported
    assert res.chosen is res.default and res.speedup == 1.0


def test_explicit_trials_and_failed_sessions(model_path, tmp_path, monkeypatch):
    def build(model, trial):
        if trial.name == "broken":
            raise InvalidArgument("refused")
        return FakeSession(trial)
    monkeypatch.setattr(tune_module, "_build_session", build)
    trials = [{"name": "two", "session_options": {"graph_optimization_level": "ORT_ENABLE_BASIC"}},
              {"name": "broken", "session_options": {"graph_optimization_level": "ORT_DISABLE_ALL"}}]
    res = ep_core.tune(model_path, FEEDS, runs=5, trials=trials, cache_dir=tmp_path, progress=False,
                       measure=fake_measure(lambda t: jitter(5.0 if t.name == "two" else 10.0)))
    assert res.best.name == "two"
    broken = [r for r in res.trials if r.trial.name == "broken"]
    assert broken and broken[0].error == "InvalidArgument: refused" and not broken[0].times_ms


def test_auto_providers_trial_is_reported_when_refused(model_path, tmp_path):
    res = ep_core.tune(model_path, FEEDS, runs=2, cache_dir=tmp_path, progress=False,
                       trials=[{"name": "auto", "providers": "auto"}])
    auto = [r for r in res.trials if r.trial.providers == "auto"][0]
    try:
        ep_core.InferenceSession(model_path, providers="auto")
        accepted = True
    except InvalidArgument:
        accepted = False
    assert bool(auto.times_ms) == accepted
    if not accepted:
        assert "providers='auto' not accepted" in auto.error


def test_cuda_option_variations_exist_in_the_cuda_provider():
    from ep_cuda.provider import CUDAExecutionProvider
    inc = Trial.make("x", providers=["cuda", "cpu"])
    variations = tune_module._stage_variations("provider_options", inc, ["cuda", "cpu"], 2)
    assert [v.config()["provider_options"] for v in variations] == [
        [{opt: True}, {}] for opt in tune_module.CUDA_OPTIONS]
    for opt in tune_module.CUDA_OPTIONS:       # options the provider parses (ep_cuda/provider.py)
        assert opt in CUDAExecutionProvider.__doc__
    assert tune_module._stage_variations("provider_options", Trial.make("c", providers=["cpu"]), ["cpu"], 2) == []


def test_thread_counts_and_provider_orders():
    assert tune_module.thread_counts(2) == [1, 2]
    assert tune_module.thread_counts(32) == [1, 2, 4, 8, 16, 32]
    assert tune_module.provider_orders(["cuda", "cpu"]) == [["cuda", "cpu"], ["cpu"]]


# --- the cache ----------------------------------------------------------------------------------

def test_second_tune_is_a_cache_hit_without_sessions(model_path, tmp_path, fake_sessions):
    measure = fake_measure(lambda t: jitter(10.0))
    first = ep_core.tune(model_path, FEEDS, runs=3, cache_dir=tmp_path, progress=False, measure=measure)
    built = len(FakeSession.created)
    assert built > 0 and not first.cached
    second = ep_core.tune(model_path, FEEDS, runs=3, cache_dir=tmp_path, progress=False, measure=measure)
    assert second.cached and len(FakeSession.created) == built
    assert second.best.identity() == first.best.identity()
    assert [r.median_ms for r in second.trials] == [r.median_ms for r in first.trials]
    # other feed shapes: another key, measured again
    third = ep_core.tune(model_path, {"x": np.ones((5, 4), np.float32)}, runs=3, cache_dir=tmp_path,
                         progress=False, measure=measure)
    assert not third.cached and len(FakeSession.created) > built
    # use_cache=False measures even with an entry
    n = len(FakeSession.created)
    fourth = ep_core.tune(model_path, FEEDS, runs=3, cache_dir=tmp_path, progress=False, measure=measure,
                          use_cache=False)
    assert not fourth.cached and len(FakeSession.created) > n


def test_cache_dir_from_environment(model_path, tmp_path, monkeypatch, fake_sessions):
    monkeypatch.setenv("EP_CORE_TUNE_CACHE", str(tmp_path / "env"))
    res = ep_core.tune(model_path, FEEDS, runs=2, progress=False, measure=fake_measure(lambda t: jitter(1.0)))
    assert res.cache_path.startswith(str(tmp_path / "env"))
    assert tune_module.cache_dir("~/x") == tune_module.Path("~/x").expanduser()


def test_cache_key_parts(model_path):
    key = tune_module.cache_key(model_path, FEEDS)
    assert set(key) == {"model_sha256", "feeds", "machine", "version", "search"}
    assert key["feeds"] == {"x": [[2, 4], "float32"]}
    assert {"cpu", "cores", "providers"} <= set(key["machine"])
    assert tune_module.cache_key(open(model_path, "rb").read(), FEEDS)["model_sha256"] == key["model_sha256"]


# --- the configuration file ---------------------------------------------------------------------

def test_from_config_round_trip(tmp_path, model_path):
    trial = Trial.make("t", providers=["cpu"], provider_options=[{}],
                       session_options={"intra_op_num_threads": 1, "inter_op_num_threads": 2,
                                        "execution_mode": ExecutionMode.ORT_PARALLEL,
                                        "graph_optimization_level": GraphOptimizationLevel.ORT_ENABLE_BASIC})
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(trial.config()))
    opts = SessionOptions.from_config(str(path))
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 2)
    assert opts.execution_mode is ExecutionMode.ORT_PARALLEL
    assert opts.graph_optimization_level is GraphOptimizationLevel.ORT_ENABLE_BASIC
    kwargs = load_config(str(path))
    assert kwargs["providers"] == ["cpu"] and kwargs["provider_options"] == [{}]
    sess = ep_core.InferenceSession(model_path, **kwargs)
    assert sess.get_providers() == ["cpu"]
    np.testing.assert_allclose(sess.run(None, FEEDS)[0], np.full((2, 3), 4.0, np.float32))
    assert Trial.from_config(json.loads(path.read_text())).identity() == trial.identity()


def test_from_config_on_the_onnxruntime_subclass(tmp_path):
    from ep_core import onnxruntime as ort
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(DEFAULTS.with_(intra_op_num_threads=1).config()))
    opts = ort.SessionOptions.from_config(str(path))
    assert type(opts) is ort.SessionOptions and opts.intra_op_num_threads == 1


def test_tune_result_save_loads_back(model_path, tmp_path, fake_sessions):
    res = ep_core.tune(model_path, FEEDS, runs=3, cache_dir=tmp_path, progress=False,
                       measure=fake_measure(lambda t: jitter(7.0 if dict(t.session_options)[
                           "intra_op_num_threads"] == 1 else 10.0)))
    path = res.save(tmp_path / "out" / "best.json")
    assert SessionOptions.from_config(path).intra_op_num_threads == 1
    assert json.loads(open(path).read())["measured"]["speedup"] == pytest.approx(10 / 7)
    png = res.plot(tmp_path / "tune.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("cfg, message", [
    ({"session_options": {"intra_op_threads": 1}}, "not a SessionOptions field"),
    ({"session_options": {"execution_mode": "FAST"}}, "expected one of"),
    ({"session_options": {"intra_op_num_threads": "2"}}, "expected int"),
    ({"providers": ["cpu"], "provider_options": [{}, {}]}, "one dict per provider"),
    ([1, 2], "expected an object"),
])
def test_bad_configs_are_invalid_argument(cfg, message):
    with pytest.raises(InvalidArgument, match=message):
        load_config(cfg)


def test_missing_config_is_no_such_file(tmp_path):
    with pytest.raises(NoSuchFile):
        SessionOptions.from_config(str(tmp_path / "none.json"))


def test_stage_whose_variations_all_fail_keeps_the_incumbent(model_path, tmp_path, monkeypatch):
    def build(model, trial):
        if trial.identity() != DEFAULTS.identity():
            raise InvalidArgument("refused")
        return FakeSession(trial)
    monkeypatch.setattr(tune_module, "_build_session", build)
    res = ep_core.tune(model_path, FEEDS, runs=3, cache_dir=tmp_path, progress=False,
                       measure=fake_measure(lambda t: jitter(1.0)))
    assert res.best.identity() == DEFAULTS.identity()
    assert all("InvalidArgument: refused" in r.error for r in res.trials if r.stage != "final")
    assert [r.stage for r in res.trials if r.times_ms] == ["final"]


def test_a_model_whose_defaults_fail_raises(tmp_path, monkeypatch):
    def build(model, trial):
        raise InvalidArgument("the model's own error")
    monkeypatch.setattr(tune_module, "_build_session", build)
    with pytest.raises(InvalidArgument, match="the model's own error"):
        ep_core.tune(b"not read", FEEDS, runs=2, cache_dir=tmp_path, progress=False)


def test_trial_names_say_how_they_differ_from_the_defaults():
    t = DEFAULTS.with_(intra_op_num_threads=1).with_(execution_mode="ORT_PARALLEL", inter_op_num_threads=2)
    assert t.name == "intra_op_threads=1, parallel inter_op_threads=2"
    c = Trial.make("x", providers=["cuda", "cpu"]).with_(provider_options=[{"use_tf32": True}, {}])
    assert c.name == "providers=cuda,cpu, cuda use_tf32=True"

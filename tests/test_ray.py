"""Batch inference on Ray (ep_core.ray, ep_core.cli_batch) on a local 2-CPU Ray started once."""
from __future__ import annotations

import argparse
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto as T, helper, numpy_helper

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

import ep_core  # noqa: E402
import ep_core.ray as ep_ray  # noqa: E402
from ep_core import cli_batch  # noqa: E402
from ep_core.errors import Fail, InvalidArgument  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STORE_BYTES = 100 * 2**20          # Ray's minimum object store is 75 MiB


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local Ray for the module; its workers import this checkout's ep_core (and this
    module, for the functions the tests hand to Ray)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")] + ([old] if old else []))
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=STORE_BYTES,
             logging_level=logging.WARNING, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def conv_model(channels: int = 8):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", T.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", T.FLOAT, ["N", channels])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def reference(model, feeds: dict) -> list[np.ndarray]:
    return ep_core.InferenceSession(model.SerializeToString()).run(None, feeds)


def by_id(rows: list[dict], key: str = "k") -> list[dict]:
    return sorted(rows, key=lambda r: r[key])


@pytest.mark.filterwarnings("ignore:the 2 inference actor")  # the rows are materialized already
def test_outputs_equal_plain_session_and_columns_pass_through():
    x = images(50)
    ds = ray.data.from_items([{"img": x[i], "k": i, "label": f"item-{i}"} for i in range(50)])
    rows = by_id(ep_ray.predict(ds, conv_model(), input_columns={"x": "img"}, batch_size=16,
                                concurrency=2).take_all())
    assert [r["k"] for r in rows] == list(range(50))
    assert set(rows[0]) == {"k", "label", "y"}                 # the input column is consumed
    assert [r["label"] for r in rows] == [f"item-{i}" for i in range(50)]
    # Batches of 16 against one run of 50: the GEMM blocking may differ in the last bits.
    np.testing.assert_allclose(np.stack([r["y"] for r in rows]), reference(conv_model(), {"x": x})[0],
                               rtol=1e-5, atol=1e-6)


def two_io_model():
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Mul", ["a", "b"], ["p"])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info(n, T.FLOAT, ["N", 4]) for n in "ab"],
                              [helper.make_tensor_value_info(n, T.FLOAT, ["N", 4]) for n in "sp"])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_input_and_output_column_mapping():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 20, 4)).astype(np.float32)
    ds = ray.data.from_items([{"left": a[i], "right": b[i], "k": i} for i in range(20)])
    rows = by_id(ep_ray.predict(ds, two_io_model(), input_columns={"a": "left", "b": "right"},
                                output_columns={"s": "total"}, batch_size=8).take_all())
    assert set(rows[0]) == {"k", "total"}                      # only the selected output
    np.testing.assert_array_equal(np.stack([r["total"] for r in rows]), a + b)


def test_mapping_errors_are_typed_and_early():
    ds = ray.data.range(4)
    with pytest.raises(InvalidArgument, match="'z'.*not model inputs"):
        ep_ray.predict(ds, two_io_model(), input_columns={"a": "left", "z": "right"})
    with pytest.raises(InvalidArgument, match=r"no column for model input\(s\) \['b'\]"):
        ep_ray.predict(ds, two_io_model(), input_columns={"a": "left"})
    with pytest.raises(InvalidArgument, match="not model outputs"):
        ep_ray.predict(ds, two_io_model(), output_columns={"q": "q"})
    with pytest.raises(InvalidArgument, match="on_bad_row"):
        ep_ray.predict(ds, two_io_model(), on_bad_row="ignore")


def test_actors_taking_every_cpu_warn():
    """Actors holding all CPUs starve the tasks that make the rows (Ray then waits forever)."""
    with pytest.warns(RuntimeWarning, match="reserve 2 of the cluster's 2 CPUs"):
        ep_ray.predict(ray.data.range(4), two_io_model(), input_columns={"a": "id", "b": "id"}, concurrency=2)
    with pytest.warns(RuntimeWarning, match="reserve 2 of"):
        ep_ray.predict(ray.data.range(4), two_io_model(), input_columns={"a": "id", "b": "id"},
                       concurrency=(1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ep_ray.predict(ray.data.range(4), two_io_model(), input_columns={"a": "id", "b": "id"},
                       concurrency=2, num_cpus_per_worker=0.5)
    with pytest.raises(InvalidArgument, match="concurrency"):
        ep_ray.predict(ray.data.range(4), two_io_model(), input_columns={"a": "id", "b": "id"}, concurrency=0)


def test_actor_resources():
    """cuda in the providers -> GPU actors; intra_op_threads -> BLAS/OpenMP threads in the actor.
    (Read from Ray's logical plan: executing would wait for a GPU this machine lacks.)"""
    ids = {"a": "id", "b": "id"}
    gpu = ep_ray.predict(ray.data.range(4), two_io_model(), input_columns=ids, providers=("cuda", "cpu"),
                         num_cpus_per_worker=0.5)
    assert gpu._logical_plan.dag.ray_remote_args == {"num_cpus": 0.5, "num_gpus": 1}
    cpu = ep_ray.predict(ray.data.range(4), two_io_model(), input_columns=ids, intra_op_threads=1,
                         ray_remote_args={"max_restarts": 3})
    args = cpu._logical_plan.dag.ray_remote_args
    assert args["num_cpus"] == 1 and "num_gpus" not in args and args["max_restarts"] == 3
    assert args["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "1"


def rows_with_bad_shapes(n: int, bad: set[int]) -> tuple[np.ndarray, list[dict]]:
    x = images(n)
    return x, [{"img": x[i] if i not in bad else x[i][:, :8], "k": i} for i in range(n)]


def test_bad_row_raise_names_row_and_column():
    _, items = rows_with_bad_shapes(30, {7})
    out = ep_ray.predict(ray.data.from_items(items), conv_model(), input_columns={"x": "img"},
                         batch_size=8, id_column="k")
    with pytest.raises(InvalidArgument, match=r"row k=7: column 'img' \(model input 'x'\) has a row of "
                                              r"shape \[3, 8, 16\] but the model expects \[3, 16, 16\]"):
        out.take_all()


def test_bad_row_skip_keeps_the_other_rows():
    x, items = rows_with_bad_shapes(30, {3, 10})
    rows = by_id(ep_ray.predict(ray.data.from_items(items), conv_model(), input_columns={"x": "img"},
                                batch_size=8, on_bad_row="skip", id_column="k",
                                error_column="why").take_all())
    assert [r["k"] for r in rows] == list(range(30))
    bad = [r for r in rows if r["why"] is not None]
    assert [r["k"] for r in bad] == [3, 10]
    assert "row k=10: InvalidArgument: column 'img'" in bad[1]["why"] and "[3, 8, 16]" in bad[1]["why"]
    assert all(np.isnan(r["y"]).all() for r in bad)
    good = [i for i in range(30) if i not in (3, 10)]
    np.testing.assert_allclose(np.stack([rows[i]["y"] for i in good]),
                               reference(conv_model(), {"x": x[good]})[0], rtol=1e-5, atol=1e-6)


def test_wrong_dtype_column_skips_every_row():
    ds = ray.data.from_items([{"img": images(1, i)[0].astype(np.float64), "k": i} for i in range(5)])
    rows = ep_ray.predict(ds, conv_model(), input_columns={"x": "img"}, on_bad_row="skip").take_all()
    assert len(rows) == 5
    assert all("has dtype float64 but the model expects float32" in r["error"] for r in rows)
    assert all(r["y"].shape == (8,) and np.isnan(r["y"]).all() for r in rows)


def gather_model():
    table = numpy_helper.from_array(np.arange(10, dtype=np.float32).reshape(5, 2), "t")
    graph = helper.make_graph([helper.make_node("Gather", ["t", "i"], ["y"], axis=0)], "g",
                              [helper.make_tensor_value_info("i", T.INT64, ["N"])],
                              [helper.make_tensor_value_info("y", T.FLOAT, ["N", 2])], [table])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_run_failure_is_isolated_to_its_row():
    """A value the kernel refuses (index 9 of 5) fails the batch's run; the rows are then run one
    by one so only that row is bad."""
    ds = ray.data.from_items([{"i": i % 5 if i != 6 else 9, "k": i} for i in range(12)])
    rows = by_id(ep_ray.predict(ds, gather_model(), batch_size=12, on_bad_row="skip",
                                id_column="k").take_all())
    assert [r["k"] for r in rows if r["error"]] == [6]
    assert "row k=6: Fail:" in rows[6]["error"] and "Gather" in rows[6]["error"]
    assert [r["y"].tolist() for r in rows if r["k"] != 6] == \
        [[2 * (i % 5), 2 * (i % 5) + 1] for i in range(12) if i != 6]
    with pytest.raises(Fail, match="row k=6: node 'Gather_0'"):
        ep_ray.predict(ds, gather_model(), batch_size=12, id_column="k").take_all()


def feature_model():
    w = numpy_helper.from_array(np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["features", "w"], ["scores"])], "f",
                              [helper.make_tensor_value_info("features", T.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("scores", T.FLOAT, ["N", 3])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ep_core")
    cli_batch.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_on_parquet(tmp_path):
    """Plain Parquet (list<float> features, as pandas/pyarrow write them) in, Parquet out."""
    model = tmp_path / "f.onnx"
    model.write_bytes(feature_model().SerializeToString())
    feats = np.random.default_rng(4).standard_normal((40, 4)).astype(np.float32)
    (tmp_path / "in").mkdir()
    for part in range(2):
        rows = range(part * 20, part * 20 + 20)
        pq.write_table(pa.table({"id": list(rows), "vec": pa.array([feats[i] for i in rows],
                                                                 type=pa.list_(pa.float32()))}),
                       tmp_path / "in" / f"part{part}.parquet")
    assert run_cli(["batch", str(model), str(tmp_path / "in"), str(tmp_path / "out"), "--batch-size", "16",
                    "--input-column", "features=vec", "--output-column", "scores=s"]) == 0
    out = pq.read_table(tmp_path / "out").to_pydict()
    order = np.argsort(out["id"])
    assert sorted(out["id"]) == list(range(40))
    got = np.stack([np.asarray(out["s"][k], dtype=np.float32).reshape(3) for k in order])
    np.testing.assert_allclose(got, feats @ numpy_helper.to_array(feature_model().graph.initializer[0]),
                               rtol=1e-5, atol=1e-6)


def test_cli_on_npy(tmp_path):
    model = tmp_path / "conv.onnx"
    model.write_bytes(conv_model().SerializeToString())
    x = images(24)
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "a.npy", x[:10])
    np.save(tmp_path / "in" / "b.npy", x[10:])
    assert run_cli(["batch", str(model), str(tmp_path / "in"), str(tmp_path / "out")]) == 0
    got = ray.data.read_parquet(str(tmp_path / "out")).take_all()
    assert len(got) == 24 and set(got[0]) == {"y"}
    # .npy rows carry no id: compare as sets of rows
    ys = np.stack([r["y"] for r in got])
    ref = reference(conv_model(), {"x": x})[0]
    np.testing.assert_allclose(ys[np.lexsort(ys.T)], ref[np.lexsort(ref.T)], rtol=1e-5, atol=1e-6)


def test_cli_on_npz_bad_rows(tmp_path, capsys):
    model = tmp_path / "g.onnx"
    model.write_bytes(gather_model().SerializeToString())
    (tmp_path / "in").mkdir()
    np.savez(tmp_path / "in" / "a.npz", i=np.array([0, 1, 7, 2]), k=np.arange(4))
    argv = ["batch", str(model), str(tmp_path / "in"), str(tmp_path / "out"), "--id-column", "k"]
    assert run_cli(argv) == 2
    assert "error: Fail: row k=2: node 'Gather_0'" in capsys.readouterr().err
    assert run_cli(argv + ["--on-bad-row", "skip", "--overwrite"]) == 0
    out = pq.read_table(tmp_path / "out").to_pydict()
    assert sorted(out["k"]) == [0, 1, 2, 3]
    assert [k for k, e in zip(out["k"], out["error"]) if e] == [2]


def test_cli_refuses_bad_arguments(tmp_path, capsys):
    assert run_cli(["batch", "m.onnx", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "a.npy", images(2))
    model = tmp_path / "conv.onnx"
    model.write_bytes(conv_model().SerializeToString())
    assert run_cli(["batch", str(model), str(tmp_path / "in"), str(tmp_path / "o"), "--input-column", "x"]) == 2
    assert "--input-column takes NAME=COLUMN" in capsys.readouterr().err
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "old.parquet").write_bytes(b"")
    assert run_cli(["batch", str(model), str(tmp_path / "in"), str(tmp_path / "o")]) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "o" / "old.parquet").exists()


class KillOnce(ep_ray._Predictor):
    """Kills its own process (SIGKILL) on the batch holding row `kill_at`, once (marker file)."""
    marker = ""
    kill_at = 0

    def __call__(self, batch):
        if self.kill_at in batch["k"] and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(batch)


@pytest.mark.filterwarnings("ignore:the 2 inference actor")  # the rows are materialized already
def test_killed_worker_is_restarted_and_every_row_comes_once(tmp_path, monkeypatch):
    from ray import cloudpickle   # Ray pickles with its own copy
    KillOnce.marker, KillOnce.kill_at = str(tmp_path / "killed"), 37
    monkeypatch.setattr(ep_ray, "_Predictor", KillOnce)
    cloudpickle.register_pickle_by_value(__import__(__name__))   # the workers cannot import tests/
    try:
        x = images(80)
        ds = ray.data.from_items([{"img": x[i], "k": i} for i in range(80)])
        rows = by_id(ep_ray.predict(ds, conv_model(), input_columns={"x": "img"}, batch_size=8,
                                    concurrency=2).take_all())
    finally:
        cloudpickle.unregister_pickle_by_value(__import__(__name__))
    assert (tmp_path / "killed").exists()                     # a worker did die mid-job
    assert [r["k"] for r in rows] == list(range(80))          # every row exactly once
    np.testing.assert_allclose(np.stack([r["y"] for r in rows]), reference(conv_model(), {"x": x})[0],
                               rtol=1e-5, atol=1e-6)


def mean_model():
    graph = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0)], "mean",
                              [helper.make_tensor_value_info("x", T.FLOAT, ["N", 256, 256])],
                              [helper.make_tensor_value_info("m", T.FLOAT, ["N"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def constant_rows(batch: dict) -> dict:
    ids = batch["id"]
    return {"k": ids, "x": np.broadcast_to((ids % 7).astype(np.float32)[:, None, None],
                                           (len(ids), 256, 256)).copy()}


def test_ten_times_the_object_store_streams_through():
    """4,000 rows of 256 KiB (1 GiB, 10x the 100 MiB object store), generated lazily: the job
    completes, each row once, and the driver's memory stays far below the data's size."""
    rows, row_bytes = 4000, 256 * 256 * 4
    assert rows * row_bytes >= 10 * STORE_BYTES
    ds = ray.data.range(rows, override_num_blocks=100).map_batches(constant_rows, batch_size=40)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seen = np.zeros(rows, dtype=np.int64)
    for batch in ep_ray.predict(ds, mean_model(), batch_size=20).iter_batches(batch_size=500,
                                                                              batch_format="numpy"):
        assert set(batch) == {"k", "m"}
        np.testing.assert_array_equal(batch["m"], (batch["k"] % 7).astype(np.float32))
        np.add.at(seen, batch["k"], 1)
    assert (seen == 1).all()
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    print(f"driver peak RSS {rss_before / 2**20:.0f} MiB before, grew by {growth / 2**20:.0f} MiB")
    assert growth < 300 * 2**20, f"driver peak RSS grew by {growth / 2**20:.0f} MiB"


def test_docs_python_block_runs(tmp_path):
    """docs/ray.md's example, in a fresh process with its own local Ray (RAY_ADDRESS=local keeps
    it off this module's cluster)."""
    block = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "ray.md").read_text(), re.S)
    assert len(block) == 1
    script = tmp_path / "doc_block.py"
    script.write_text(block[0])
    env = {**os.environ, "RAY_ADDRESS": "local"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

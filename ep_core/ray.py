"""Batch inference over a Ray Data dataset: `predict(dataset, model, ...)`.

One `ep_core.InferenceSession` per Ray actor (a stateful `map_batches` callable); the model bytes
go into the object store once (`ray.put`) and every actor reads them from there. Ray Data's
streaming executor keeps memory bounded on datasets larger than memory, and restarts a dead
actor and retries its batch (Ray Data sets `max_restarts=-1`, `max_task_retries=-1` on its
actors), so no row is lost or written twice.

Needs the optional extra: `pip install ep-runtime[ray]`.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import pyarrow as pa
import ray
import ray.data
from ray.data.block import BlockAccessor

from ep_core.errors import EPError, Fail, InvalidArgument
from ep_core.options import SessionOptions
from ep_core.types import tensor_dtype, tensor_shape

__all__ = ["predict"]

BAD_ROW_POLICIES = ("raise", "skip")


@dataclass(frozen=True)
class _Port:
    """A model input or output as batch inference sees it: its column, dtype and per-row shape
    (the declared shape without the batch axis; ints are checked, names and None are free)."""
    name: str
    column: str
    dtype: np.dtype | None
    row_shape: tuple | None
    batch_dim: int | None        # a fixed batch size the model declares (runs are cut to it)


@dataclass(frozen=True)
class _Job:
    """Everything an actor needs besides the model bytes (picklable, sent once per actor)."""
    inputs: tuple[_Port, ...]
    outputs: tuple[_Port, ...]
    providers: tuple[str, ...]
    sess_options: SessionOptions | None
    on_bad_row: str
    error_column: str
    id_column: str | None
    intra_op_threads: int | None


def _model_bytes(model: Any) -> bytes:
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            from ep_core.errors import NoSuchFile
            raise NoSuchFile(f"model file '{path}' does not exist")
        return path.read_bytes()
    raise InvalidArgument(f"model must be a path, bytes or onnx.ModelProto, got {type(model).__name__}")


def _ports(values: Sequence[onnx.ValueInfoProto], mapping: dict[str, str] | None, what: str
           ) -> tuple[_Port, ...]:
    """The model's inputs/outputs joined with the user's name -> column mapping (default: same
    name). A mapping may select a subset of the outputs, not of the inputs."""
    names = [v.name for v in values]
    if mapping is not None:
        unknown = sorted(set(mapping) - set(names))
        if unknown:
            raise InvalidArgument(f"{what}_columns names {unknown}, which are not model {what}s; "
                                  f"the model's {what}s are {names}")
        if what == "input" and set(mapping) != set(names):
            missing = sorted(set(names) - set(mapping))
            raise InvalidArgument(f"input_columns has no column for model input(s) {missing}")
    ports = []
    for v in values:
        if mapping is not None and v.name not in mapping:
            continue
        shape = tensor_shape(v.type)
        batch_dim = shape[0] if shape and isinstance(shape[0], int) else None
        ports.append(_Port(v.name, (mapping or {}).get(v.name, v.name), tensor_dtype(v.type),
                           tuple(shape[1:]) if shape else None, batch_dim))
    return tuple(ports)


def _job_ports(model_bytes: bytes, input_columns: dict[str, str] | None,
               output_columns: dict[str, str] | None) -> tuple[tuple[_Port, ...], tuple[_Port, ...]]:
    try:
        proto = onnx.ModelProto.FromString(model_bytes)
    except Exception as e:  # noqa: BLE001 - protobuf raises its own DecodeError
        from ep_core.errors import InvalidProtobuf
        raise InvalidProtobuf(f"the model is not a parseable ONNX ModelProto: {e}") from e
    constants = {i.name for i in proto.graph.initializer}
    feeds = [v for v in proto.graph.input if v.name not in constants]
    return _ports(feeds, input_columns, "input"), _ports(proto.graph.output, output_columns, "output")


def _uses_cuda(providers: Sequence[str]) -> bool:
    return any(str(p).lower().startswith("cuda") for p in providers)


def predict(dataset: ray.data.Dataset, model: Any, *, providers: Sequence[str] = ("cpu",),
            batch_size: int = 64, input_columns: dict[str, str] | None = None,
            output_columns: dict[str, str] | None = None, concurrency: int | tuple[int, int] = 1,
            num_gpus_per_worker: float = 0, num_cpus_per_worker: float | None = None,
            sess_options: SessionOptions | None = None,
            on_bad_row: str = "raise", error_column: str = "error", id_column: str | None = None,
            intra_op_threads: int | None = None, ray_remote_args: dict[str, Any] | None = None
            ) -> ray.data.Dataset:
    """Run `model` over every row of `dataset`; returns the (lazy) dataset of results.

    `input_columns` maps each model input name to the column that feeds it (default: the column
    of the same name); `output_columns` maps model output names to result columns (default: every
    output, under its own name). Input columns are consumed; every other column passes through.
    A row is one sample: a model input declared `[N, 3, 224, 224]` takes rows of shape
    `(3, 224, 224)`; the rows of a batch run together.

    A row whose value has the wrong dtype or shape (or that a run refuses) is a bad row, named
    by `id_column`'s value when given. `on_bad_row="raise"` stops the job with a typed error
    (`ep_core.errors.InvalidArgument`, or the run's own error); `"skip"` writes the message into
    `error_column` (null on good rows) and fills the row's outputs with NaN (0 for integers),
    as Ray's tensor columns cannot hold nulls.

    `concurrency` actors each hold one session; `providers` including "cuda" makes them GPU
    actors (`num_gpus_per_worker`, default 1). `intra_op_threads` limits each session (and
    BLAS/OpenMP in the actor) to that many threads. Each actor reserves `num_cpus_per_worker`
    logical CPUs (default: `intra_op_threads` or 1); when the actors reserve every CPU of the
    cluster, the tasks that read or transform the dataset before `predict` never get one (Ray
    waits forever): a warning says so.
    `ray_remote_args` go to the actors (e.g. `max_restarts`; Ray Data's default restarts a dead
    actor and retries its batches).
    """
    if not isinstance(dataset, ray.data.Dataset):
        raise InvalidArgument(f"dataset must be a ray.data.Dataset, got {type(dataset).__name__}")
    if on_bad_row not in BAD_ROW_POLICIES:
        raise InvalidArgument(f"on_bad_row must be one of {BAD_ROW_POLICIES}, got {on_bad_row!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgument(f"batch_size must be a positive int, got {batch_size!r}")
    if intra_op_threads is not None and (not isinstance(intra_op_threads, int) or intra_op_threads < 1):
        raise InvalidArgument(f"intra_op_threads must be a positive int, got {intra_op_threads!r}")
    providers = (providers,) if isinstance(providers, str) else tuple(providers)
    model_bytes = _model_bytes(model)
    inputs, outputs = _job_ports(model_bytes, input_columns, output_columns)
    job = _Job(inputs, outputs, providers, sess_options, on_bad_row, error_column, id_column,
               intra_op_threads)

    remote_args = dict(ray_remote_args or {})
    if intra_op_threads is not None:
        # BLAS/OpenMP pools are sized at import time, before the actor can limit them.
        n = str(intra_op_threads)
        env = {k: n for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                              "NUMBA_NUM_THREADS")}
        runtime_env = dict(remote_args.pop("runtime_env", None) or {})
        runtime_env["env_vars"] = {**env, **runtime_env.get("env_vars", {})}
        remote_args["runtime_env"] = runtime_env
    num_gpus = num_gpus_per_worker or (1 if _uses_cuda(providers) else 0)
    num_cpus = num_cpus_per_worker if num_cpus_per_worker is not None else (intra_op_threads or 1)
    # The model crosses to the actors by reference: one copy in the object store. A top-level
    # ObjectRef argument would be resolved by Ray; inside a list it stays a reference.
    model_ref = ray.put(model_bytes)
    _warn_if_actors_take_every_cpu(concurrency, num_cpus)
    result = dataset.map_batches(
        _Predictor, batch_size=batch_size, batch_format="numpy", compute=_actor_pool(concurrency),
        fn_constructor_kwargs={"model_ref": [model_ref], "job": job},
        num_cpus=num_cpus, num_gpus=num_gpus or None, **remote_args)
    # The caller gets our typed error, not Ray's wrapper around it (the result is a
    # RayTaskError subclass that is also an InvalidArgument/Fail).
    result.context.raise_original_map_exception = True
    return result


def _actor_pool(concurrency: int | tuple[int, int]) -> ray.data.ActorPoolStrategy:
    if isinstance(concurrency, int) and concurrency >= 1:
        return ray.data.ActorPoolStrategy(size=concurrency)
    if isinstance(concurrency, tuple) and len(concurrency) == 2 and 1 <= concurrency[0] <= concurrency[1]:
        return ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    raise InvalidArgument(f"concurrency must be a positive int or a (min, max) pair, got {concurrency!r}")


def _warn_if_actors_take_every_cpu(concurrency: int | tuple[int, int], num_cpus: float) -> None:
    actors = concurrency if isinstance(concurrency, int) else concurrency[1]
    cluster_cpus = ray.cluster_resources().get("CPU", 0)
    if num_cpus and actors * num_cpus >= cluster_cpus:
        warnings.warn(f"the {actors} inference actor(s) reserve {actors * num_cpus:g} of the cluster's "
                      f"{cluster_cpus:g} CPUs: the tasks that read or transform the dataset before "
                      f"predict will wait for a CPU forever unless the dataset is already materialized; "
                      f"lower concurrency or num_cpus_per_worker (e.g. 0.5)", RuntimeWarning, stacklevel=3)


class _Predictor:
    """The per-actor callable: builds the session once, then runs batches."""

    def __init__(self, model_ref: list, job: _Job) -> None:
        from ep_core.session import InferenceSession
        self.job = job
        options = job.sess_options or SessionOptions()
        if job.intra_op_threads is not None:
            import threadpoolctl
            options.intra_op_num_threads = job.intra_op_threads
            self._thread_limit = threadpoolctl.threadpool_limits(job.intra_op_threads)
        self.session = InferenceSession(ray.get(model_ref[0]), options, providers=list(job.providers))

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        job = self.job
        n = len(next(iter(batch.values()))) if batch else 0
        for port in job.inputs:
            if port.column not in batch:
                raise InvalidArgument(f"column '{port.column}' (model input '{port.name}') is not in "
                                      f"the dataset; its columns are {sorted(batch)}")
        if job.id_column is not None and job.id_column not in batch:
            raise InvalidArgument(f"id_column '{job.id_column}' is not in the dataset; its columns "
                                  f"are {sorted(batch)}")
        errors: list[str | None] = [None] * n
        for port in job.inputs:
            self._check_column(port, batch[port.column], batch, errors)
        results: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {p.name: [] for p in job.outputs}
        for rows in self._groups(batch, errors, n):
            self._run(batch, rows, errors, results)
        out = {c: v for c, v in batch.items() if c not in {p.column for p in job.inputs}}
        bad = np.array([e is not None for e in errors], dtype=bool)
        for port in job.outputs:
            out[port.column] = _assemble(results[port.name], n, bad, port)
        table = BlockAccessor.batch_to_block(out)
        if job.on_bad_row == "skip":
            table = table.append_column(job.error_column, pa.array(errors, type=pa.string()))
        return table

    # --- bad rows ---------------------------------------------------------------------------
    def _row_name(self, batch: dict[str, np.ndarray], k: int) -> str:
        if self.job.id_column is None:
            return f"row {k} of its batch (set id_column to name rows)"
        value = batch[self.job.id_column][k]
        return f"row {self.job.id_column}={value.item() if isinstance(value, np.generic) else value!r}"

    def _bad(self, batch: dict, k: int, message: str, errors: list, error_type: type = InvalidArgument
             ) -> None:
        row = self._row_name(batch, k)
        if self.job.on_bad_row == "raise":
            raise error_type(f"{row}: {message}")
        errors[k] = f"{row}: {error_type.__name__}: {message}"

    def _check_column(self, port: _Port, column: np.ndarray, batch: dict, errors: list) -> None:
        """Rows of a tensor column share dtype and shape: one check for all; a ragged (object)
        column is checked row by row."""
        if column.dtype != object or port.dtype == np.dtype(object):
            problem = _problem(port, column.dtype, column.shape[1:])
            for k in range(len(column)) if problem else ():
                if errors[k] is None:
                    self._bad(batch, k, problem, errors)
            return
        for k, value in enumerate(column):
            if errors[k] is None:
                value = np.asarray(value)
                problem = _problem(port, value.dtype, value.shape)
                if problem:
                    self._bad(batch, k, problem, errors)

    # --- runs -------------------------------------------------------------------------------
    def _groups(self, batch: dict, errors: list, n: int) -> list[np.ndarray]:
        """The good rows, grouped by their input shapes (rows of one group stack into one run),
        cut to the model's fixed batch size if it declares one."""
        good = [k for k in range(n) if errors[k] is None]
        ragged = [batch[p.column] for p in self.job.inputs if batch[p.column].dtype == object]
        groups: dict[tuple, list[int]] = {}
        for k in good:
            groups.setdefault(tuple(np.shape(col[k]) for col in ragged), []).append(k)
        step = min((p.batch_dim for p in self.job.inputs if p.batch_dim), default=None)
        runs = []
        for rows in groups.values():
            for start in range(0, len(rows), step or len(rows)):
                runs.append(np.asarray(rows[start:start + (step or len(rows))], dtype=np.int64))
        return runs

    def _run(self, batch: dict, rows: np.ndarray, errors: list, results: dict) -> None:
        whole = len(rows) == len(errors)
        feeds = {p.name: _gather(batch[p.column], rows, whole) for p in self.job.inputs}
        try:
            outs = self.session.run([p.name for p in self.job.outputs], feeds)
        except EPError as e:
            if len(rows) == 1:
                self._bad(batch, int(rows[0]), str(e), errors, type(e))
                return
            for k in rows:   # find the row(s) the run refused
                self._run(batch, np.asarray([k]), errors, results)
            return
        for port, value in zip(self.job.outputs, outs):
            if np.ndim(value) == 0 or value.shape[0] != len(rows):
                raise Fail(f"model output '{port.name}' has shape {list(np.shape(value))} for a run of "
                           f"{len(rows)} rows; batch inference needs the first axis to be the batch axis")
            results[port.name].append((rows, value))


def _problem(port: _Port, dtype: np.dtype, row_shape: tuple) -> str | None:
    """Why a row of this dtype/shape cannot feed `port`, or None."""
    where = f"column '{port.column}' (model input '{port.name}')"
    if port.dtype is not None and dtype != port.dtype and not (
            port.dtype == np.dtype(object) and dtype.kind in "OUS"):
        return f"{where} has dtype {dtype} but the model expects {port.dtype}"
    if port.row_shape is None:
        return None
    want = list(port.row_shape)
    if len(row_shape) != len(want) or any(isinstance(w, int) and d != w for d, w in zip(row_shape, want)):
        return f"{where} has a row of shape {list(row_shape)} but the model expects {want} per row"
    return None


def _gather(column: np.ndarray, rows: np.ndarray, whole: bool) -> np.ndarray:
    if column.dtype == object and not isinstance(column.flat[0] if column.size else None, str):
        return np.stack([np.asarray(column[k]) for k in rows])
    return np.ascontiguousarray(column if whole else column[rows])


def _assemble(parts: list[tuple[np.ndarray, np.ndarray]], n: int, bad: np.ndarray, port: _Port
              ) -> np.ndarray:
    """One output column from the runs' results; bad rows get NaN (0 for non-float types)."""
    if len(parts) == 1 and len(parts[0][0]) == n:
        return parts[0][1]                                      # the usual case: one run
    if parts:
        dtype, row_shapes = parts[0][1].dtype, {p[1].shape[1:] for p in parts}
    else:                                                       # every row bad: the declared type
        dtype = port.dtype or np.dtype(np.float32)
        row_shapes = {tuple(d if isinstance(d, int) else 0 for d in (port.row_shape or ()))}
    fill = np.nan if dtype.kind in "fc" else 0
    if len(row_shapes) == 1:
        column = np.full((n,) + next(iter(row_shapes)), fill, dtype=dtype)
        for rows, value in parts:
            column[rows] = value
        return column
    column = np.empty(n, dtype=object)                         # rows of different shapes
    for rows, value in parts:
        for k, v in zip(rows, value):
            column[k] = v
    for k in np.flatnonzero(bad):
        column[k] = np.full(parts[0][1].shape[1:], fill, dtype=dtype)
    return column

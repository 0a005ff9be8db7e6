"""`python -m ep_core batch MODEL INPUT OUTPUT`: batch inference on Ray over files.

INPUT is a Parquet file or directory (`ray.data.read_parquet`), or a directory of `.npy` files
(one column, `data`, as `ray.data.read_numpy` names it) or of `.npz` files (one column per array
name); any filesystem Ray supports (local paths, `s3://`, `gs://`, ...). OUTPUT is a directory of
Parquet files: the pass-through columns, one column per model output, and with
`--on-bad-row skip` an error column; an OUTPUT holding files is refused without `--overwrite`.
A job that stops (`--on-bad-row raise`) may leave the files of the blocks written before.
Ray prints its progress as the job runs.
"""
from __future__ import annotations

import argparse
import io
import sys
from typing import Any, Iterator

import numpy as np

FORMATS = ("auto", "parquet", "npy", "npz")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `batch` subcommand to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "batch", help="run a model over Parquet/NumPy files on Ray, write Parquet",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="the ONNX model file")
    p.add_argument("input", help="Parquet file/directory, or a directory of .npy or .npz files")
    p.add_argument("output", help="directory to write the Parquet results into")
    p.add_argument("--providers", default="cpu", help="comma-separated, in priority order (default: cpu)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per model run (default: 64)")
    p.add_argument("--concurrency", type=int, default=1, help="number of actors, one session each")
    p.add_argument("--intra-op-threads", type=int, default=None, help="threads per session")
    p.add_argument("--num-cpus-per-worker", type=float, default=None,
                   help="logical CPUs each actor reserves (default: --intra-op-threads or 1)")
    p.add_argument("--num-gpus-per-worker", type=float, default=0,
                   help="GPUs per actor (default: 1 when the providers include cuda)")
    p.add_argument("--input-column", action="append", default=[], metavar="INPUT=COLUMN",
                   help="feed model input INPUT from COLUMN (repeatable; default: same name, or "
                        "the `data` column for a single-input model on .npy files)")
    p.add_argument("--output-column", action="append", default=[], metavar="OUTPUT=COLUMN",
                   help="write model output OUTPUT as COLUMN (repeatable; default: every output)")
    p.add_argument("--on-bad-row", choices=("raise", "skip"), default="raise",
                   help="stop at a bad row, or write its error into --error-column")
    p.add_argument("--error-column", default="error")
    p.add_argument("--id-column", default=None, help="column that names rows in error messages")
    p.add_argument("--format", choices=FORMATS, default="auto", help="input format (default: by extension)")
    p.add_argument("--overwrite", action="store_true",
                   help="empty OUTPUT first (default: refuse an OUTPUT that holds files)")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (e.g. auto, ray://host:10001); default: a local Ray")
    p.set_defaults(func=run_batch)
    return p


def _mapping(pairs: list[str], flag: str) -> dict[str, str] | None:
    from ep_core.errors import InvalidArgument
    mapping = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        if not sep or not name or not column:
            raise InvalidArgument(f"{flag} takes NAME=COLUMN, got {pair!r}")
        mapping[name] = column
    return mapping or None


def _input_files(path: str) -> tuple[list[str], Any]:
    """The files under `path` (a file or a directory, on any pyarrow filesystem)."""
    import pyarrow.fs as pafs
    from ep_core.errors import NoSuchFile
    fs, root = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise NoSuchFile(f"input '{path}' does not exist")
    if info.type == pafs.FileType.File:
        return [root], fs
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File), fs


def _prepare_output(path: str, overwrite: bool) -> None:
    """Refuse to mix results with an earlier job's files (Ray's writer appends), unless told to
    empty the directory."""
    import pyarrow.fs as pafs
    from ep_core.errors import InvalidArgument
    fs, root = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise InvalidArgument(f"output '{path}' is a file; it must be a directory")
    if info.type == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(root)):
        if not overwrite:
            raise InvalidArgument(f"output '{path}' is not empty; pass --overwrite to replace its files")
        fs.delete_dir_contents(root)


def _detect_format(files: list[str], path: str) -> str:
    from ep_core.errors import InvalidArgument
    found = {ext for ext in ("parquet", "npy", "npz") if any(f.endswith("." + ext) for f in files)}
    if len(found) != 1:
        raise InvalidArgument(f"input '{path}' holds {sorted(found) or 'no'} .parquet/.npy/.npz files; "
                              f"it needs exactly one kind (or pass --format)")
    return found.pop()


def _read_npz_files(batch: dict[str, np.ndarray], fs: Any) -> Iterator[dict[str, np.ndarray]]:
    """One batch per .npz file: its arrays are the columns (they must have equal lengths)."""
    from ep_core.errors import InvalidArgument
    for path in batch["path"]:
        with fs.open_input_file(str(path)) as f, np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
            columns = {k: z[k] for k in z.files}
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) > 1:
            raise InvalidArgument(f"'{path}': its arrays must have one row count, got {lengths}")
        yield columns


def read_input(path: str, fmt: str = "auto") -> tuple[Any, str]:
    """The input dataset and its format."""
    import ray.data
    files, fs = _input_files(path)
    if fmt == "auto":
        fmt = _detect_format(files, path)
    if fmt == "parquet":
        return ray.data.read_parquet(path), fmt
    if fmt == "npy":
        return ray.data.read_numpy(path), fmt
    npz = sorted(f for f in files if f.endswith(".npz"))
    return ray.data.from_items([{"path": f} for f in npz]).map_batches(
        _read_npz_files, batch_size=1, fn_kwargs={"fs": fs}), fmt


def _default_inputs(model: str, fmt: str, mapping: dict[str, str] | None) -> dict[str, str] | None:
    """A single-input model reads the `data` column of .npy files."""
    if mapping is not None or fmt != "npy":
        return mapping
    from ep_core.ray import _job_ports, _model_bytes
    inputs, _ = _job_ports(_model_bytes(model), None, None)
    return {inputs[0].name: "data"} if len(inputs) == 1 else None


def run_batch(args: argparse.Namespace) -> int:
    """The `batch` subcommand; returns the exit code (0 done, 2 bad input or bad row)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        print(f"error: the batch subcommand needs Ray Data ({e}): pip install 'ep-runtime[ray]'",
              file=sys.stderr)
        return 2
    from ep_core.errors import EPError
    from ep_core.ray import predict
    started = False
    try:
        if not ray.is_initialized():
            ray.init(address=args.address)
            started = True
        ds, fmt = read_input(args.input, args.format)
        _prepare_output(args.output, args.overwrite)
        inputs = _default_inputs(args.model, fmt, _mapping(args.input_column, "--input-column"))
        out = predict(ds, args.model, providers=[p.strip() for p in args.providers.split(",") if p.strip()],
                      batch_size=args.batch_size, input_columns=inputs,
                      output_columns=_mapping(args.output_column, "--output-column"),
                      concurrency=args.concurrency, num_gpus_per_worker=args.num_gpus_per_worker,
                      num_cpus_per_worker=args.num_cpus_per_worker,
                      on_bad_row=args.on_bad_row, error_column=args.error_column,
                      id_column=args.id_column, intra_op_threads=args.intra_op_threads)
        out.write_parquet(args.output)
    except EPError as e:
        cause = getattr(e, "cause", None) or e      # Ray's RayTaskError(X) carries X as .cause
        print(f"error: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 2
    finally:
        if started:
            ray.shutdown()
    print(f"wrote {args.output}", file=sys.stderr)
    return 0

"""`quantize MODEL OUT [--static CALIB_DIR] [--per-channel] [--4bit] [--block-size N]
[--format qdq|qoperator]`: the command-line front end (a subcommand `register` adds to a parser).

Without --static: dynamic INT8. --static CALIB_DIR: every *.npz there (sorted by name) is one
calibration batch, its arrays named after the model's inputs (*.npy works for one-input models).
--4bit: 4-bit block-wise MatMulNBits weights. Prints a progress bar over the calibration batches
(tqdm when installed) and a report: file size before/after and each layer's error against the
float model on one sample (the first calibration batch, or random inputs)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ep_core.errors import InvalidArgument, NoSuchFile

from .quant_types import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType


class DirectoryDataReader(CalibrationDataReader):
    """Batches from a folder: one *.npz per batch (arrays named after inputs), or *.npy for one input."""

    def __init__(self, folder: "str | Path", input_names: list[str]) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise NoSuchFile(f"calibration folder {str(folder)!r} does not exist")
        self.files = sorted(folder.glob("*.npz")) or sorted(folder.glob("*.npy"))
        if not self.files:
            raise InvalidArgument(f"calibration folder {str(folder)!r} has no *.npz or *.npy batch")
        if self.files[0].suffix == ".npy" and len(input_names) != 1:
            raise InvalidArgument(f"*.npy batches need a one-input model; this one has inputs {input_names}")
        self.input_names = input_names
        self.pos = 0

    def __len__(self) -> int:
        return len(self.files)

    def load(self, path: Path) -> dict[str, np.ndarray]:
        if path.suffix == ".npy":
            return {self.input_names[0]: np.load(path)}
        with np.load(path) as z:
            missing = [n for n in self.input_names if n not in z.files]
            if missing:
                raise InvalidArgument(f"calibration batch {path.name} lacks inputs {missing} (has {z.files})")
            return {n: z[n] for n in self.input_names}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.files):
            return None
        self.pos += 1
        return self.load(self.files[self.pos - 1])

    def rewind(self) -> None:
        self.pos = 0


def _progress_bar(total: int, stream) -> tuple[Callable[[int], None], Callable[[], None]]:
    try:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="calibration", unit="batch", file=stream)
        return (lambda done: bar.update(done - bar.n)), bar.close
    except ImportError:
        def update(done: int) -> None:
            filled = int(30 * done / max(total, 1))
            stream.write(f"\rcalibration [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
            stream.flush()
        return update, (lambda: stream.write("\n"))


def _inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """A sample for the report: standard normal floats, zeros for integer inputs; free dims are 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in _inputs(model):
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in t.shape.dim]
        dt = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        feeds[vi.name] = (rng.standard_normal(shape).astype(dt) if dt.kind == "f" else np.zeros(shape, dt))
    return feeds


def run(args: argparse.Namespace, stream=None) -> int:
    """The subcommand: the report goes to `stream` (stdout), the progress bar to stderr unless a
    stream is given (then both go there)."""
    from .api import quantize_dynamic, quantize_static
    from .matmul_nbits import MatMul4BitsQuantizer
    from .report import layer_errors, model_size
    progress_stream = stream or sys.stderr
    stream = stream or sys.stdout
    model_path, out = Path(args.model), Path(args.out)
    if not model_path.is_file():
        raise NoSuchFile(f"model file {str(model_path)!r} does not exist")
    model = onnx.load(str(model_path))
    names = [i.name for i in _inputs(model)]
    sample = None
    if args.four_bit:
        q = MatMul4BitsQuantizer(model, block_size=args.block_size, is_symmetric=not args.asymmetric)
        q.process()
        q.model.save_model_to_file(str(out))
        kind = f"4-bit MatMulNBits, block {args.block_size}"
    elif args.static:
        reader = DirectoryDataReader(args.static, names)
        sample = reader.load(reader.files[0])
        update, close = _progress_bar(len(reader), progress_stream)
        try:
            quantize_static(model, out, reader, quant_format=QuantFormat.from_string(args.format),
                            per_channel=args.per_channel, activation_type=QuantType.from_string(args.activation_type),
                            weight_type=QuantType.from_string(args.weight_type),
                            calibrate_method=CalibrationMethod[args.method], progress=update)
        finally:
            close()
        kind = f"static INT8 ({args.format}, {args.method})"
    else:
        quantize_dynamic(model, out, per_channel=args.per_channel, weight_type=QuantType.from_string(args.weight_type))
        kind = "dynamic INT8"
    before, after = model_size(model_path), model_size(out)
    errors = layer_errors(model, str(out), sample if sample is not None else random_feeds(model))
    stream.write(f"{kind}: {model_path} -> {out}\n")
    stream.write(f"size: {before / 1e6:.3f} MB -> {after / 1e6:.3f} MB ({after / before:.3f}x)\n")
    stream.write(f"{'layer output':40s} {'op':18s} {'cosine':>9s} {'max|diff|':>11s}\n")
    for e in errors:
        stream.write(f"{e.tensor[:40]:40s} {e.op_type:18s} {e.cosine:9.5f} {e.max_abs:11.4g}\n")
    if args.report:
        Path(args.report).write_text(json.dumps({"kind": kind, "size_before": before, "size_after": after,
                                                 "layers": [e.as_dict() for e in errors]}, indent=1))
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `quantize` subcommand to `subparsers` (from ArgumentParser.add_subparsers())."""
    p = subparsers.add_parser("quantize", help="quantize a model to INT8 (dynamic or static) or 4-bit weights",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("model", help="float ONNX model")
    p.add_argument("out", help="where to write the quantized model")
    p.add_argument("--static", metavar="CALIB_DIR", help="static INT8, calibrated on the batches in CALIB_DIR")
    p.add_argument("--per-channel", action="store_true", help="one scale per output channel of each weight")
    p.add_argument("--4bit", dest="four_bit", action="store_true", help="4-bit block-wise MatMul weights (MatMulNBits)")
    p.add_argument("--block-size", type=int, default=32, help="4-bit block size (default 32)")
    p.add_argument("--asymmetric", action="store_true", help="4-bit blocks with zero points")
    p.add_argument("--format", choices=["qdq", "qoperator"], default="qdq", help="static format (default qdq)")
    p.add_argument("--method", choices=[m.name for m in CalibrationMethod], default="MinMax")
    p.add_argument("--activation-type", choices=["QInt8", "QUInt8"], default="QInt8")
    p.add_argument("--weight-type", choices=["QInt8", "QUInt8"], default="QInt8")
    p.add_argument("--report", metavar="JSON", help="also write the report as JSON")
    p.set_defaults(func=run)
    return p

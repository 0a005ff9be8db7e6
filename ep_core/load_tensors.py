"""Tensors as the load stage reads them: byte sizes checked, external files read safely, sparse
tensors checked and densified.

Every tensor's data is checked against its declared element type and dims before anything
decodes it (`check_tensor`). External data (`data_location = EXTERNAL`) is read only through
`ExternalFiles`, which allows regular files inside one folder (symlinks resolved first), opens
them without blocking (a FIFO is refused, never waited on) and checks offset and length against
the file size and the tensor's byte size. Each failure is a typed error naming the tensor and path.
"""
from __future__ import annotations

import os
import stat
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import InvalidGraph, NoSuchFile

_KNOWN_TYPES = frozenset(v for k, v in TensorProto.DataType.items() if k != "UNDEFINED")
_BITS = {TensorProto.STRING: 0}
for _name, _bits in (("UINT4", 4), ("INT4", 4), ("FLOAT4E2M1", 4), ("UINT2", 2), ("INT2", 2),
                     ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6)):
    if hasattr(TensorProto, _name):   # sub-byte types are packed in raw_data
        _BITS[getattr(TensorProto, _name)] = _bits
_PER_INT32 = {4: 2, 2: 4}   # sub-byte elements packed per int32_data entry (6-bit: one each)
_DATA_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum", "basepath"})
MAX_DIM_PRODUCT = 1 << 62


def elem_count(t: TensorProto, where: str) -> int:
    """Number of elements of `t` (dims checked: none negative, no overflow)."""
    n = 1
    for d in t.dims:
        if d < 0:
            raise InvalidGraph(f"{where}: negative dimension {d} in dims {list(t.dims)}")
        n *= d
        if n > MAX_DIM_PRODUCT:
            raise InvalidGraph(f"{where}: dims {list(t.dims)} hold more than 2^62 elements")
    return n


def byte_size(data_type: int, count: int) -> int:
    """Bytes of `count` elements of `data_type` in raw (packed little-endian) form."""
    bits = _BITS.get(data_type)
    if bits is not None:
        return (count * bits + 7) // 8
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize


def check_data_type(data_type: int, where: str) -> None:
    if data_type not in _KNOWN_TYPES:
        raise InvalidGraph(f"{where}: unknown or undefined data_type {data_type}")


def check_tensor(t: TensorProto, where: str, lifted_raw: int | None = None) -> int:
    """Check `t`'s data fields against its type and dims; returns its element count.

    `lifted_raw` is the length of a raw_data field the loader took out of the message before
    parsing (see load_wire). An external tensor must carry no inline data and valid
    external_data keys (its bytes are checked when `ExternalFiles.read` reads them).
    """
    check_data_type(t.data_type, where)
    if t.HasField("segment"):
        raise InvalidGraph(f"{where}: segmented tensors are not supported")
    n = elem_count(t, where)
    filled = [f for f in _DATA_FIELDS if len(getattr(t, f))]
    raw_len = lifted_raw if lifted_raw is not None else (
        len(t.raw_data) if t.HasField("raw_data") else None)
    if raw_len is not None:
        filled.append("raw_data")
    if t.data_location == TensorProto.EXTERNAL:
        if filled:
            raise InvalidGraph(f"{where}: stored externally but also has inline data ({filled[0]})")
        external_entries(t, where)
        return n
    if n == 0:
        if any(f != "raw_data" for f in filled) or raw_len:
            raise InvalidGraph(f"{where}: has 0 elements (dims {list(t.dims)}) but holds data")
        return n
    if len(filled) != 1:
        raise InvalidGraph(f"{where}: needs exactly one data field for {n} elements, has "
                           f"{filled or 'none'}")
    field = filled[0]
    if field == "raw_data":
        if t.data_type == TensorProto.STRING:
            raise InvalidGraph(f"{where}: string data cannot be stored in raw_data")
        want = byte_size(t.data_type, n)
        if raw_len != want:
            raise InvalidGraph(f"{where}: raw_data holds {raw_len} bytes; dims {list(t.dims)} of "
                               f"data_type {t.data_type} need {want}")
        return n
    storage = helper.tensor_dtype_to_field(t.data_type)
    if field != storage:
        raise InvalidGraph(f"{where}: data_type {t.data_type} is stored in {storage}, not {field}")
    bits = _BITS.get(t.data_type)
    want = 2 * n if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) else (
        -(-n // _PER_INT32[bits]) if bits in _PER_INT32 else n)
    have = len(getattr(t, field))
    if have != want:
        raise InvalidGraph(f"{where}: {field} holds {have} values; dims {list(t.dims)} need {want}")
    if t.data_type == TensorProto.STRING:
        for k, s in enumerate(t.string_data):
            try:
                s.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InvalidGraph(f"{where}: string element {k} is not valid UTF-8") from e
    return n


def external_entries(t: TensorProto, where: str) -> dict[str, str]:
    """The tensor's external_data entries as a dict (unknown or repeated keys refused)."""
    info: dict[str, str] = {}
    for e in t.external_data:
        if e.key not in _EXTERNAL_KEYS:
            raise InvalidGraph(f"{where}: unknown external_data key {e.key!r}")
        if e.key in info:
            raise InvalidGraph(f"{where}: external_data key {e.key!r} given twice")
        info[e.key] = e.value
    if not info.get("location"):
        raise InvalidGraph(f"{where}: external data without a 'location'")
    for key in ("offset", "length"):
        if key in info and not (info[key].isascii() and info[key].isdigit()):
            raise InvalidGraph(f"{where}: external_data {key} {info[key]!r} is not a "
                               f"non-negative integer")
    return info


def to_array(t: TensorProto, raw: Any = None) -> np.ndarray:
    """Array of a checked tensor; `raw` (bytes-like) replaces its data when given (external).

    Plain numeric types are viewed in place (no copy); other types go through onnx's decoder.
    """
    if raw is None and not t.HasField("raw_data"):
        return numpy_helper.to_array(t)
    if raw is None:
        raw = t.raw_data
    if t.data_type not in _BITS and t.data_type in _NATIVE:
        arr = np.frombuffer(raw, dtype=_NATIVE[t.data_type]).reshape(tuple(t.dims))
        return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))
    proto = TensorProto(name=t.name, data_type=t.data_type, dims=list(t.dims), raw_data=bytes(raw))
    return numpy_helper.to_array(proto)


_NATIVE = {
    code: np.dtype(helper.tensor_dtype_to_np_dtype(code)).newbyteorder("<")
    for code in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT8,
                 TensorProto.INT16, TensorProto.INT32, TensorProto.INT64, TensorProto.UINT8,
                 TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64, TensorProto.BOOL,
                 TensorProto.COMPLEX64, TensorProto.COMPLEX128)
}


def sparse_to_array(sp: onnx.SparseTensorProto, values: np.ndarray, indices: np.ndarray,
                    where: str) -> np.ndarray:
    """Dense array of a sparse tensor whose values/indices were decoded (and checked) already.

    Indices must be int64, linear `[nnz]` or per-axis `[nnz, rank]`, inside `dims`, in strictly
    increasing (row-major) order as the ONNX spec requires."""
    dims = [int(d) for d in sp.dims]
    n = elem_count(onnx.TensorProto(dims=dims), where)
    if values.ndim != 1:
        raise InvalidGraph(f"{where}: values must be 1-D, got shape {list(values.shape)}")
    nnz = values.shape[0]
    if indices.dtype != np.int64:
        raise InvalidGraph(f"{where}: indices must be int64, got {indices.dtype}")
    if indices.shape == (nnz,):
        linear = indices
    elif indices.shape == (nnz, len(dims)):
        if nnz and ((indices < 0).any() or (indices >= np.array(dims, np.int64)).any()):
            raise InvalidGraph(f"{where}: an index lies outside dims {dims}")
        linear = np.ravel_multi_index(indices.T, dims) if nnz else indices.reshape(0)
    else:
        raise InvalidGraph(f"{where}: indices of shape {list(indices.shape)} do not fit {nnz} values "
                           f"of a rank-{len(dims)} tensor")
    if nnz and (linear.min() < 0 or linear.max() >= n):
        raise InvalidGraph(f"{where}: an index lies outside the {n} elements of dims {dims}")
    if nnz > 1 and not (np.diff(linear) > 0).all():
        raise InvalidGraph(f"{where}: indices must be strictly increasing")
    dense = np.zeros(n, dtype=values.dtype)
    dense[linear] = values
    return dense.reshape(dims)


class ExternalFiles:
    """Reads external tensor data from regular files inside `folder` only.

    `folder` None means the model came as bytes or a ModelProto and the caller named no folder:
    every external tensor is refused, with `hint` saying how to name one.
    """

    def __init__(self, folder: str | None, hint: str = "") -> None:
        self.folder = os.path.realpath(folder) if folder is not None else None
        self.hint = hint
        self._open: dict[str, tuple[int, int]] = {}   # real path -> (fd, size)

    def __enter__(self) -> "ExternalFiles":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for fd, _ in self._open.values():
            os.close(fd)
        self._open.clear()

    def _file(self, location: str, where: str) -> tuple[str, int, int]:
        if self.folder is None:
            raise InvalidGraph(f"{where}: external data '{location}' cannot be read: {self.hint}")
        if "\0" in location or os.path.isabs(location) or location.startswith(("\\", "/")):
            raise InvalidGraph(f"{where}: external data location '{location}' must be a path "
                               f"relative to the model's folder")
        parts = location.replace("\\", "/").split("/")
        if ".." in parts:
            raise InvalidGraph(f"{where}: external data location '{location}' leaves the model's "
                               f"folder ('..')")
        path = os.path.realpath(os.path.join(self.folder, location))
        if os.path.commonpath([self.folder, path]) != self.folder or path == self.folder:
            raise InvalidGraph(f"{where}: external data location '{location}' resolves to '{path}', "
                               f"outside the model's folder '{self.folder}' (symlink?)")
        if path not in self._open:
            try:   # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError as e:
                raise NoSuchFile(f"{where}: external data file '{path}' does not exist") from e
            except OSError as e:
                raise InvalidGraph(f"{where}: cannot open external data file '{path}': "
                                   f"{e.strerror}") from e
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise InvalidGraph(f"{where}: external data '{path}' is not a regular file")
            self._open[path] = (fd, st.st_size)
        fd, size = self._open[path]
        return path, fd, size

    def read(self, t: TensorProto, where: str) -> np.ndarray:
        """The bytes of external tensor `t` as a read-only uint8 array (offset/length checked)."""
        info = external_entries(t, where)
        if t.data_type == TensorProto.STRING:
            raise InvalidGraph(f"{where}: string tensors cannot be stored externally")
        path, fd, size = self._file(info["location"], where)
        want = byte_size(t.data_type, elem_count(t, where))
        offset = int(info.get("offset", "0"))
        length = int(info.get("length", str(want)))
        if length != want:
            raise InvalidGraph(f"{where}: external data length {length} in '{path}' does not match "
                               f"the {want} bytes of dims {list(t.dims)}, data_type {t.data_type}")
        if offset + length > size:
            raise InvalidGraph(f"{where}: external data [{offset}, {offset + length}) lies beyond "
                               f"the end of '{path}' ({size} bytes)")
        buf = np.empty(length, dtype=np.uint8)
        done = pread_into(fd, memoryview(buf), offset)
        if done < length:
            raise InvalidGraph(f"{where}: '{path}' ended after {done} of {length} bytes")
        buf.flags.writeable = False
        return buf


def pread_into(fd: int, out: memoryview, offset: int) -> int:
    """Fill `out` from `fd` at `offset`; returns the bytes read (fewer only at end of file)."""
    done = 0
    while done < len(out):
        got = os.preadv(fd, [out[done:]], offset + done)
        if got <= 0:
            break
        done += got
    return done


def iter_tensors(model: onnx.ModelProto):
    """(tensor, where) for every TensorProto of the model except the main graph's dense
    initializers: sparse initializers, attribute tensors, subgraph initializers, function bodies."""
    stack: list[tuple[Any, str, bool]] = [(model.graph, "graph", True)]
    stack += [(f, f"function '{f.name}'", False) for f in model.functions]
    while stack:
        g, where, main = stack.pop()
        if isinstance(g, onnx.GraphProto):
            if not main:
                for t in g.initializer:
                    yield t, f"{where}: initializer '{t.name}'"
            for sp in g.sparse_initializer:
                yield sp.values, f"{where}: sparse initializer '{sp.values.name}' values"
                yield sp.indices, f"{where}: sparse initializer '{sp.values.name}' indices"
        for n in g.node:
            at = f"{where}: node '{n.name}' ({n.op_type})"
            for a in n.attribute:
                aw = f"{at} attribute '{a.name}'"
                if a.HasField("t"):
                    yield a.t, aw
                for t in a.tensors:
                    yield t, aw
                sparse = ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(a.sparse_tensors)
                for sp in sparse:
                    yield sp.values, aw + " values"
                    yield sp.indices, aw + " indices"
                if a.HasField("g"):
                    stack.append((a.g, aw, False))
                stack += [(sub, aw, False) for sub in a.graphs]

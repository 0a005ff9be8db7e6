"""Parse a serialized model once without copying its weights through protobuf.

`split_weights` walks the protobuf wire format of a ModelProto down to the main graph's
initializers and lifts out every `raw_data` field of at least `min_bytes`: it returns the model's
bytes without them (parsed by protobuf as usual) and, per initializer index, where the lifted
bytes lie in the source. The load stage then reads each weight once, straight into an aligned
numpy array, and the checker and shape inference never see it.

The light bytes parse to exactly the original message minus those fields: only whole field
records are removed (for a repeated `raw_data`, protobuf keeps the last: so do we), the enclosing
length prefixes are re-encoded, everything else is copied verbatim. Input protobuf would refuse
(truncated varints or lengths, wire types 6/7, field number 0) is refused here with
`InvalidProtobuf`; so are group records (ONNX has none), which protobuf would skip.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidProtobuf
from .load_tensors import pread_into

_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9
_LEN = 2
_CHUNK = 1 << 20


class Source:
    """Random access to the serialized model: a file descriptor or an in-memory buffer."""

    def __init__(self, size: int, fd: int | None = None, data: bytes | None = None,
                 label: str = "model") -> None:
        self.size, self.fd, self.label = size, fd, label
        self._view = memoryview(data) if data is not None else None
        self._chunk, self._chunk_at = b"", 0

    def read(self, offset: int, n: int) -> bytes:
        if self._view is not None:
            return bytes(self._view[offset:offset + n])
        end = offset + n
        if self._chunk_at <= offset and end <= self._chunk_at + len(self._chunk):
            return self._chunk[offset - self._chunk_at:end - self._chunk_at]
        if n >= _CHUNK:
            return self._pread(offset, n)
        self._chunk, self._chunk_at = self._pread(offset, min(_CHUNK, self.size - offset)), offset
        return self._chunk[:n]

    def _pread(self, offset: int, n: int) -> bytes:
        buf = bytearray(n)
        self.readinto(offset, memoryview(buf))
        return bytes(buf)

    def readinto(self, offset: int, out: memoryview) -> None:
        n = len(out)
        if self._view is not None:
            out[:] = self._view[offset:offset + n]
            return
        done = pread_into(self.fd, out, offset)
        if done < n:
            raise InvalidProtobuf(f"{self.label} ended after {offset + done} bytes; it was "
                                  f"{self.size} bytes when opened")

    def array(self, offset: int, n: int) -> np.ndarray:
        """The bytes [offset, offset + n) as a fresh, aligned, read-only uint8 array."""
        buf = np.empty(n, dtype=np.uint8)
        self.readinto(offset, memoryview(buf))
        buf.flags.writeable = False
        return buf


@dataclass(frozen=True)
class Span:
    offset: int
    length: int


class _Scanner:
    """Field records of one message region of a Source."""

    def __init__(self, src: Source) -> None:
        self.src = src

    def fail(self, at: int, what: str) -> None:
        raise InvalidProtobuf(f"{self.src.label} is not a valid ONNX ModelProto: {what} at byte {at}")

    def varint(self, at: int, end: int) -> tuple[int, int]:
        data = self.src.read(at, min(10, end - at))
        value = shift = 0
        for k, b in enumerate(data):
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value, at + k + 1
            shift += 7
        self.fail(at, "truncated or overlong varint")
        raise AssertionError  # unreachable

    def fields(self, start: int, end: int):
        """(field number, wire type, record start, payload start, record end) per record."""
        at = start
        while at < end:
            tag, p = self.varint(at, end)
            number, wire = tag >> 3, tag & 7
            if number == 0 or tag > 0xFFFFFFFF:
                self.fail(at, f"invalid field tag {tag}")
            if wire == 0:
                _, q = self.varint(p, end)
            elif wire == 1:
                q = p + 8
            elif wire == 5:
                q = p + 4
            elif wire == _LEN:
                length, p = self.varint(p, end)
                q = p + length
            elif wire in (3, 4):
                self.fail(at, f"group record (field {number}); ONNX models have none")
            else:
                self.fail(at, f"invalid wire type {wire}")
            if q > end:
                self.fail(at, f"field {number} runs past the end of its message")
            yield number, wire, at, p, q
            at = q


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _record(number: int, payload: bytes) -> bytes:
    return _varint_bytes(number << 3 | _LEN) + _varint_bytes(len(payload)) + payload


def split_weights(src: Source, min_bytes: int) -> tuple[bytes, dict[int, Span]]:
    """(model bytes without the lifted raw_data fields, {initializer index: where its bytes are})."""
    scan = _Scanner(src)
    out = bytearray()
    spans: dict[int, Span] = {}
    index = 0
    for number, wire, start, p, q in scan.fields(0, src.size):
        if number != _MODEL_GRAPH or wire != _LEN:
            out += src.read(start, q - start)
            continue
        graph = bytearray()
        copy_from = p
        for g_number, g_wire, g_start, g_p, g_q in scan.fields(p, q):
            if g_number != _GRAPH_INITIALIZER or g_wire != _LEN:
                continue
            if g_q - g_p >= min_bytes:
                tensor, raw = _lift_raw_data(scan, g_p, g_q, min_bytes)
                if raw is not None:
                    graph += src.read(copy_from, g_start - copy_from)
                    graph += _record(_GRAPH_INITIALIZER, tensor)
                    copy_from = g_q
                    spans[index] = raw
            index += 1
        graph += src.read(copy_from, q - copy_from)
        out += _record(_MODEL_GRAPH, bytes(graph))
    return bytes(out), spans


def _lift_raw_data(scan: _Scanner, start: int, end: int, min_bytes: int
                   ) -> tuple[bytes, Span | None]:
    """A TensorProto's bytes without its raw_data records, and the last one's span (protobuf
    keeps the last value of a repeated singular field); (b"", None) when it has no big one."""
    kept = bytearray()
    last = None
    for number, wire, f_start, f_p, f_q in scan.fields(start, end):
        if number == _TENSOR_RAW_DATA and wire == _LEN:
            last = Span(f_p, f_q - f_p)
        else:
            kept += scan.src.read(f_start, f_q - f_start)
    if last is None or last.length < min_bytes:
        return b"", None
    return bytes(kept), last

"""onnxruntime's miscellaneous contrib ops (`com.microsoft`): Inverse, CDist, CropAndResize,
ExpandDims, MurmurHash3, WordConvEmbedding. (Tokenizer is in contrib_text.py.)"""
from __future__ import annotations

import numpy as np

from ep_core.errors import InvalidArgument
from ep_core.kernel import Kernel
from ep_cpu.gemm import gemm
from ep_cpu.registry import kernel

from .contrib_common import MS
from .conv import compute_dtype


@kernel("Inverse", domain=MS)
class Inverse(Kernel):
    """Inverse of each square matrix in the last two axes (half precision computes in float32)."""

    def compute(self, x):
        if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
            raise InvalidArgument(f"{self.node.describe()}: needs square matrices, got {x.shape}")
        try:
            return np.linalg.inv(x.astype(compute_dtype(x.dtype), copy=False)).astype(x.dtype, copy=False)
        except np.linalg.LinAlgError as e:
            raise InvalidArgument(f"{self.node.describe()}: {e}") from None


@kernel("CDist", domain=MS)
class CDist(Kernel):
    """Pairwise distances between the rows of A (M, N) and B (K, N): `metric` "sqeuclidean"
    (default) or "euclidean", computed as |a|^2 + |b|^2 - 2 a.b through the GEMM."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.metric = self.attr("metric", "sqeuclidean")
        if self.metric not in ("sqeuclidean", "euclidean"):
            raise InvalidArgument(f"{node.describe()}: metric {self.metric!r} is not supported "
                                  f"(sqeuclidean, euclidean)")

    def compute(self, a, b):
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
            raise InvalidArgument(f"{self.node.describe()}: A {a.shape} and B {b.shape} must be (M, N), (K, N)")
        d = gemm(a, b, trans_b=True, alpha=-2.0)
        d += np.einsum("ij,ij->i", a, a)[:, None]
        d += np.einsum("ij,ij->i", b, b)[None, :]
        np.maximum(d, 0, out=d)   # cancellation can leave tiny negatives
        if self.metric == "euclidean":
            np.sqrt(d, out=d)
        return d.astype(a.dtype, copy=False)


@kernel("CropAndResize", domain=MS)
class CropAndResize(Kernel):
    """Crops of X (N, C, H, W) at normalized boxes [y1, x1, y2, x2], resized to crop_size with
    corner-aligned bilinear or nearest sampling; samples outside the image take
    `extrapolation_value`. Output (num_boxes, C, crop_height, crop_width)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.mode = self.attr("mode", "bilinear")
        self.extrapolation = float(self.attr("extrapolation_value", 0.0))
        if self.mode not in ("bilinear", "nearest"):
            raise InvalidArgument(f"{node.describe()}: mode must be bilinear or nearest, got {self.mode!r}")

    @staticmethod
    def _coords(lo, hi, size: int, out: int) -> np.ndarray:
        """(R, out) sample positions in pixels along one axis."""
        if out > 1:
            step = (hi - lo) * (size - 1) / (out - 1)
            return lo[:, None] * (size - 1) + np.arange(out)[None, :] * step[:, None]
        return (0.5 * (lo + hi) * (size - 1))[:, None]

    def compute(self, x, rois, batch_indices, crop_size):
        n, c, h, w = x.shape
        ch, cw = (int(v) for v in np.asarray(crop_size).reshape(-1)[:2])
        if ch <= 0 or cw <= 0:
            raise InvalidArgument(f"{self.node.describe()}: crop_size must be positive, got {[ch, cw]}")
        bi = np.asarray(batch_indices, np.int64)
        if bi.size and (bi.min() < 0 or bi.max() >= n):
            raise InvalidArgument(f"{self.node.describe()}: batch_indices out of range [0, {n})")
        self.ctx.check_output_size(self.node, (rois.shape[0], c, ch, cw), x.dtype)
        cdt = compute_dtype(x.dtype)
        r = rois.astype(np.float64)
        ys = self._coords(r[:, 0], r[:, 2], h, ch)   # (R, ch)
        xs = self._coords(r[:, 1], r[:, 3], w, cw)   # (R, cw)
        inside = ((ys >= 0) & (ys <= h - 1))[:, :, None] & ((xs >= 0) & (xs <= w - 1))[:, None, :]
        img = x[bi].astype(cdt, copy=False)          # (R, C, H, W)
        rows = np.arange(len(bi))[:, None, None]
        if self.mode == "nearest":
            yi = np.clip(np.floor(ys + 0.5), 0, h - 1).astype(np.int64)   # round half away (>= 0)
            xi = np.clip(np.floor(xs + 0.5), 0, w - 1).astype(np.int64)
            out = img[rows, :, yi[:, :, None], xi[:, None, :]]          # (R, ch, cw, C)
        else:
            y0 = np.clip(np.floor(ys), 0, h - 1).astype(np.int64)
            x0 = np.clip(np.floor(xs), 0, w - 1).astype(np.int64)
            y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
            fy = (ys - np.floor(ys)).astype(cdt)[:, :, None, None]
            fx = (xs - np.floor(xs)).astype(cdt)[:, None, :, None]

            def at(yy, xx):
                return img[rows, :, yy[:, :, None], xx[:, None, :]]    # (R, ch, cw, C)
            top = at(y0, x0) + (at(y0, x1) - at(y0, x0)) * fx
            bottom = at(y1, x0) + (at(y1, x1) - at(y1, x0)) * fx
            out = top + (bottom - top) * fy
        out = np.where(inside[..., None], out, cdt.type(self.extrapolation))
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=x.dtype)


@kernel("ExpandDims", domain=MS)
class ExpandDims(Kernel):
    """X with a new axis of size 1 at `axis` (an int32 scalar input; negative counts from the end
    of the output)."""

    def compute(self, x, axis):
        a = int(np.asarray(axis).reshape(-1)[0])
        r = x.ndim + 1
        if not -r <= a < r:
            raise InvalidArgument(f"{self.node.describe()}: axis {a} out of range for output rank {r}")
        return np.expand_dims(x, a if a >= 0 else a + r)


# --------------------------------------------------------------------------- MurmurHash3
_C1, _C2 = np.uint32(0xCC9E2D51), np.uint32(0x1B873593)


def _rotl(v: np.ndarray, r: int) -> np.ndarray:
    return (v << np.uint32(r)) | (v >> np.uint32(32 - r))


def _mix_block(h: np.ndarray, k: np.ndarray) -> np.ndarray:
    k = _rotl(k * _C1, 15) * _C2
    h = _rotl(h ^ k, 13)
    return h * np.uint32(5) + np.uint32(0xE6546B64)


def _finish(h: np.ndarray, length) -> np.ndarray:
    h = h ^ np.asarray(length, np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def murmur3_x86_32_words(words: np.ndarray, seed: int) -> np.ndarray:
    """MurmurHash3_x86_32 of keys made of whole little-endian uint32 words: words (..., n_words)."""
    with np.errstate(over="ignore"):
        h = np.full(words.shape[:-1], seed, np.uint32)
        for i in range(words.shape[-1]):
            h = _mix_block(h, words[..., i].astype(np.uint32))
        return _finish(h, 4 * words.shape[-1])


def murmur3_x86_32_bytes(data: bytes, seed: int) -> int:
    """MurmurHash3_x86_32 of a byte string (any length)."""
    n = len(data)
    blocks = n // 4
    with np.errstate(over="ignore"):
        h = np.asarray(seed, np.uint32)
        if blocks:
            for k in np.frombuffer(data[:4 * blocks], "<u4"):
                h = _mix_block(h, k)
        tail = data[4 * blocks:]
        if tail:
            k = np.uint32(int.from_bytes(tail, "little"))
            h = h ^ (_rotl(k * _C1, 15) * _C2)
        return int(_finish(h, n))


@kernel("MurmurHash3", domain=MS)
class MurmurHash3(Kernel):
    """MurmurHash3_x86_32 of each element's bytes (strings: their UTF-8 bytes) with `seed`;
    uint32 output when `positive` (default), else int32."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.seed = int(self.attr("seed", 0)) & 0xFFFFFFFF
        self.out = np.uint32 if int(self.attr("positive", 1)) else np.int32

    def compute(self, x):
        if x.dtype == object or x.dtype.kind in "US":
            flat = [murmur3_x86_32_bytes(str(v).encode("utf-8") if not isinstance(v, bytes) else v, self.seed)
                    for v in x.reshape(-1)]
            h = np.array(flat, np.uint32).reshape(x.shape)
        else:
            if x.dtype.itemsize not in (4, 8):
                raise InvalidArgument(f"{self.node.describe()}: unsupported key type {x.dtype}")
            le = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
            words = le.view("<u4").reshape(x.shape + (x.dtype.itemsize // 4,))
            h = murmur3_x86_32_words(words, self.seed)
        return h.view(np.int32) if self.out is np.int32 else h


@kernel("WordConvEmbedding", domain=MS)
class WordConvEmbedding(Kernel):
    """Character-CNN word embeddings. Sequence (S, W): character ids per word, 0 = padding (a word
    whose first id is 0 is empty); chars embedded with C (vocab, E); a width-k convolution W
    (M, 1, k, E) + B over each word's first max(length, k) chars, tanh, max over positions.
    Output (S, M); empty words give zeros."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        # Optional sizes the inputs must match (-1 or absent: any).
        self.sizes = {name: int(self.attr(name, -1)) for name in
                      ("embedding_size", "conv_window_size", "char_embedding_size")}

    def compute(self, seq, w, b, c):
        if seq.ndim != 2 or w.ndim != 4 or w.shape[3] != c.shape[1]:
            raise InvalidArgument(f"{self.node.describe()}: Sequence {seq.shape}, W {w.shape}, C {c.shape} do "
                                  f"not fit (S, W), (M, 1, k, E), (vocab, E)")
        for name, dim in (("embedding_size", w.shape[0]), ("conv_window_size", w.shape[2]),
                          ("char_embedding_size", c.shape[1])):
            want = self.sizes[name]
            if want not in (-1, dim):
                raise InvalidArgument(f"{self.node.describe()}: {name} {want} does not match the inputs' {dim}")
        s, wl = seq.shape
        m, _, k, e = w.shape
        if k > wl:
            raise InvalidArgument(f"{self.node.describe()}: window {k} is longer than the words ({wl})")
        ids = np.asarray(seq, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= c.shape[0]):
            raise InvalidArgument(f"{self.node.describe()}: character ids out of range [0, {c.shape[0]})")
        lengths = np.where(ids[:, 0] > 0, (ids > 0).sum(axis=1), 0)
        span = np.maximum(lengths, k)                                   # chars looked up per word
        chars = np.where(np.arange(wl)[None, :] < span[:, None], ids, 0)
        emb = np.where((np.arange(wl)[None, :] < span[:, None])[..., None], c[chars], 0).astype(np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(emb, k, axis=1)    # (S, wl-k+1, E, k)
        windows = windows.transpose(0, 1, 3, 2).reshape(s, wl - k + 1, k * e)
        conv = np.tanh(gemm(windows, w.reshape(m, k * e).astype(np.float32), b.astype(np.float32), trans_b=True))
        positions = span - k + 1                                        # valid windows per word
        valid = np.arange(wl - k + 1)[None, :] < positions[:, None]
        conv = np.where(valid[..., None], conv, -np.inf)
        out = conv.max(axis=1)
        return np.where((lengths > 0)[:, None], out, 0).astype(np.float32)

"""ai.onnx.ml feature transforms: ArrayFeatureExtractor, Binarizer, CastMap, CategoryMapper,
DictVectorizer, FeatureVectorizer, Imputer, LabelEncoder, Normalizer, OneHotEncoder, Scaler, ZipMap.

Maps are Python dicts; ZipMap's output is a sequence (list) of dicts.
"""
from __future__ import annotations

import math

import numpy as np

from ep_core.kernel import Kernel
from ep_cpu import ml_jit
from ep_cpu.registry import kernel

ML = "ai.onnx.ml"


def _str(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _obj_array(values, shape) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out.reshape(shape)


@kernel("ArrayFeatureExtractor", domain=ML)
class ArrayFeatureExtractor(Kernel):
    def compute(self, x, indices):
        x = np.asarray(x)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        last = x.shape[-1]
        if np.any(idx < 0) or np.any(idx >= last):
            raise IndexError(f"ArrayFeatureExtractor: indices out of range [0, {last})")
        out = x[..., idx]
        # A 1-D input still yields a one-row matrix (as ONNX Runtime does).
        return out.reshape(1, -1) if x.ndim == 1 else out


@kernel("Binarizer", domain=ML)
class Binarizer(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.threshold = float(self.attr("threshold", 0.0))

    def compute(self, x):
        x = np.asarray(x)
        return (x > self.threshold).astype(x.dtype)


@kernel("CastMap", domain=ML)
class CastMap(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.cast_to = self.attr("cast_to", "TO_FLOAT")
        self.sparse = self.attr("map_form", "DENSE") == "SPARSE"
        self.max_map = int(self.attr("max_map", 1))

    def _convert(self, values: list) -> np.ndarray:
        if self.cast_to == "TO_STRING":
            # Numbers print like C++ std::to_string (six decimals), as in ONNX Runtime.
            return _obj_array([v if isinstance(v, str) else f"{float(v):f}" for v in values],
                              (len(values),))
        dtype = np.float32 if self.cast_to == "TO_FLOAT" else np.int64
        return np.array([float(v) for v in values], dtype=np.float64).astype(dtype)

    def compute(self, x: dict):
        keys = sorted(x)
        if not self.sparse:
            return self._convert([x[k] for k in keys]).reshape(1, -1)
        if keys and (keys[0] < 0 or keys[-1] >= self.max_map):
            raise ValueError(f"CastMap: key out of range [0, {self.max_map})")
        filler = "" if self.cast_to == "TO_STRING" else 0.0
        dense = [filler] * self.max_map
        for k in keys:
            dense[k] = x[k]
        return self._convert(dense).reshape(1, -1)


@kernel("CategoryMapper", domain=ML)
class CategoryMapper(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        ints = [int(v) for v in self.attr("cats_int64s", [])]
        strs = list(self.attr("cats_strings", []))
        self.to_int = dict(zip(strs, ints))
        self.to_str = dict(zip(ints, strs))
        self.default_int = int(self.attr("default_int64", -1))
        self.default_str = self.attr("default_string", "_Unused")

    def compute(self, x):
        x = np.asarray(x)
        flat = x.reshape(-1)
        if x.dtype == object or x.dtype.kind in "US":
            return np.array([self.to_int.get(_str(v), self.default_int) for v in flat],
                            dtype=np.int64).reshape(x.shape)
        return _obj_array([self.to_str.get(int(v), self.default_str) for v in flat], x.shape)


@kernel("DictVectorizer", domain=ML)
class DictVectorizer(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        vocab = self.attr("string_vocabulary") or [int(v) for v in self.attr("int64_vocabulary", [])]
        self.vocab = {k: i for i, k in enumerate(vocab)}
        dt = node.output_dtypes[0] if node.output_dtypes else None
        self.dtype = dt

    def compute(self, x):
        rows = x if isinstance(x, list) else [x]
        values = [v for row in rows for v in row.values()]
        dtype = self.dtype
        if dtype is None:
            dtype = (np.dtype(object) if values and isinstance(values[0], str)
                     else np.asarray(values).dtype if values else np.dtype(np.float32))
        out = np.zeros((len(rows), len(self.vocab)), dtype=dtype)
        if dtype == object:
            out[:] = ""
        for r, row in enumerate(rows):
            for k, v in row.items():
                col = self.vocab.get(k)
                if col is not None:  # keys outside the vocabulary are dropped
                    out[r, col] = v
        return out


@kernel("FeatureVectorizer", domain=ML)
class FeatureVectorizer(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.dims = [int(d) for d in self.attr("inputdimensions", [])]

    def compute(self, *inputs):
        parts = []
        for k, x in enumerate(inputs):
            x = np.asarray(x)
            x = x.reshape(1, -1) if x.ndim == 1 else x.reshape(x.shape[0], -1)
            want = self.dims[k] if k < len(self.dims) else x.shape[1]
            if x.shape[1] > want:
                x = x[:, :want]
            elif x.shape[1] < want:
                x = np.pad(x, ((0, 0), (0, want - x.shape[1])))
            parts.append(x.astype(np.float32))
        return np.concatenate(parts, axis=1).astype(np.float32)


@kernel("Imputer", domain=ML)
class Imputer(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        floats = self.attr("imputed_value_floats")
        self.is_float = bool(floats)
        self.imputed = np.asarray(floats if floats else self.attr("imputed_value_int64s", []))
        self.replaced = (float(self.attr("replaced_value_float", 0.0)) if self.is_float
                         else int(self.attr("replaced_value_int64", 0)))

    def compute(self, x):
        x = np.asarray(x)
        if self.is_float and math.isnan(self.replaced):
            mask = np.isnan(x)
        else:
            mask = x == self.replaced
        fill = self.imputed.astype(x.dtype)
        if fill.size not in (1, x.shape[-1] if x.ndim else 1):
            raise ValueError(f"Imputer: {fill.size} imputed values for {x.shape[-1]} features")
        return np.where(mask, np.broadcast_to(fill, x.shape) if fill.size > 1 else fill[0], x)


def _nan_key(v):
    """Dict key under which every NaN matches every other NaN."""
    return "__nan__" if isinstance(v, float) and math.isnan(v) else v


@kernel("LabelEncoder", domain=ML)
class LabelEncoder(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.v1 = node.since_version < 2
        if self.v1:
            classes = list(self.attr("classes_strings", []))
            self.str_to_int = {s: i for i, s in enumerate(classes)}
            self.classes = classes
            self.default_int = int(self.attr("default_int64", -1))
            self.default_str = self.attr("default_string", "_Unused")
            return
        keys = self._pick("keys")
        values = self._pick("values")
        if keys is None or values is None:
            raise ValueError("LabelEncoder: keys_* and values_* must be set")
        keys_arr, values_arr = keys[1], values[1]
        self.out_dtype = values_arr.dtype
        self.mapping = {}
        for k, v in zip(keys_arr.tolist(), values_arr.tolist()):
            k = _str(k) if keys_arr.dtype == object else _nan_key(k)
            v = _str(v) if values_arr.dtype == object else v
            self.mapping[k] = v  # later duplicates win
        self.default = self._default(values[1])

    def _pick(self, prefix: str):
        """(kind, array) of the keys_*/values_* attribute that is set."""
        for suffix, dtype in (("strings", object), ("int64s", np.int64), ("floats", np.float32)):
            v = self.attr(f"{prefix}_{suffix}")
            if v is not None and len(v) > 0:
                return suffix, np.asarray(v, dtype=dtype)
        t = self.attr(f"{prefix}_tensor")
        if t is not None:
            return "tensor", np.asarray(t).reshape(-1)
        return None

    def _default(self, values_arr: np.ndarray):
        t = self.attr("default_tensor")
        if t is not None:
            first = np.asarray(t).reshape(-1)[0]
            return _str(first) if np.asarray(t).dtype == object else first.item()
        if values_arr.dtype == object:
            return self.attr("default_string", "_Unused")
        if values_arr.dtype.kind == "f":
            return float(self.attr("default_float", -0.0))
        return int(self.attr("default_int64", -1))

    def compute(self, x):
        x = np.asarray(x)
        flat = x.reshape(-1)
        if self.v1:
            if x.dtype == object or x.dtype.kind in "US":
                return np.array([self.str_to_int.get(_str(v), self.default_int) for v in flat],
                                dtype=np.int64).reshape(x.shape)
            n = len(self.classes)
            return _obj_array([self.classes[int(v)] if 0 <= int(v) < n else self.default_str
                               for v in flat], x.shape)
        conv = (_str if x.dtype == object else
                (lambda v: _nan_key(float(v))) if x.dtype.kind == "f" else int)
        vals = [self.mapping.get(conv(v), self.default) for v in flat]
        if self.out_dtype == object:
            return _obj_array(vals, x.shape)
        return np.array(vals, dtype=self.out_dtype).reshape(x.shape)


@kernel("Normalizer", domain=ML)
class Normalizer(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.norm = self.attr("norm", "MAX").upper()

    def compute(self, x):
        x = np.asarray(x)
        rows = x.reshape(1, -1) if x.ndim == 1 else x.reshape(-1, x.shape[-1])
        if (rows.dtype in (np.float32, np.float64) and rows.flags.c_contiguous and rows.shape[1]
                and self.norm in ml_jit.NORMS and ml_jit.available()):
            return ml_jit.normalize(rows, ml_jit.NORMS[self.norm]).reshape(x.shape)
        r = rows.astype(np.float64)
        if self.norm == "MAX":
            div = _row_reduce(r, np.maximum)
        elif self.norm == "L1":
            div = _row_reduce(np.abs(r), np.add)
        elif self.norm == "L2":
            div = np.sqrt(_row_reduce(r * r, np.add))
        else:
            raise ValueError(f"Normalizer: unknown norm {self.norm!r}")
        # A zero divisor leaves the row unchanged (spec).
        div = div.reshape(-1, 1)
        np.divide(r, div, out=r, where=div != 0)
        return r.astype(np.float32).reshape(x.shape)


def _row_reduce(r: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    """ufunc-reduce each row of a 2-D array. numpy reduces a short last axis slowly (a (512, 3)
    sum: 19 us); a few columns are folded as whole-column element-wise ops instead."""
    if r.shape[1] == 0 or r.shape[1] > 16:
        return ufunc.reduce(r, axis=1)
    acc = r[:, 0].copy()
    for j in range(1, r.shape[1]):
        ufunc(acc, r[:, j], out=acc)
    return acc


@kernel("OneHotEncoder", domain=ML)
class OneHotEncoder(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        strs = self.attr("cats_strings")
        self.is_str = bool(strs)
        cats = list(strs) if self.is_str else [int(v) for v in self.attr("cats_int64s", [])]
        self.cats = {c: i for i, c in enumerate(cats)}
        self.zeros = bool(self.attr("zeros", 1))

    def compute(self, x):
        x = np.asarray(x)
        flat = x.reshape(-1)
        out = np.zeros((flat.size, len(self.cats)), dtype=np.float32)
        for i, v in enumerate(flat):
            key = _str(v) if self.is_str else int(v)
            j = self.cats.get(key)
            if j is None:
                if not self.zeros:
                    raise ValueError(f"OneHotEncoder: unknown category {key!r}")
                continue
            out[i, j] = 1.0
        return out.reshape(*x.shape, len(self.cats))


@kernel("Scaler", domain=ML)
class Scaler(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.offset = np.asarray(self.attr("offset", [0.0]), dtype=np.float32)
        self.scale = np.asarray(self.attr("scale", [1.0]), dtype=np.float32)

    def compute(self, x):
        x = np.asarray(x)
        if (x.dtype == np.float32 and x.ndim == 2 and x.flags.c_contiguous and ml_jit.available()
                and self.offset.size in (1, x.shape[1]) and self.scale.size in (1, x.shape[1])):
            return ml_jit.scaler(x, self.offset, self.scale)
        y = np.subtract(x, self.offset, dtype=np.float32)
        y *= self.scale
        return y


@kernel("ZipMap", domain=ML)
class ZipMap(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        strs = self.attr("classlabels_strings")
        self.labels = list(strs) if strs else [int(v) for v in self.attr("classlabels_int64s", [])]

    def compute(self, x):
        x = np.asarray(x, dtype=np.float32)
        rows = x.reshape(1, -1) if x.ndim == 1 else x
        if rows.shape[1] != len(self.labels):
            raise ValueError(f"ZipMap: {rows.shape[1]} columns for {len(self.labels)} labels")
        return ([dict(zip(self.labels, (float(v) for v in row))) for row in rows],)

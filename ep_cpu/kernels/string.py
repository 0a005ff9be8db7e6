"""String ops: StringConcat, StringNormalizer, StringSplit, RegexFullMatch, TfIdfVectorizer.

String tensors are numpy object arrays of Python str.
"""
from __future__ import annotations

import re

import numpy as np

from ep_core.kernel import Kernel
from ep_cpu.registry import kernel


def _as_str(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _str_array(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == object:
        return x
    out = np.empty(x.shape, dtype=object)
    out.reshape(-1)[:] = [_as_str(v) for v in x.reshape(-1)]
    return out


@kernel("StringConcat")
class StringConcat(Kernel):
    def compute(self, x, y):
        a, b = np.broadcast_arrays(_str_array(x), _str_array(y))
        out = np.empty(a.shape, dtype=object)
        out.reshape(-1)[:] = [_as_str(u) + _as_str(v) for u, v in zip(a.reshape(-1), b.reshape(-1))]
        return out


@kernel("StringNormalizer")
class StringNormalizer(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.action = self.attr("case_change_action", "NONE").upper()
        self.case_sensitive = bool(self.attr("is_case_sensitive", 0))
        stop = self.attr("stopwords", []) or []
        self.stopwords = set(stop) if self.case_sensitive else {s.lower() for s in stop}

    def _change(self, s: str) -> str:
        if self.action == "LOWER":
            return s.lower()
        if self.action == "UPPER":
            return s.upper()
        return s

    def compute(self, x):
        x = _str_array(x)
        if x.ndim not in (1, 2) or (x.ndim == 2 and x.shape[0] != 1):
            raise ValueError(f"StringNormalizer accepts [C] or [1, C] input, got {x.shape}")
        words = [_as_str(v) for v in x.reshape(-1)]
        kept = [w for w in words
                if (w if self.case_sensitive else w.lower()) not in self.stopwords]
        if not kept:
            kept = [""]  # the spec's empty result keeps one empty string
        out = np.empty(len(kept), dtype=object)
        out[:] = [self._change(w) for w in kept]
        return out.reshape(1, -1) if x.ndim == 2 else out


@kernel("StringSplit")
class StringSplit(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        delim = self.attr("delimiter", "")
        self.delimiter = delim if delim else None  # None: split on runs of whitespace
        self.maxsplit = int(self.attr("maxsplit", -1)) if "maxsplit" in node.attrs else -1

    def compute(self, x):
        x = _str_array(x)
        flat = [_as_str(v).split(self.delimiter, self.maxsplit) for v in x.reshape(-1)]
        width = max((len(p) for p in flat), default=0)
        y = np.full((len(flat), width), "", dtype=object)
        for i, parts in enumerate(flat):
            y[i, :len(parts)] = parts
        z = np.array([len(p) for p in flat], dtype=np.int64).reshape(x.shape)
        return y.reshape(*x.shape, width), z


@kernel("RegexFullMatch")
class RegexFullMatch(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        # RE2 syntax is (for the patterns models use) a subset of Python's `re`.
        self.pattern = re.compile(self.attr("pattern", ""))

    def compute(self, x):
        x = _str_array(x)
        out = np.array([self.pattern.fullmatch(_as_str(v)) is not None for v in x.reshape(-1)],
                       dtype=np.bool_)
        return out.reshape(x.shape)


@kernel("TfIdfVectorizer")
class TfIdfVectorizer(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.mode = self.attr("mode", "TF").upper()
        self.min_n = int(self.attr("min_gram_length"))
        self.max_n = int(self.attr("max_gram_length"))
        self.max_skip = int(self.attr("max_skip_count"))
        counts = list(self.attr("ngram_counts"))
        indexes = list(self.attr("ngram_indexes"))
        strings = self.attr("pool_strings")
        pool = list(strings) if strings is not None else [int(v) for v in self.attr("pool_int64s", [])]
        self.is_string = strings is not None
        self.out_size = max(indexes) + 1 if indexes else 0
        weights = self.attr("weights")
        self.weights = np.asarray(weights if weights is not None else [1.0] * len(indexes),
                                  dtype=np.float32)
        # n-gram tuple -> its ordinal in the pool (ordinal k maps to output coordinate indexes[k]).
        self.lookup: dict[tuple, int] = {}
        ordinal = 0
        bounds = counts + [len(pool)]
        for n_minus_1 in range(len(counts)):
            n = n_minus_1 + 1
            start, end = bounds[n_minus_1], bounds[n_minus_1 + 1]
            for p in range(start, end, n):
                self.lookup[tuple(pool[p:p + n])] = ordinal
                ordinal += 1
        self.indexes = np.asarray(indexes, dtype=np.int64)

    def _row(self, row: list) -> np.ndarray:
        counts = np.zeros(len(self.indexes), dtype=np.float32)
        length = len(row)
        for n in range(max(self.min_n, 1), self.max_n + 1):
            # A 1-gram has no gaps, so all skip values would count it repeatedly: use skip 0 only.
            skips = range(self.max_skip + 1) if n > 1 else range(1)
            for skip in skips:
                step = skip + 1
                for start in range(length):
                    last = start + (n - 1) * step
                    if last >= length:
                        break
                    k = self.lookup.get(tuple(row[start:last + 1:step]))
                    if k is not None:
                        counts[k] += 1
        if self.mode == "IDF":
            counts = np.minimum(counts, 1) * self.weights
        elif self.mode == "TFIDF":
            counts = counts * self.weights
        out = np.zeros(self.out_size, dtype=np.float32)
        np.add.at(out, self.indexes, counts)
        return out

    def compute(self, x):
        x = np.asarray(x)
        conv = _as_str if self.is_string else int
        if x.ndim == 1 or x.ndim == 0:
            return self._row([conv(v) for v in x.reshape(-1)])
        rows = x.reshape(x.shape[0], -1)
        if rows.shape[0] == 0:
            return np.zeros((0, self.out_size), dtype=np.float32)
        return np.stack([self._row([conv(v) for v in r]) for r in rows]).astype(np.float32)

"""ai.onnx.ml linear models and SVMs: LinearClassifier, LinearRegressor, SVMClassifier,
SVMRegressor; also the score post-transforms shared with the tree ensembles."""
from __future__ import annotations

import numpy as np

from ep_core.kernel import Kernel
from ep_cpu import ml_jit
from ep_cpu.registry import kernel

ML = "ai.onnx.ml"
POST_TRANSFORMS = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")


def _logistic(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive argument only, so large |x| cannot overflow.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _erfinv_approx(x: np.ndarray) -> np.ndarray:
    """Winitzki's closed-form erf^-1 approximation (a = 0.147), in single precision like ONNX
    Runtime; x = +-1 gives +-inf."""
    x = np.asarray(x, dtype=np.float32)
    sgn = np.where(x < 0, np.float32(-1), np.float32(1))
    w = (np.float32(1) - x) * (np.float32(1) + x)
    with np.errstate(divide="ignore", invalid="ignore"):
        ln = np.log(w)
        v = np.float32(2 / (3.14159 * 0.147)) + np.float32(0.5) * ln
        return sgn * np.sqrt(-v + np.sqrt(v * v - np.float32(1 / 0.147) * ln))


def _probit(x: np.ndarray) -> np.ndarray:
    return (np.float32(1.41421356) * _erfinv_approx(np.float32(2) * np.asarray(x, np.float32) - 1)
            ).astype(np.float64)


def _softmax_zero(rows: np.ndarray) -> np.ndarray:
    """Softmax over each row where exact zeros stay (near) zero."""
    out = np.empty_like(rows)
    for i, row in enumerate(rows):
        vmax = row.max()
        nonzero = np.abs(row) > 1e-7
        vals = np.where(nonzero, np.exp(np.where(nonzero, row - vmax, 0.0)), 0.0)
        s = vals.sum()
        out[i] = 0.5 if s == 0 else vals / s
    return out


def post_transform(scores: np.ndarray, kind: str) -> np.ndarray:
    """Apply an ML post-transform to a [N, C] score matrix (float64 in, float64 out).

    With a single score column only PROBIT applies (ONNX Runtime leaves the others out)."""
    kind = (kind or "NONE").upper()
    if kind not in POST_TRANSFORMS:
        raise ValueError(f"unknown post_transform {kind!r}")
    if kind == "NONE" or (scores.shape[1] == 1 and kind != "PROBIT"):
        return scores
    if kind == "LOGISTIC":
        return _logistic(scores)
    if kind == "SOFTMAX":
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if kind == "SOFTMAX_ZERO":
        return _softmax_zero(scores)
    return _probit(scores)


def binary_scores(v: np.ndarray, kind: str, complement: bool) -> np.ndarray:
    """[N, 2] scores of a two-class model that produced one score v per row (ONNX Runtime's
    layout): LOGISTIC gives (logistic(-v), logistic(v)), PROBIT (probit(v), v); otherwise
    (1 - v, v) when `complement` (scores read as probabilities) else (-v, v)."""
    kind = (kind or "NONE").upper()
    if kind == "LOGISTIC":
        return np.stack([_logistic(-v), _logistic(v)], axis=1)
    if kind == "PROBIT":
        return np.stack([_probit(v), v], axis=1)
    return np.stack([1.0 - v if complement else -v, v], axis=1)


def _as_rows(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.float64:
        x = x.astype(np.float32, copy=False)
    return x.reshape(1, -1) if x.ndim == 1 else x.reshape(x.shape[0], -1)


def _labels(k: Kernel, ints_attr: str):
    strs = k.attr("classlabels_strings")
    if strs:
        return list(strs), True
    return [int(v) for v in k.attr(ints_attr, [])], False


def pick_labels(labels: list, index: np.ndarray, is_str: bool) -> np.ndarray:
    """labels[index] for an index array, as an int64 or string (object) array."""
    table = np.empty(len(labels), dtype=object) if is_str else np.asarray(labels, dtype=np.int64)
    if is_str:
        table[:] = labels
    return table.take(np.asarray(index, dtype=np.intp).reshape(-1))


def _label_array(values: list | np.ndarray, is_str: bool) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.ndim == 1 and (values.dtype == object) == is_str:
        return values   # already built by pick_labels
    if is_str:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    return np.asarray(values, dtype=np.int64).reshape(-1)


@kernel("LinearClassifier", domain=ML)
class LinearClassifier(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.labels, self.is_str = _labels(self, "classlabels_ints")
        self.coef = np.asarray(self.attr("coefficients"), dtype=np.float64)
        inter = self.attr("intercepts")
        self.intercepts = np.asarray(inter, dtype=np.float64) if inter else None
        self.transform = self.attr("post_transform", "NONE")
        # labels[i] for an index array: one take on a table built once
        self.label_table = pick_labels(self.labels, np.arange(len(self.labels)), self.is_str)

    def compute(self, x):
        rows = _as_rows(x)
        coef = self.coef.reshape(-1, rows.shape[1])
        n_labels = len(self.labels)
        kind = (self.transform or "NONE").upper()
        if coef.shape[0] > 1 and kind in ("SOFTMAX", "NONE"):
            return self._multi_class(rows, coef, kind)
        scores = rows.astype(np.float64) @ coef.T
        if self.intercepts is not None:
            scores = scores + self.intercepts
        if scores.shape[1] == 1 and n_labels == 2:
            # Binary model with one score s: the label is decided by s > 0.
            s = scores[:, 0]
            chosen = pick_labels(self.labels, s > 0, self.is_str)
            scores = binary_scores(s, kind, complement=True)
        elif scores.shape[1] == 1:
            # A single class label: positive scores get it.
            neg = "" if self.is_str else 0
            chosen = [self.labels[0] if v > 0 else neg for v in scores[:, 0]] if n_labels else \
                [int(v > 0) for v in scores[:, 0]]
            scores = post_transform(scores, kind)
        else:
            # The label is the arg-max of the raw scores (PROBIT may turn them into NaN).
            chosen = pick_labels(self.labels, np.argmax(scores, axis=1), self.is_str)
            scores = post_transform(scores, kind)
        return _label_array(chosen, self.is_str), scores.astype(np.float32)

    def _multi_class(self, rows: np.ndarray, coef: np.ndarray, kind: str) -> tuple:
        """Several classes, SOFTMAX or no transform: the scores are computed class-major
        (classes, N), where the reductions over a few classes are element-wise ops on whole rows
        (numpy reduces a short last axis slowly: a (512, 3) softmax took 30 us, this 8 us); one
        compiled pass over the rows where numba is there (`ep_cpu.ml_jit`)."""
        if rows.flags.c_contiguous and ml_jit.available():
            inter = self.intercepts if self.intercepts is not None else np.zeros(coef.shape[0])
            best, scores = ml_jit.linear_scores(rows, np.ascontiguousarray(coef), inter,
                                                kind == "SOFTMAX")
            chosen = (self.label_table.take(best) if len(self.label_table) == coef.shape[0]
                      else pick_labels(self.labels, best, self.is_str))
            return _label_array(chosen, self.is_str), scores
        st = coef @ rows.astype(np.float64).T
        if self.intercepts is not None:
            st += self.intercepts.reshape(-1, 1)
        best = _argmax_rows(st)
        chosen = (self.label_table.take(best) if len(self.label_table) == st.shape[0]
                  else pick_labels(self.labels, best, self.is_str))
        if kind == "SOFTMAX":
            st -= st.max(axis=0)
            np.exp(st, out=st)
            st /= st.sum(axis=0)
        return _label_array(chosen, self.is_str), np.ascontiguousarray(st.T, dtype=np.float32)


def _argmax_rows(st: np.ndarray) -> np.ndarray:
    """np.argmax(st, axis=0) for a few rows (classes) of many columns, one row at a time: numpy's
    argmax over the strided axis ran at ~0.5 us a column (238 us for (3, 512)). The first NaN
    wins, as in np.argmax."""
    if st.shape[0] > 16:
        return st.argmax(axis=0)
    best = np.zeros(st.shape[1], dtype=np.int64)
    top = st[0].copy()
    top_nan = np.isnan(top)
    for c in range(1, st.shape[0]):
        row = st[c]
        better = (row > top) & ~top_nan
        row_nan = np.isnan(row)
        if row_nan.any():
            better |= row_nan & ~top_nan
            top_nan |= row_nan
        best[better] = c
        np.copyto(top, row, where=better)
    return best


@kernel("LinearRegressor", domain=ML)
class LinearRegressor(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.targets = int(self.attr("targets", 1))
        self.coef = np.asarray(self.attr("coefficients"), dtype=np.float64).reshape(self.targets, -1)
        inter = self.attr("intercepts")
        self.intercepts = np.asarray(inter, dtype=np.float64) if inter else None
        self.transform = self.attr("post_transform", "NONE")

    def compute(self, x):
        rows = _as_rows(x).astype(np.float64)
        y = rows @ self.coef.T
        if self.intercepts is not None:
            y = y + self.intercepts
        return post_transform(y, self.transform).astype(np.float32)


class _SVMKernel:
    """The kernel function k(a, b) of an SVM, evaluated for rows of A against rows of B."""

    def __init__(self, kind: str, params: list[float] | None):
        self.kind = (kind or "LINEAR").upper()
        params = list(params or [])
        self.gamma = params[0] if len(params) > 0 else 0.0
        self.coef0 = params[1] if len(params) > 1 else 0.0
        self.degree = int(params[2]) if len(params) > 2 else 0

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.kind == "RBF":
            d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)
            return np.exp(-self.gamma * d2)
        dot = a @ b.T
        if self.kind == "LINEAR":
            return dot
        if self.kind == "POLY":
            return (dot * self.gamma + self.coef0) ** self.degree
        if self.kind == "SIGMOID":
            return np.tanh(dot * self.gamma + self.coef0)
        raise ValueError(f"unknown SVM kernel_type {self.kind!r}")


def _pairwise_coupling(r: np.ndarray) -> np.ndarray:
    """Class probabilities from pairwise ones (Wu, Lin & Weng 2004, method 2, as in libsvm)."""
    k = r.shape[0]
    q = np.zeros((k, k))
    for t in range(k):
        q[t, t] = sum(r[j, t] ** 2 for j in range(k) if j != t)
        for j in range(k):
            if j != t:
                q[t, j] = -r[j, t] * r[t, j]
    p = np.full(k, 1.0 / k)
    eps = 0.005 / k
    for _ in range(max(100, k)):
        qp = q @ p
        pqp = p @ qp
        if np.max(np.abs(qp - pqp)) < eps:
            break
        for t in range(k):
            diff = (-qp[t] + pqp) / q[t, t]
            p[t] += diff
            pqp = (pqp + diff * (diff * q[t, t] + 2 * qp[t])) / (1 + diff) ** 2
            p /= 1 + diff
            qp = (qp + diff * q[t, :]) / (1 + diff)
    return p


@kernel("SVMClassifier", domain=ML)
class SVMClassifier(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.labels, self.is_str = _labels(self, "classlabels_ints")
        self.n_classes = max(len(self.labels), 1)
        self.kernel = _SVMKernel(self.attr("kernel_type", "LINEAR"), self.attr("kernel_params"))
        self.coef = np.asarray(self.attr("coefficients", []), dtype=np.float64)
        self.rho = np.asarray(self.attr("rho", [0.0]), dtype=np.float64)
        self.prob_a = np.asarray(self.attr("prob_a", []), dtype=np.float64)
        self.prob_b = np.asarray(self.attr("prob_b", []), dtype=np.float64)
        self.per_class = [int(v) for v in self.attr("vectors_per_class", [])]
        self.n_vectors = sum(self.per_class)
        self.starts = np.cumsum([0] + self.per_class)[:-1]
        self.transform = self.attr("post_transform", "NONE")
        if self.n_vectors > 0:
            self.sv = np.asarray(self.attr("support_vectors"), dtype=np.float64).reshape(self.n_vectors, -1)
            self.coef = self.coef.reshape(-1, self.n_vectors)
        else:
            self.coef = self.coef.reshape(self.n_classes, -1)
        self.all_positive = bool(self.coef.size == 0 or self.coef.min() >= 0)

    def _one_vs_one(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kern = self.kernel(rows, self.sv)  # [N, n_vectors]
        c = self.n_classes
        decisions, votes = [], np.zeros((rows.shape[0], c))
        e = 0
        for i in range(c):
            si, ni = self.starts[i], self.per_class[i]
            for j in range(i + 1, c):
                sj, nj = self.starts[j], self.per_class[j]
                s = (self.rho[e] + kern[:, si:si + ni] @ self.coef[j - 1, si:si + ni]
                     + kern[:, sj:sj + nj] @ self.coef[i, sj:sj + nj])
                decisions.append(s)
                votes[:, i] += s > 0
                votes[:, j] += s <= 0
                e += 1
        return np.stack(decisions, axis=1) if decisions else np.zeros((rows.shape[0], 0)), votes

    def compute(self, x):
        rows = _as_rows(x).astype(np.float64)
        votes, has_proba = None, False
        if self.n_vectors > 0:
            scores, votes = self._one_vs_one(rows)
            if self.prob_a.size:
                probs = []
                for d in scores:
                    c = self.n_classes
                    pair = np.zeros((c, c))
                    e = 0
                    for i in range(c):
                        for j in range(i + 1, c):
                            # libsvm's sigmoid fit: P(i beats j) = 1 / (1 + exp(A*d + B)).
                            v = 1.0 - _logistic(np.array(d[e] * self.prob_a[e] + self.prob_b[e]))
                            v = min(max(float(v), 1e-7), 1 - 1e-7)
                            pair[i, j], pair[j, i] = v, 1 - v
                            e += 1
                    probs.append(_pairwise_coupling(pair))
                # The label still comes from the one-vs-one votes (as in ONNX Runtime).
                scores, has_proba = np.array(probs), True
        else:
            scores = self.kernel(rows, self.coef) + self.rho[0]
        chosen, extra = [], False
        for n in range(rows.shape[0]):
            ref = votes[n] if votes is not None else scores[n]
            best = int(np.argmax(ref))
            weight = ref[best]
            if self.rho.size == 1:
                if len(self.labels) == 2:
                    extra = True
                    # ONNX Runtime's binary rule: all-positive weights pick class 1 at >= 0.5.
                    if not has_proba and self.all_positive and weight >= 0.5:
                        best = 1
                    chosen.append(self.labels[best])
                else:
                    chosen.append(1 if weight > 0 else 0)
            else:
                chosen.append(self.labels[best] if self.labels else best)
        if scores.shape[1] == 1 and extra:
            # Two classes with one decision value d: (-d, d) without a transform, else the
            # probability-style layout (as ONNX Runtime writes them).
            kind = (self.transform or "NONE").upper()
            scores = binary_scores(scores[:, 0], kind, complement=kind != "NONE")
        else:
            scores = post_transform(scores, self.transform)
        return _label_array(chosen, self.is_str), scores.astype(np.float32)


@kernel("SVMRegressor", domain=ML)
class SVMRegressor(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.kernel = _SVMKernel(self.attr("kernel_type", "LINEAR"), self.attr("kernel_params"))
        self.n_supports = int(self.attr("n_supports", 0))
        self.coef = np.asarray(self.attr("coefficients", []), dtype=np.float64)
        self.rho = float(np.asarray(self.attr("rho", [0.0])).reshape(-1)[0])
        self.one_class = bool(self.attr("one_class", 0))
        if self.n_supports > 0:
            self.sv = np.asarray(self.attr("support_vectors"), dtype=np.float64).reshape(self.n_supports, -1)

    def compute(self, x):
        rows = _as_rows(x).astype(np.float64)
        if self.n_supports > 0:
            s = self.kernel(rows, self.sv) @ self.coef[:self.n_supports] + self.rho
        else:
            s = rows @ self.coef + self.rho  # liblinear mode: coefficients are the weights
        if self.one_class:
            s = np.where(s > 0, 1.0, -1.0)
        # ONNX Runtime applies no post_transform to this single-score output.
        return s.reshape(-1, 1).astype(np.float32)

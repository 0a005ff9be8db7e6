"""Calibration: run the float model through our own runtime (ep_core.InferenceSession) with the
tensors to be quantized added as extra outputs, and turn what the batches show into ranges.

- MinMax: the smallest and largest value seen (optionally a moving average of per-batch ranges,
  extra option `CalibMovingAverage`).
- Percentile: the `CalibPercentile` (default 99.999) percentile of |x|.
- Entropy: the |x| threshold whose 128-level quantization of the histogram loses the least
  information (smallest KL divergence), the method TensorRT made popular.
Histograms are over |x| with a range that doubles when a batch exceeds it (pairs of bins merge
exactly), so one pass over the reader suffices and nothing but the histograms is kept.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper

from ep_core.errors import InvalidArgument

from .quant_types import CalibrationDataReader, CalibrationMethod


class _AbsHistogram:
    def __init__(self, bins: int) -> None:
        self.bins = bins
        self.hist = np.zeros(bins, np.int64)
        self.top = 0.0   # the histogram spans [0, top]

    def add(self, x: np.ndarray) -> None:
        a = np.abs(x.astype(np.float32, copy=False)).reshape(-1)
        a = a[np.isfinite(a) & (a != 0)]   # zeros are exact in every range: they only skew the search
        if a.size == 0:
            return
        amax = float(a.max())
        if self.top == 0.0:
            self.top = amax if amax > 0 else 1e-12
        while amax > self.top:       # widen: merge bin pairs, span doubles
            self.hist = self.hist.reshape(-1, 2).sum(axis=1)
            self.hist = np.concatenate([self.hist, np.zeros(self.bins // 2, np.int64)])
            self.top *= 2.0
        self.hist += np.histogram(a, bins=self.bins, range=(0.0, self.top))[0]

    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.top, self.bins + 1)


def _percentile_threshold(h: _AbsHistogram, percentile: float) -> float:
    total = h.hist.sum()
    if total == 0:
        return 0.0
    cdf = np.cumsum(h.hist) / total
    i = int(np.searchsorted(cdf, percentile / 100.0))
    return float(h.edges()[min(i + 1, h.bins)])


def _entropy_threshold(h: _AbsHistogram, quantized_bins: int = 128) -> float:
    hist = h.hist.astype(np.float64)
    if hist.sum() == 0:
        return 0.0
    last = int(np.nonzero(hist)[0][-1]) + 1
    best_kl, best_i = np.inf, last
    step = max(1, (last - quantized_bins) // 256)
    for i in range(min(quantized_bins, last), last + 1, step):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()                       # outliers clip into the last bin
        nz = p > 0
        # Quantize [0, i) into quantized_bins levels, spread each level back over its non-empty bins.
        groups = np.minimum((np.arange(i) * quantized_bins) // i, quantized_bins - 1)
        level_sum = np.bincount(groups, weights=hist[:i], minlength=quantized_bins)
        level_cnt = np.bincount(groups, weights=nz.astype(np.float64), minlength=quantized_bins)
        q = np.where(nz, level_sum[groups] / np.maximum(level_cnt[groups], 1), 0.0)
        ps, qs = p.sum(), q.sum()
        if qs == 0:
            continue
        pn, qn = p[nz] / ps, np.maximum(q[nz] / qs, 1e-12)
        kl = float(np.sum(pn * np.log(pn / qn)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(h.edges()[best_i])


class Calibrator:
    """Collects ranges of `tensors` over a reader's batches; `compute_ranges()` -> {name: (min, max)}."""

    def __init__(self, model: onnx.ModelProto, tensors: Iterable[str], method: CalibrationMethod,
                 extra_options: dict | None = None) -> None:
        self.method = CalibrationMethod(method) if not isinstance(method, CalibrationMethod) else method
        self.extra = dict(extra_options or {})
        self.tensors = list(dict.fromkeys(tensors))
        self.input_names = {i.name for i in model.graph.input}
        self.session = self._session(model)
        self.mins: dict[str, float] = {}
        self.maxs: dict[str, float] = {}
        self.batch_ranges: dict[str, list[tuple[float, float]]] = {}
        bins = int(self.extra.get("CalibNumBins", 2048))
        self.hists = {t: _AbsHistogram(bins + bins % 2) for t in self.tensors} \
            if self.method is not CalibrationMethod.MinMax else {}
        self.batches = 0

    def _session(self, model: onnx.ModelProto):
        import ep_core
        augmented = onnx.ModelProto()
        augmented.CopyFrom(model)
        outputs = {o.name for o in augmented.graph.output}
        for t in self.tensors:
            if t not in outputs and t not in self.input_names:
                augmented.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
        opts = ep_core.SessionOptions()
        opts.graph_optimization_level = ep_core.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.output_names = [t for t in self.tensors if t not in self.input_names]
        return ep_core.InferenceSession(augmented.SerializeToString(), opts, providers=["cpu"])

    def collect_batch(self, feeds: dict) -> None:
        if not isinstance(feeds, dict):
            raise InvalidArgument(f"a calibration batch must be a dict of input name -> array, got {type(feeds).__name__}")
        values = dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
        for t in self.tensors:
            v = np.asarray(feeds[t] if t in self.input_names else values[t])
            if v.size == 0 or v.dtype.kind != "f":
                continue
            lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
            self.mins[t] = min(lo, self.mins.get(t, lo))
            self.maxs[t] = max(hi, self.maxs.get(t, hi))
            self.batch_ranges.setdefault(t, []).append((lo, hi))
            if t in self.hists:
                self.hists[t].add(v)
        self.batches += 1

    def collect(self, reader: CalibrationDataReader, progress: Callable[[int], None] | None = None) -> None:
        while True:
            feeds = reader.get_next()
            if feeds is None:
                break
            self.collect_batch(feeds)
            if progress is not None:
                progress(self.batches)
        if self.batches == 0:
            raise InvalidArgument("the calibration data reader gave no batch")

    def compute_ranges(self) -> dict[str, tuple[float, float]]:
        ranges: dict[str, tuple[float, float]] = {}
        for t in self.tensors:
            if t not in self.mins:
                continue
            lo, hi = self.mins[t], self.maxs[t]
            if self.method is CalibrationMethod.MinMax:
                if self.extra.get("CalibMovingAverage", False):
                    c = float(self.extra.get("CalibMovingAverageConstant", 0.01))
                    lo, hi = self.batch_ranges[t][0]
                    for blo, bhi in self.batch_ranges[t][1:]:
                        lo, hi = lo + c * (blo - lo), hi + c * (bhi - hi)
            else:
                h = self.hists[t]
                # A tensor that is never negative spends all 256 levels on [0, t], else 128 per sign.
                levels = int(self.extra.get("CalibNumQuantizedBins", 256 if lo >= 0 else 128))
                thr = (_percentile_threshold(h, float(self.extra.get("CalibPercentile", 99.999)))
                       if self.method is CalibrationMethod.Percentile else _entropy_threshold(h, levels))
                if thr > 0:
                    lo, hi = max(lo, -thr), min(hi, thr)
            ranges[t] = (lo, hi)
        return ranges


def calibrate(model: onnx.ModelProto, tensors: Iterable[str], reader: CalibrationDataReader,
              method: CalibrationMethod = CalibrationMethod.MinMax, extra_options: dict | None = None,
              progress: Callable[[int], None] | None = None) -> dict[str, tuple[float, float]]:
    cal = Calibrator(model, tensors, method, extra_options)
    cal.collect(reader, progress)
    return cal.compute_ranges()

"""Resize, Upsample and CenterCropPad.

Resize is computed separably: for every resized axis we build, per output position, a small set of
input indices ("taps") and weights, then combine `np.take` slices along that axis. Nearest mode uses
one tap without arithmetic, so it is exact for every dtype. Sampling ops that are not separable
(GridSample, AffineGrid, RoiAlign, Col2Im) live in resize_sampling.py."""
from __future__ import annotations

import numpy as np

from ep_core.kernel import Kernel
from ep_cpu.kernels.tensor import bad_data, check_size, contiguous, host_ints, norm_axis, pad_array
from ep_cpu.registry import kernel


def source_coords(mode: str, in_len: int, out_len: int, scale: float,
                  roi: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """x_original for every output index under a coordinate_transformation_mode.

    The "length_resized" of the formulas is the fractional in_len * scale (as the reference
    expectations use), which equals out_len whenever sizes were given."""
    x = np.arange(out_len, dtype=np.float64)
    length = in_len * scale
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = out_len / length
        offset = in_len / 2.0 * (1.0 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if length > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return x * (in_len - 1) / (length - 1) if length > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nearest":
        return (x + 0.5) / scale
    if mode == "tf_crop_and_resize":
        start, end = roi
        if out_len > 1:  # the crop box already defines the extent: use the integer length
            return start * (in_len - 1) + x * (end - start) * (in_len - 1) / (out_len - 1)
        return np.full_like(x, 0.5 * (start + end) * (in_len - 1))
    raise ValueError(f"Resize: unknown coordinate_transformation_mode '{mode}'")


def nearest_index(xo: np.ndarray, nearest_mode: str, scale: float) -> np.ndarray:
    """Round x_original to an input index per nearest_mode ("simple" is the opset<=10 rule)."""
    if nearest_mode == "round_prefer_floor":
        r = np.ceil(xo - 0.5)
    elif nearest_mode == "round_prefer_ceil":
        r = np.floor(xo + 0.5)
    elif nearest_mode == "floor":
        r = np.floor(xo)
    elif nearest_mode == "ceil":
        r = np.ceil(xo)
    elif nearest_mode == "simple":
        r = np.ceil(xo) if scale < 1 else np.trunc(xo)
    else:
        raise ValueError(f"Resize: unknown nearest_mode '{nearest_mode}'")
    return r.astype(np.int64)


def cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """Keys cubic convolution kernel with coefficient a, evaluated at distances t."""
    t = np.abs(t)
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, w1, np.where(t < 2, w2, 0.0))


def linear_weights(t: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - np.abs(t))


class AxisPlan:
    """Taps of one resized axis: idx/w of shape (out_len, taps); w None for nearest."""

    def __init__(self, idx: np.ndarray, w: np.ndarray | None, outside: np.ndarray | None):
        self.idx, self.w, self.outside = idx, w, outside


def plan_axis(in_len: int, out_len: int, scale: float, roi: tuple[float, float], mode: str,
              coord_mode: str, nearest_mode: str, cubic_a: float, exclude_outside: bool,
              antialias: bool) -> AxisPlan:
    xo = source_coords(coord_mode, in_len, out_len, scale, roi)
    outside = None
    if coord_mode == "tf_crop_and_resize":
        outside = (xo < 0) | (xo > in_len - 1)
    if mode == "nearest":
        idx = np.clip(nearest_index(xo, nearest_mode, scale), 0, in_len - 1)
        return AxisPlan(idx[:, None], None, outside)
    if mode not in ("linear", "cubic"):
        raise ValueError(f"Resize: unknown mode '{mode}'")
    radius = 1.0 if mode == "linear" else 2.0
    kern = linear_weights if mode == "linear" else (lambda t: cubic_weights(t, cubic_a))
    if antialias and scale < 1:
        # Filter stretched by 1/scale and normalised to unit sum; taps beyond the border are
        # edge-padded like the plain filters (exclude_outside drops them instead).
        support = radius / scale
        taps = int(np.ceil(2 * support)) + 2
        idx = np.floor(xo - support).astype(np.int64)[:, None] + np.arange(taps)[None, :]
        w = kern((idx - xo[:, None]) * scale)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    else:
        base = np.floor(xo).astype(np.int64)
        offs = np.arange(0, 2) if mode == "linear" else np.arange(-1, 3)
        idx = base[:, None] + offs[None, :]
        w = kern(idx - xo[:, None])
    if exclude_outside:
        valid = (idx >= 0) & (idx < in_len)
        w = np.where(valid, w, 0.0)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    idx = np.clip(idx, 0, in_len - 1)  # edge padding for taps beyond the border
    return AxisPlan(idx, w, outside)


def apply_plans(x: np.ndarray, plans: dict[int, AxisPlan], extrapolation: float) -> np.ndarray:
    """Run per-axis plans over x and cast back to x's dtype."""
    y = x
    interpolated = False
    for axis, p in plans.items():
        if p.w is None:
            y = np.take(y, p.idx[:, 0], axis=axis)
            continue
        if not interpolated:
            y = y.astype(np.float64)
            interpolated = True
        shape = [1] * y.ndim
        shape[axis] = -1
        acc = None
        for t in range(p.idx.shape[1]):
            term = np.take(y, p.idx[:, t], axis=axis) * p.w[:, t].reshape(shape)
            acc = term if acc is None else acc + term
        y = acc
    masks = [(a, p.outside) for a, p in plans.items() if p.outside is not None and p.outside.any()]
    if masks:
        if not interpolated and x.dtype.kind == "f":
            y = y.astype(np.float64)
            interpolated = True
        full = np.zeros(y.shape, dtype=bool)
        for a, m in masks:
            shape = [1] * y.ndim
            shape[a] = -1
            full |= m.reshape(shape)
        y = np.where(full, extrapolation, y)
    if interpolated and x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        y = np.clip(np.floor(y + 0.5), info.min, info.max)  # round half up, like image libraries
    return contiguous(y.astype(x.dtype, copy=False))


def _integer_repeats(shape: tuple, plans: dict[int, AxisPlan]) -> dict[int, int] | None:
    """{axis: k} when every planned axis is a nearest resize that repeats each input element k
    times in order (a nearest upsample by an integer factor: idx[o] = o // k), else None."""
    reps = {}
    for a, p in plans.items():
        n, out = shape[a], p.idx.shape[0]
        if p.w is not None or p.outside is not None or n == 0 or out % n:
            return None
        k = out // n
        if not np.array_equal(p.idx[:, 0], np.arange(out) // k):
            return None
        reps[a] = k
    return reps or None


def _repeat(x: np.ndarray, reps: dict[int, int]) -> np.ndarray:
    """x with each element repeated reps[a] times along axis a. numpy's take along an axis
    gathers element by element (a 2x upsample of 256x10x10 took ~0.2 ms), and a broadcast copy
    is slow when its innermost run is short (2 elements: ~1.4 ns an element). So: np.repeat for
    the outer axes (runs of whole rows); the last axis, where np.repeat copies 4-byte runs, as
    64-bit pairs for a factor of 2 on 4-byte types (v * (2^32 + 1) = (v, v)), else a broadcast.
    YOLOv8's 2x upsample of 256x10x10: 140 -> ~25 us (onnxruntime 16)."""
    last = x.ndim - 1
    k = reps.get(last, 1)
    if k == 2 and x.dtype.itemsize == 4:
        pairs = np.ascontiguousarray(x).view(np.uint32).astype(np.uint64)
        pairs *= np.uint64(0x100000001)
        x = pairs.view(x.dtype).reshape(x.shape[:-1] + (2 * x.shape[-1],))
    elif k != 1:
        y = np.empty(x.shape[:-1] + (x.shape[-1], k), dtype=x.dtype)
        y[...] = x[..., None]
        x = y.reshape(x.shape[:-1] + (k * x.shape[-1],))
    for a in sorted(reps):
        if a != last and reps[a] != 1:
            x = np.repeat(x, reps[a], axis=a)
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)


def _round_half_up(v: float) -> int:
    return int(np.floor(v + 0.5))


def check_resize(k: Kernel, x: np.ndarray, axes: list[int], out_sizes: list[int], mode: str) -> None:
    """Refuse, before planning anything, negative sizes and outputs (or the float64
    intermediates of an interpolating mode, one per resized axis) above the session's limit."""
    if len(out_sizes) != len(axes):
        raise bad_data(k, f"{len(axes)} axes resized but {len(out_sizes)} sizes given")
    if any(o < 0 for o in out_sizes):
        raise bad_data(k, f"output sizes {out_sizes} have a negative entry")
    work = x.dtype if mode == "nearest" else np.dtype(np.float64)
    shape = list(x.shape)
    for a, o in zip(axes, out_sizes):
        shape[a] = o
        check_size(k, shape, work)
    check_size(k, shape, x.dtype)


def _scaled_len(n: int, scale: float, extent: float = 1.0) -> int:
    """floor(n * extent * scale) in float32, so 10 * 0.7f gives 7 as in ONNX Runtime."""
    return int(np.floor(np.float32(n) * np.float32(extent) * np.float32(scale)))


@kernel("Resize")
class Resize(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        v = node.since_version
        self.mode = self.attr("mode", "nearest")
        if v < 11:
            # Resize-10 follows Upsample: asymmetric coordinates, "simple" nearest rounding.
            self.coord_mode, self.nearest_mode = "asymmetric", "simple"
        else:
            self.coord_mode = self.attr("coordinate_transformation_mode", "half_pixel")
            self.nearest_mode = self.attr("nearest_mode", "round_prefer_floor")
        self.cubic_a = float(self.attr("cubic_coeff_a", -0.75))
        self.exclude_outside = bool(self.attr("exclude_outside", 0))
        self.extrapolation = float(self.attr("extrapolation_value", 0.0))
        self.antialias = bool(self.attr("antialias", 0))
        self.axes = self.attr("axes")
        self.policy = self.attr("keep_aspect_ratio_policy", "stretch")
        self._sizes_constant = all(ctx.constant_input(i) is not None
                                   for i in range(1, len(node.inputs)) if node.inputs[i])

    def compute(self, x, *rest):
        plans, repeats = self._planned(x, rest)
        if repeats is not None:
            return _repeat(x, repeats)
        return apply_plans(x, plans, self.extrapolation)

    def _planned(self, x, rest) -> tuple:
        """(per-axis plans, integer repeats or None) for x: checked and computed once per input
        shape and sizes, kept on the kernel; with roi, scales and sizes all session constants the
        input shape alone finds them."""
        cached = self.__dict__.get("_plans")
        if self._sizes_constant and cached is not None and cached[0][:2] == (x.shape, x.dtype):
            return cached[1]
        if self.node.since_version < 11:
            roi, scales, sizes = None, rest[0] if rest else None, None
        else:
            rest = list(rest) + [None] * (3 - len(rest))
            roi, scales, sizes = rest[:3]
        r = x.ndim
        axes = [norm_axis(a, r) for a in self.axes] if self.axes is not None else list(range(r))
        n = len(axes)
        roi_v = np.asarray(roi, dtype=np.float64).reshape(-1) if roi is not None else np.zeros(0)
        rois = [(roi_v[k], roi_v[k + n]) if roi_v.size == 2 * n else (0.0, 1.0) for k in range(n)]
        if sizes is not None and np.asarray(sizes).size:
            req = host_ints(sizes)
            if len(req) != n or any(o < 0 for o in req):
                raise bad_data(self, f"sizes {req} must be {n} non-negative sizes")
            if any(x.shape[a] == 0 for a in axes):
                raise bad_data(self, f"cannot resize an empty axis of input shape {list(x.shape)}")
            if self.policy == "stretch":
                out_sizes = req
                scl = [o / x.shape[a] for o, a in zip(out_sizes, axes)]
            else:
                ratios = [o / x.shape[a] for o, a in zip(req, axes)]
                s = min(ratios) if self.policy == "not_larger" else max(ratios)
                scl = [s] * n
                out_sizes = [_round_half_up(s * x.shape[a]) for a in axes]
        elif scales is not None and np.asarray(scales).size:
            scl = [float(v) for v in np.asarray(scales, dtype=np.float32).reshape(-1)]
            if len(scl) != n or any(not np.isfinite(sc) or sc <= 0 for sc in scl):
                raise bad_data(self, f"scales {scl} must be {n} finite positive values")
            crop = self.coord_mode == "tf_crop_and_resize"
            with np.errstate(over="ignore", invalid="ignore"):
                lens = [np.floor(np.float32(x.shape[a]) * np.float32((e - s) if crop else 1.0) * np.float32(sc))
                        for a, sc, (s, e) in zip(axes, scl, rois)]
            if not all(np.isfinite(v) for v in lens):
                raise bad_data(self, f"scales {scl} give no finite output size")
            out_sizes = [int(v) for v in lens]
        else:
            raise bad_data(self, "one of 'scales' or 'sizes' must be given")
        key = (x.shape, x.dtype, tuple(axes), tuple(out_sizes), tuple(scl), tuple(rois))
        if cached is not None and cached[0] == key:
            return cached[1]
        check_resize(self, x, axes, out_sizes, self.mode)
        plans = {}
        for a, o, sc, rr in zip(axes, out_sizes, scl, rois):
            if o == x.shape[a] and sc == 1.0 and self.coord_mode not in (
                    "tf_crop_and_resize", "tf_half_pixel_for_nearest"):
                continue  # identity axis
            plans[a] = plan_axis(x.shape[a], o, sc, rr, self.mode, self.coord_mode,
                                 self.nearest_mode, self.cubic_a, self.exclude_outside,
                                 self.antialias)
        planned = (plans, _integer_repeats(x.shape, plans))
        self._plans = (key, planned)
        return planned


@kernel("Upsample")
class Upsample(Kernel):
    """Deprecated Resize ancestor: asymmetric coordinates, nearest or (bi)linear."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.mode = self.attr("mode", "nearest")
        if self.mode == "bilinear":
            self.mode = "linear"
        if node.since_version == 1:
            self.scales = [1.0, 1.0, float(self.attr("height_scale")), float(self.attr("width_scale"))]
        else:
            self.scales = self.attr("scales")

    def compute(self, x, scales=None):
        scl = [float(v) for v in np.asarray(scales, dtype=np.float32).reshape(-1)] \
            if scales is not None else list(self.scales)
        if len(scl) != x.ndim or any(not np.isfinite(sc) or sc <= 0 for sc in scl):
            raise bad_data(self, f"scales {scl} must be {x.ndim} finite positive values")
        with np.errstate(over="ignore"):
            lens = [np.floor(np.float32(d) * np.float32(sc)) for d, sc in zip(x.shape, scl)]
        if not all(np.isfinite(v) for v in lens):
            raise bad_data(self, f"scales {scl} give no finite output size")
        check_resize(self, x, list(range(x.ndim)), [int(v) for v in lens], self.mode)
        plans = {}
        for a, sc in enumerate(scl):
            if sc == 1.0:
                continue
            o = _scaled_len(x.shape[a], sc)
            plans[a] = plan_axis(x.shape[a], o, sc, (0.0, 1.0), self.mode, "asymmetric",
                                 "simple", -0.75, False, False)
        return apply_plans(x, plans, 0.0)


@kernel("CenterCropPad")
class CenterCropPad(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axes = self.attr("axes")

    def compute(self, x, shape):
        target = host_ints(shape)
        axes = [norm_axis(a, x.ndim) for a in self.axes] if self.axes is not None \
            else list(range(x.ndim))
        if len(target) != len(axes) or any(t < 0 for t in target):
            raise bad_data(self, f"shape {target} must be {len(axes)} non-negative sizes")
        out = list(x.shape)
        for a, t in zip(axes, target):
            out[a] = t
        check_size(self, out, x.dtype)
        pads = [0] * (2 * x.ndim)
        for a, t in zip(axes, target):
            diff = t - x.shape[a]
            if diff >= 0:  # pad: the odd extra pixel goes to the end
                pads[a], pads[a + x.ndim] = diff // 2, diff - diff // 2
            else:  # crop: window start rounded down
                start = (-diff) // 2
                pads[a], pads[a + x.ndim] = -start, -((-diff) - start)
        return pad_array(x, pads, "constant", 0)

"""Shape and layout ops: Concat, Reshape, Flatten, (Un)Squeeze, Transpose, Expand, Tile, Shape, Size,
Identity, Dropout, DepthToSpace, SpaceToDepth, Split, Slice, Pad, Crop, ReverseSequence.

Shape/axes/size inputs are small int tensors read on the host."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ep_core.errors import Fail
from ep_core.kernel import Kernel
from ep_core.types import tensor_shape
from ep_cpu.registry import kernel


def host_ints(x) -> list[int]:
    """A shape/axes/pads input as a list of Python ints."""
    return [int(v) for v in np.asarray(x).reshape(-1)]


def constant_ints(k: Kernel, i: int) -> list[int] | None:
    """Input `i` as Python ints when it is a session constant (parsed once in `__init__`), else None."""
    v = k.ctx.constant_input(i) if k.ctx is not None and i < len(k.node.inputs) and k.node.inputs[i] else None
    if v is None:
        return None
    try:
        return host_ints(v)
    except (TypeError, ValueError):   # not ints: the run-time path reports it
        return None


def bad_data(k: Kernel, message: str) -> Fail:
    """The typed error for input data a kernel cannot accept (a shape, count or size it is given
    at run time), naming its node: Fail, as every kernel failure at run time (onnxruntime's
    RUNTIME_EXCEPTION), never a bare ValueError."""
    return Fail(f"{k.node.describe()}: {message}")


def check_size(k: Kernel, shape, dtype) -> None:
    """Refuse, before allocating, an output whose size comes from input data: a negative dim
    (Fail) or more than SessionOptions.max_tensor_bytes (ResourceLimit)."""
    shape = [int(d) for d in shape]
    if any(d < 0 for d in shape):
        raise bad_data(k, f"output shape {shape} has a negative dim")
    ctx = k.ctx
    if ctx is not None:
        limit = int(getattr(ctx.session_options, "max_tensor_bytes", 0) or 0)
        if limit and not ctx.max_tensor_bytes:   # a context made without it (constant folding)
            ctx = dataclasses.replace(ctx, max_tensor_bytes=limit)
        ctx.check_output_size(k.node, shape, dtype)


def contiguous(x: np.ndarray) -> np.ndarray:
    """C-contiguous array, keeping 0-d shapes (np.ascontiguousarray turns them into 1-d)."""
    return np.asarray(x, order="C")


def norm_axis(axis: int, rank: int) -> int:
    """Resolve a possibly negative axis against `rank`, checking the range."""
    a = axis + rank if axis < 0 else axis
    if not 0 <= a < max(rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return a


@kernel("Concat")
class Concat(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = self.attr("axis", 1)  # opset 1 defaults to 1; later versions require it
        # Every input declared with one dtype and input 0 with its rank: the axis is known and
        # no dtype fix-up is needed (Concat has no optional inputs).
        dts, types = node.input_dtypes, node.input_types
        shape = tensor_shape(types[0]) if types else None
        if shape and dts and dts[0] is not None and all(d is not None and d == dts[0] for d in dts):
            try:
                axis = norm_axis(self.axis, len(shape))
            except ValueError:
                return   # the run-time path reports it
            concatenate = np.concatenate

            def concat(*xs):
                return concatenate(xs, axis=axis)
            self.compute = concat

    def compute(self, *xs):
        xs = [x for x in xs if x is not None]
        axis = norm_axis(self.axis, xs[0].ndim)
        return np.concatenate(xs, axis=axis).astype(xs[0].dtype, copy=False)


def _reshape_target(k: Kernel, shape_in: tuple, shape: list[int], allowzero: bool) -> list[int]:
    """ONNX reshape rules: 0 copies the input dim (unless allowzero), one -1 is inferred; any
    other negative entry, or a shape that does not hold the input's elements, is refused."""
    bad = [s for s in shape if s < -1]
    if bad:
        raise bad_data(k, f"shape {shape} has an entry below -1 ({bad[0]})")
    if shape.count(-1) > 1:
        raise bad_data(k, f"shape {shape} has more than one -1")
    if allowzero and -1 in shape and 0 in shape:
        raise bad_data(k, f"shape {shape} has both 0 and -1 while allowzero=1")
    out = []
    for i, s in enumerate(shape):
        if s == 0 and not allowzero:
            if i >= len(shape_in):
                raise bad_data(k, f"shape {shape} copies dim {i} (0) of a rank-{len(shape_in)} input")
            out.append(shape_in[i])
        else:
            out.append(s)
    total = math.prod(shape_in)
    if -1 in out:
        known = math.prod([s for s in out if s != -1])
        if known == 0 or total % known:
            raise bad_data(k, f"cannot reshape input of shape {list(shape_in)} to {shape}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise bad_data(k, f"cannot reshape input of shape {list(shape_in)} ({total} elements) to {shape}")
    return out


@kernel("Reshape")
class Reshape(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.allowzero = bool(self.attr("allowzero", 0))
        self.shape_attr = self.attr("shape")  # opset 1
        self.const_shape = constant_ints(self, 1)

    def compute(self, x, shape=None):
        if self.const_shape is not None:
            known = self.__dict__.get("_shapes")   # (input shape, output shape) of the last run
            if known is not None and known[0] == x.shape:
                return x.reshape(known[1])
            out = _reshape_target(self, x.shape, list(self.const_shape), self.allowzero)
            self._shapes = (x.shape, out)
            return x.reshape(out)
        target = host_ints(shape) if shape is not None else list(self.shape_attr or [])
        return x.reshape(_reshape_target(self, x.shape, target, self.allowzero))


@kernel("Flatten")
class Flatten(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = self.attr("axis", 1)

    def compute(self, x):
        axis = self.axis + x.ndim if self.axis < 0 else self.axis
        if not 0 <= axis <= x.ndim:
            raise ValueError(f"Flatten axis {self.axis} out of range")
        # math.prod of the shape's ints: np.prod took 3-5 us, ~40 right after a model's
        # weights streamed through the caches
        return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@kernel("Squeeze")
class Squeeze(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axes = self.attr("axes")  # opsets 1/11; an input from 13
        self.const_axes = constant_ints(self, 1)

    def compute(self, x, axes=None):
        if self.const_axes is not None:
            ax = self.const_axes
        else:
            ax = host_ints(axes) if axes is not None else self.axes
        if ax is None:
            return x.reshape([d for d in x.shape if d != 1])
        ax = sorted({norm_axis(a, x.ndim) for a in ax})
        for a in ax:
            if x.shape[a] != 1:
                raise ValueError(f"Squeeze: dimension {a} has size {x.shape[a]}, not 1")
        return x.reshape([d for k, d in enumerate(x.shape) if k not in ax])


@kernel("Unsqueeze")
class Unsqueeze(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axes = self.attr("axes")
        self.const_axes = constant_ints(self, 1)

    def compute(self, x, axes=None):
        if self.const_axes is not None:
            known = self.__dict__.get("_shapes")   # (input shape, output shape) of the last run
            if known is not None and known[0] == x.shape:
                return x.reshape(known[1])
            ax = self.const_axes
        else:
            ax = host_ints(axes) if axes is not None else list(self.axes or [])
        rank = x.ndim + len(ax)
        ax = sorted(norm_axis(a, rank) for a in ax)
        if len(set(ax)) != len(ax):
            raise ValueError("Unsqueeze: repeated axes")
        shape = list(x.shape)
        for a in ax:
            shape.insert(a, 1)
        if self.const_axes is not None:
            self._shapes = (x.shape, tuple(shape))
        return x.reshape(shape)


@kernel("Transpose")
class Transpose(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.perm = self.attr("perm")

    def compute(self, x):
        perm = self.perm if self.perm is not None else list(range(x.ndim))[::-1]
        return contiguous(np.transpose(x, perm))


@kernel("Expand")
class Expand(Kernel):
    def compute(self, x, shape):
        dims = host_ints(shape)
        if any(d < 0 for d in dims):
            raise bad_data(self, f"shape {dims} has a negative dim")
        try:
            target = np.broadcast_shapes(x.shape, tuple(dims))
        except ValueError:
            raise bad_data(self, f"input of shape {list(x.shape)} does not broadcast to {dims}") from None
        check_size(self, target, x.dtype)
        return np.array(np.broadcast_to(x, target))  # a writable copy, never the read-only view


@kernel("Tile")
class Tile(Kernel):
    def compute(self, x, repeats, axis=None):
        if axis is not None:  # opset 1: a scalar count of tiles along one axis
            reps = [1] * x.ndim
            reps[norm_axis(host_ints(axis)[0], x.ndim)] = host_ints(repeats)[0]
        else:
            reps = host_ints(repeats)
        if len(reps) != x.ndim or any(r < 0 for r in reps):
            raise bad_data(self, f"repeats {reps} must be {x.ndim} non-negative counts")
        shape = [d * r for d, r in zip(x.shape, reps)]
        check_size(self, shape, x.dtype)
        return np.tile(x, reps).astype(x.dtype, copy=False).reshape(shape)


@kernel("Shape")
class Shape(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.start = self.attr("start", 0)
        self.end = self.attr("end")

    def compute(self, x):
        r = x.ndim
        start = min(max(self.start + r if self.start < 0 else self.start, 0), r)
        end = r if self.end is None else self.end
        end = min(max(end + r if end < 0 else end, 0), r)
        return np.array(x.shape[start:end], dtype=np.int64)


@kernel("Size")
class Size(Kernel):
    def compute(self, x):
        return np.array(x.size, dtype=np.int64)


@kernel("Identity")
class Identity(Kernel):
    """Tensors, sequences (lists) and optionals (None) pass through unchanged."""

    def compute(self, x):
        # A sequence is copied so consumers that build new sequences never alias the source list.
        return list(x) if isinstance(x, list) else x


@kernel("Dropout")
class Dropout(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.ratio = float(self.attr("ratio", 0.5))
        self.seed = self.attr("seed")
        self.is_test = bool(self.attr("is_test", 0))

    def compute(self, x, ratio=None, training_mode=None):
        v = self.node.since_version
        # Before opset 7 the mask has the data's type; from 10 it is bool.
        mask_dtype = np.bool_ if v >= 10 else x.dtype
        training = training_mode is not None and bool(np.asarray(training_mode))
        r = float(np.asarray(ratio)) if ratio is not None else self.ratio
        if v < 12 or not training or r == 0.0:
            return x.copy(), np.ones(x.shape, dtype=mask_dtype)
        # A seeded legacy RandomState makes masks reproducible for a given `seed` attribute.
        rng = np.random.RandomState(self.seed) if self.seed is not None else np.random.RandomState()
        keep = rng.uniform(0.0, 1.0, x.shape) >= r
        scale = 1.0 / (1.0 - r)
        y = (x * keep * scale).astype(x.dtype)
        return y, keep.astype(mask_dtype)


@kernel("DepthToSpace")
class DepthToSpace(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.bs = self.attr("blocksize")
        self.mode = self.attr("mode", "DCR")

    def compute(self, x):
        b, c, h, w = x.shape
        bs = self.bs
        if self.mode == "DCR":
            t = x.reshape(b, bs, bs, c // (bs * bs), h, w).transpose(0, 3, 4, 1, 5, 2)
        else:
            t = x.reshape(b, c // (bs * bs), bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
        return contiguous(t).reshape(b, c // (bs * bs), h * bs, w * bs)


@kernel("SpaceToDepth")
class SpaceToDepth(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.bs = self.attr("blocksize")
        self.mode = self.attr("mode", "DCR")  # opset 28 adds CRD

    def compute(self, x):
        b, c, h, w = x.shape
        bs = self.bs
        perm = (0, 3, 5, 1, 2, 4) if self.mode == "DCR" else (0, 1, 3, 5, 2, 4)
        t = x.reshape(b, c, h // bs, bs, w // bs, bs).transpose(perm)
        return contiguous(t).reshape(b, c * bs * bs, h // bs, w // bs)


@kernel("Split")
class Split(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = self.attr("axis", 0)
        self.split = self.attr("split")
        self.num_outputs = self.attr("num_outputs")

    def compute(self, x, split=None):
        axis = norm_axis(self.axis, x.ndim)
        dim = x.shape[axis]
        n = len(self.node.outputs)
        if split is not None and np.asarray(split).size > 0:
            sizes = host_ints(split)
        elif self.split is not None:
            sizes = list(self.split)
        elif self.num_outputs is not None:
            # opset 18: chunks of ceil(dim / n); the last may be smaller
            chunk = -(-dim // self.num_outputs)
            sizes = [min(chunk, max(dim - k * chunk, 0)) for k in range(self.num_outputs)]
        else:
            if dim % n:
                raise ValueError(f"Split: dimension {dim} not divisible into {n} outputs")
            sizes = [dim // n] * n
        if sum(sizes) != dim or any(z < 0 for z in sizes):
            raise bad_data(self, f"split sizes {sizes} are not non-negative sizes summing to dimension {dim}")
        index: list = [slice(None)] * x.ndim
        parts, start = [], 0
        for size in sizes:   # plain slicing: np.split's Python machinery cost ~10 us per call
            index[axis] = slice(start, start + size)
            parts.append(contiguous(x[tuple(index)]))
            start += size
        return tuple(parts)


def slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX Slice clamping for one axis as a Python slice (negative steps included)."""
    if step == 0:
        raise ValueError("Slice: step cannot be 0")
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start = min(max(start, 0), dim)
        end = min(max(end, 0), dim)
        return slice(start, end, step)
    start = min(max(start, 0), dim - 1)
    end = min(max(end, -1), dim - 1)
    # end == -1 means "run through index 0", which a Python slice spells as None.
    return slice(start, None if end == -1 else end, step)


@kernel("Slice")
class Slice(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.starts = self.attr("starts")  # opset 1 attributes
        self.ends = self.attr("ends")
        self.axes = self.attr("axes")
        # starts/ends (and axes/steps where given) constant: parsed once
        n = len(node.inputs)
        parsed = [constant_ints(self, i) for i in range(1, 5)]
        self.const_args = None
        if n >= 3 and all(parsed[i] is not None or i + 1 >= n or not node.inputs[i + 1] for i in range(4)):
            self.const_args = tuple(parsed)

    def compute(self, x, starts=None, ends=None, axes=None, steps=None):
        if self.const_args is not None:
            # Constant bounds: the index for this input shape is worked out once.
            cached = self.__dict__.get("_index")
            if cached is not None and cached[0] == x.shape:
                return contiguous(x[cached[1]])
            index = self._index_for(x, *self.const_args)
            self._index = (x.shape, index)
            return contiguous(x[index])
        if starts is None:
            st, en, ax, sp = list(self.starts), list(self.ends), self.axes, None
        else:
            st, en = host_ints(starts), host_ints(ends)
            ax = host_ints(axes) if axes is not None else None
            sp = host_ints(steps) if steps is not None else None
        return contiguous(x[self._index_for(x, st, en, ax, sp)])

    def _index_for(self, x, st, en, ax, sp) -> tuple:
        if ax is None:
            ax = list(range(len(st)))
        if sp is None:
            sp = [1] * len(st)
        if not len(st) == len(en) == len(ax) == len(sp):
            raise bad_data(self, f"starts {st}, ends {en}, axes {ax} and steps {sp} differ in length")
        if 0 in sp:
            raise bad_data(self, f"steps {sp} has a 0")
        index = [slice(None)] * x.ndim
        seen = set()
        for s, e, a, p in zip(st, en, ax, sp):
            try:
                a = norm_axis(a, x.ndim)
            except ValueError as err:
                raise bad_data(self, str(err)) from None
            if a in seen:
                raise bad_data(self, f"axes {ax} repeat axis {a}")
            seen.add(a)
            index[a] = slice_bounds(s, e, p, x.shape[a])
        return tuple(index)


def padded_shape(k: Kernel, shape: tuple, pads: list[int]) -> list[int]:
    """The output shape of padding `shape` by ONNX pads (refused where it is not a shape)."""
    r = len(shape)
    if len(pads) != 2 * r:
        raise bad_data(k, f"pads {pads} must hold 2 x rank = {2 * r} values for an input of shape {list(shape)}")
    out = [d + b + e for d, b, e in zip(shape, pads[:r], pads[r:])]
    if any(d < 0 for d in out):
        raise bad_data(k, f"pads {pads} crop an input of shape {list(shape)} below zero size")
    return out


def pad_array(x: np.ndarray, pads: list[int], mode: str, value) -> np.ndarray:
    """Pad with ONNX pads [x1_begin, x2_begin, ..., x1_end, ...]; negative pads crop."""
    r = x.ndim
    begins, ends = pads[:r], pads[r:]
    crop = tuple(slice(max(-b, 0), x.shape[k] - max(-e, 0)) for k, (b, e) in enumerate(zip(begins, ends)))
    x = x[crop]
    width = [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends)]
    if not any(b or e for b, e in width):
        return contiguous(x)
    if mode == "constant":
        if x.dtype == object:
            out = np.full([d + b + e for d, (b, e) in zip(x.shape, width)], value, dtype=object)
            out[tuple(slice(b, b + d) for d, (b, _) in zip(x.shape, width))] = x
            return out
        return np.pad(x, width, mode="constant", constant_values=np.asarray(value).astype(x.dtype))
    if x.size == 0:
        raise ValueError(f"Pad: mode '{mode}' needs a non-empty input")
    np_mode = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}.get(mode)
    if np_mode is None:
        raise ValueError(f"Pad: unsupported mode '{mode}'")
    return np.pad(x, width, mode=np_mode)


@kernel("Pad")
class Pad(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.mode = self.attr("mode", "constant")
        self.pads = self.attr("pads", self.attr("paddings"))  # opset 2 / opset 1 names
        self.value = self.attr("value", 0.0)

    def compute(self, x, pads=None, constant_value=None, axes=None):
        if pads is None:
            full = list(self.pads)
            value = self.value
        else:
            p = host_ints(pads)
            value = np.asarray(constant_value).reshape(-1)[0] if constant_value is not None \
                and np.asarray(constant_value).size else 0
            if axes is not None:
                ax = [norm_axis(a, x.ndim) for a in host_ints(axes)]
                if len(p) != 2 * len(ax) or len(set(ax)) != len(ax):
                    raise bad_data(self, f"pads {p} must hold 2 values per axis of {ax} (no repeats)")
                full = [0] * (2 * x.ndim)
                for k, a in enumerate(ax):
                    full[a] = p[k]
                    full[a + x.ndim] = p[k + len(ax)]
            else:
                full = p
        if x.dtype == object and value == 0:
            value = ""
        check_size(self, padded_shape(self, x.shape, full), x.dtype)
        return pad_array(x, full, self.mode, value)


@kernel("Crop")
class Crop(Kernel):
    """Old experimental op: NCHW crop by `border` (left, top, right, bottom) or to `scale` (h, w)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.border = list(self.attr("border", [0, 0, 0, 0]))
        self.scale = self.attr("scale")

    def compute(self, x):
        left, top, right, bottom = self.border
        h, w = x.shape[2], x.shape[3]
        if self.scale:
            oh, ow = self.scale
            return contiguous(x[:, :, top:top + oh, left:left + ow])
        return contiguous(x[:, :, top:h - bottom, left:w - right])


@kernel("ReverseSequence")
class ReverseSequence(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.batch_axis = self.attr("batch_axis", 1)
        self.time_axis = self.attr("time_axis", 0)

    def compute(self, x, sequence_lens):
        lens = host_ints(sequence_lens)
        ba, ta = norm_axis(self.batch_axis, x.ndim), norm_axis(self.time_axis, x.ndim)
        out = x.copy()
        for b, n in enumerate(lens):
            src = [slice(None)] * x.ndim
            src[ba] = b
            src[ta] = slice(n - 1, None, -1) if n > 0 else slice(0, 0)
            dst = list(src)
            dst[ta] = slice(0, n)
            out[tuple(dst)] = x[tuple(src)]
        return out

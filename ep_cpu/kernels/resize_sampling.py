"""Non-separable spatial sampling ops: GridSample, AffineGrid, RoiAlign, Col2Im."""
from __future__ import annotations

import itertools

import numpy as np

from ep_core.kernel import Kernel
from ep_cpu.kernels.resize import cubic_weights
from ep_cpu.kernels.tensor import bad_data, check_size, contiguous, host_ints
from ep_cpu.registry import kernel


def reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold coordinates into [lo, hi] by repeated reflection at the borders."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    below, above = x < lo, x > hi
    d = np.where(below, lo - x, np.where(above, x - hi, 0.0))
    n = np.floor(d / span)
    r = d - n * span
    even = (n % 2) == 0
    folded_low = np.where(even, lo + r, hi - r)
    folded_high = np.where(even, hi - r, lo + r)
    return np.where(below, folded_low, np.where(above, folded_high, x))


@kernel("GridSample")
class GridSample(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        mode = self.attr("mode", "bilinear" if node.since_version < 20 else "linear")
        # Opset 16 names: bilinear / bicubic.
        self.mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
        self.padding = self.attr("padding_mode", "zeros")
        self.align = bool(self.attr("align_corners", 0))

    def compute(self, x, grid):
        n, c = x.shape[:2]
        spatial = x.shape[2:]
        r = len(spatial)
        out_sp = grid.shape[1:-1]
        g = grid.astype(np.float64)
        coords, bounds = [], []
        for d, size in enumerate(spatial):
            gd = g[..., r - 1 - d]  # the grid's last component indexes the innermost axis
            if self.align:
                pos, lo, hi = (gd + 1) / 2 * (size - 1), 0.0, size - 1.0
            else:
                pos, lo, hi = ((gd + 1) * size - 1) / 2, -0.5, size - 0.5
            if self.mode == "nearest":
                pos = np.rint(pos)  # round half to even
            if self.padding == "border":
                pos = np.clip(pos, 0, size - 1)
            elif self.padding == "reflection":
                pos = reflect(pos, lo, hi)
            coords.append(pos)
            bounds.append((lo, hi))
        # Per spatial axis: list of (integer tap index, weight) arrays over (N, *out_sp).
        per_axis = []
        for pos in coords:
            if self.mode == "nearest":
                per_axis.append([(pos.astype(np.int64), np.ones_like(pos))])
                continue
            base = np.floor(pos)
            frac = pos - base
            offs = (0, 1) if self.mode == "linear" else (-1, 0, 1, 2)
            taps = []
            for o in offs:
                w = (1 - np.abs(frac - o)) if self.mode == "linear" else cubic_weights(frac - o, -0.75)
                taps.append(((base + o).astype(np.int64), w))
            per_axis.append(taps)
        xt = np.moveaxis(x, 1, -1).astype(np.float64)  # (N, *spatial, C)
        batch = np.arange(n).reshape((n,) + (1,) * len(out_sp))
        acc = np.zeros((n,) + tuple(out_sp) + (c,), dtype=np.float64)
        for combo in itertools.product(*per_axis):
            weight = np.ones(coords[0].shape)
            index = [batch]
            for d, (idx, w) in enumerate(combo):
                size = spatial[d]
                if self.padding == "zeros":
                    ok = (idx >= 0) & (idx < size)
                    w = np.where(ok, w, 0.0)
                    idx = np.clip(idx, 0, size - 1)
                elif self.padding == "border":
                    idx = np.clip(idx, 0, size - 1)
                else:
                    lo, hi = bounds[d]
                    idx = np.clip(reflect(idx.astype(np.float64), lo, hi).astype(np.int64), 0, size - 1)
                weight = weight * w
                index.append(idx)
            acc += xt[tuple(index)] * weight[..., None]
        return contiguous(np.moveaxis(acc, -1, 1)).astype(x.dtype)


@kernel("AffineGrid")
class AffineGrid(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.align = bool(self.attr("align_corners", 0))

    def _axis(self, s: int) -> np.ndarray:
        if self.align:
            return np.linspace(-1.0, 1.0, s) if s > 1 else np.zeros(1)
        return (np.arange(s, dtype=np.float64) * 2 + 1) / s - 1

    def compute(self, theta, size):
        dims = host_ints(size)
        if len(dims) not in (4, 5):
            raise bad_data(self, f"size {dims} must be (N, C, H, W) or (N, C, D, H, W)")
        n, spatial = dims[0], dims[2:]
        r = len(spatial)
        check_size(self, [n, *spatial, r], np.float64)   # the float64 grid before the cast
        axes = [self._axis(s) for s in spatial]
        mesh = np.meshgrid(*axes, indexing="ij")  # per spatial axis, shape spatial
        # Homogeneous points ordered (x, y, [z], 1): x runs along the innermost axis.
        pts = np.stack([mesh[r - 1 - k] for k in range(r)] + [np.ones(spatial)], axis=-1)
        th = theta.astype(np.float64).reshape(n, r, r + 1)
        out = np.einsum("...j,nkj->n...k", pts, th)
        return out.astype(theta.dtype)


def _bilinear_taps(pos: np.ndarray, size: int):
    """RoiAlign's clamped bilinear taps per coordinate: (low, high, w_low, w_high, valid)."""
    valid = (pos >= -1.0) & (pos <= size)
    p = np.maximum(pos, 0.0)
    low = np.floor(p).astype(np.int64)
    at_end = low >= size - 1
    low = np.where(at_end, size - 1, low)
    high = np.where(at_end, size - 1, low + 1)
    p = np.where(at_end, low.astype(np.float64), p)
    frac = p - low
    return low, high, 1.0 - frac, frac, valid


@kernel("RoiAlign")
class RoiAlign(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.mode = self.attr("mode", "avg")
        self.oh = self.attr("output_height", 1)
        self.ow = self.attr("output_width", 1)
        self.ratio = self.attr("sampling_ratio", 0)
        self.scale = float(self.attr("spatial_scale", 1.0))
        # Opset 10 had no such attribute and behaved as output_half_pixel.
        default = "half_pixel" if node.since_version >= 16 else "output_half_pixel"
        self.half_pixel = self.attr("coordinate_transformation_mode", default) == "half_pixel"

    def compute(self, x, rois, batch_indices):
        _, c, h, w = x.shape
        rois = rois.astype(np.float64)
        bidx = host_ints(batch_indices)
        out = np.zeros((rois.shape[0], c, self.oh, self.ow), dtype=np.float64)
        offset = 0.5 if self.half_pixel else 0.0
        for k in range(rois.shape[0]):
            x1, y1, x2, y2 = rois[k] * self.scale - offset
            rw, rh = x2 - x1, y2 - y1
            if not self.half_pixel:
                rw, rh = max(rw, 1.0), max(rh, 1.0)
            bh, bw = rh / self.oh, rw / self.ow
            gh = self.ratio if self.ratio > 0 else int(np.ceil(rh / self.oh))
            gw = self.ratio if self.ratio > 0 else int(np.ceil(rw / self.ow))
            ys = (y1 + np.arange(self.oh)[:, None] * bh + (np.arange(gh)[None, :] + 0.5) * bh / gh).reshape(-1)
            xs = (x1 + np.arange(self.ow)[:, None] * bw + (np.arange(gw)[None, :] + 0.5) * bw / gw).reshape(-1)
            ylo, yhi, wyl, wyh, vy = _bilinear_taps(ys, h)
            xlo, xhi, wxl, wxh, vx = _bilinear_taps(xs, w)
            img = x[bidx[k]].astype(np.float64)
            valid = (vy[:, None] & vx[None, :]).astype(np.float64)
            corners = []
            for yi, wy in ((ylo, wyl), (yhi, wyh)):
                for xi, wx in ((xlo, wxl), (xhi, wxh)):
                    wgt = wy[:, None] * wx[None, :] * valid
                    corners.append(img[:, yi[:, None], xi[None, :]] * wgt)
            if self.mode == "avg":
                s = sum(corners).reshape(c, self.oh, gh, self.ow, gw)
                out[k] = s.sum(axis=(2, 4)) / max(gh * gw, 1)
            else:
                # Max pooling takes the largest weighted corner contribution per sample.
                m = np.maximum.reduce(corners).reshape(c, self.oh, gh, self.ow, gw)
                out[k] = m.max(axis=(2, 4)) if gh * gw else 0.0
        return out.astype(x.dtype)


@kernel("Col2Im")
class Col2Im(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.dilations = self.attr("dilations")
        self.pads = self.attr("pads")
        self.strides = self.attr("strides")

    def compute(self, x, image_shape, block_shape):
        img = host_ints(image_shape)
        blk = host_ints(block_shape)
        r = len(img)
        dil = list(self.dilations or [1] * r)
        pads = list(self.pads or [0] * (2 * r))
        st = list(self.strides or [1] * r)
        if len(blk) != r or any(v <= 0 for v in img + blk):
            raise bad_data(self, f"image_shape {img} and block_shape {blk} must be positive sizes of one rank")
        n = x.shape[0]
        kprod = int(np.prod(blk))
        if x.ndim != 3 or x.shape[1] % kprod:
            raise bad_data(self, f"input of shape {list(x.shape)} does not hold blocks of {blk}")
        c = x.shape[1] // kprod
        padded = [img[d] + pads[d] + pads[d + r] for d in range(r)]
        check_size(self, [n, c] + padded, x.dtype)
        counts = [(padded[d] - dil[d] * (blk[d] - 1) - 1) // st[d] + 1 for d in range(r)]
        if int(np.prod(counts)) != x.shape[2]:
            raise ValueError(f"Col2Im: {x.shape[2]} blocks do not match the {counts} sliding positions")
        cols = x.reshape([n, c] + blk + counts)
        out = np.zeros([n, c] + padded, dtype=x.dtype)
        for koff in itertools.product(*[range(b) for b in blk]):
            window = tuple(slice(koff[d] * dil[d], koff[d] * dil[d] + st[d] * (counts[d] - 1) + 1, st[d])
                           for d in range(r))
            out[(slice(None), slice(None)) + window] += cols[(slice(None), slice(None)) + koff]
        crop = tuple(slice(pads[d], pads[d] + img[d]) for d in range(r))
        return contiguous(out[(slice(None), slice(None)) + crop])

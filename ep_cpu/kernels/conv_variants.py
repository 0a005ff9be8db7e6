"""Convolutions beyond plain Conv: ConvTranspose (GEMM, then col2im as a scatter-add per kernel
offset), DeformConv (bilinear sampling at learned offsets, then one GEMM per group) and
CausalConvWithState (a depthwise causal conv that carries its past frames as state).
"""
from __future__ import annotations

import itertools

import numpy as np

from ep_core.kernel import Kernel
from ep_core.op_attributes import ConvAttributes, invalid
from ep_cpu.gemm import gemm
from ep_cpu.kernels.conv import compute_dtype
from ep_cpu.kernels.tensor import bad_data, check_size
from ep_cpu.registry import kernel


# ----------------------------------------------------------------------------- ConvTranspose

@kernel("ConvTranspose")
class ConvTranspose(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.conv = ConvAttributes.from_node(node)

    def compute(self, x, w, b=None):
        cdt = compute_dtype(x.dtype)
        xf, wf = x.astype(cdt, copy=False), w.astype(cdt, copy=False)
        n, c = x.shape[:2]
        nd = x.ndim - 2
        ins = list(x.shape[2:])
        group = self.conv.group
        ks, strides, dil, begin, out_shape, full = self.conv.transpose_geometry(ins, w.shape)
        mg = w.shape[1]
        m = mg * group
        cg = c // group
        kprod = int(np.prod(ks))
        iprod = int(np.prod(ins))
        if any(o < 0 for o in out_shape):
            raise bad_data(self, f"output shape {out_shape} has a negative dim")
        # The column buffer and the uncropped output come from attributes: refuse them up front.
        check_size(self, (n, group, mg * kprod, iprod), cdt)
        check_size(self, [n, m] + [max(full[i], begin[i] + out_shape[i]) + max(0, -begin[i])
                                   for i in range(nd)], cdt)
        # cols[n, g, mg*K, I] = W_g^T @ x_g: every input pixel's contribution to each kernel tap.
        wt = wf.reshape(group, cg, mg * kprod)
        xr = xf.reshape(n, group, cg, iprod)
        cols = np.empty((n, group, mg * kprod, iprod), dtype=cdt)
        for bi in range(n):
            for g in range(group):
                gemm(wt[g], xr[bi, g], trans_a=True, out=cols[bi, g])
        cols = cols.reshape(n, m, *ks, *ins)
        # col2im into a buffer covering the full (uncropped) output, offset so negative
        # padding (output larger than full) still fits.
        lo = [max(0, -bg) for bg in begin]
        bufshape = [max(full[i], begin[i] + out_shape[i]) + lo[i] for i in range(nd)]
        buf = np.zeros((n, m, *bufshape), dtype=cdt)
        for idx in itertools.product(*[range(kk) for kk in ks]):
            sl = tuple(slice(lo[i] + idx[i] * dil[i], lo[i] + idx[i] * dil[i] + strides[i] * (ins[i] - 1) + 1,
                             strides[i]) for i in range(nd))
            buf[(slice(None), slice(None)) + sl] += cols[(slice(None), slice(None)) + idx]
        crop = tuple(slice(lo[i] + begin[i], lo[i] + begin[i] + out_shape[i]) for i in range(nd))
        y = buf[(slice(None), slice(None)) + crop]
        if b is not None:
            y = y + b.astype(cdt).reshape((1, m) + (1,) * nd)
        return np.ascontiguousarray(y, dtype=x.dtype)


# ----------------------------------------------------------------------------- DeformConv

@kernel("DeformConv")
class DeformConv(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.conv = ConvAttributes.from_node(node)   # DeformConv has no auto_pad: NOTSET

    def compute(self, x, w, offset, b=None, mask=None):
        cdt = compute_dtype(x.dtype)
        xf = x.astype(cdt, copy=False)
        n, c = x.shape[:2]
        nd = x.ndim - 2
        ins = list(x.shape[2:])
        ks, strides, dil, begin, _, out = self.conv.geometry(ins, w.shape)
        group, og = self.conv.group, self.conv.offset_group
        kprod, oprod = int(np.prod(ks)), int(np.prod(out))
        # Base sampling position of every (kernel tap, output pixel) along each axis.
        grids = np.meshgrid(*[np.arange(kk) for kk in ks], *[np.arange(o) for o in out], indexing="ij")
        base = [(grids[nd + i] * strides[i] - begin[i] + grids[i] * dil[i]).reshape(kprod, oprod)
                for i in range(nd)]
        off = offset.astype(cdt).reshape(n, og, kprod, nd, oprod)
        msk = None if mask is None else mask.astype(cdt).reshape(n, og, kprod, oprod)
        cpg = c // og
        cols = np.empty((n, og, cpg, kprod, oprod), dtype=cdt)
        sstr = [int(np.prod(ins[i + 1:])) for i in range(nd)]
        xflat = xf.reshape(n, og, cpg, -1)
        nidx = np.arange(n)[:, None, None, None]
        cidx = np.arange(cpg)[None, :, None, None]
        for gi in range(og):
            pos = [base[i][None] + off[:, gi, :, i] for i in range(nd)]  # (N, K, O) each
            fl = [np.floor(p) for p in pos]
            acc = np.zeros((n, cpg, kprod, oprod), dtype=cdt)
            for corner in itertools.product((0, 1), repeat=nd):
                wgt = np.ones((n, kprod, oprod), dtype=cdt)
                lin = np.zeros((n, kprod, oprod), dtype=np.int64)
                ok = np.ones((n, kprod, oprod), dtype=bool)
                for i in range(nd):
                    ci = fl[i] + corner[i]
                    wgt *= 1 - np.abs(pos[i] - ci)
                    ok &= (ci >= 0) & (ci <= ins[i] - 1)
                    lin += np.clip(ci, 0, ins[i] - 1).astype(np.int64) * sstr[i]
                wgt = np.where(ok, wgt, 0)
                vals = xflat[:, gi][nidx, cidx, lin[:, None]]  # (N, cpg, K, O)
                acc += vals * wgt[:, None]
            if msk is not None:
                acc *= msk[:, gi][:, None]
            cols[:, gi] = acc
        m = w.shape[0]
        cg, mg = c // group, m // group
        cols = cols.reshape(n, group, cg * kprod, oprod)
        w2 = w.astype(cdt).reshape(group, mg, cg * kprod)
        y = np.empty((n, group, mg, oprod), dtype=cdt)
        for bi in range(n):
            for g in range(group):
                y[bi, g] = gemm(w2[g], cols[bi, g])
        y = y.reshape(n, m, *out)
        if b is not None:
            y = y + b.astype(cdt).reshape((1, m) + (1,) * nd)
        return np.ascontiguousarray(y, dtype=x.dtype)


# ----------------------------------------------------------------------------- CausalConvWithState

@kernel("CausalConvWithState")
class CausalConvWithState(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        act = str(self.attr("activation")).lower()
        if act not in ("none", "silu", "swish"):
            raise invalid(node, f"activation must be none, silu or swish, got {act!r}")
        self.silu = act != "none"

    def compute(self, x, w, bias=None, past_state=None):
        cdt = compute_dtype(x.dtype)
        n, c, length = x.shape
        k = w.shape[-1]
        if past_state is None or past_state.size == 0 and k > 1:
            past = np.zeros((n, c, k - 1), dtype=cdt)
        else:
            past = past_state.astype(cdt)
        seq = np.concatenate([past, x.astype(cdt)], axis=2)  # (N, C, k-1+L)
        wr = w.astype(cdt).reshape(c, k)
        y = np.zeros((n, c, length), dtype=cdt)
        for j in range(k):
            y += wr[:, j][None, :, None] * seq[:, :, j:j + length]
        if bias is not None:
            y += bias.astype(cdt)[None, :, None]
        if self.silu:
            y = y / (1 + np.exp(-y))
        present = seq[:, :, seq.shape[2] - (k - 1):] if k > 1 else np.zeros((n, c, 0), dtype=cdt)
        return y.astype(x.dtype), np.ascontiguousarray(present, dtype=x.dtype)

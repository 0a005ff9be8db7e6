"""Recurrent layers: RNN, GRU (linear_before_reset), LSTM (peepholes, input_forget), all layouts.

The input projection X @ W^T of every time step is one GEMM up front; only the recurrent
H @ R^T product runs per step. Variable `sequence_lens` are handled by masking (forward) and by
reversing each sequence inside its own length (reverse direction).

The common case (default activations, no clip or peepholes) takes a dense path: both directions
advance together, one batched H @ R^T per step, and the gates are updated in place with a
handful of ufunc calls (per-step numpy call overhead is most of the non-GEMM time of small-batch
recurrences); rows past their length just carry their state.
"""
from __future__ import annotations

import numpy as np

from ep_core.kernel import Kernel
from ep_core.types import tensor_shape
from ep_cpu.blas_threads import single_threaded_blas
from ep_cpu.gemm import gemm, get_num_threads, pack_b
from ep_cpu.gemm_epilogue import sigmoid
from ep_cpu import microkernel
from ep_cpu.kernels.rnn_jit import SMALL_BATCH, PackedRecurrent, recurrent_matmul, with_add
from ep_cpu.registry import kernel

# name -> (function(x, alpha, beta), default alpha, default beta, uses alpha, uses beta)
_ACTS = {
    "relu": (lambda x, a, b: np.maximum(x, 0), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "sigmoid": (lambda x, a, b: sigmoid(x), None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x >= a, x, 0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * (np.exp(x) - 1)), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: np.logaddexp(0, x), None, None),
}


def _activations(names, alphas, betas):
    """Bind activation functions to their alpha/beta, consumed in order by those that use them."""
    alphas, betas = list(alphas or []), list(betas or [])
    out = []
    for name in names:
        fn, da, db = _ACTS[name.lower()]
        a = alphas.pop(0) if da is not None and alphas else da
        b = betas.pop(0) if db is not None and betas else db
        out.append(lambda x, fn=fn, a=a, b=b: fn(x, a, b))
    return out



def _blas_matmul(h: np.ndarray, rt: np.ndarray, out: np.ndarray, add: np.ndarray | None = None) -> None:
    np.matmul(h, rt, out=out)
    if add is not None:
        out += add

class _Recurrent(Kernel):
    """Shared driver; subclasses define gates, default activations and `_step`."""
    n_gates = 1
    default_acts: tuple = ()

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.hidden = int(self.attr("hidden_size", 0)) or None
        self.direction = self.attr("direction", "forward")
        if self.direction == "foward":  # typo default of GRU-1
            self.direction = "forward"
        self.num_dir = 2 if self.direction == "bidirectional" else 1
        self.layout = int(self.attr("layout", 0))
        self.clip = self.attr("clip")
        self.input_forget = bool(self.attr("input_forget", 0))   # LSTM only
        names = self.attr("activations") or list(self.default_acts) * self.num_dir
        if len(names) == len(self.default_acts) and self.num_dir == 2:
            names = list(names) * 2
        self.act_names = [str(a).lower() for a in names]
        acts = _activations(names, self.attr("activation_alpha"), self.attr("activation_beta"))
        k = len(self.default_acts)
        self.acts = [acts[d * k:(d + 1) * k] for d in range(self.num_dir)]
        # Constant W, R, B (the usual case): convert, transpose and pack them once here, not in
        # every run (the per-run copies of a 2 x 1 MB R and its transpose cost milliseconds).
        self.prepared = None
        dts = node.input_dtypes
        w, r = self._constant_weights(ctx)
        b = ctx.constant_input(3) if len(node.inputs) > 3 and node.inputs[3] else None
        has_b = len(node.inputs) > 3 and bool(node.inputs[3])
        if (dts and dts[0] is not None and w is not None and r is not None
                and (b is not None or not has_b)):
            cdt = np.dtype(np.float64 if dts[0] == np.float64 else np.float32)
            self.prepared = (cdt, self._prepare(w, r, b, cdt))
        # The compiled H @ R^T for the dense path's small batches (compiled, or loaded from the
        # disk cache, here at session build rather than in the first run).
        # A batch of one is a GEMV, as fast in BLAS: the numba pass is not even compiled for it
        # (the microkernel's compiled time loop takes every batch).
        self.jit_matmul = None
        x_shape = tensor_shape(node.input_types[0]) if node.input_types else None
        batch = x_shape[1 - self.layout] if x_shape and len(x_shape) == 3 else None
        if self.prepared is not None and self._dense_ok(None):
            rt_all = self.prepared[1][1]
            if rt_all.dtype == np.float32 and microkernel.available():
                self.jit_matmul = PackedRecurrent(rt_all)
            elif batch != 1:
                jit = recurrent_matmul(self.prepared[0])
                self.jit_matmul = None if jit is None else with_add(jit)

    def _constant_weights(self, ctx) -> tuple:
        """W and R as `_prepare` takes them when both are session constants, else Nones."""
        return ctx.constant_input(1), ctx.constant_input(2)

    def _clip(self, x):
        return np.clip(x, -self.clip, self.clip) if self.clip is not None else x

    def _forward_compiled_ok(self) -> bool:
        """A forward layer the compiled time loop runs with constant weights: decided once."""
        ok = self.__dict__.get("_forward_ok")
        if ok is None:
            ok = self._forward_ok = (
                self.direction == "forward" and self.layout == 0 and self.prepared is not None
                and self.prepared[0] == np.float32 and self._dense_ok(None)
                and isinstance(self.jit_matmul, PackedRecurrent)
                and self._compiled_cell(np.zeros((1, 1, self.prepared[1][1].shape[1]), np.float32))
                is not None)
        return ok

    def _forward_compiled(self, x, initial_h, initial_c=None) -> tuple | None:
        """One projection, then the compiled time loop (`PackedRecurrent.run_sequence`), with
        nothing around them: a streaming model's one-step LSTM spent ~25 us in the general
        path's Python around the same two calls (~6 us). None where the loop does not apply."""
        fast = self.__dict__.get("_forward_weights")
        if fast is None:   # W^T (packed, and plain); the biases folded as the dense path folds them
            per_dir, _, rb_all = self.prepared[1]
            wt, wb_in = per_dir[0][:2]
            proj_bias = np.array(wb_in, dtype=np.float32).reshape(1, 1, -1)
            kind, step_bias = self._compiled_cell(self._fold_recurrent_bias(proj_bias, rb_all[:1]))
            w_t = np.ascontiguousarray(wt.unpack(), dtype=np.float32)
            fast = self._forward_weights = (wt, w_t, proj_bias.reshape(1, -1), kind, step_bias,
                                            PackedRecurrent.projection_args(w_t, proj_bias))
        wt, w_t, bias, kind, step_bias, (proj_args, _) = fast
        seq, batch, _ = x.shape
        if seq == 0:
            return None
        hid = w_t.shape[1] // self.n_gates
        f32 = np.float32
        if (seq * batch <= 32 and x.dtype == f32 and x.flags.c_contiguous
                and (initial_h is None or (initial_h.dtype == f32 and initial_h.flags.c_contiguous
                                           and initial_h.shape == (1, batch, hid)))
                and (initial_c is None or (initial_c.dtype == f32 and initial_c.flags.c_contiguous
                                           and initial_c.shape == (1, batch, hid)))):
            # a streaming step: projection, steps and outputs in one compiled call
            steps = self.__dict__.setdefault("_stream_steps", {})
            step = steps.get(x.shape)
            if step is None and x.shape not in steps:
                step = steps[x.shape] = self.jit_matmul.stream_step(kind, proj_args, seq, batch,
                                                                    step_bias)
            if step is not None:
                out = step(x.reshape(seq * batch, -1),
                           np.zeros((1, batch, hid), f32) if initial_h is None else initial_h,
                           np.zeros((1, batch, hid), f32) if initial_c is None else initial_c)
                return out if len(self.node.outputs) >= 3 else out[:max(1, len(self.node.outputs))]
        if seq * batch <= 32:   # a few rows: one BLAS call
            proj = np.matmul(x.reshape(seq * batch, -1), w_t)
            proj += bias
        else:   # the microkernel with the bias in its tile store (400x512 @ 512x1024: 1.9 ms, BLAS 3.6)
            proj = gemm(x.reshape(seq * batch, -1), wt, bias)
        y = np.empty((seq, 1, batch, hid), dtype=np.float32)
        h0 = (np.zeros((1, batch, hid), dtype=np.float32) if initial_h is None
              else np.ascontiguousarray(initial_h, dtype=np.float32))
        # the LSTM's cell state is updated in place: a copy of the initial one, returned as Y_c
        c = (np.zeros((1, batch, hid), dtype=np.float32) if initial_c is None
             else np.array(initial_c, dtype=np.float32, order="C"))
        if (h0.shape != (1, batch, hid) or c.shape != (1, batch, hid)
                or not self.jit_matmul.run_sequence(kind, proj.reshape(1, seq, batch, -1), h0, c, y,
                                                    step_bias, get_num_threads())):
            return None
        return (y, y[-1].copy(), c)[:max(1, len(self.node.outputs))]

    def _dense_ok(self, p) -> bool:
        """Dense path applies: gated cell, default activations, no clip (peepholes: see LSTM)."""
        ok = self.__dict__.get("_dense_attrs_ok")
        if ok is None:   # attributes only: decided once
            ok = self._dense_attrs_ok = (
                self.n_gates > 1 and self.clip is None
                and self.act_names == [a.lower() for a in self.default_acts] * self.num_dir)
        return ok

    def _run_dense(self, dirs, y, y_h, y_c, lens: np.ndarray | None, rt: np.ndarray,
                   rb: np.ndarray, proj: np.ndarray | None = None,
                   rb_step: np.ndarray | None = None) -> None:
        """All directions in lockstep; fills y, y_h, y_c (`lens` None: every row runs the whole
        sequence). `proj` (D, seq, B, G*H): the directions' projections already in one array with
        the additive recurrent biases in (`rb_step` the rest, `_fold_recurrent_bias`); None:
        those of `dirs`, stacked and folded here.

        One batched H @ R^T per step for both directions halves the per-step numpy calls;
        measured faster than running the directions on two threads (GIL hand-offs on the many
        small ufunc calls). Step t of a row handles its time tidx[t] (reverse: inside the row's
        own length); a row past its length keeps its state and gets zeros in y."""
        seq, ndir, batch = y.shape[:3]
        if ndir == 1:   # views, no stacking copies (each array is this run's own)
            h, c = dirs[0][2][None], dirs[0][3][None]
        else:
            h = np.stack([d[2] for d in dirs])
            c = np.stack([d[3] for d in dirs])
        if proj is None:
            proj = dirs[0][1][None] if ndir == 1 else np.stack([d[1] for d in dirs])
            folded = np.zeros_like(rb)                       # (D, 1, G*H)
            rb_step = self._fold_recurrent_bias(folded, rb)
            proj += folded[:, None]
        # forward over full lengths: the states go straight into y
        hist = y if lens is None and self.direction == "forward" else np.empty_like(y)
        jit = self.jit_matmul if rt.dtype == y.dtype and rt.flags.c_contiguous else None
        if lens is None and seq and isinstance(jit, PackedRecurrent):
            # every step in one compiled loop (any batch)
            cell = self._compiled_cell(rb_step)
            if cell is not None and jit.run_sequence(cell[0], proj, h, c, hist,
                                                     cell[1], get_num_threads()):
                self._finish_dense(dirs, y, y_h, y_c, None, hist, hist[-1], c)
                return
        mm = _blas_matmul   # (h, rt, out, add=None): BLAS, or a compiled product for a few rows
        if jit is not None and (2 <= batch <= SMALL_BATCH or (batch >= 2 and isinstance(jit, PackedRecurrent))):
            mm = jit
        gates = np.empty((ndir,) + proj.shape[2:], dtype=y.dtype)
        tmp = np.empty_like(h)
        live = None if lens is None else np.arange(seq)[:, None] < lens[None, :]    # (seq, B)
        step = self._dense_step
        # Per-step products are tiny: threaded BLAS only adds wake-up latency (10x slower
        # when another process holds a core), so the recurrence runs on one thread.
        with single_threaded_blas():
            for t in range(seq):
                done = None if live is None or live[t].all() else np.flatnonzero(~live[t])
                if done is not None:
                    c_done = c[:, done].copy()
                step(proj[:, t], h, c, rt, rb_step, gates, tmp, hist[t], mm)
                if done is not None:   # rows past their length carry their state unchanged
                    hist[t][:, done] = h[:, done]
                    c[:, done] = c_done
                h = hist[t]
        self._finish_dense(dirs, y, y_h, y_c, live, hist, h, c)

    def _compiled_cell(self, rb_step) -> tuple[str, np.ndarray | None] | None:
        """(cell kind, bias added to the product) of `PackedRecurrent.run_sequence`, or None
        where this cell has no compiled step."""
        return None

    def _finish_dense(self, dirs, y, y_h, y_c, live, hist, h, c) -> None:
        """y from the per-step states `hist` (reverse directions back in time order), y_h, y_c."""
        if hist is not y:
            for d, (tidx, *_rest) in enumerate(dirs):
                if live is None or live.all():
                    y[:, d] = hist[::-1, d] if (self.direction == "reverse" or d == 1) else hist[:, d]
                else:
                    tt, bb = np.nonzero(live)
                    y[tidx[tt, bb], d, bb] = hist[tt, d, bb]
        y_h[:] = h
        y_c[:] = c

    def _prepare(self, w, r, b, cdt) -> tuple:
        """Per direction (W^T packed for the input projection, input bias, R^T, recurrent bias),
        plus R^T and the recurrent biases of all directions stacked for the dense path."""
        g = self.n_gates
        hid = self.hidden or r.shape[-1]
        per_dir = []
        for d in range(self.num_dir):
            wb = (np.zeros(2 * g * hid, dtype=cdt) if b is None else np.asarray(b[d], dtype=cdt))
            wt = pack_b(np.asarray(w[d], dtype=cdt), trans_b=True)
            rt = np.ascontiguousarray(np.asarray(r[d], dtype=cdt).T)
            per_dir.append((wt, np.ascontiguousarray(wb[:g * hid]).reshape(1, -1), rt,
                            np.ascontiguousarray(wb[g * hid:])))
        rt_all = np.stack([d[2] for d in per_dir])                  # (D, H, G*H)
        rb_all = np.stack([d[3] for d in per_dir])[:, None]          # (D, 1, G*H)
        return per_dir, rt_all, rb_all

    def run(self, x, w, r, b, seq_lens, initial_h, initial_c=None, p=None):
        cdt = np.dtype(np.float64 if x.dtype == np.float64 else np.float32)
        if self.prepared is not None and self.prepared[0] == cdt:
            prepared = self.prepared[1]
        else:
            prepared = self._prepare(w, r, b, cdt)
        if self.layout == 1:
            x = x.transpose(1, 0, 2)
            initial_h = None if initial_h is None else initial_h.transpose(1, 0, 2)
            initial_c = None if initial_c is None else initial_c.transpose(1, 0, 2)
        seq, batch, _ = x.shape
        hid = self.hidden or r.shape[-1]
        g = self.n_gates
        xf = x.astype(cdt, copy=False)
        lens = None if seq_lens is None else np.asarray(seq_lens, dtype=np.int64).reshape(batch)
        if lens is not None and (lens == seq).all():
            lens = None                     # every row runs the whole sequence
        dense = self._dense_ok(p)
        # The dense path over full lengths writes every entry of y, y_h and y_c.
        alloc = np.empty if dense and lens is None else np.zeros
        y = alloc((seq, self.num_dir, batch, hid), dtype=cdt)
        y_h = alloc((self.num_dir, batch, hid), dtype=cdt)
        y_c = alloc((self.num_dir, batch, hid), dtype=cdt)
        # Time index of each step per row (reverse runs inside each row's own length); the dense
        # path over full lengths reads the projections backwards instead.
        need_tidx = not (dense and lens is None)
        full = lens if lens is not None else np.full(batch, seq, dtype=np.int64) if need_tidx else None
        steps = np.arange(seq)[:, None] if need_tidx else None
        dirs = []  # per direction: (tidx, proj, h0, c0, R^T, recurrent bias, peepholes)
        per_dir, rt_all, rb_all = prepared
        proj_bias = rb_step = proj_all = None
        if not need_tidx:
            # the dense path over full lengths: every direction projected straight into one
            # array in the order of its steps (a reverse one from its input reversed, a small
            # copy), the purely additive recurrent biases in the projection's bias (a stacking
            # copy and a pass over all projections less: ~0.8 ms of a 100-step bidirectional
            # LSTM layer of hidden 256, batch 4)
            proj_bias = np.stack([pd[1] for pd in per_dir])        # (D, 1, G*H)
            rb_step = self._fold_recurrent_bias(proj_bias, rb_all)
            proj_all = np.empty((self.num_dir, seq, batch, g * hid), dtype=cdt)
        for d in range(self.num_dir):
            reverse = self.direction == "reverse" or d == 1
            wt, wb_in, rt, rb = per_dir[d]
            if not need_tidx:
                tidx = None
            elif reverse:
                tidx = np.where(steps < full[None, :], full[None, :] - 1 - steps, steps)
            else:
                tidx = np.broadcast_to(steps, (seq, batch))
            if proj_all is not None:
                xs, bias_in = (np.ascontiguousarray(xf[::-1]) if reverse else xf), proj_bias[d]
                proj = proj_all[d]
            else:
                xs, bias_in = xf[tidx, np.arange(batch)[None, :]], wb_in
                proj = np.empty((seq, batch, g * hid), dtype=cdt)
            out = proj.reshape(seq * batch, g * hid)
            if seq * batch <= 32:   # a few rows: gemm's blocking machinery costs more than it saves
                np.matmul(xs.reshape(seq * batch, -1), wt.unpack(), out=out)
                out += bias_in
            else:
                gemm(xs.reshape(seq * batch, -1), wt, bias_in, out=out)
            h = np.zeros((batch, hid), dtype=cdt) if initial_h is None else initial_h[d].astype(cdt)
            c = np.zeros((batch, hid), dtype=cdt) if initial_c is None else initial_c[d].astype(cdt)
            pd = None if p is None else p[d].astype(cdt)
            dirs.append((tidx, proj, h, c, rt, rb, pd))
        if dense:
            self._run_dense(dirs, y, y_h, y_c, lens, rt_all, rb_all, proj_all, rb_step)
        else:
            with single_threaded_blas():
                for d, (tidx, proj, h, c, rt, rb, pd) in enumerate(dirs):
                    for t in range(seq):
                        h_new, c_new = self._step(proj[t], h, c, rt, rb, pd, self.acts[d], hid)
                        live = (t < full)[:, None]
                        h = np.where(live, h_new, h)
                        c = np.where(live, c_new, c)
                        y[tidx[t], d, np.arange(batch)] = np.where(live, h_new, 0)
                    y_h[d], y_c[d] = h, c
        dt = x.dtype
        if self.layout == 1:
            y = y.transpose(2, 0, 1, 3)
            y_h, y_c = y_h.transpose(1, 0, 2), y_c.transpose(1, 0, 2)
        outs = [np.ascontiguousarray(y, dtype=dt), np.ascontiguousarray(y_h, dtype=dt),
                np.ascontiguousarray(y_c, dtype=dt)]
        return tuple(outs[:max(1, len(self.node.outputs))])


@kernel("RNN")
class RNN(_Recurrent):
    n_gates = 1
    default_acts = ("Tanh",)

    def compute(self, x, w, r, b=None, sequence_lens=None, initial_h=None):
        return self.run(x, w, r, b, sequence_lens, initial_h)[:2][:max(1, len(self.node.outputs))]

    def _step(self, xp, h, c, rt, rb, p, acts, hid):
        return acts[0](self._clip(xp + h @ rt + rb)), c


@kernel("GRU")
class GRU(_Recurrent):
    n_gates = 3
    default_acts = ("Sigmoid", "Tanh")

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.lbr = bool(self.attr("linear_before_reset", 0))

    def compute(self, x, w, r, b=None, sequence_lens=None, initial_h=None):
        if sequence_lens is None and x.dtype == np.float32 and self._forward_compiled_ok():
            out = self._forward_compiled(x, initial_h)
            if out is not None:
                return out
        return self.run(x, w, r, b, sequence_lens, initial_h)[:2][:max(1, len(self.node.outputs))]

    def _step(self, xp, h, c, rt, rb, p, acts, hid):
        f, g = acts
        hr = h @ rt[:, :2 * hid] + rb[:2 * hid]
        z = f(self._clip(xp[:, :hid] + hr[:, :hid]))
        rg = f(self._clip(xp[:, hid:2 * hid] + hr[:, hid:]))
        if self.lbr:
            hh = g(self._clip(xp[:, 2 * hid:] + rg * (h @ rt[:, 2 * hid:] + rb[2 * hid:])))
        else:
            hh = g(self._clip(xp[:, 2 * hid:] + (rg * h) @ rt[:, 2 * hid:] + rb[2 * hid:]))
        return (1 - z) * hh + z * h, c

    def _fold_recurrent_bias(self, proj, rb):
        """Add the recurrent bias into the projections where it is purely additive; return
        the part that stays inside the reset gate's product (linear_before_reset)."""
        hid = proj.shape[-1] // 3
        proj[..., :2 * hid] += rb[..., :2 * hid]
        if self.lbr:
            return rb[..., 2 * hid:]
        proj[..., 2 * hid:] += rb[..., 2 * hid:]
        return None

    def _compiled_cell(self, rb_step):
        if not self.lbr:
            return None
        ndir, _, hid = rb_step.shape
        bias = np.zeros((ndir, 3 * hid), dtype=np.float32)
        bias[:, 2 * hid:] = rb_step[:, 0]
        return "GRU", bias

    def _dense_step(self, xp, h, c, rt, rbh, gates, tmp, h_out, mm):
        hid = h.shape[-1]
        zr, n = gates[..., :2 * hid], gates[..., 2 * hid:]
        if self.lbr:
            mm(h, rt, gates)   # all C-contiguous (the halves below are not: BLAS does those)
            n += rbh
        else:
            np.matmul(h, rt[..., :2 * hid], out=zr)
        zr += xp[..., :2 * hid]
        sigmoid(zr, out=zr)
        z, r = gates[..., :hid], gates[..., hid:2 * hid]
        if self.lbr:
            n *= r
        else:
            np.multiply(r, h, out=tmp)
            np.matmul(tmp, rt[..., 2 * hid:], out=n)
        n += xp[..., 2 * hid:]
        np.tanh(n, out=n)
        # h' = (1 - z) * n + z * h = n + z * (h - n)
        np.subtract(h, n, out=tmp)
        tmp *= z
        np.add(n, tmp, out=h_out)


@kernel("LSTM")
class LSTM(_Recurrent):
    n_gates = 4
    default_acts = ("Sigmoid", "Tanh", "Tanh")

    def compute(self, x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None):
        if (sequence_lens is None and x.dtype == np.float32 and self._forward_compiled_ok()
                and (p is None or not np.any(p))):
            out = self._forward_compiled(x, initial_h, initial_c)
            if out is not None:
                return out
        return self.run(x, w, r, b, sequence_lens, initial_h, initial_c, p)

    def _dense_ok(self, p) -> bool:
        return (super()._dense_ok(p) and not self.input_forget
                and (p is None or not np.any(p)))

    def _fold_recurrent_bias(self, proj, rb):
        proj += rb
        return None

    def _compiled_cell(self, rb_step):
        return "LSTM", None

    def _dense_step(self, xp, h, c, rt, rb, gates, tmp, h_out, mm):
        hid = h.shape[-1]
        mm(h, rt, gates, xp)
        sig, cand = gates[..., :3 * hid], gates[..., 3 * hid:]  # i, o, f | c
        sigmoid(sig, out=sig)
        np.tanh(cand, out=cand)
        c *= gates[..., 2 * hid:3 * hid]
        np.multiply(gates[..., :hid], cand, out=tmp)
        c += tmp
        np.tanh(c, out=h_out)
        h_out *= gates[..., hid:2 * hid]

    def _step(self, xp, h, c, rt, rb, p, acts, hid):
        f, g, hf = acts
        gates = xp + h @ rt + rb  # order i, o, f, c
        gi, go, gf, gc = (gates[:, k * hid:(k + 1) * hid] for k in range(4))
        if p is not None:
            gi = gi + p[:hid] * c
            gf = gf + p[2 * hid:] * c
        i = f(self._clip(gi))
        fg = 1 - i if self.input_forget else f(self._clip(gf))
        c_new = fg * c + i * g(self._clip(gc))
        if p is not None:
            go = go + p[hid:2 * hid] * c_new
        o = f(self._clip(go))
        return o * hf(c_new), c_new

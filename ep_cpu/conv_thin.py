"""Convolutions with a few output positions (a streaming audio model's step, the last maps of
small inputs) as one GEMM with the positions as rows: Y^T (P x M) = cols^T (P x C*K) @ W^T.

OpenBLAS's SGEMM is slow on such thin products: (258 x 256) @ (256 x 3), a short-time Fourier
transform as a strided 1-D conv, took 30-40 us on one thread here (~5 GFLOP/s), and numpy's
im2col around it a few us more. Here one compiled call (`thin_conv`, a C callback) gathers A's
row panels straight from the image by per-tap offsets (a 1x1 conv's runs of positions copied as
they are: MobileNetV2's 960->160 on 7x7 spent ~40 us of 125 in an index gather and a second
packing pass, now ~15 us over the bare product), runs the microkernel on W^T packed once (a
session constant) and stores each tile transposed with the epilogue (`ep_cpu.tile_transpose`:
in registers, where a scalar pass over a transposed scratch spent 1-2 cycles a value): ~2 us of
product plus the call for the STFT. Bias (one per output channel: a column here), residual and
a clamp run in that store. float32, group 1, AVX2 or AVX-512 CPUs; on AVX2 only up to 16
positions (`ep_cpu.kernels.conv.THIN_MAX_POSITIONS_AVX2`: VAD's six convs 265 against 378 us a
step through BLAS; 7x7 maps ran faster through BLAS or the implicit conv there). One or two
positions take the microkernel's 1- and 2-row tiles, and one image on one thread is one
compiled call from Python (`_one_image`).
"""
from __future__ import annotations

import math

import numpy as np

from ep_cpu import gemm_compiled
from ep_cpu import microkernel as mk
from ep_cpu import native_call, tile_shapes
from ep_cpu.vector_ir import VectorIR

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None

# Output positions up to which this path is taken: one or a few tile rows (a 7x7 map: 49, where
# the implicit conv computes 64 positions per row of weights: 1x1 convs 960->320 on 7x7 266 ->
# 232 us, 160->960 169 -> 135 us; ResNet-50's 2048->512 on 7x7 814 -> 638 us, 3x3 512->512 2182
# -> 1980). On 14x14 maps (196) it measured level with the implicit conv for 1x1 convs and
# slower for 3x3 (its gather) and shallow products (its transposed store).
MAX_POSITIONS = 64
PAR_MIN_MACS = 1 << 21   # multiply-adds per thread hand-off


def available() -> bool:
    return mk.available()


def compile_kernels() -> None:
    """Compile (or load from the disk cache) the callbacks a thin conv runs: its own, the
    microkernel's and the parallel runner (an `ep_cpu.jit_tier` build)."""
    mk.gemm_range()
    thin_conv()
    native_call.compile_runner()


def pack_weight(w: np.ndarray) -> np.ndarray:
    """(M, C, *K) float32 weights -> W^T (C*K, M) in the microkernel's column panels."""
    return gemm_compiled.pack(np.ascontiguousarray(w.reshape(w.shape[0], -1).T, dtype=np.float32))


# packed arguments of the callback (native_call.pack), in this order
THIN_ARGS = ("x", "x_len", "offsets", "p", "ck", "gemm", "packed_w", "nb", "m", "mr", "bias",
             "has_bias", "res", "has_res", "lo", "hi", "y", "taps", "plane", "plain", "tail_mr")


def _make_row_copies():
    """The two copies that build a row of A's panels (`width` <= 16 lanes, zeros where nothing
    is read), as masked vector instructions: the scalar loops LLVM made of them spent ~3 ns a
    value (ResNet-50's 3x3 512->512 on 7x7 gathers 258K values a run).

    load_run(x, src, rows, width, out, dst): out[dst + r] = x[src + r] for r < rows, 0 to width.
    gather_run(x, base, offs, o_off, width, out, dst): out[dst + r] = x[base + offs[o_off + r]]
    where that offset is >= 0, else 0 (llvm.masked.gather).
    Both store all 16 lanes (zeros past `width`): out needs 16 values from dst, and rows are
    written in increasing dst, each over the previous one's spill. A masked store is microcoded
    on AMD's AVX2 CPUs (Zen 3: ResNet-sized thin convs 2x slower with it)."""
    l64, l32 = ir.IntType(64), ir.IntType(32)
    v16i64 = ir.VectorType(l64, 16)

    @intrinsic
    def load_run(typingctx, x_arr, src, rows, width, out_arr, dst):
        sig = types.void(x_arr, types.int64, types.int64, types.int64, out_arr, types.int64)

        def codegen(context, builder, signature, args):
            x_v, src_v, rows_v, width_v, out_v, dst_v = args
            tys = signature.args
            vir = VectorIR(builder)
            x, out = vir.data(context, tys[0], x_v, src_v), vir.data(context, tys[4], out_v, dst_v)
            align, zero = ir.Constant(l32, 4), ir.Constant(vir.v16, [0.0] * 16)
            v = builder.call(vir.masked_load(), [vir.ptr(x, vir.i64(0)), align,
                                                 vir.first_lanes(rows_v), zero])
            builder.store(v, vir.ptr(out, vir.i64(0)), align=4)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def gather_run(typingctx, x_arr, base, offs_arr, o_off, width, out_arr, dst):
        sig = types.void(x_arr, types.int64, offs_arr, types.int64, types.int64, out_arr,
                         types.int64)

        def codegen(context, builder, signature, args):
            x_v, base_v, offs_v, o_v, width_v, out_v, dst_v = args
            tys = signature.args
            vir = VectorIR(builder)
            x, offs = vir.data(context, tys[0], x_v, base_v), vir.data(context, tys[2], offs_v, o_v)
            out = vir.data(context, tys[5], out_v, dst_v)
            mask_t, align = vir.mask_t, ir.Constant(l32, 4)
            lanes = vir.first_lanes(width_v)
            load_i64 = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(v16i64, [v16i64.as_pointer(), l32, mask_t, v16i64]),
                "llvm.masked.load.v16i64.p0v16i64")
            idx = builder.call(load_i64, [builder.bitcast(offs, v16i64.as_pointer()), ir.Constant(l32, 8),
                                          lanes, ir.Constant(v16i64, [-1] * 16)])
            valid = builder.icmp_signed(">=", idx, ir.Constant(v16i64, [0] * 16))
            start = builder.ptrtoint(x, l64)
            splat = builder.shuffle_vector(builder.insert_element(ir.Constant(v16i64, None), start,
                                                                  ir.Constant(l32, 0)),
                                           ir.Constant(v16i64, None), ir.Constant(ir.VectorType(l32, 16), [0] * 16))
            ptr_t = ir.VectorType(ir.FloatType().as_pointer(), 16)
            ptrs = builder.inttoptr(builder.add(splat, builder.shl(idx, ir.Constant(v16i64, [2] * 16))),
                                    ptr_t)
            gather = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vir.v16, [ptr_t, l32, mask_t, vir.v16]),
                "llvm.masked.gather.v16f32.v16p0f32")
            v = builder.call(gather, [ptrs, align, valid, ir.Constant(vir.v16, [0.0] * 16)])
            builder.store(v, vir.ptr(out, vir.i64(0)), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return load_run, gather_run


if numba is not None:
    from ep_cpu.native_call import call_void, f32_at, f64_at, i64_at
    load_run, gather_run = _make_row_copies()

    def _thin_conv(args_at, j0, j1, i0, i1):  # pragma: no cover - compiled
        # x: one image (x_len values, channels of `plane` values); output channels of column
        # panels [j0, j1) (threads split them; rows [i0, i1) unused)
        a = numba.carray(f64_at(args_at), (21,))
        x_at, x_len, offs_at, p, ck = (np.int64(a[0]), np.int64(a[1]), np.int64(a[2]),
                                       np.int64(a[3]), np.int64(a[4]))
        gemm_at, packed_at, nb, m, mr = (np.int64(a[5]), np.int64(a[6]), np.int64(a[7]),
                                         np.int64(a[8]), np.int64(a[9]))
        bias_at, has_bias, res_at, has_res = (np.int64(a[10]), np.int64(a[11]), np.int64(a[12]),
                                              np.int64(a[13]))
        y_at, taps, plane, plain = np.int64(a[16]), np.int64(a[17]), np.int64(a[18]), a[19] != 0
        tail_mr = np.int64(a[20])   # tile rows of the last row panel (`microkernel.tail_rows`)
        x = numba.carray(f32_at(x_at), (x_len,))
        # A's row panels straight from the image: row p, column (c, t) reads x[c * plane +
        # offs[t, p]] (`padded_offsets`; negative: padding, 0); `plain` (a 1x1 conv of stride 1):
        # offs[0, p] = p, a channel's run of positions copied as it is
        nbp = (p + mr - 1) // mr
        pp = nbp * mr
        offs = numba.carray(i64_at(offs_at), (taps * pp,))
        ap = np.empty(nbp * ck * mr + 16, dtype=np.float32)   # + the last row's whole vector
        for ib in range(nbp):
            p0 = ib * mr
            rows = min(mr, p - p0)
            mt = mr if rows == mr else tail_mr   # the last panel: (ck, mt) at its slot's start
            for k in range(ck):
                c = k // taps
                dst = ib * ck * mr + k * mt
                if plain:
                    load_run(x, c * plane + p0, rows, mt, ap, dst)
                elif mt <= 4:   # a few rows: scalar copies (the 16-lane gather cost more)
                    src, o0 = c * plane, (k - c * taps) * pp + p0
                    for r in range(mt):
                        o = offs[o0 + r]
                        ap[dst + r] = x[src + o] if o >= 0 else np.float32(0.0)
                else:
                    gather_run(x, c * plane, offs, (k - c * taps) * pp + p0, mt, ap, dst)
        bias = np.zeros(1, dtype=np.float32) if has_bias else np.zeros(m, dtype=np.float32)
        b_at = bias_at if has_bias else np.int64(bias.ctypes.data)
        # microkernel.GEMM_ARGS: A packed, y (M, P) written transposed with the epilogue (bias,
        # residual in y's layout, clamp) as each tile leaves the scratch; one position's y is
        # the same (1, M) row as the product's: its tiles are stored in place (EPILOGUE_RES with
        # a residual)
        g = np.zeros(19, dtype=np.float64)   # (act, act_kind: 0, none)
        g[0], g[1], g[2], g[3], g[4], g[5], g[6] = ap.ctypes.data, p, ck, packed_at, nb, m, mr
        g[7], g[8], g[9], g[10] = b_at, has_bias, res_at if has_res else b_at, has_res
        g[11], g[12], g[13], g[14], g[15], g[16] = a[14], a[15], 1 + has_res, y_at, 1, p > 1
        call_void(gemm_at, (np.int64(g.ctypes.data), j0, j1, np.int64(0), (p + mr - 1) // mr))
        # the buffers went to the callback as addresses: numba frees an array after its last
        # use in this function, so they are used again here, after the call
        if ap.size + bias.size + g.size == 0:
            return

    def thin_conv():
        """C callback (native_call.RANGE_SIG): one image's thin conv, its arguments packed in
        THIN_ARGS order; compiled or loaded from the disk cache on first use."""
        return native_call.callback(_thin_conv, len(THIN_ARGS))

    @numba.njit(nogil=True, cache=True)
    def _one_image(fn_at, x, template, y_shape, panels):  # pragma: no cover - compiled
        # one C-contiguous float32 image on the calling thread: y allocated, the packed
        # arguments completed with the two addresses and the callback called, in one dispatch
        # from Python (~1 us, where np.empty, a copy, three address reads and a ctypes call
        # took ~3.5)
        y = np.empty(y_shape, dtype=np.float32)
        args = template.copy()
        args[0], args[16] = x.ctypes.data, y.ctypes.data
        call_void(fn_at, (np.int64(args.ctypes.data), np.int64(0), panels, np.int64(0), np.int64(1)))
        if args.size == 0:   # args went to the callback by address: alive until here
            return y
        return y


def padded_offsets(offsets: np.ndarray, rows: int) -> tuple[np.ndarray, bool]:
    """Tap offsets (K, P) (`ep_cpu.kernels.conv._tap_offsets`) -> (K, rows), -1 past P; and
    whether they are a plain 1x1 conv of stride 1 (offsets 0..P-1)."""
    taps, p = offsets.shape
    offs = np.full((taps, rows), -1, dtype=np.int64)
    offs[:, :p] = offsets
    return offs, bool(taps == 1 and np.array_equal(offsets[0], np.arange(p)))


class PackedWeight:
    """W^T packed (`pack_weight`) with what every call passes: its address, panel count, M."""

    def __init__(self, w: np.ndarray) -> None:
        self.panels = pack_weight(w)
        self.m = w.shape[0]
        self.address = self.panels.ctypes.data   # alive as long as this object


class ThinConv:
    """One conv's call for one input shape: its packed arguments (THIN_ARGS) filled once, so a
    run only allocates y and writes the input and output addresses (a streaming model's step
    runs six such convs: the per-call Python work was ~8 us of each ~13)."""

    def __init__(self, packed_w: PackedWeight, offsets: np.ndarray, bias: np.ndarray | None,
                 clamp: tuple[float, float], x_shape: tuple, out_shape: tuple,
                 threads: int = 1) -> None:
        p, ck = offsets.shape[1], x_shape[1] * offsets.shape[0]
        m, mr = packed_w.m, tile_shapes.choose_gemm_mr(p)
        self.bias = bias   # the array this plan was made for (`ep_cpu.kernels.conv` checks it)
        self._bias32 = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        self.x_shape, self.threads = tuple(x_shape), threads
        self.image = math.prod(x_shape[1:])
        offs, plain = padded_offsets(offsets, -(-p // mr) * mr)
        self._keep = (packed_w, offs)   # addresses in the template
        self.y_shape = (x_shape[0], m) + tuple(out_shape)
        self.out_size = m * p
        self.panels = packed_w.panels.shape[0]
        self.workers = max(1, min(threads, self.panels // 2, p * ck * m // PAR_MIN_MACS))
        # one image on the calling thread: one compiled call (`__call__`)
        self._single = x_shape[0] == 1 and self.workers == 1
        self._fn_at = thin_conv().address
        self.template = native_call.pack(
            0, self.image, offs.ctypes.data, p, ck, mk.gemm_range().address, packed_w.address,
            self.panels, m, mr, 0 if bias is None else native_call.address(self._bias32),
            bias is not None, 0, 0, clamp[0], clamp[1], 0, offs.shape[0], self.image // x_shape[1],
            plain, mk.tail_rows(p - (p - 1) // mr * mr, mr))
        native_call.check_args(thin_conv(), self.template)   # `_one_image` calls it unchecked

    def __call__(self, x: np.ndarray, residual: np.ndarray | None = None,
                 pool=None) -> np.ndarray:
        """(N, M, *out) = clamp(conv(x) + bias + residual); x float32 of `x_shape`."""
        if self._single and residual is None and x.dtype == np.float32 and x.flags.c_contiguous:
            # a streaming step's conv
            return _one_image(self._fn_at, x, self.template, self.y_shape, self.panels)
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.empty(self.y_shape, dtype=np.float32)
        args = self.template.copy()
        x_at, y_at = native_call.address(x), native_call.address(y)
        res = None
        if residual is not None:
            res = np.ascontiguousarray(np.broadcast_to(residual, y.shape), dtype=np.float32)
            res_at, args[13] = native_call.address(res), 1
        fn = thin_conv()
        for i in range(self.y_shape[0]):
            args[0], args[16] = x_at + 4 * i * self.image, y_at + 4 * i * self.out_size
            if res is not None:
                args[12] = res_at + 4 * i * self.out_size
            native_call.run_ranges(fn, args, self.panels, 1, self.workers, True, pool)
        return y


def conv(x: np.ndarray, packed_w: PackedWeight, offsets: np.ndarray, bias: np.ndarray | None,
         residual: np.ndarray | None, clamp: tuple[float, float], out_shape, threads: int = 1,
         pool=None) -> np.ndarray:
    """(N, M, *out_shape) = clamp(conv + bias + residual) of float32 x (N, C, *spatial);
    `offsets` (taps, positions): the input read within a channel's plane, -1 for padding
    (`ep_cpu.kernels.conv._tap_offsets`). Threads split the output channels (`pool(workers)`:
    an executor where numba's TBB threads are not loadable). A caller that runs the same shapes
    again keeps a `ThinConv` instead."""
    return ThinConv(packed_w, offsets, bias, clamp, x.shape, out_shape, threads)(x, residual, pool)

"""IR helpers of the 16-float kernels written in LLVM IR through numba's `intrinsic` (the GEMM
microkernel, the depthwise and thin-conv copies, the tile transposes): the fma intrinsic,
broadcasts, masks, masked loads and stores, vector pointers, the clamp, the store-mode branch.

numba's disk cache checks only the source file of the function it caches: a change here reaches
the kernels of other files once their own files change or their cache is cleared.
"""
from __future__ import annotations

try:
    from llvmlite import ir
    from numba.core import cgutils
except ImportError:  # pragma: no cover - numba is a dependency
    ir = cgutils = None


# tile store modes: the sums as they are; + bias, clamped; + bias + residual, clamped
RAW, EPILOGUE, EPILOGUE_RES = 0, 1, 2


class VectorIR:
    """IR helpers of the 16-float kernels: the fma intrinsic, broadcast, vector pointers."""

    def __init__(self, builder) -> None:
        i32 = ir.IntType(32)
        self.builder = builder
        self.v16 = ir.VectorType(ir.FloatType(), 16)
        self.fma = cgutils.get_or_insert_function(builder.module,
                                                  ir.FunctionType(self.v16, [self.v16] * 3),
                                                  "llvm.fma.v16f32")
        self.mask_t = ir.VectorType(ir.IntType(1), 16)
        self._undef = ir.Constant(self.v16, ir.Undefined)
        self._zero_i32 = ir.Constant(i32, 0)
        self._splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)

    @staticmethod
    def i64(value: int):
        return ir.Constant(ir.IntType(64), value)

    def data(self, context, ty, value, offset=None):
        """Pointer to element `offset` (0: the first) of an array argument of numba type `ty`."""
        ptr = context.make_array(ty)(context, self.builder, value).data
        return ptr if offset is None else self.builder.gep(ptr, [offset])

    def first_lanes(self, count):
        """<16 x i1> mask of lanes [0, count) for an int64 count in [0, 16]."""
        b, one = self.builder, self.i64(1)
        return b.bitcast(b.trunc(b.sub(b.shl(one, count), one), ir.IntType(16)), self.mask_t)

    def masked_load(self):
        """llvm.masked.load of 16 floats: (pointer, align, <16 x i1> mask, passthrough)."""
        v16, mask_t = self.v16, ir.VectorType(ir.IntType(1), 16)
        return cgutils.get_or_insert_function(
            self.builder.module, ir.FunctionType(v16, [v16.as_pointer(), ir.IntType(32), mask_t, v16]),
            "llvm.masked.load.v16f32.p0v16f32")

    def masked_store(self):
        """llvm.masked.store of 16 floats: (value, pointer, align, <16 x i1> mask)."""
        v16, mask_t = self.v16, ir.VectorType(ir.IntType(1), 16)
        return cgutils.get_or_insert_function(
            self.builder.module,
            ir.FunctionType(ir.VoidType(), [v16, v16.as_pointer(), ir.IntType(32), mask_t]),
            "llvm.masked.store.v16f32.p0v16f32")

    def broadcast(self, scalar):
        b = self.builder
        return b.shuffle_vector(b.insert_element(self._undef, scalar, self._zero_i32), self._undef,
                                self._splat)

    def ptr(self, base, offset):
        return self.builder.bitcast(self.builder.gep(base, [offset]), self.v16.as_pointer())

    def store_modes(self, mode, store) -> None:
        """Branch on a tile's store mode (an int64: RAW, EPILOGUE or EPILOGUE_RES): `store(m)`
        emits mode m's stores in a block of its own; the builder goes on after them."""
        b = self.builder
        done = b.append_basic_block("tile_stored")
        switch = b.switch(mode, done)
        for m in (RAW, EPILOGUE, EPILOGUE_RES):
            block = b.append_basic_block(f"store_mode_{m}")
            switch.add_case(ir.Constant(ir.IntType(64), m), block)
            b.position_at_end(block)
            store(m)
            b.branch(done)
        b.position_at_end(done)

    def clamp(self, v, lo, hi):
        return self.clamp_with(self.builder, v, lo, hi)

    @staticmethod
    def clamp_with(b, v, lo, hi):
        """`lo if v < lo else v`, then the same for hi (vectors of any width): NaN passes, as
        numpy's clip."""
        v = b.select(b.fcmp_ordered("<", v, lo), lo, v)
        return b.select(b.fcmp_ordered(">", v, hi), hi, v)

"""Calls of compiled C callbacks by address from numba code, and the parallel runner over them.

The compiled drivers (`ep_cpu.microkernel.conv_range` / `gemm_range`, the recurrent cells of
`ep_cpu.vector_math`) are numba `cfunc`s. Passing a cfunc object into a jitted function as a
first-class function costs ~15 us per call in numba's argument typing (`typeof` of the object),
more than a small product takes; here they travel as their integer `address` and `call_void`
calls through the pointer, so the runners' arguments are plain integers, floats and arrays
(~1 us to dispatch). A runner compiled this way also does not embed the callee's code, so its
disk-cached machine code stays valid when the callee's source changes.

`call_void(addr, args)` builds the C function type from the numba types of `args`: int64 and
float32 values where the callback's signature has them. `check_args` compares a Python-side
argument tuple with a cfunc's signature once, in the tests and at the callers' first use.
"""
from __future__ import annotations

import numpy as np

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None


def check_args(callback, args: tuple) -> None:
    """TypeError unless `args` match `callback`'s C signature: int64 where it takes int64 (a
    Python or numpy integer), float32 where it takes float32 (an np.float32)."""
    sig = callback._sig.args   # numba's CFunc keeps its signature here
    if len(args) != len(sig):
        raise TypeError(f"{len(args)} arguments for a callback of {len(sig)}")
    for i, (a, t) in enumerate(zip(args, sig)):
        ok = isinstance(a, np.float32) if t == types.float32 else \
            isinstance(a, (int, np.integer)) and not isinstance(a, bool)
        if not ok:
            raise TypeError(f"argument {i}: {type(a).__name__} where the callback takes {t}")


if numba is not None:
    @intrinsic
    def call_void(typingctx, addr, args):
        """void fn(*args) for the C function at integer address `addr`."""
        if not isinstance(args, types.BaseTuple):
            return None
        sig = types.void(types.int64, args)

        def codegen(context, builder, signature, llargs):
            address, tup = llargs
            arg_types = signature.args[1].types
            fnty = ir.FunctionType(ir.VoidType(), [context.get_value_type(t) for t in arg_types])
            fn = builder.inttoptr(address, fnty.as_pointer())
            builder.call(fn, [builder.extract_value(tup, i) for i in range(len(arg_types))])
            return context.get_dummy_value()

        return sig, codegen

    @numba.njit(nogil=True, cache=True, parallel=True)
    def run_parts(fn_addr, args, cols, rows, parts, by_columns):  # pragma: no cover - compiled
        """fn(*args, c0, c1, r0, r1) over `parts` ranges of columns (or rows) on numba's
        threads; `args` a tuple of the callback's leading arguments."""
        for p in numba.prange(parts):
            if by_columns:
                step = (cols + parts - 1) // parts
                call_void(fn_addr, args + (p * step, min(cols, (p + 1) * step), 0, rows))
            else:
                step = (rows + parts - 1) // parts
                call_void(fn_addr, args + (0, cols, p * step, min(rows, (p + 1) * step)))

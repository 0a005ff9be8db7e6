"""The compiled tile loops keep their vectors in registers on every x86 CPU model LLVM schedules
for, not only the one this machine has.

The conv and GEMM tiles hold their sums in up to 24 of AVX-512's 32 registers. How many more the
machine code needs depends on LLVM's instruction scheduler for the target CPU: with 16 input
channels unrolled in one block, the Zen 4 model hoisted the broadcasts ahead of their FMAs and
spilled them to the stack (the blocked 3x3 conv ran at 19 GMAC/s against 46 through the GEMM
tiles; ResNet-50 154 against 83 ms at one thread). A benchmark sees this only on that CPU, so the
test compiles each kernel's LLVM IR for several CPU models and counts vector loads and stores on
the stack inside the blocks that run FMAs.
"""
from __future__ import annotations

import re

import pytest

numba = pytest.importorskip("numba")
llvm = pytest.importorskip("llvmlite.binding")

from ep_cpu import conv_nchwc, microkernel, native_call  # noqa: E402

# Intel Skylake-SP and Sapphire Rapids, AMD Zen 4 and Zen 5: the AVX-512 schedulers LLVM models
CPUS = ("skylake-avx512", "sapphirerapids", "znver4", "znver5")
_STACK_VECTOR = re.compile(r"[xyz]mm\d+.*\(%rsp\)|\(%rsp\).*[xyz]mm\d+")


def _fresh_ir(py_function) -> str:
    """The optimised LLVM IR of a range callback, compiled here without the disk cache (cached
    code keeps no IR)."""
    fn = numba.cfunc(native_call.RANGE_SIG, nogil=True, cache=False)(py_function)
    return fn._library.get_llvm_str()


def _fma_block_spills(ir_text: str, cpu: str) -> tuple[int, int]:
    """(FMAs, stack vector moves in the basic blocks that hold FMAs) of the machine code for
    `cpu`."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_triple("x86_64-unknown-linux-gnu")
    machine = target.create_target_machine(cpu=cpu, features="", opt=3)
    asm = machine.emit_assembly(llvm.parse_assembly(ir_text))
    fmas = spills = 0
    for block in re.split(r"\n\.LBB\S*:", asm):
        n = block.count("vfmadd")
        if n:
            fmas += n
            spills += len(_STACK_VECTOR.findall(block))
    return fmas, spills


KERNELS = {
    "blocked conv (conv_nchwc)": lambda: conv_nchwc._conv,
    "blocked depthwise (conv_nchwc)": lambda: conv_nchwc._depthwise,
    "GEMM tiles (microkernel)": lambda: microkernel._gemm_range,
    "implicit conv tiles (microkernel)": lambda: microkernel._conv_range,
}


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_tile_loops_keep_their_vectors_in_registers(kernel):
    ir_text = _fresh_ir(KERNELS[kernel]())
    for cpu in CPUS:
        fmas, spills = _fma_block_spills(ir_text, cpu)
        assert fmas > 0, f"{kernel}: no FMAs in the code for {cpu}"
        assert spills == 0, (f"{kernel}: {spills} vector moves to/from the stack in the FMA blocks "
                             f"compiled for {cpu} ({fmas} FMAs)")

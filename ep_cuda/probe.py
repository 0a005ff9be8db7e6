"""Can this machine run the CUDA provider? Each step names what is missing.

1. CuPy imports.
2. CuPy can assemble its compile options: that step looks up the CUDA runtime headers
   (`cuda_runtime.h`), without which CuPy 14 compiles no kernel at all ("Failed to find CUDA
   headers"). Checked before the GPU so a machine without headers says so, GPU or not.
3. A driver and a device answer (a driver too old for the CuPy build fails here).
4. A trivial kernel compiles through `cupy.RawModule` (NVRTC, the real path of ep_cuda.loader),
   loads and runs on device 0, and its result comes back.

`cupy_compile` runs CuPy's compile path (steps 2 and NVRTC) for a given architecture without a
device; `python -m ep_cuda.check_kernels --cupy` uses it on every kernel file.
"""
from __future__ import annotations

from typing import Iterable

INSTALL_HINT = ("install the CUDA extra matching the driver: pip install 'ep-runtime[cuda13]' "
                "(NVIDIA driver >= 580) or 'ep-runtime[cuda12]' (driver >= 525), or a CUDA toolkit")
PROBE_SOURCE = 'extern "C" __global__ void ep_probe(int* out) { out[threadIdx.x] = 7 * (int)threadIdx.x; }'


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def compile_options() -> tuple[str, ...]:
    """The options CuPy's RawModule compiles our sources with (raises when headers are missing)."""
    from cupy._core.core import assemble_cupy_compiler_options

    from .loader import NVRTC_OPTIONS
    return tuple(assemble_cupy_compiler_options(tuple(NVRTC_OPTIONS)))


def cupy_compile(source: str, name_expressions: Iterable[str], arch: int) -> dict[str, str]:
    """Compile `source` as `cupy.RawModule(code=source, options=NVRTC_OPTIONS,
    name_expressions=...)` does on a device of compute capability `arch`: CuPy's option assembly
    (with its CUDA header lookup), the options its NVRTC path adds, its NVRTC program, SASS. No
    device needed. Returns {name expression: lowered name}; raises what CuPy raises."""
    from cupy.cuda import compiler

    # as cupy.cuda.compiler._compile_with_cache_cuda and _compile_using_nvrtc_no_warning
    options = compile_options() + ("-ftz=true", f"-arch=sm_{arch}",
                                   "--device-as-default-execution-space")
    prog = compiler._NVRTCProgram(source, "kern.cu", name_expressions=list(name_expressions),
                                  method="cubin")
    _, mapping = prog.compile(options)
    return dict(mapping or {})


def probe() -> tuple[bool, str]:
    """(True, "") when the provider can run here, else (False, the first reason it cannot)."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA library load
        return False, f"CuPy is not importable ({_first_line(e)})"
    try:
        compile_options()
    except Exception as e:
        return False, f"CuPy cannot compile CUDA kernels here ({_first_line(e)}); {INSTALL_HINT}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            return False, "no CUDA device found"
        cupy.cuda.runtime.driverGetVersion()
    except Exception as e:
        return False, f"no usable CUDA GPU/driver ({_first_line(e)})"
    try:
        from .loader import NVRTC_OPTIONS
        with cupy.cuda.Device(0):
            fn = cupy.RawModule(code=PROBE_SOURCE, options=tuple(NVRTC_OPTIONS)).get_function("ep_probe")
            out = cupy.zeros(32, dtype=cupy.int32)
            fn((1,), (32,), (out,))
            got = out.get().tolist()
        if got != [7 * k for k in range(32)]:
            return False, f"a trivial CUDA kernel ran but returned wrong values {got[:4]}..."
    except Exception as e:
        return False, f"a trivial CUDA kernel does not compile and run ({_first_line(e)}); {INSTALL_HINT}"
    return True, ""

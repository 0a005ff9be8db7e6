import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore", message="provider 'cuda' is not available")

# Compiled kernels compile on the calling thread (`ep_cpu.jit_tier`): a test that checks which
# path ran, or compares it with an oracle, always exercises the compiled one. Subprocesses the
# tests start inherit it; tests/test_jit_tier.py checks the background mode.
os.environ.setdefault("EP_CPU_JIT", "sync")

# onnxruntime is the tests' oracle. On x86 CPUs without VNNI (AVX2, or AVX-512 before Cascade
# Lake) its default u8 x s8 products saturate their 16-bit pair sums (vpmaddubsw), so its int8
# MatMul/Gemm/Attention/LSTM results are off by whole units where ours are exact; its documented
# `session.x64quantprecision` switches them to exact u8 x u8 products (no effect on VNNI CPUs or
# float models). Every onnxruntime session the tests create asks for it, and is built without it
# where onnxruntime then fails (its s8 -> u8 weight rewrite also hits s8 x s8 QGemm and
# MatMulIntegerToFloat nodes, which were exact anyway, and shared initializers).
_X64_EXACT = "session.x64quantprecision"


def _exact_int8_onnxruntime() -> None:
    try:
        import onnxruntime
    except ImportError:
        return
    cls = onnxruntime.InferenceSession
    if getattr(cls, "_tests_exact_int8", False):
        return
    real_init = cls.__init__

    def init(self, path_or_bytes, sess_options=None, *args, **kwargs):
        options = sess_options if sess_options is not None else onnxruntime.SessionOptions()
        options.add_session_config_entry(_X64_EXACT, "1")
        try:
            real_init(self, path_or_bytes, options, *args, **kwargs)
        except Exception:   # noqa: BLE001 - onnxruntime's own exception types: built without
            options.add_session_config_entry(_X64_EXACT, "0")
            real_init(self, path_or_bytes, options, *args, **kwargs)

    cls.__init__ = init
    cls._tests_exact_int8 = True


_exact_int8_onnxruntime()


def _host_has_vnni() -> bool:
    try:
        import llvmlite.binding as ll
        features = ll.get_host_cpu_features()
    except Exception:   # noqa: BLE001 - no feature query: assume the worst
        return False
    return bool(features.get("avx512vnni", False) or features.get("avxvnni", False))


# Whether onnxruntime's u8 x s8 products are exact on this CPU in every kernel (VNNI); without
# it, the few models where session.x64quantprecision cannot apply need another oracle.
ORT_U8S8_EXACT = _host_has_vnni()


def ort_int8_exact(sess) -> bool:
    """Whether an onnxruntime session's u8 x s8 products are exact: a VNNI CPU, or the session
    was built in the exact mode (`_exact_int8_onnxruntime`)."""
    return ORT_U8S8_EXACT or sess.get_session_options().get_session_config_entry(_X64_EXACT) == "1"


def make_model(nodes, inputs, outputs, initializers=(), opset=17, domains=()):
    """Small helper: value infos as (name, elem_type, shape) tuples."""
    vi = lambda spec: helper.make_tensor_value_info(*spec)  # noqa: E731
    graph = helper.make_graph(nodes, "test", [vi(i) for i in inputs], [vi(o) for o in outputs],
                              initializer=list(initializers))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in domains]
    return helper.make_model(graph, opset_imports=imports)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


F32 = TensorProto.FLOAT


def _cuda_backends():
    try:
        from ep_cuda.testing import backends
    except ImportError:  # ep_cuda's test tools need CuPy only for the gpu backend
        return ["emu"]
    return backends()


@pytest.fixture(params=_cuda_backends())
def backend(request):
    """A CUDA kernel backend: the g++ emulator ('emu') or a real GPU ('gpu', marked cuda)."""
    from ep_cuda.testing import require
    require(request.param)
    return request.param

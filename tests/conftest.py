import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore", message="provider 'cuda' is not available")


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

"""float16 (and float8 data) variants of the contrib ops onnxruntime's CPU kernels take in half
precision: GroupQueryAttention, MatMulNBits, RotaryEmbedding, SkipLayerNormalization,
SkipSimplifiedLayerNormalization, GatherBlockQuantized (Inverse: test_contrib_misc.py). We compute in float32 and
round to float16 once; onnxruntime rounds some intermediates to float16, hence the tolerances."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto

from test_contrib_common import check, rand
from test_contrib_gqa import HD, NKV, NQ, _inputs
from test_contrib_quantized import _nbits_inputs

F16 = np.float16
HALF = dict(rtol=1e-2, atol=1e-2)


def _half(ins, names=None):
    return [(n, v.astype(F16) if v is not None and v.dtype == np.float32 and (names is None or n in names) else v)
            for n, v in ins]


@pytest.mark.parametrize("s,past", [(4, 0), (1, 5)])
@pytest.mark.parametrize("rotary", [False, True])
def test_gqa_float16(rng, s, past, rotary):
    ins = _half(_inputs(rng, s, past, rotary=rotary))
    check("GroupQueryAttention", ins, 3, {"num_heads": NQ, "kv_num_heads": NKV, "do_rotary": int(rotary)},
          consts=("cos", "sin"), output_types=[(TensorProto.FLOAT16, None)] * 3, **HALF)


@pytest.mark.parametrize("zp_kind", [None, "packed", "float"])
def test_matmul_nbits_float16(rng, zp_kind):
    k, n = 64, 16
    ins = _half(_nbits_inputs(rng, k, n, 4, 32, zp_kind, True))
    check("MatMulNBits", ins, attrs={"K": k, "N": n, "bits": 4, "block_size": 32},
          consts=("b", "scales", "zp", "bias"), **HALF)


def test_rotary_embedding_float16(rng):
    ang = rng.random((8, HD // 2)) * 6
    ins = [("x", rand(rng, 2, 3, 2 * HD, dtype=F16)), ("pid", np.array([2], np.int64)),
           ("cos", np.cos(ang).astype(F16)), ("sin", np.sin(ang).astype(F16))]
    check("RotaryEmbedding", ins, attrs={"num_heads": 2}, consts=("cos", "sin"), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("op", ["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"])
def test_skip_layer_norms_float16(rng, op):
    ins = [("x", rand(rng, 2, 3, 32, dtype=F16)), ("skip", rand(rng, 2, 3, 32, dtype=F16)),
           ("gamma", rand(rng, 32, dtype=F16))]
    if op == "SkipLayerNormalization":
        ins.append(("beta", rand(rng, 32, dtype=F16)))
    ins.append(("bias", rand(rng, 32, dtype=F16)))
    check(op, ins, 4, {"epsilon": 1e-5}, rtol=5e-3, atol=5e-3)


@pytest.mark.parametrize("data_type", [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, ml_dtypes.int4])
def test_gather_block_quantized_float16_scales(rng, data_type):
    data = (rng.standard_normal((6, 32)) * 4).astype(data_type) if data_type != ml_dtypes.int4 else \
        rng.integers(-8, 8, (6, 32)).astype(data_type)
    scales = (rng.random((6, 2)) * 0.1 + 0.01).astype(F16)
    check("GatherBlockQuantized", [("data", data), ("idx", np.array([[5, 0], [2, 2]], np.int64)), ("scales", scales)],
          attrs={"block_size": 16}, consts=("data", "scales"), rtol=1e-3, atol=1e-4)


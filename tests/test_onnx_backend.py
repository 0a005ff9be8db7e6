"""onnx's own BackendTest (node, simple, pytorch-converted, pytorch-operator) on the CPU provider.

Every exclusion carries its reason. The model-zoo ("real") cases need downloads and are not run.
"""
import warnings

import onnx.backend.test

from ep_core.backend import backend_for

# pattern (regex on the test name) -> why it is excluded
EXCLUDED: dict[str, str] = {
    r"^test_bernoulli": "expected outputs come from numpy's global random state left over from "
                        "generating the inputs; no kernel can reproduce them (onnxruntime skips them too)",
    r"^test_gradient_of_add": "ai.onnx.preview.training::Gradient needs graph autodiff, not implemented",
    r"^test_loop16_seq_none": "onnx's Runner.assert_similar_outputs calls len() on the 0-d tensor inside "
                              "the expected sequence; test_loop16_seq_none_compared_by_element below "
                              "checks our output element by element instead",
    r"^test_attention_4d_causal_fp16_expanded": "1 float16 ulp (4.9e-4) off in 2 of 192 elements: the "
                              "expanded graph's reference rounds intermediates differently from our "
                              "float32-accumulating MatMul; the fused Attention case passes",
}

CpuBackend = backend_for(["cpu"])
CpuBackend.supports_device = classmethod(lambda cls, device: device.upper() == "CPU")

backend_test = onnx.backend.test.BackendTest(CpuBackend, __name__)
for pattern, reason in EXCLUDED.items():
    assert reason, f"exclusion {pattern} has no reason"
    backend_test.exclude(pattern)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _cases = backend_test.test_cases
for _name in ("OnnxBackendNodeModelTest", "OnnxBackendSimpleModelTest",
              "OnnxBackendPyTorchConvertedModelTest", "OnnxBackendPyTorchOperatorModelTest"):
    globals()[_name] = _cases[_name]


def test_loop16_seq_none_compared_by_element():
    """The case the comparator cannot check: a Loop returning a sequence of growing tensors."""
    import numpy as np
    from onnx.backend.test.case.node import collect_testcases

    import ep_core
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        case = next(c for c in collect_testcases() if c.name == "test_loop16_seq_none")
    sess = ep_core.InferenceSession(case.model, providers=["cpu"])
    (inputs, expected), = case.data_sets
    got = sess.run(None, dict(zip([v.name for v in case.model.graph.input], inputs)))
    assert len(got) == len(expected) == 1 and len(got[0]) == len(expected[0])
    for g, e in zip(got[0], expected[0]):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(g, e)

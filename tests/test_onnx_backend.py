"""onnx's own BackendTest (node, simple, pytorch-converted, pytorch-operator) on the CPU provider.

Every exclusion carries its reason. The model-zoo ("real") cases need downloads and are not run.
"""
import warnings

import onnx.backend.test

from ep_core.backend import backend_for

# pattern (regex on the test name) -> why it is excluded
EXCLUDED: dict[str, str] = {}

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

"""Model quantization with onnxruntime.quantization's API: `quantize_dynamic`, `quantize_static`
(QDQ or QOperator, calibrated through our own runtime), `quant_pre_process`, and 4-bit block-wise
weight-only quantization into com.microsoft::MatMulNBits (`MatMul4BitsQuantizer`)."""
from .api import quant_pre_process, quantize_dynamic, quantize_static
from .calibrate import Calibrator, calibrate
from .matmul_nbits import DefaultWeightOnlyQuantConfig, MatMul4BitsQuantizer, MatMulNBitsQuantizer, quantize_matmul_4bits
from .quant_types import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType

__all__ = ["quantize_dynamic", "quantize_static", "quant_pre_process", "CalibrationDataReader",
           "CalibrationMethod", "QuantFormat", "QuantType", "Calibrator", "calibrate",
           "MatMul4BitsQuantizer", "MatMulNBitsQuantizer", "DefaultWeightOnlyQuantConfig",
           "quantize_matmul_4bits"]

"""`quantize_dynamic`, `quantize_static` and `quant_pre_process` with onnxruntime.quantization's
signatures (the arguments that matter here are honoured; the rest are accepted and ignored, as
listed in docs/quantization.md)."""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import onnx

from ep_core.errors import InvalidArgument

from .calibrate import calibrate
from .dynamic import DYNAMIC_OPS, quantize_dynamic_model
from .model_edit import ensure_opset, load_model, opset_version, save_model
from .quant_types import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
from .static_plan import STATIC_OPS, plan_static, set_params
from .static_qdq import write_qdq
from .static_qoperator import write_qoperator


def _enum(value: Any, kind, what: str):
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        return kind.from_string(value) if hasattr(kind, "from_string") else kind[value]
    if hasattr(value, "name") and value.name in kind.__members__:   # onnxruntime's own enum members
        return kind[value.name]
    raise InvalidArgument(f"{what} must be a {kind.__name__}, got {value!r}")


def _op_types(op_types_to_quantize: Sequence[str] | None, default: Sequence[str]) -> set[str]:
    return set(op_types_to_quantize) if op_types_to_quantize else set(default)


def _with_opset(model: onnx.ModelProto, minimum: int) -> onnx.ModelProto:
    """Models below `minimum` are converted (per-channel DequantizeLinear needs opset 13)."""
    have = opset_version(model)
    if have >= minimum:
        return model
    try:
        return onnx.version_converter.convert_version(model, minimum)
    except Exception as e:
        raise InvalidArgument(f"the model's opset {have} is below {minimum}, which quantization needs, "
                              f"and onnx could not convert it: {e}") from None


def quantize_dynamic(model_input: "str | os.PathLike | onnx.ModelProto", model_output: "str | os.PathLike",
                     op_types_to_quantize: Sequence[str] | None = None, per_channel: bool = False,
                     reduce_range: bool = False, weight_type: QuantType = QuantType.QInt8,
                     nodes_to_quantize: Sequence[str] | None = None, nodes_to_exclude: Sequence[str] | None = None,
                     use_external_data_format: bool = False, extra_options: dict | None = None,
                     nodes_to_include: Sequence[str] | None = None) -> None:
    """Quantize weights of MatMul / Gemm / Conv to 8 bits; activations are quantized at run time.
    `nodes_to_include` is an alias of onnxruntime's `nodes_to_quantize`."""
    weight_type = _enum(weight_type, QuantType, "weight_type")
    model = _with_opset(load_model(model_input), 11)
    quantize_dynamic_model(model, _op_types(op_types_to_quantize, DYNAMIC_OPS), per_channel, reduce_range,
                           weight_type, nodes_to_quantize or nodes_to_include, nodes_to_exclude,
                           dict(extra_options or {}))
    save_model(model, model_output, use_external_data_format)


def quantize_static(model_input: "str | os.PathLike | onnx.ModelProto", model_output: "str | os.PathLike",
                    calibration_data_reader: CalibrationDataReader | None = None,
                    quant_format: QuantFormat = QuantFormat.QDQ, op_types_to_quantize: Sequence[str] | None = None,
                    per_channel: bool = False, reduce_range: bool = False,
                    activation_type: QuantType = QuantType.QInt8, weight_type: QuantType = QuantType.QInt8,
                    nodes_to_quantize: Sequence[str] | None = None, nodes_to_exclude: Sequence[str] | None = None,
                    use_external_data_format: bool = False,
                    calibrate_method: CalibrationMethod = CalibrationMethod.MinMax,
                    calibration_providers: Sequence[str] | None = None, extra_options: dict | None = None,
                    calibration_cache_path: str | None = None, nodes_to_include: Sequence[str] | None = None,
                    progress: Callable[[int], None] | None = None) -> None:
    """Calibrate activation ranges on `calibration_data_reader`'s batches (run through our runtime),
    then write a QDQ or QOperator model. `progress(batches_done)` is called after every batch."""
    if calibration_data_reader is None:
        raise InvalidArgument("quantize_static needs a calibration_data_reader")
    quant_format = _enum(quant_format, QuantFormat, "quant_format")
    activation_type = _enum(activation_type, QuantType, "activation_type")
    weight_type = _enum(weight_type, QuantType, "weight_type")
    calibrate_method = _enum(calibrate_method, CalibrationMethod, "calibrate_method")
    if activation_type is QuantType.QInt8 and weight_type is QuantType.QUInt8:
        # No integer kernel (onnxruntime's included) takes int8 activations with uint8 weights.
        raise InvalidArgument("activation_type QInt8 with weight_type QUInt8 is not supported; "
                              "use QInt8 weights, or QUInt8 activations")
    extra = dict(extra_options or {})
    model = _with_opset(load_model(model_input), 13)
    plan = plan_static(model, _op_types(op_types_to_quantize, STATIC_OPS), nodes_to_quantize or nodes_to_include,
                       nodes_to_exclude)
    ranges = calibrate(model, plan.tensors, calibration_data_reader, calibrate_method, extra, progress)
    set_params(plan, ranges, activation_type, reduce_range, bool(extra.get("ActivationSymmetric", False)))
    if quant_format is QuantFormat.QDQ:
        write_qdq(model, plan, weight_type, per_channel, reduce_range)
    else:
        write_qoperator(model, plan, weight_type, per_channel, reduce_range)
    ensure_opset(model, "", 13)
    save_model(model, model_output, use_external_data_format)


def quant_pre_process(input_model: "str | os.PathLike | onnx.ModelProto | None" = None,
                      output_model_path: "str | os.PathLike | None" = None, skip_optimization: bool = False,
                      skip_onnx_shape: bool = False, skip_symbolic_shape: bool = False, auto_merge: bool = False,
                      int_max: int = 2 ** 31 - 1, guess_output_rank: bool = False, verbose: int = 0,
                      save_as_external_data: bool = False, all_tensors_to_one_file: bool = False,
                      external_data_location: str | None = None, external_data_size_threshold: int = 1024,
                      **deprecated_kwargs: Any) -> None:
    """Prepare a float model for quantization: our basic-level graph rewrites (constant folding,
    Identity/Dropout removal, Conv+BatchNormalization folding...) then onnx's shape inference,
    saved to `output_model_path`. (onnxruntime's symbolic shape inference is not reproduced;
    `skip_symbolic_shape` and its options are accepted and have no effect.)"""
    if input_model is None:
        input_model = deprecated_kwargs.pop("input_model_path", None)
    if input_model is None or output_model_path is None:
        raise InvalidArgument("quant_pre_process needs input_model and output_model_path")
    model = load_model(input_model)
    if not skip_optimization:
        model = _optimize_basic(model)
    if not skip_onnx_shape:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    if save_as_external_data:
        onnx.save_model(model, str(output_model_path), save_as_external_data=True,
                        all_tensors_to_one_file=all_tensors_to_one_file, location=external_data_location,
                        size_threshold=external_data_size_threshold)
    else:
        save_model(model, output_model_path)


def _optimize_basic(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as our session writes it after level-1 (basic) rewrites."""
    import tempfile

    import ep_core
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "optimized.onnx")
        opts = ep_core.SessionOptions()
        opts.graph_optimization_level = ep_core.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = out
        ep_core.InferenceSession(model.SerializeToString(), opts, providers=["cpu"])
        return onnx.load(out)

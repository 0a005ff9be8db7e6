"""ONNX element types <-> numpy dtypes, and the `tensor(float)` type strings of onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

try:  # bfloat16 / float8 / int4 come from ml_dtypes where available
    import ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes is a dependency
    ml_dtypes = None


def np_dtype(elem_type: int) -> np.dtype:
    """numpy dtype for an ONNX TensorProto element type."""
    if elem_type == TensorProto.STRING:
        return np.dtype(object)
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def elem_type(dtype) -> int:
    """ONNX element type for a numpy dtype."""
    dtype = np.dtype(dtype)
    if dtype == object or dtype.kind in "US":
        return TensorProto.STRING
    return helper.np_dtype_to_tensor_dtype(dtype)


_TYPE_NAMES = {
    TensorProto.FLOAT: "float", TensorProto.UINT8: "uint8", TensorProto.INT8: "int8",
    TensorProto.UINT16: "uint16", TensorProto.INT16: "int16", TensorProto.INT32: "int32",
    TensorProto.INT64: "int64", TensorProto.STRING: "string", TensorProto.BOOL: "bool",
    TensorProto.FLOAT16: "float16", TensorProto.DOUBLE: "double", TensorProto.UINT32: "uint32",
    TensorProto.UINT64: "uint64", TensorProto.COMPLEX64: "complex64",
    TensorProto.COMPLEX128: "complex128", TensorProto.BFLOAT16: "bfloat16",
    TensorProto.FLOAT8E4M3FN: "float8e4m3fn", TensorProto.FLOAT8E4M3FNUZ: "float8e4m3fnuz",
    TensorProto.FLOAT8E5M2: "float8e5m2", TensorProto.FLOAT8E5M2FNUZ: "float8e5m2fnuz",
    TensorProto.UINT4: "uint4", TensorProto.INT4: "int4",
}
for _name, _label in (("FLOAT4E2M1", "float4e2m1"), ("FLOAT8E8M0", "float8e8m0"), ("INT2", "int2"),
                      ("UINT2", "uint2"), ("FLOAT6E2M3", "float6e2m3"), ("FLOAT6E3M2", "float6e3m2")):
    if hasattr(TensorProto, _name):  # newer element types, present in recent onnx releases
        _TYPE_NAMES[getattr(TensorProto, _name)] = _label


def type_string(tp: onnx.TypeProto | None) -> str:
    """onnxruntime-style type string: tensor(float), seq(tensor(int64)), optional(...), map(...)."""
    if tp is None:
        return "unknown"
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({_TYPE_NAMES.get(tp.tensor_type.elem_type, 'unknown')})"
    if kind == "sparse_tensor_type":
        return f"sparse_tensor({_TYPE_NAMES.get(tp.sparse_tensor_type.elem_type, 'unknown')})"
    if kind == "sequence_type":
        return f"seq({type_string(tp.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({type_string(tp.optional_type.elem_type)})"
    if kind == "map_type":
        key = _TYPE_NAMES.get(tp.map_type.key_type, "unknown")
        return f"map({key},{type_string(tp.map_type.value_type)})"
    return "unknown"


def dtype_type_string(dtype) -> str:
    """onnxruntime's type string of a tensor with this numpy dtype: float32 -> 'tensor(float)'."""
    return f"tensor({_TYPE_NAMES.get(elem_type(dtype), 'unknown')})"


def tensor_shape(tp: onnx.TypeProto | None) -> list | None:
    """Shape as a list of int / str (symbolic) / None (unknown dim); None if the rank is unknown.

    A negative declared size is unknown (as in onnxruntime); 0 stays a static size, as there.
    """
    if tp is None or tp.WhichOneof("value") != "tensor_type":
        return None
    tt = tp.tensor_type
    if not tt.HasField("shape"):
        return None
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(d.dim_value)
        elif d.HasField("dim_value"):  # exporters write -1 for "any size": onnxruntime reads it so
            dims.append(None)
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def tensor_dtype(tp: onnx.TypeProto | None) -> np.dtype | None:
    """numpy dtype of a tensor TypeProto, None when unknown or not a tensor."""
    if tp is None or tp.WhichOneof("value") != "tensor_type" or tp.tensor_type.elem_type == 0:
        return None
    try:
        return np_dtype(tp.tensor_type.elem_type)
    except (KeyError, TypeError, ValueError):
        return None

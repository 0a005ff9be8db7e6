"""ctypes mirror of `ep_core/include/ep_plugin.h`: status codes, structures, the versioned
function table, and the numpy <-> DLPack dtype mapping used across the C plugin ABI."""
from __future__ import annotations

import ctypes as C

import ml_dtypes
import numpy as np

from .errors import InvalidArgument

# ---- the header's types ------------------------------------------------------------------------
EP_OK, EP_FAIL, EP_INVALID_ARGUMENT, EP_NOT_IMPLEMENTED, EP_OUT_OF_MEMORY = range(5)
_STATUS = {1: "EP_FAIL", 2: "EP_INVALID_ARGUMENT", 3: "EP_NOT_IMPLEMENTED", 4: "EP_OUT_OF_MEMORY"}
EP_DEVICE_CPU, EP_DEVICE_EXT = 1, 12
EP_NOT_CLAIMED, EP_CLAIM_NODE = -1, -2
MSG_LEN = 1024


class EpDevice(C.Structure):
    _fields_ = [("device_type", C.c_int32), ("device_id", C.c_int32)]


class EpDataType(C.Structure):
    _fields_ = [("code", C.c_uint8), ("bits", C.c_uint8), ("lanes", C.c_uint16)]


class EpTensor(C.Structure):
    _fields_ = [("data", C.c_void_p), ("device", EpDevice), ("ndim", C.c_int32),
                ("dtype", EpDataType), ("shape", C.POINTER(C.c_int64)),
                ("strides", C.POINTER(C.c_int64)), ("byte_offset", C.c_uint64)]


class EpValueInfo(C.Structure):
    _fields_ = [("name", C.c_char_p), ("elem_type", C.c_int32), ("rank", C.c_int32),
                ("dims", C.POINTER(C.c_int64))]


class EpAttribute(C.Structure):
    _fields_ = [("name", C.c_char_p), ("type", C.c_int32), ("i", C.c_int64), ("f", C.c_double),
                ("s", C.c_char_p), ("n", C.c_int64), ("ints", C.POINTER(C.c_int64)),
                ("floats", C.POINTER(C.c_double)), ("strings", C.POINTER(C.c_char_p)),
                ("tensor", C.POINTER(EpTensor))]


class EpNode(C.Structure):
    _fields_ = [("name", C.c_char_p), ("op_type", C.c_char_p), ("domain", C.c_char_p),
                ("opset", C.c_int32), ("since_version", C.c_int32),
                ("n_inputs", C.c_int32), ("inputs", C.POINTER(EpValueInfo)),
                ("n_outputs", C.c_int32), ("outputs", C.POINTER(EpValueInfo)),
                ("n_attributes", C.c_int32), ("attributes", C.POINTER(EpAttribute))]


class EpGraphView(C.Structure):
    _fields_ = [("n_nodes", C.c_int32), ("nodes", C.POINTER(EpNode)),
                ("n_external_outputs", C.c_int32), ("external_outputs", C.POINTER(C.c_char_p))]


_ALLOC_FN = C.CFUNCTYPE(C.c_int32, C.c_void_p, C.c_int32, C.c_int32, C.POINTER(C.c_int64),
                        EpDataType, C.POINTER(EpTensor))


class EpOutputs(C.Structure):
    _fields_ = [("handle", C.c_void_p), ("count", C.c_int32), ("allocate", _ALLOC_FN)]


_S, _VP, _MSG = C.c_int32, C.c_void_p, [C.c_char_p, C.c_size_t]
_API_FUNCS = [  # (member, signature) in header order
    ("create_provider", C.CFUNCTYPE(_S, C.c_int32, C.POINTER(C.c_char_p), C.POINTER(C.c_char_p),
                                    C.POINTER(_VP), *_MSG)),
    ("release_provider", C.CFUNCTYPE(None, _VP)),
    ("get_device", C.CFUNCTYPE(_S, _VP, C.POINTER(EpDevice), *_MSG)),
    ("get_capability", C.CFUNCTYPE(_S, _VP, C.POINTER(EpGraphView), C.POINTER(C.c_int32), *_MSG)),
    ("compute", C.CFUNCTYPE(_S, _VP, C.POINTER(EpNode), C.c_int32, C.POINTER(EpTensor),
                            C.POINTER(EpOutputs), *_MSG)),
    ("compile", C.CFUNCTYPE(_S, _VP, C.POINTER(EpGraphView), C.c_int32, C.POINTER(C.c_char_p),
                            C.c_int32, C.POINTER(C.c_char_p), C.POINTER(_VP), *_MSG)),
    ("compute_compiled", C.CFUNCTYPE(_S, _VP, _VP, C.c_int32, C.POINTER(EpTensor),
                                     C.POINTER(EpOutputs), *_MSG)),
    ("release_compiled", C.CFUNCTYPE(None, _VP, _VP)),
    ("allocate", C.CFUNCTYPE(_S, _VP, C.POINTER(EpDevice), C.c_size_t, C.POINTER(_VP), *_MSG)),
    ("free", C.CFUNCTYPE(None, _VP, C.POINTER(EpDevice), _VP)),
    ("copy_tensor", C.CFUNCTYPE(_S, _VP, C.POINTER(EpTensor), C.POINTER(EpTensor), *_MSG)),
]
_REQUIRED = ("create_provider", "release_provider", "get_device", "get_capability")
_MEMORY = ("allocate", "free", "copy_tensor")


_HEADER = [("abi_major", C.c_uint32), ("abi_minor", C.c_uint32), ("struct_size", C.c_uint32)]


class _ApiHeader(C.Structure):  # read first: a different major may lay the rest out differently
    _fields_ = _HEADER


class EpPluginApi(C.Structure):
    _fields_ = _HEADER + [("name", C.c_char_p)] + list(_API_FUNCS)


# ---- dtypes: numpy <-> DLPack (code, bits) -----------------------------------------------------
def _dl_table() -> dict[np.dtype, tuple[int, int]]:
    table = {np.dtype(np.bool_): (6, 8)}
    for t in (np.int8, np.int16, np.int32, np.int64):
        table[np.dtype(t)] = (0, np.dtype(t).itemsize * 8)
    for t in (np.uint8, np.uint16, np.uint32, np.uint64):
        table[np.dtype(t)] = (1, np.dtype(t).itemsize * 8)
    for t in (np.float16, np.float32, np.float64):
        table[np.dtype(t)] = (2, np.dtype(t).itemsize * 8)
    table[np.dtype(ml_dtypes.bfloat16)] = (4, 16)
    return table


_TO_DL = _dl_table()
_FROM_DL = {v: k for k, v in _TO_DL.items()}


def _dl_dtype(dtype: np.dtype, plugin: str) -> EpDataType:
    try:
        code, bits = _TO_DL[np.dtype(dtype)]
    except KeyError:
        raise InvalidArgument(f"provider plugin '{plugin}': dtype {dtype} has no DLPack "
                              f"description, it cannot cross the C plugin ABI") from None
    return EpDataType(code, bits, 1)


def _np_dtype(dt: EpDataType) -> np.dtype:
    if dt.lanes != 1 or (dt.code, dt.bits) not in _FROM_DL:
        raise ValueError(f"unsupported dtype (code={dt.code}, bits={dt.bits}, lanes={dt.lanes})")
    return _FROM_DL[(dt.code, dt.bits)]

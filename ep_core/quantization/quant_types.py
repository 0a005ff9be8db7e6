"""The enums and the calibration-data protocol of `onnxruntime.quantization`, same names and
values, so a user's script needs only its import changed."""
from __future__ import annotations

import abc
from enum import Enum
from typing import Any

import numpy as np
from onnx import TensorProto


class QuantType(Enum):
    QInt8 = 0
    QUInt8 = 1

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def from_string(t: str) -> "QuantType":
        try:
            return QuantType[t]
        except KeyError:
            raise ValueError(f"unknown QuantType {t!r}; expected QInt8 or QUInt8") from None

    @property
    def tensor_type(self) -> int:
        return TensorProto.INT8 if self is QuantType.QInt8 else TensorProto.UINT8

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(np.int8 if self is QuantType.QInt8 else np.uint8)


class QuantFormat(Enum):
    QOperator = 0
    QDQ = 1

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def from_string(fmt: str) -> "QuantFormat":
        for f in QuantFormat:
            if f.name.lower() == fmt.lower():
                return f
        raise ValueError(f"unknown QuantFormat {fmt!r}; expected QDQ or QOperator")


class CalibrationMethod(Enum):
    MinMax = 0
    Entropy = 1
    Percentile = 2


class CalibrationDataReader(metaclass=abc.ABCMeta):
    """Yields feed dicts ({input name: array}) until it returns None; `rewind` restarts it."""

    @abc.abstractmethod
    def get_next(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        raise TypeError(f"{type(self).__name__} does not know its length")

    def set_range(self, start_index: int, end_index: int) -> None:
        raise NotImplementedError

    def rewind(self) -> None:
        """Optional in onnxruntime; readers that can restart override it."""

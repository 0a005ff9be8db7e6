"""Parsed attributes of the convolution, pooling and normalization families, shared by every
provider (as onnxruntime's `conv_attributes.h` / `pool_attributes.h` serve its CPU and CUDA
kernels).

A kernel builds one of these in `__init__` (`ConvAttributes.from_node(node)`): the attributes
are read and checked once, a bad one is InvalidGraph naming the node, and `compute` asks only for
what depends on shapes (`geometry(input_spatial, weight_shape)`: pads and output shape).
Omitted attributes take the ONNX schema's default of the node's opset (as `Kernel.attr`); the
explicit fallbacks below apply only where no schema exists (onnxruntime's ONNX-domain
SimplifiedLayerNormalization and LayerNormalization < 17, the `com.ep_core` fused ops,
`com.microsoft` ops) or to attributes an older opset does not have.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

from .errors import Fail, InvalidGraph
from .graph import Node
from .kernel import schema_defaults

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def attribute(node: Node, name: str, fallback: Any = None) -> Any:
    """The node's value, else its schema's default, else `fallback` (same rule as Kernel.attr)."""
    value = node.attrs.get(name)
    if value is not None:
        return value
    return schema_defaults(node).get(name, fallback)


def invalid(node: Node, message: str) -> InvalidGraph:
    """The typed error for a bad attribute, naming the node."""
    return InvalidGraph(f"{node.describe()}: {message}")


def int_attr(node: Node, name: str, fallback: int | None = None, minimum: int | None = None) -> int | None:
    """An int attribute (None when absent without fallback), checked against `minimum`."""
    value = attribute(node, name, fallback)
    if value is None:
        return None
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise invalid(node, f"attribute '{name}' must be an int, got {value!r}") from None
    if minimum is not None and out < minimum:
        raise invalid(node, f"attribute '{name}' must be >= {minimum}, got {out}")
    return out


def float_attr(node: Node, name: str, fallback: float | None = None) -> float | None:
    value = attribute(node, name, fallback)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise invalid(node, f"attribute '{name}' must be a float, got {value!r}") from None


def ints_attr(node: Node, name: str, minimum: int | None = None) -> tuple[int, ...] | None:
    """An ints attribute as a tuple (None when absent), each value checked against `minimum`."""
    value = attribute(node, name)
    if value is None:
        return None
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise invalid(node, f"attribute '{name}' must be a list of ints, got {value!r}") from None
    if minimum is not None and any(v < minimum for v in out):
        raise invalid(node, f"attribute '{name}' must hold values >= {minimum}, got {list(out)}")
    return out


def _auto_pad(node: Node) -> str:
    mode = attribute(node, "auto_pad") or "NOTSET"
    if mode not in AUTO_PADS:
        raise invalid(node, f"auto_pad must be one of {', '.join(AUTO_PADS)}, got {mode!r}")
    return mode


def _spatial_rank(node: Node, lists: dict[str, tuple | None], pads: tuple | None) -> int | None:
    """Spatial rank implied by the per-axis attributes (None: learnt from the inputs); they must agree."""
    nd = None
    for name, v in lists.items():
        if v is None:
            continue
        if nd is None:
            nd = len(v)
        elif len(v) != nd:
            raise invalid(node, f"attribute '{name}' has {len(v)} values where the other spatial "
                                f"attributes have {nd}")
    if pads is not None:
        if len(pads) % 2 or (nd is not None and len(pads) != 2 * nd):
            want = "an even count" if nd is None else f"{2 * nd}"
            raise invalid(node, f"attribute 'pads' needs {want} values (begins, then ends), "
                                f"got {len(pads)}")
        nd = len(pads) // 2 if nd is None else nd
    return nd


def _same_pads(n: int, stride: int, k_eff: int, upper: bool) -> tuple[int, int, int]:
    """(begin, end, out) of SAME_UPPER / SAME_LOWER: out = ceil(n / stride)."""
    o = -(-n // stride)
    total = max(0, (o - 1) * stride + k_eff - n)
    small = total // 2
    return (small, total - small, o) if upper else (total - small, small, o)


# ----------------------------------------------------------------------------- convolution

def conv_geometry(in_shape: Sequence[int], kernel_shape: Sequence[int], strides, dilations, pads,
                  auto_pad: str) -> tuple[list[int], list[int], list[int]]:
    """(pads_begin, pads_end, out_shape) for a convolution/pool window without ceil mode."""
    nd = len(in_shape)
    strides = list(strides or [1] * nd)
    dilations = list(dilations or [1] * nd)
    pads = list(pads or [0] * (2 * nd))
    begin, end, out = [], [], []
    for i in range(nd):
        k_eff = (kernel_shape[i] - 1) * dilations[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            b, e, o = _same_pads(in_shape[i], strides[i], k_eff, auto_pad == "SAME_UPPER")
        elif auto_pad == "VALID":
            b = e = 0
            o = (in_shape[i] - k_eff) // strides[i] + 1
        else:
            b, e = pads[i], pads[i + nd]
            o = (in_shape[i] + b + e - k_eff) // strides[i] + 1
        begin.append(b)
        end.append(e)
        out.append(max(int(o), 0))
    return begin, end, out


class ConvGeometry(NamedTuple):
    kernel_shape: list[int]
    strides: list[int]
    dilations: list[int]
    pads_begin: list[int]
    pads_end: list[int]
    output_shape: list[int]     # spatial dims only


class ConvTransposeGeometry(NamedTuple):
    kernel_shape: list[int]
    strides: list[int]
    dilations: list[int]
    pads_begin: list[int]
    output_shape: list[int]     # spatial dims only
    full_shape: list[int]       # the uncropped output: stride*(in-1) + output_padding + k_eff


@dataclass(frozen=True)
class ConvAttributes:
    """Conv / ConvTranspose / ConvInteger / QLinearConv / DeformConv / FusedConv attributes.

    `kernel_shape`, `strides`, `dilations`, `pads` are None when omitted: the spatial rank is then
    learnt from the weight at run time."""
    where: str
    kernel_shape: tuple[int, ...] | None
    strides: tuple[int, ...] | None
    dilations: tuple[int, ...] | None
    pads: tuple[int, ...] | None
    auto_pad: str
    group: int
    rank: int | None                               # spatial rank fixed by the attributes
    output_padding: tuple[int, ...] | None = None  # ConvTranspose only
    output_shape: tuple[int, ...] | None = None    # ConvTranspose only
    offset_group: int = 1                          # DeformConv only

    @classmethod
    def from_node(cls, node: Node) -> "ConvAttributes":
        ks = ints_attr(node, "kernel_shape", minimum=1)
        strides = ints_attr(node, "strides", minimum=1)
        dilations = ints_attr(node, "dilations", minimum=1)
        pads = ints_attr(node, "pads")
        out_pad = ints_attr(node, "output_padding", minimum=0)
        lists = {"kernel_shape": ks, "strides": strides, "dilations": dilations,
                 "output_padding": out_pad}
        rank = _spatial_rank(node, lists, pads)
        return cls(node.describe(), ks, strides, dilations, pads, _auto_pad(node),
                   int_attr(node, "group", 1, minimum=1), rank, out_pad,
                   ints_attr(node, "output_shape", minimum=0),
                   int_attr(node, "offset_group", 1, minimum=1))

    def spatial(self, w_shape: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
        """(kernel_shape, strides, dilations) for a weight of `w_shape` (M, C/group, *kernel)."""
        nd = len(w_shape) - 2
        if nd < 1 or (self.rank is not None and nd != self.rank):
            want = "at least 3" if self.rank is None else f"{self.rank + 2}"
            raise Fail(f"{self.where}: the weight has rank {len(w_shape)}, the attributes need {want}")
        ks = list(self.kernel_shape) if self.kernel_shape is not None else [int(d) for d in w_shape[2:]]
        return ks, list(self.strides or [1] * nd), list(self.dilations or [1] * nd)

    def _check_input(self, in_spatial: Sequence[int], nd: int) -> None:
        if len(in_spatial) != nd:
            raise Fail(f"{self.where}: the input has {len(in_spatial)} spatial axes, the weight {nd}")

    def geometry(self, in_spatial: Sequence[int], w_shape: Sequence[int]) -> ConvGeometry:
        """Kernel, strides, dilations, pads and output spatial shape for this input and weight."""
        ks, strides, dil = self.spatial(w_shape)
        self._check_input(in_spatial, len(ks))
        begin, end, out = conv_geometry(list(in_spatial), ks, strides, dil, self.pads, self.auto_pad)
        return ConvGeometry(ks, strides, dil, begin, end, out)

    def pads_for(self, in_spatial: Sequence[int], w_shape: Sequence[int]) -> tuple[list[int], list[int]]:
        g = self.geometry(in_spatial, w_shape)
        return g.pads_begin, g.pads_end

    def transpose_geometry(self, in_spatial: Sequence[int], w_shape: Sequence[int]) -> ConvTransposeGeometry:
        """ConvTranspose's pads and output: from `output_shape` or SAME (the pads are derived from
        the requested size), else from `pads` (VALID: none)."""
        ks, strides, dil = self.spatial(w_shape)
        nd = len(ks)
        self._check_input(in_spatial, nd)
        ins = list(in_spatial)
        opad = list(self.output_padding or [0] * nd)
        full = [strides[i] * (ins[i] - 1) + opad[i] + (ks[i] - 1) * dil[i] + 1 for i in range(nd)]
        if self.output_shape or self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            outs = (list(self.output_shape)[-nd:] if self.output_shape
                    else [ins[i] * strides[i] for i in range(nd)])
            if len(outs) != nd:
                raise Fail(f"{self.where}: output_shape {list(self.output_shape)} has fewer than "
                           f"{nd} spatial dims")
            total = [full[i] - outs[i] for i in range(nd)]
            begin = [t // 2 if self.auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
        else:
            pads = [0] * (2 * nd) if self.auto_pad == "VALID" else list(self.pads or [0] * (2 * nd))
            begin = pads[:nd]
            outs = [full[i] - pads[i] - pads[i + nd] for i in range(nd)]
        return ConvTransposeGeometry(ks, strides, dil, begin, outs, full)


# ----------------------------------------------------------------------------- pooling

def pool_geometry(in_shape: Sequence[int], ks: Sequence[int], strides, dil, pads, auto_pad: str,
                  ceil_mode: bool) -> tuple[list[int], list[int], list[int], list[int]]:
    """(pads_begin, pads_end, extra_end, out_shape); extra_end pads past the declared pads so
    ceil-mode windows fit (those cells never count as padding)."""
    nd = len(in_shape)
    pads = list(pads or [0] * (2 * nd))
    begin, end, extra, out = [], [], [], []
    for i in range(nd):
        n, s = in_shape[i], strides[i]
        k_eff = (ks[i] - 1) * dil[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            b, e, o = _same_pads(n, s, k_eff, auto_pad == "SAME_UPPER")
        else:
            b, e = (0, 0) if auto_pad == "VALID" else (pads[i], pads[i + nd])
            span = n + b + e - k_eff
            if ceil_mode:
                o = -(-span // s) + 1
                if (o - 1) * s >= n + b:  # a window may not start in the right padding
                    o -= 1
            else:
                o = span // s + 1
        o = max(int(o), 0)
        need = (o - 1) * s + k_eff - (n + b + e) if o > 0 else 0
        begin.append(b)
        end.append(e)
        extra.append(max(need, 0))
        out.append(o)
    return begin, end, extra, out


class PoolGeometry(NamedTuple):
    pads_begin: list[int]
    pads_end: list[int]
    extra_end: list[int]        # past pads_end, so ceil-mode windows fit (never counted as padding)
    output_shape: list[int]     # spatial dims only


@dataclass(frozen=True)
class PoolAttributes:
    """MaxPool / AveragePool / LpPool / MaxUnpool (and onnxruntime's QLinearAveragePool)
    attributes, with strides and dilations resolved against the required kernel_shape."""
    where: str
    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...] | None
    auto_pad: str
    ceil_mode: bool
    count_include_pad: bool     # AveragePool
    storage_order: int          # MaxPool's Indices: 0 row-major, 1 column-major
    p: float                    # LpPool

    @classmethod
    def from_node(cls, node: Node) -> "PoolAttributes":
        ks = ints_attr(node, "kernel_shape", minimum=1)
        if ks is None:
            raise invalid(node, "required attribute 'kernel_shape' is missing")
        strides = ints_attr(node, "strides", minimum=1)
        dilations = ints_attr(node, "dilations", minimum=1)
        pads = ints_attr(node, "pads")
        _spatial_rank(node, {"kernel_shape": ks, "strides": strides, "dilations": dilations}, pads)
        nd = len(ks)
        order = int_attr(node, "storage_order", 0)
        if order not in (0, 1):
            raise invalid(node, f"storage_order must be 0 or 1, got {order}")
        # Attributes an older opset lacks (ceil_mode < 10, count_include_pad < 7) are off there.
        return cls(node.describe(), ks, strides or (1,) * nd, dilations or (1,) * nd, pads,
                   _auto_pad(node), bool(int_attr(node, "ceil_mode", 0)),
                   bool(int_attr(node, "count_include_pad", 0)), order,
                   float_attr(node, "p", 2.0))

    def geometry(self, in_spatial: Sequence[int]) -> PoolGeometry:
        if len(in_spatial) != len(self.kernel_shape):
            raise Fail(f"{self.where}: the input has {len(in_spatial)} spatial axes, kernel_shape "
                       f"{len(self.kernel_shape)}")
        return PoolGeometry(*pool_geometry(list(in_spatial), self.kernel_shape, self.strides,
                                           self.dilations, self.pads, self.auto_pad, self.ceil_mode))


# ----------------------------------------------------------------------------- normalization

# Where the op has no ONNX schema (see the module's docstring): the values ONNX gives its schemas.
NORM_FALLBACKS = {"axis": -1, "epsilon": 1e-5, "stash_type": 1}


@dataclass(frozen=True)
class NormAttributes:
    """Layer / RMS / Group / Instance / Batch normalization attributes."""
    where: str
    epsilon: float
    axis: int
    stash_type: int             # 1: statistics in float32, 11: float64
    num_groups: int | None      # GroupNormalization

    @classmethod
    def from_node(cls, node: Node, epsilon: float | None = None) -> "NormAttributes":
        """`epsilon`: the op's own default where it has no schema (e.g. 1e-12 for onnxruntime's
        SkipLayerNormalization)."""
        eps = float_attr(node, "epsilon", NORM_FALLBACKS["epsilon"] if epsilon is None else epsilon)
        if eps < 0:
            raise invalid(node, f"epsilon must be >= 0, got {eps}")
        groups = None
        if node.op_type == "GroupNormalization":
            groups = int_attr(node, "num_groups", minimum=1)
            if groups is None:
                raise invalid(node, "required attribute 'num_groups' is missing")
        return cls(node.describe(), eps, int_attr(node, "axis", NORM_FALLBACKS["axis"]),
                   int_attr(node, "stash_type", NORM_FALLBACKS["stash_type"]), groups)

    def axis_for(self, rank: int) -> int:
        """`axis` made non-negative for an input of `rank`."""
        if not -rank <= self.axis < rank:
            raise Fail(f"{self.where}: axis {self.axis} is out of range for an input of rank {rank}")
        return self.axis + rank if self.axis < 0 else self.axis


@dataclass(frozen=True)
class LRNAttributes:
    where: str
    size: int
    alpha: float
    beta: float
    bias: float

    @classmethod
    def from_node(cls, node: Node) -> "LRNAttributes":
        size = int_attr(node, "size", minimum=1)
        if size is None:
            raise invalid(node, "required attribute 'size' is missing")
        return cls(node.describe(), size, float_attr(node, "alpha"), float_attr(node, "beta"),
                   float_attr(node, "bias"))


class GemmAttributes(NamedTuple):
    """Gemm / FusedGemm (ours and com.microsoft's), on the CPU and CUDA:
    Y = alpha * A' @ B' + beta * C, A' = A^T when trans_a (B' likewise). Unpacks in that order."""
    alpha: float
    beta: float
    trans_a: bool
    trans_b: bool

    @classmethod
    def from_node(cls, node: Node) -> "GemmAttributes":
        return cls(float_attr(node, "alpha", 1.0), float_attr(node, "beta", 1.0),
                   bool(int_attr(node, "transA", 0)), bool(int_attr(node, "transB", 0)))

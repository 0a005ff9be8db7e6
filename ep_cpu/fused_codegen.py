"""Code generation for the CPU's fused element-wise groups (`ep_cpu.fused`): which ONNX ops a
generated kernel computes and how (templates over the operands, helpers written for numba and for
numpy), the kernel module's source (`generate`) and the numpy program of the same expressions
(`numpy_program`).

The kernel walks output elements [e0, e1) as rows of the last collapsed dimension; inputs of unit
last-dimension stride are read per element, broadcast ones once a row. Members run in registers
in one loop; where some run as `vector_math`'s 16-float vectors (float32 Exp, Sigmoid, Tanh, Gelu,
Silu), each row goes in blocks of BLOCK elements: a loop over the plain members before a vector
member, its vector call over the block, the next loop, values passing between them through
per-member scratch arrays in L1. Indices are unsigned: with a signed one numba wraps negative
indices around, which kept LLVM from vectorizing the loops (5.6 against 1.6 us over 12000 floats).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from ep_core.fusion import Group
from ep_core.graph import Node

OUTER_DIMS = 4              # dimensions besides the last one a kernel walks (more: numpy runs)

# op -> expression over its arguments {0}, {1} and parameters {p0}, {p1}; the helpers (_max,
# _relu, ...) have a numba definition (`_PRELUDE`) and a numpy one (`_numpy_helpers`).
BINARY = {"Add": "({0} + {1})", "Sub": "({0} - {1})", "Mul": "({0} * {1})", "Div": "({0} / {1})",
          "Max": "_max({0}, {1})", "Min": "_min({0}, {1})", "Pow": "_pow({0}, {1})",
          "PRelu": "_prelu({0}, {1})"}
UNARY = {"Abs": "_abs({0})", "Neg": "(-{0})", "Exp": "_exp({0})", "Log": "_log({0})",
         "Sqrt": "_sqrt({0})", "Reciprocal": "(_ONE / {0})", "Floor": "_floor({0})",
         "Ceil": "_ceil({0})", "Erf": "_erf({0})", "Sin": "_sin({0})", "Cos": "_cos({0})"}
# activations (also FusedAdd's `activation`): template, parameters (name, default) in
# onnxruntime's positional order of `activation_params`
ACTIVATIONS = {"Relu": ("_relu({0})", ()), "Sigmoid": ("_sigmoid({0})", ()), "Tanh": ("_tanh({0})", ()),
               "LeakyRelu": ("_leaky({0}, {p0})", (("alpha", 0.01),)),
               "HardSigmoid": ("_hsigmoid({0}, {p0}, {p1})", (("alpha", 0.2), ("beta", 0.5))),
               "Clip": ("_clip({0}, {p0}, {p1})", (("min", -math.inf), ("max", math.inf))),
               "HardSwish": ("_hswish({0})", ()), "Gelu": ("_gelu({0})", ()), "Silu": ("_silu({0})", ())}
# members computed as vector_math's 16-float vectors in float32 (its kinds): numba calls libm's
# scalar expf for them, ~10x slower than numpy's vector loops
VECTOR_KINDS = {"Exp": 4, "Sigmoid": 0, "Tanh": 3, "Gelu": 2, "Silu": 1}


class Spec(tuple):
    """How the generated code computes one member: `template` over the operands, parameters
    `p0`, `p1`; `vector` (an op of VECTOR_KINDS or None) and `pre`, the template of the value
    that vector op is applied to."""
    __slots__ = ()

    def __new__(cls, template: str, p0: float = 0.0, p1: float = 0.0, vector: str | None = None,
                pre: str = "{0}") -> "Spec":
        return tuple.__new__(cls, (template, p0, p1, vector, pre))

    template, p0, p1, vector, pre = (property(lambda self, k=k: self[k]) for k in range(5))


_PRELUDE = '''
import math
import numba
import numpy as np

_T = np.{dtype}
_U = numba.uint64
_ONE = _T(1.0)
_ZERO = _T(0.0)
_SIXTH = _T(1.0 / 6.0)
_HALF = _T(0.5)
_RSQRT2 = _T(0.7071067811865476)


@numba.njit(inline="always")
def _max(a, b):
    return a if (a >= b or a != a) else b   # NaN wins, as in numpy's maximum


@numba.njit(inline="always")
def _min(a, b):
    return a if (a <= b or a != a) else b


@numba.njit(inline="always")
def _relu(a):
    return _ZERO if a < _ZERO else a


@numba.njit(inline="always")
def _leaky(a, alpha):
    return a if a >= _ZERO else a * alpha


@numba.njit(inline="always")
def _prelu(a, slope):
    return a * slope if a < _ZERO else a


@numba.njit(inline="always")
def _clip(a, lo, hi):
    a = lo if a < lo else a
    return hi if a > hi else a


@numba.njit(inline="always")
def _hsigmoid(a, alpha, beta):
    return _clip(alpha * a + beta, _ZERO, _ONE)


@numba.njit(inline="always")
def _hswish(a):
    return a * _clip(a * _SIXTH + _HALF, _ZERO, _ONE)


@numba.njit(inline="always")
def _sigmoid(a):
    return _ONE / (_ONE + math.exp(-a))


@numba.njit(inline="always")
def _silu(a):
    return a / (_ONE + math.exp(-a))


@numba.njit(inline="always")
def _gelu(a):
    return a * (_HALF * (_ONE + math.erf(a * _RSQRT2)))


_abs, _exp, _log, _sqrt, _tanh, _erf = abs, math.exp, math.log, math.sqrt, math.tanh, math.erf
_sin, _cos, _floor, _ceil = math.sin, math.cos, np.floor, np.ceil


@numba.njit(inline="always")
def _pow(a, b):
    return a ** b
'''


def _numpy_helpers(dtype: np.dtype) -> dict:
    """The helpers over whole arrays (the path before a kernel is compiled, or without numba)."""
    t = dtype.type
    zero, one = t(0), t(1)

    def clip(a, lo, hi):
        return np.minimum(np.maximum(a, lo), hi)   # NaN passes, as in the kernel's compares

    return {"np": np, "_T": t, "_ONE": one, "_ZERO": zero,
            "_max": np.maximum, "_min": np.minimum, "_relu": lambda a: np.maximum(a, zero),
            "_leaky": lambda a, alpha: np.where(a >= zero, a, a * alpha),
            "_prelu": lambda a, s: np.where(a < zero, a * s, a), "_clip": clip,
            "_hsigmoid": lambda a, alpha, beta: clip(alpha * a + beta, zero, one),
            "_hswish": lambda a: a * clip(a * t(1.0 / 6.0) + t(0.5), zero, one),
            "_sigmoid": lambda a: one / (one + np.exp(-a)), "_silu": lambda a: a / (one + np.exp(-a)),
            "_gelu": lambda a: a * (t(0.5) * (one + _np_erf(a * t(0.7071067811865476)))),
            "_abs": np.abs, "_exp": np.exp,
            "_log": np.log, "_sqrt": np.sqrt, "_tanh": np.tanh, "_erf": _np_erf, "_sin": np.sin,
            "_cos": np.cos, "_floor": np.floor, "_ceil": np.ceil, "_pow": np.power}


def _np_erf(a):
    from scipy import special
    return special.erf(a)



def _literal(v: float, dtype: np.dtype) -> str:
    if math.isnan(v):
        return "_T(np.nan)"
    if math.isinf(v):
        return "_T(np.inf)" if v > 0 else "_T(-np.inf)"
    return f"_T({float(dtype.type(v))!r})"


def _operands(node: Node, names: dict[str, str]) -> list[str]:
    return [names[i] for i in node.inputs if i][:2]


def _expression(spec: Spec, operands: list[str], dtype: np.dtype, template: str | None = None,
                cast: bool = True, params: tuple[str, str] | None = None) -> str:
    """`spec`'s template (or `template`) over the operands, its parameters as literals (or the
    names in `params`); `cast`: in the dtype, every member's value rounded as the unfused graph
    stores it (numba's scalar math may widen)."""
    p0, p1 = params or (_literal(spec.p0, dtype), _literal(spec.p1, dtype))
    text = (template or spec.template).format(*operands, p0=p0, p1=p1)
    return f"_T({text})" if cast else text


def _literal_names(group: Group, args: dict[str, str]) -> dict[str, str]:
    dtype = np.dtype(group.info["dtype"])
    names = dict(args)
    for name, v in group.info["literals"].items():
        names.setdefault(name, _literal(v, dtype))
    return names


def constants(group: Group) -> list[float]:
    """The values the kernel reads from its `lits` argument: the group's one-element constant
    inputs, then each member's two parameters. They are arguments, not literals of the text, so
    groups that differ only in them share one compiled kernel (PP-OCRv5's recognizer: 28 groups,
    28 kernels and a 10 s first run with literals)."""
    values = list(group.info["literals"].values())
    for spec in group.info["specs"]:
        values += [spec.p0, spec.p1]
    return values


def _constant_names(group: Group, args: dict[str, str]) -> tuple[dict[str, str], int]:
    """`args` with the constant inputs named K<i> (loaded from `lits`), and the index of the
    first member parameter."""
    names = dict(args)
    for k, name in enumerate(group.info["literals"]):
        names.setdefault(name, f"K{k}")
    return names, len(group.info["literals"])


def numpy_program(group: Group) -> str:
    """Source of `run(a0, a1, ...)`, the group over whole arrays in numpy (small tensors, and
    until a kernel is compiled): one ufunc expression per member; numpy keeps each value in the
    dtype (float32 arrays with float32 literals), so no casts. Returns the outputs' tuple."""
    dtype = np.dtype(group.info["dtype"])
    args = [f"a{k}" for k in range(len(group.inputs))]
    names = _literal_names(group, dict(zip(group.inputs, args)))
    lines = [f"def run({', '.join(args)}):"]
    for j, (node, spec) in enumerate(zip(group.nodes, group.info["specs"])):
        lines.append(f"    v{j} = {_expression(spec, _operands(node, names), dtype, cast=False)}")
        names[node.outputs[0]] = f"v{j}"
    lines.append("    return (" + "".join(f"{names[o]}, " for o in group.outputs) + ")")
    return "\n".join(lines) + "\n"


def _vector_kind(group: Group, spec: Spec) -> int | None:
    """vector_math's kind where the member runs as 16-float vectors (float32, AVX2 or AVX-512)."""
    if spec.vector is None or np.dtype(group.info["dtype"]) != np.float32:
        return None
    from . import vector_math
    return VECTOR_KINDS[spec.vector] if vector_math.available() else None


BLOCK = 256   # elements a block of a row: the vector members' scratch stays in L1


def _kernel_lines(group: Group, unit: tuple[bool, ...]) -> tuple[list[str], list[int]]:
    """(lines, members with scratch arrays) of the kernel's pass over one row's columns [c0, c1):
    one loop with every member in registers, or, where members run as vectors, blocks of BLOCK
    columns, each a sequence of loops (the plain members between vector members) and vector
    calls, values passing between them through per-member scratch arrays `t<j>`."""
    dtype = np.dtype(group.info["dtype"])
    kinds = [_vector_kind(group, spec) for spec in group.info["specs"]]
    # segments: the runs of plain members, each ended by a vector member (its value is read from
    # the next segment on)
    defined_in = {n.outputs[0]: _segment_of(j, kinds) + (kinds[j] is not None)
                  for j, n in enumerate(group.nodes)}
    last = _segment_of(len(kinds), kinds)
    # (unsigned indices: with a signed one numba wraps negative indices around, which kept LLVM
    # from vectorizing the loops: 5.6 against 1.6 us over 12000 floats)
    loads = [f"x{k} = in{k}[_U(b{k} + c)]" for k in range(len(group.inputs)) if unit[k]]
    stores = [(k, name) for k, name in enumerate(group.outputs)]
    names, base = _constant_names(group, {name: f"x{k}" for k, name in enumerate(group.inputs)})

    def params(j: int) -> tuple[str, str]:
        return f"K{base + 2 * j}", f"K{base + 2 * j + 1}"

    if last == 0:
        lines = ["for c in range(c0, c1):"] + ["    " + x for x in loads]
        for j, node in enumerate(group.nodes):
            expr = _expression(group.info["specs"][j], _operands(node, names), dtype, params=params(j))
            lines.append(f"    v{j} = {expr}")
            names[node.outputs[0]] = f"v{j}"
        lines += [f"    out{k}[_U(bo + c)] = {names[name]}" for k, name in stores]
        return lines, []
    # values read in a later segment than their own live in scratch, as do vector members'
    scratch = {j for j, k in enumerate(kinds) if k is not None}
    for j, node in enumerate(group.nodes):
        for i in node.inputs:
            if i in defined_in and defined_in[i] != _segment_of(j, kinds):
                scratch.add(_member_of(group, i))
    for name in group.outputs:
        if defined_in[name] != last:
            scratch.add(_member_of(group, name))
    lines = ["for cb in range(c0, c1, BLOCK):", "    m = min(BLOCK, c1 - cb)"]
    in_scratch: dict[str, str] = {}   # value -> how a later loop reads it
    pending: list[int] = []           # plain members of the current segment
    for j in list(range(len(group.nodes))) + [None]:
        if j is not None and kinds[j] is None:
            pending.append(j)
            continue
        # the loop of the segment's plain members, then the vector member's call (or the stores)
        lines += ["    for w in range(m):", "        c = cb + w"] + ["        " + x for x in loads]
        local = {**names, **in_scratch}
        for p in pending:
            node = group.nodes[p]
            expr = _expression(group.info["specs"][p], _operands(node, local), dtype, params=params(p))
            lines.append(f"        v{p} = {expr}")
            local[node.outputs[0]] = f"v{p}"
            if p in scratch:
                lines.append(f"        t{p}[w] = v{p}")
                in_scratch[node.outputs[0]] = f"t{p}[w]"
        if j is not None:
            node = group.nodes[j]
            spec = group.info["specs"][j]
            expr = _expression(spec, _operands(node, local), dtype, spec.pre, params=params(j))
            lines.append(f"        t{j}[w] = {expr}")
            lines += ["    for o in range(0, m, 16):", f"        activate16(t{j}, o, {kinds[j]})"]
            in_scratch[node.outputs[0]] = f"t{j}[w]"
        else:
            lines += [f"        out{k}[_U(bo + c)] = {local[name]}" for k, name in stores]
        pending = []
    return lines, sorted(scratch)


def _segment_of(j: int, kinds: list) -> int:
    """The segment member j is computed in (vector members before it)."""
    return sum(1 for k in kinds[:j] if k is not None)


def _member_of(group: Group, value: str) -> int:
    return next(j for j, n in enumerate(group.nodes) if n.outputs[0] == value)


def generate(group: Group, unit: tuple[bool, ...]) -> tuple[str, str]:
    """(module source, signature) of the kernel variant where input k's last-dimension stride is
    1 (`unit[k]`) or 0."""
    dtype = np.dtype(group.info["dtype"])
    n_in, n_out = len(group.inputs), len(group.outputs)
    ins = [f"in{k}" for k in range(n_in)]
    outs = [f"out{k}" for k in range(n_out)]
    t = "float32" if dtype == np.float32 else "float64"
    body, scratch = _kernel_lines(group, unit)
    lines = [f"# fused element-wise kernel: {' -> '.join(group.ops())}"]
    if "activate16(" in "\n".join(body):
        from . import vector_math
        # the vector code's own text is part of the signature: a new version compiles anew
        stamp = hashlib.sha256(Path(vector_math.__file__).read_bytes()).hexdigest()[:16]
        lines += [f"from ep_cpu.vector_math import activate16  # vector_math {stamp}"]
    ptr = "f32_at" if dtype == np.float32 else "f64_at"
    stamp = hashlib.sha256(Path(__file__).with_name("native_call.py").read_bytes()).hexdigest()[:16]
    lines += [f"from ep_cpu.native_call import RANGE_SIG, f64_at, i64_at{'' if ptr == 'f64_at' else ', f32_at'}"
              f"  # native_call {stamp}",
              f"BLOCK = {BLOCK}",
              f"_ARR_IN = numba.types.Array(numba.types.{t}, 1, 'C', readonly=True)",
              f"_ARR_OUT = numba.types.Array(numba.types.{t}, 1, 'C')",
              "_I64 = numba.types.int64",
              "_SIG = numba.types.void(_I64, _I64, _I64, numba.types.Array(_I64, 1, 'C', readonly=True), "
              + ", ".join(["_ARR_IN"] * (n_in + 1) + ["_ARR_OUT"] * n_out) + ")",
              "",
              "",
              '@numba.njit(nogil=True, error_model="numpy", boundscheck=False, inline="always")',
              f"def _body(e0, e1, n1, geom, lits, {', '.join(ins + outs)}):",
              "    # output elements [e0, e1): rows of the last collapsed dimension (n1 long)"]
    lines += [f"    K{k} = lits[{k}]" for k in range(len(constants(group)))]
    for j in scratch:
        lines.append(f"    t{j} = np.empty(BLOCK, np.{t})")
    lines += ["    r = e0 // n1",
              "    while r * n1 < e1:",
              "        c0 = max(e0 - r * n1, 0)",
              "        c1 = min(e1 - r * n1, n1)",
              "        q = r"]
    for d in range(OUTER_DIMS - 1, 0, -1):
        lines += [f"        i{d} = q % geom[{d}]", f"        q //= geom[{d}]"]
    lines.append("        i0 = q")
    for k in range(n_in):
        offset = " + ".join(f"i{d} * geom[{OUTER_DIMS * (k + 1) + d}]" for d in range(OUTER_DIMS))
        lines.append(f"        b{k} = {offset}")
        if not unit[k]:
            lines.append(f"        x{k} = in{k}[b{k}]")
    lines.append("        bo = r * n1")
    lines += ["        " + x for x in body]
    lines.append("        r += 1")
    args = ", ".join(ins + outs)
    n_args = 5 + 2 * n_in + n_out
    lines += ["", "",
              '@numba.njit(_SIG, nogil=True, cache=True, error_model="numpy", boundscheck=False)',
              f"def fused(e0, e1, n1, geom, lits, {args}):",
              f"    _body(e0, e1, n1, geom, lits, {args})",
              "",
              "",
              "def _fused_range(at, c0, c1, r0, r1):",
              "    # packed: total, n1, geom's address, (address, size) of lits and of each input,",
              "    # address per output",
              f"    a = numba.carray(f64_at(at), ({n_args},))",
              "    total, n1 = np.int64(a[0]), np.int64(a[1])",
              f"    geom = numba.carray(i64_at(np.int64(a[2])), ({OUTER_DIMS * (n_in + 1)},))",
              f"    lits = numba.carray({ptr}(np.int64(a[3])), (np.int64(a[4]),))"]
    for k in range(n_in):
        lines.append(f"    in{k} = numba.carray({ptr}(np.int64(a[{5 + 2 * k}])), (np.int64(a[{6 + 2 * k}]),))")
    for k in range(n_out):
        lines.append(f"    out{k} = numba.carray({ptr}(np.int64(a[{5 + 2 * n_in + k}])), (total,))")
    lines += [f"    _body(c0, c1, n1, geom, lits, {args})",
              "",
              "",
              "def range_callback():",
              "    \"\"\"The kernel as a native_call range callback over output elements [c0, c1).\"\"\"",
              '    return numba.cfunc(RANGE_SIG, nogil=True, cache=True, error_model="numpy", '
              'boundscheck=False)(_fused_range)']
    text = _PRELUDE.format(dtype=t) + "\n\n" + "\n".join(lines) + "\n"
    return text, hashlib.sha256(text.encode()).hexdigest()[:24]

"""Kernels parse their attributes once, in `__init__` (issue 12): a static check over the CPU and
CUDA kernel modules that nothing a kernel runs per call (`compute`, `forward` and every method or
module function they reach) reads node attributes; plus the shared parsed-attribute objects of
`ep_core.op_attributes` and the typed errors their checks give at session build."""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

import ep_core
from ep_core.errors import InvalidGraph
from ep_core.graph import Node
from ep_core.op_attributes import ConvAttributes, NormAttributes, PoolAttributes

ROOT = Path(__file__).resolve().parents[1]
KERNEL_DIRS = (ROOT / "ep_cpu" / "kernels", ROOT / "ep_cuda" / "kernels")
ENTRY_POINTS = ("compute", "forward")
PARSERS = "ep_core.op_attributes"   # calling anything of it is parsing attributes

# Classes whose run-time path still reads attributes, each with the reason it is left.
ALLOWED: dict[tuple[str, str], str] = {}


# ----------------------------------------------------------------------------- the checker

def _reads_node_attrs(expr: ast.AST) -> bool:
    """`node.attrs` / `self.node.attributes` style accesses."""
    if not (isinstance(expr, ast.Attribute) and expr.attr in ("attrs", "attributes")):
        return False
    v = expr.value
    return (isinstance(v, ast.Name) and v.id == "node") or (isinstance(v, ast.Attribute) and v.attr == "node")


class _Module:
    def __init__(self, name: str, source: str, parser_names: set[str] | None = None):
        self.name = name
        self.tree = ast.parse(source)
        self.functions: dict[str, ast.FunctionDef] = {}
        self.classes: dict[str, ast.ClassDef] = {}
        self.imports: dict[str, tuple[str, str]] = {}   # local name -> (module, name)
        self.parsers: set[str] = set(parser_names or ())
        for node in self.tree.body:
            if isinstance(node, ast.FunctionDef):
                self.functions[node.name] = node
            elif isinstance(node, ast.ClassDef):
                self.classes[node.name] = node
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    pkg = name.rsplit(".", node.level)[0]
                    mod = f"{pkg}.{mod}" if mod else pkg
                for a in node.names:
                    if mod == PARSERS:
                        self.parsers.add(a.asname or a.name)
                    self.imports[a.asname or a.name] = (mod, a.name)

    def direct_reads(self, fn: ast.FunctionDef) -> list[int]:
        lines = []
        for n in ast.walk(fn):
            if isinstance(n, ast.Call):
                f = n.func
                if isinstance(f, ast.Attribute) and f.attr in ("attr", "from_node"):
                    lines.append(n.lineno)
                elif isinstance(f, ast.Name) and f.id in self.parsers:
                    lines.append(n.lineno)
            elif _reads_node_attrs(n):
                lines.append(n.lineno)
        return lines


class Checker:
    """Finds attribute reads reachable from each kernel class's per-call entry points."""

    def __init__(self, modules: dict[str, _Module]):
        self.modules = modules

    def _resolve(self, mod: _Module, name: str):
        """(module, definition) of a module-level name, following `from x import y`."""
        if name in mod.functions:
            return mod, mod.functions[name]
        if name in mod.classes:
            return mod, mod.classes[name]
        if name in mod.imports:
            src, real = mod.imports[name]
            if src in self.modules:
                return self._resolve(self.modules[src], real)
        return None, None

    def _mro(self, mod: _Module, cls: ast.ClassDef) -> list[tuple[_Module, ast.ClassDef]]:
        out = [(mod, cls)]
        for base in cls.bases:
            if isinstance(base, ast.Name):
                bmod, bdef = self._resolve(mod, base.id)
                if isinstance(bdef, ast.ClassDef):
                    out += [m for m in self._mro(bmod, bdef) if m not in out]
        return out

    @staticmethod
    def _method(mro, name: str):
        for mod, cls in mro:
            for f in cls.body:
                if isinstance(f, ast.FunctionDef) and f.name == name:
                    decos = {getattr(d, "id", None) for d in f.decorator_list}
                    if "classmethod" in decos:
                        return None, None  # partition-time checks (supports) are not per call
                    return mod, f
        return None, None

    def violations(self, mod: _Module, cls: ast.ClassDef) -> list[str]:
        mro = self._mro(mod, cls)
        todo, seen, found = [], set(), []
        for entry in ENTRY_POINTS:
            m, f = self._method(mro, entry)
            if f is not None:
                todo.append((m, f, f"{cls.name}.{entry}"))
        while todo:
            m, fn, path = todo.pop()
            if id(fn) in seen or fn.name == "__init__":
                continue
            seen.add(id(fn))
            for line in m.direct_reads(fn):
                found.append(f"{path} reads attributes ({m.name}:{line})")
            for n in ast.walk(fn):
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self":
                    tm, tf = self._method(mro, n.attr)
                    if tf is not None:
                        todo.append((tm, tf, f"{path} -> {n.attr}"))
                elif (isinstance(n, ast.Call) and isinstance(n.func, ast.Call)
                      and isinstance(n.func.func, ast.Name) and n.func.func.id == "super"):
                    pass  # super().x(...) is found through the attribute below
                elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Call) \
                        and isinstance(n.value.func, ast.Name) and n.value.func.id == "super":
                    tm, tf = self._method(mro[1:], n.attr)
                    if tf is not None:
                        todo.append((tm, tf, f"{path} -> super().{n.attr}"))
                elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
                    tm, tf = self._resolve(m, n.func.id)
                    if isinstance(tf, ast.FunctionDef):
                        todo.append((tm, tf, f"{path} -> {n.func.id}"))
        return sorted(set(found))

    def all_violations(self) -> dict[tuple[str, str], list[str]]:
        out = {}
        for mod in self.modules.values():
            for cls in mod.classes.values():
                v = self.violations(mod, cls)
                if v:
                    out[(mod.name, cls.name)] = v
        return out


def _load_kernel_modules() -> dict[str, _Module]:
    mods = {}
    for d in KERNEL_DIRS:
        pkg = f"{d.parent.name}.{d.name}"
        for path in sorted(d.glob("*.py")):
            name = pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"
            mods[name] = _Module(name, path.read_text())
    return mods


# ----------------------------------------------------------------------------- the static test

def test_no_kernel_reads_attributes_per_call():
    found = Checker(_load_kernel_modules()).all_violations()
    unexpected = {k: v for k, v in found.items() if k not in ALLOWED}
    assert not unexpected, "attributes read at run time (parse them in __init__):\n" + "\n".join(
        line for v in unexpected.values() for line in v)
    stale = [k for k in ALLOWED if k not in found]
    assert not stale, f"allowed exceptions that no longer read attributes per call: {stale}"


def test_checker_finds_reads_through_helpers_bases_and_shared_parsers():
    """The checker itself can fail: each way of reading attributes per call is caught."""
    src = textwrap.dedent('''
        from ep_core.op_attributes import NormAttributes, int_attr
        def axis_of(k):
            return k.attr("axis")
        def parsed_once(k):
            return k.attr("axis")
        class Base:
            def compute(self, x):
                return self.helper(x)
            def helper(self, x):
                return x
        class Direct(Base):
            def compute(self, x):
                return self.attr("axis")
        class ViaFunction(Base):
            def compute(self, x):
                return axis_of(self)
        class ViaOverride(Base):
            def helper(self, x):
                return self.node.attrs["axis"]
        class ViaParser(Base):
            def forward(self, x):
                return NormAttributes.from_node(self.node).axis + int_attr(self.node, "p")
        class Clean(Base):
            def __init__(self, node, ctx):
                self.axis = parsed_once(self)
            def compute(self, x):
                return self.axis
            @classmethod
            def supports(cls, node):
                return node.attrs.get("axis") is not None
    ''')
    mod = _Module("fake", src)
    found = Checker({"fake": mod}).all_violations()
    assert set(found) == {("fake", "Direct"), ("fake", "ViaFunction"), ("fake", "ViaOverride"),
                          ("fake", "ViaParser")}, found
    assert any("from_node" in src.splitlines()[int(v.rsplit(":", 1)[1][:-1]) - 1]
               for v in found[("fake", "ViaParser")])


# ----------------------------------------------------------------------------- shared parsing

def _decoded(v):
    return v.decode() if isinstance(v, bytes) else v   # as the loader gives string attributes


def _node(op: str, attrs: dict, opset: int = 22, domain: str = "") -> Node:
    proto = helper.make_node(op, ["x", "w"], ["y"], name=f"{op.lower()}_0", domain=domain, **attrs)
    return Node(name=proto.name, op_type=op, domain=domain, inputs=list(proto.input),
                outputs=list(proto.output),
                attrs={a.name: _decoded(helper.get_attribute_value(a)) for a in proto.attribute},
                opset=opset, since_version=opset)


def test_conv_attributes_defaults_and_geometry():
    a = ConvAttributes.from_node(_node("Conv", {"pads": [1, 1, 1, 1]}))
    assert (a.group, a.auto_pad, a.rank) == (1, "NOTSET", 2)   # schema defaults
    g = a.geometry([5, 7], (4, 3, 3, 3))
    assert (g.kernel_shape, g.strides, g.pads_begin, g.output_shape) == ([3, 3], [1, 1], [1, 1], [5, 7])
    same = ConvAttributes.from_node(_node("Conv", {"auto_pad": "SAME_LOWER", "strides": [2]}))
    assert same.pads_for([5], (1, 1, 4)) == ([2], [1])
    t = ConvAttributes.from_node(_node("ConvTranspose", {"strides": [2, 2], "output_shape": [10, 8]}))
    tg = t.transpose_geometry([5, 4], (3, 2, 3, 3))
    # total padding 1 per axis; NOTSET puts the larger half first (as SAME_LOWER), per the spec
    assert (tg.output_shape, tg.full_shape, tg.pads_begin) == ([10, 8], [11, 9], [1, 1])


def test_pool_and_norm_attributes_use_the_schema_of_the_nodes_opset():
    p = PoolAttributes.from_node(_node("AveragePool", {"kernel_shape": [2, 2], "ceil_mode": 1}))
    assert (p.strides, p.dilations, p.count_include_pad, p.ceil_mode) == ((1, 1), (1, 1), False, True)
    assert p.geometry([5, 5]).output_shape == [4, 4]
    old = PoolAttributes.from_node(_node("MaxPool", {"kernel_shape": [3]}, opset=1))
    assert (old.ceil_mode, old.storage_order) == (False, 0)     # attributes MaxPool-1 lacks
    ln = NormAttributes.from_node(_node("LayerNormalization", {}, opset=17))
    assert (ln.axis, ln.stash_type) == (-1, 1) and ln.epsilon == pytest.approx(1e-5)
    assert ln.axis_for(3) == 2
    # No ONNX schema (onnxruntime's ONNX-domain op): the documented fallbacks.
    s = NormAttributes.from_node(_node("SimplifiedLayerNormalization", {"axis": 1}))
    assert (s.axis, s.epsilon, s.stash_type) == (1, 1e-5, 1)


@pytest.mark.parametrize("op, attrs, message", [
    ("Conv", {"strides": [1, 0]}, "'strides' must hold values >= 1"),
    ("Conv", {"kernel_shape": [3, 3], "strides": [1]}, "'strides' has 1 values"),
    ("Conv", {"pads": [1, 1, 1]}, "'pads' needs"),
    ("Conv", {"group": 0}, "'group' must be >= 1"),
    ("Conv", {"auto_pad": "SAME"}, "auto_pad must be one of"),
    ("AveragePool", {"kernel_shape": [2, 2], "dilations": [1, 1, 1]}, "'dilations' has 3 values"),
    ("MaxPool", {"kernel_shape": [2], "storage_order": 3}, "storage_order"),
    ("GroupNormalization", {"num_groups": 0}, "'num_groups' must be >= 1"),
])
def test_bad_attributes_are_invalid_graph_naming_the_node(op, attrs, message):
    with pytest.raises(InvalidGraph, match=message) as e:
        (PoolAttributes if "Pool" in op else NormAttributes if "Norm" in op else
         ConvAttributes).from_node(_node(op, attrs))
    assert f"{op.lower()}_0" in str(e.value)


@pytest.mark.parametrize("node, inputs, opset, message", [
    (helper.make_node("LpNormalization", ["x"], ["y"], name="lpn", p=3), [("x", [2, 3])], 22,
     "p must be 1 or 2"),
    (helper.make_node("LRN", ["x"], ["y"], name="lrn", size=0), [("x", [1, 3, 2, 2])], 22,
     "'size' must be >= 1"),
    (helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2, 2], storage_order=2),
     [("x", [1, 1, 4, 4])], 22, "storage_order must be 0 or 1"),
    (helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], name="gn", num_groups=0),
     [("x", [1, 2, 4]), ("s", [2]), ("b", [2])], 22, "'num_groups' must be >= 1"),
    (helper.make_node("Attention", ["q", "k", "v"], ["y"], name="att", qk_matmul_output_mode=7),
     [("q", [1, 2, 4, 4]), ("k", [1, 2, 4, 4]), ("v", [1, 2, 4, 4])], 23,
     "qk_matmul_output_mode must be 0-3"),
    (helper.make_node("DeformConv", ["x", "w", "o"], ["y"], name="dc", offset_group=0),
     [("x", [1, 1, 4, 4]), ("w", [1, 1, 2, 2]), ("o", [1, 8, 3, 3])], 22,
     "'offset_group' must be >= 1"),
])
def test_session_build_refuses_bad_attributes(node, inputs, opset, message):
    """Refused by the kernel's __init__ while the session is built (onnx's checker and shape
    inference let these through), not at the first run."""
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in node.output]
    graph = helper.make_graph([node], "g", ins, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    with pytest.raises(InvalidGraph, match=message) as e:
        ep_core.InferenceSession(model.SerializeToString(), providers=["cpu"])
    assert f"node '{node.name}'" in str(e.value)


def test_kernels_of_both_providers_share_the_parsed_attribute_classes():
    """One parsing per family: the CPU and CUDA conv, pool and norm kernels build the same objects."""
    from ep_cpu.kernels import conv as cpu_conv, norm as cpu_norm, pool as cpu_pool
    from ep_cuda.kernels import conv as cuda_conv, norm as cuda_norm, pool as cuda_pool
    for mod in (cpu_conv, cuda_conv):
        assert mod.ConvAttributes is ConvAttributes
    for mod in (cpu_pool, cuda_pool):
        assert mod.PoolAttributes is PoolAttributes
    for mod in (cpu_norm, cuda_norm):
        assert mod.NormAttributes is NormAttributes
    node = _node("LayerNormalization", {"axis": 1, "epsilon": 1e-3}, opset=17)
    cpu = cpu_norm.LayerNormalization(node, None)
    cuda = cuda_norm.LayerNormalization(node, None)
    assert cpu.norm == cuda.norm
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = cpu.compute(x, np.ones(3, np.float32), np.zeros(3, np.float32))
    assert y.shape == (2, 3)

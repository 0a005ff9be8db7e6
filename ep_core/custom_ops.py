"""Extending the runtime: custom operators (schema + Python kernel) and custom graph rewrites.

    register_custom_op("Relu6", relu6, domain="my.ops", attributes={"cap": 6.0})

registers an ONNX schema for the op with `onnx.defs.register_schema` (so the checker and shape
inference accept models using it) and a kernel in a provider's registry (the CPU provider by
default). `compute` is either a function `f(*inputs, **attributes)` or a `Kernel` subclass.
Graph rewrites are registered with `register_transformer` (re-exported from `ep_core.optimizer`).
See docs/custom-ops.md.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import onnx
from onnx import AttributeProto
from onnx.defs import OpSchema

from .kernel import Kernel, KernelDef
from .optimizer import Rewrite, register_transformer, unregister_transformer  # noqa: F401 - API

__all__ = ["register_custom_op", "custom_op", "register_transformer", "unregister_transformer",
           "Rewrite", "same_type_as_input"]

_ATTR_TYPES = {float: AttributeProto.FLOAT, int: AttributeProto.INT, str: AttributeProto.STRING,
               bool: AttributeProto.INT}
_LIST_TYPES = {float: AttributeProto.FLOATS, int: AttributeProto.INTS, str: AttributeProto.STRINGS}


def _formal(spec: str, type_str: str) -> OpSchema.FormalParameter:
    """"X" single, "X?" optional, "X*" variadic."""
    option = OpSchema.FormalParameterOption.Single
    name = spec
    if spec.endswith("?"):
        option, name = OpSchema.FormalParameterOption.Optional, spec[:-1]
    elif spec.endswith("*"):
        option, name = OpSchema.FormalParameterOption.Variadic, spec[:-1]
    return OpSchema.FormalParameter(name, type_str, param_option=option)


def _attribute(name: str, default: Any) -> OpSchema.Attribute:
    """A schema attribute: a default value, or a Python type / AttrType for a required one."""
    if isinstance(default, type):
        return OpSchema.Attribute(name, _ATTR_TYPES.get(default, AttributeProto.FLOAT), required=True)
    if isinstance(default, OpSchema.AttrType):
        return OpSchema.Attribute(name, default, required=True)
    if isinstance(default, (list, tuple)):
        return OpSchema.Attribute(name, onnx.helper.make_attribute(name, list(default)), "")
    return OpSchema.Attribute(name, onnx.helper.make_attribute(name, default), "")


def same_type_as_input(ctx: Any) -> None:
    """Shape inference: every output has the type and shape of input 0."""
    tp = ctx.get_input_type(0)
    if tp is None:
        return
    for k in range(ctx.get_num_outputs()):
        ctx.set_output_type(k, tp)


def make_schema(op_type: str, domain: str, since_version: int, inputs: Sequence[str],
                outputs: Sequence[str], types: Sequence[str], attributes: dict[str, Any],
                doc: str = "", infer: Callable | None = same_type_as_input) -> OpSchema:
    """OpSchema with one type constraint "T" over `types` for every input and output."""
    schema = OpSchema(op_type, domain, since_version, doc,
                      inputs=[_formal(s, "T") for s in inputs],
                      outputs=[_formal(s, "T") for s in outputs],
                      type_constraints=[("T", list(types), "element types the kernel accepts")],
                      attributes=[_attribute(k, v) for k, v in attributes.items()])
    if infer is not None and hasattr(schema, "set_type_and_shape_inference_function"):
        schema.set_type_and_shape_inference_function(infer)
    return schema


def register_schema(schema: OpSchema) -> bool:
    """Register (or replace) an OpSchema with onnx; False when this onnx cannot."""
    if not hasattr(onnx.defs, "register_schema"):
        return False
    try:  # re-registering the same version replaces it (e.g. a notebook cell run twice)
        existing = onnx.defs.get_schema(schema.name, schema.since_version, schema.domain)
        if existing.since_version == schema.since_version:
            onnx.defs.deregister_schema(schema.name, schema.since_version, schema.domain)
    except onnx.defs.SchemaError:
        pass
    onnx.defs.register_schema(schema)
    return True


def _function_kernel(op_type: str, fn: Callable, attributes: dict[str, Any]) -> type[Kernel]:
    """A Kernel calling `fn(*inputs, **attributes)` with attributes parsed once per node."""
    params = inspect.signature(fn).parameters
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in params.values())
    names = [k for k in attributes if takes_kwargs or k in params]

    class FunctionKernel(Kernel):
        def __init__(self, node, ctx):
            super().__init__(node, ctx)
            self.kwargs = {}
            for k in names:
                default = attributes[k]
                if k in node.attrs:
                    self.kwargs[k] = node.attrs[k]
                elif not isinstance(default, (type, OpSchema.AttrType)):
                    self.kwargs[k] = default

        def compute(self, *inputs):
            out = fn(*inputs, **self.kwargs)
            if isinstance(out, (list, tuple)) and len(self.node.outputs) > 1:
                return tuple(out)
            return out

    FunctionKernel.__name__ = FunctionKernel.__qualname__ = f"{op_type}Kernel"
    return FunctionKernel


def register_custom_op(op_type: str, compute: Callable | type[Kernel], domain: str = "ai.onnx.contrib",
                       *, inputs: Sequence[str] = ("X",), outputs: Sequence[str] = ("Y",),
                       attributes: dict[str, Any] | None = None,
                       types: Sequence[str] = ("tensor(float)",), since_version: int = 1,
                       doc: str = "", shape_inference: Callable | None = same_type_as_input,
                       provider: str = "cpu", with_schema: bool = True) -> KernelDef:
    """Make `domain::op_type` runnable: an onnx schema plus a kernel in `provider`'s registry.

    `inputs`/`outputs` name the formal parameters ("X", optional "B?", variadic "X*");
    `attributes` maps names to defaults (or to a type, for required ones); `types` are the
    allowed value types, e.g. "tensor(float)". Returns the registered KernelDef.
    """
    if not domain or domain == "ai.onnx":
        raise ValueError("custom ops need their own domain (not the default ONNX domain)")
    attributes = dict(attributes or {})
    if with_schema:
        register_schema(make_schema(op_type, domain, since_version, inputs, outputs, types,
                                    attributes, doc, shape_inference))
    if isinstance(compute, type) and issubclass(compute, Kernel):
        cls = compute
    elif callable(compute):
        cls = _function_kernel(op_type, compute, attributes)
    else:
        raise TypeError(f"compute must be a function or a Kernel subclass, got {type(compute).__name__}")
    from . import providers as provider_registry
    registry = provider_registry.provider_factory(provider).kernel_registry()
    kdef = KernelDef(op_type, domain, since_version, factory=cls)
    registry.add(kdef)
    return kdef


def custom_op(op_type: str, domain: str = "ai.onnx.contrib", **kwargs: Any) -> Callable:
    """Decorator form of `register_custom_op` for a function or Kernel subclass."""
    def deco(compute):
        register_custom_op(op_type, compute, domain, **kwargs)
        return compute
    return deco

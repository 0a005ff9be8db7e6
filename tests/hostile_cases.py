"""The hostile-model cases: malformed bytes, protobuf edits of real models, hostile external data,
invalid graphs, models onnxruntime runs that onnx's checker refuses, odd paths, deep nesting and
invalid UTF-8. `cases(long)` lists them all (deterministic; `long` adds many more seeds).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from hostile_base import BOOL, F32, I64, Case, Input, _write, base
from hostile_edits import edit_cases
from hostile_external import external_cases
from onnx import TensorProto, helper, numpy_helper

vi = helper.make_tensor_value_info


# --- malformed bytes ---------------------------------------------------------------------------------

FUZZ_BASES = ("bert", "lstm", "gpt2", "cnn", "control")


def byte_cases(long: bool) -> list[Case]:
    out = [Case("bytes_empty", "bytes", "refuse", lambda d: Input(b"", None)),
           Case("bytes_zero", "bytes", "refuse", lambda d: Input(b"\0" * 64, None)),
           Case("bytes_text", "bytes", "refuse", lambda d: Input(b"this is not a model\n" * 10, None)),
           Case("bytes_png", "bytes", "refuse", lambda d: Input(b"\x89PNG\r\n\x1a\n" + b"\0" * 100, None)),
           Case("bytes_ff", "bytes", "refuse", lambda d: Input(b"\xff" * 1000, None))]
    for seed in range(10 if not long else 200):
        out.append(Case(f"bytes_random_{seed}", "bytes", "any",
                        lambda d, s=seed: Input(np.random.default_rng(s).bytes(200 + 50 * s), None)))
    per_base = 8 if not long else 100
    for name in FUZZ_BASES:
        for k in range(per_base):
            out.append(Case(f"truncate_{name}_{k}", "truncate", "any",
                            lambda d, n=name, k=k: _truncated(n, k)))
    for name in FUZZ_BASES:
        for k in range(24 if not long else 400):
            out.append(Case(f"flip_{name}_{k}", "flip", "any", lambda d, n=name, k=k: _flipped(n, k)))
    return out


def _truncated(name: str, k: int) -> Input:
    m, feeds = base(name)
    data = m.SerializeToString()
    rng = np.random.default_rng(1000 + k)
    cut = [0, 1, len(data) // 2, len(data) - 1][k] if k < 4 else int(rng.integers(1, len(data)))
    return Input(data[:cut], feeds)


def _flipped(name: str, k: int) -> Input:
    m, feeds = base(name)
    data = bytearray(m.SerializeToString())
    rng = np.random.default_rng(2000 + k)
    for _ in range(int(rng.integers(1, 5))):
        at = int(rng.integers(0, len(data)))
        data[at] ^= int(rng.integers(1, 256))
    return Input(bytes(data), feeds)


# --- invalid graphs (must be refused) ------------------------------------------------------------------

def _model(nodes, inputs, outputs, inits=(), opset=17, ir=8, domains=(), value_info=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits), value_info=list(value_info))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]
                          + [helper.make_opsetid(d, v) for d, v in domains])
    m.ir_version = ir
    return m


def _conv(attrs=None, w_shape=(4, 3, 3, 3), bias=None, x_shape=(1, 3, 8, 8), op="Conv"):
    inits = [numpy_helper.from_array(np.ones(w_shape, np.float32), "w")]
    ins = ["x", "w"]
    if bias is not None:
        inits.append(numpy_helper.from_array(np.ones(bias, np.float32), "b"))
        ins.append("b")
    return _model([helper.make_node(op, ins, ["y"], **(attrs or {}))], [vi("x", F32, list(x_shape))],
                  [vi("y", F32, None)], inits)


def _pool(op, attrs, x_shape=(1, 3, 8, 8)):
    return _model([helper.make_node(op, ["x"], ["y"], **attrs)], [vi("x", F32, list(x_shape))],
                  [vi("y", F32, None)])


def _relu_model(**kw):
    return _model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", F32, [2, 3])], [vi("y", F32, [2, 3])], **kw)


def _tensor(name, **fields):
    t = TensorProto(name=name)
    for k, v in fields.items():
        if isinstance(v, list):
            getattr(t, k).extend(v)
        elif hasattr(v, "CopyFrom"):
            getattr(t, k).CopyFrom(v)
        else:
            setattr(t, k, v)
    return t


def _add_init(t):
    return _model([helper.make_node("Add", ["x", t.name], ["y"])], [vi("x", F32, [2, 3])],
                  [vi("y", F32, [2, 3])], [t])


def _if_model(then_outs, else_outs, node_outs=("y",)):
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], [o]) for o, _ in then_outs], "then", [],
                               [vi(o, t, None) for o, t in then_outs])
    else_nodes = [helper.make_node("Relu" if t == F32 else "Shape", ["x"], [o]) for o, t in else_outs]
    else_g = helper.make_graph(else_nodes, "else", [], [vi(o, t, None) for o, t in else_outs])
    return _model([helper.make_node("If", ["c"], list(node_outs), then_branch=then_g, else_branch=else_g)],
                  [vi("x", F32, [2]), vi("c", BOOL, [])], [vi(o, F32, None) for o in node_outs])


def _loop_model(body_inputs, body_outputs, nodes):
    body = helper.make_graph(nodes, "body", body_inputs, body_outputs)
    return _model([helper.make_node("Loop", ["n", "c", "x"], ["y"], body=body)],
                  [vi("x", F32, [2]), vi("c", BOOL, []), vi("n", I64, [])], [vi("y", F32, None)])


def _sparse_model(dims, indices, values=(1.0,)):
    v = numpy_helper.from_array(np.array(values, np.float32), "sp")
    i = numpy_helper.from_array(np.array(indices, np.int64), "sp_idx")
    m = _model([helper.make_node("Add", ["x", "sp"], ["y"])], [vi("x", F32, None)], [vi("y", F32, None)])
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(v, i, list(dims)))
    return m


def _two_opsets():
    m = _relu_model()
    m.opset_import.append(helper.make_opsetid("ai.onnx", 13))
    return m


def invalid_cases() -> list[Case]:
    body_ok_nodes = [helper.make_node("Identity", ["ci"], ["co"]), helper.make_node("Add", ["s", "x"], ["s2"])]
    invalid = {
        "conv_dilations_zero": _conv({"dilations": [0, 0]}),
        "conv_negative_pads": _conv({"pads": [-1, -1, -1, -1]}),
        "conv_strides_zero": _conv({"strides": [0, 1]}),
        "conv_kernel_shape_mismatch": _conv({"kernel_shape": [5, 5]}),
        "conv_group_mismatch": _conv({"group": 3}),
        "conv_group_zero": _conv({"group": 0}),
        "conv_channels_mismatch": _conv(w_shape=(4, 2, 3, 3)),
        "conv_bias_wrong": _conv(bias=(7,)),
        "conv_auto_pad_bogus": _conv({"auto_pad": "BOGUS"}),
        "conv_window_larger_than_input": _conv(w_shape=(4, 3, 9, 9)),
        "conv_weight_rank": _conv(w_shape=(4, 3, 3)),
        "conv_transpose_output_padding": _conv({"output_padding": [1, 1]}, w_shape=(3, 4, 3, 3), op="ConvTranspose"),
        "conv_transpose_kernel_shape": _conv({"kernel_shape": [5, 5]}, w_shape=(3, 4, 3, 3), op="ConvTranspose"),
        "conv_transpose_channels": _conv(w_shape=(5, 4, 3, 3), op="ConvTranspose"),
        "maxpool_pads_ge_kernel": _pool("MaxPool", {"kernel_shape": [2, 2], "pads": [2, 2, 2, 2]}),
        "avgpool_pads_ge_kernel": _pool("AveragePool", {"kernel_shape": [3, 3], "pads": [0, 3, 0, 0]}),
        "maxpool_kernel_larger_than_input": _pool("MaxPool", {"kernel_shape": [20, 20]}),
        "maxpool_kernel_zero": _pool("MaxPool", {"kernel_shape": [0, 2]}),
        "maxpool_no_kernel": _pool("MaxPool", {}),
        "if_branch_count_mismatch": _if_model([("a", F32)], [("b", F32), ("b2", F32)]),
        "if_branch_type_mismatch": _if_model([("a", F32)], [("b", I64)]),
        "if_node_more_outputs": _if_model([("a", F32)], [("b", F32)], ("y", "z")),
        "loop_body_without_iteration_input": _loop_model(
            [vi("ci", BOOL, []), vi("s", F32, [2])], [vi("co", BOOL, []), vi("s2", F32, [2])], body_ok_nodes),
        "loop_body_extra_output": _loop_model(
            [vi("i", I64, []), vi("ci", BOOL, []), vi("s", F32, [2])],
            [vi("co", BOOL, []), vi("s2", F32, [2]), vi("s2", F32, [2])], body_ok_nodes),
        "loop_iteration_input_float": _loop_model(
            [vi("i", F32, []), vi("ci", BOOL, []), vi("s", F32, [2])],
            [vi("co", BOOL, []), vi("s2", F32, [2])], body_ok_nodes),
        "duplicate_producer": _model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Exp", ["x"], ["y"])],
                                     [vi("x", F32, [2])], [vi("y", F32, [2])]),
        "producer_overwrites_input": _model([helper.make_node("Relu", ["x"], ["x"])], [vi("x", F32, [2])],
                                            [vi("x", F32, [2])]),
        "producer_overwrites_initializer": _model(
            [helper.make_node("Relu", ["x"], ["w"]), helper.make_node("Add", ["x", "w"], ["y"])],
            [vi("x", F32, [2])], [vi("y", F32, [2])], [numpy_helper.from_array(np.ones(2, np.float32), "w")]),
        "cycle": _model([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                         helper.make_node("Identity", ["a"], ["y"])], [vi("x", F32, [2])], [vi("y", F32, [2])]),
        "self_loop": _model([helper.make_node("Add", ["x", "a"], ["a"]), helper.make_node("Identity", ["a"], ["y"])],
                            [vi("x", F32, [2])], [vi("y", F32, [2])]),
        "dangling_input": _model([helper.make_node("Add", ["x", "nobody"], ["y"])], [vi("x", F32, [2])],
                                 [vi("y", F32, [2])]),
        "graph_output_undefined": _model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", F32, [2])],
                                         [vi("zz", F32, [2])]),
        "no_opset_import": _model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", F32, [2])],
                                  [vi("y", F32, [2])], opset=17),
        "opset_from_the_future": _relu_model(opset=99),
        "opset_zero": _relu_model(opset=0),
        "opset_imported_twice": _two_opsets(),
        "custom_domain_not_imported": _model([helper.make_node("FastGelu", ["x"], ["y"], domain="com.microsoft")],
                                             [vi("x", F32, [2])], [vi("y", F32, [2])]),
        "unknown_op_default_domain": _model([helper.make_node("Relu2", ["x"], ["y"])], [vi("x", F32, [2])],
                                            [vi("y", F32, [2])]),
        "undeclared_attribute": _model([helper.make_node("Relu", ["x"], ["y"], alpha=1.0)], [vi("x", F32, [2])],
                                       [vi("y", F32, [2])]),
        "required_attribute_missing": _model([helper.make_node("Cast", ["x"], ["y"])], [vi("x", F32, [2])],
                                             [vi("y", F32, [2])]),
        "attribute_wrong_type": _model([helper.make_node("Cast", ["x"], ["y"], to=1.5)], [vi("x", F32, [2])],
                                       [vi("y", F32, [2])]),
        "too_many_inputs": _model([helper.make_node("Relu", ["x", "x"], ["y"])], [vi("x", F32, [2])],
                                  [vi("y", F32, [2])]),
        "matmul_static_mismatch": _model([helper.make_node("MatMul", ["x", "x"], ["y"])], [vi("x", F32, [2, 3])],
                                         [vi("y", F32, None)]),
        "reshape_impossible": _model(
            [helper.make_node("Reshape", ["x", "s"], ["y"])], [vi("x", F32, [2, 3])], [vi("y", F32, None)],
            [numpy_helper.from_array(np.array([5, -1], np.int64), "s")]),
        "output_type_contradicts": _model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", F32, [2])],
                                          [vi("y", I64, [2])]),
        "init_negative_dims": _add_init(_tensor("w", data_type=F32, dims=[-2, -3], raw_data=b"\0" * 24)),
        "init_raw_short": _add_init(_tensor("w", data_type=F32, dims=[2, 3], raw_data=b"\0" * 8)),
        "init_raw_long": _add_init(_tensor("w", data_type=F32, dims=[2, 3], raw_data=b"\0" * 28)),
        "init_dtype_unknown": _add_init(_tensor("w", data_type=99, dims=[2, 3], raw_data=b"\0" * 24)),
        "init_dtype_undefined": _add_init(_tensor("w", data_type=0, dims=[2, 3], raw_data=b"\0" * 24)),
        "init_dtype_negative": _add_init(_tensor("w", data_type=-1, dims=[2, 3], raw_data=b"\0" * 24)),
        "init_two_data_fields": _add_init(_tensor("w", data_type=F32, dims=[2], raw_data=b"\0" * 8, float_data=[1, 2])),
        "init_wrong_field": _add_init(_tensor("w", data_type=F32, dims=[2, 3], int64_data=[1] * 6)),
        "init_float_data_count": _add_init(_tensor("w", data_type=F32, dims=[2, 3], float_data=[1.0] * 5)),
        "init_no_data": _add_init(_tensor("w", data_type=F32, dims=[2, 3])),
        "init_zero_elements_with_data": _add_init(_tensor("w", data_type=F32, dims=[0, 3], float_data=[1.0])),
        "init_huge_dims_no_data": _add_init(_tensor("w", data_type=F32, dims=[2 ** 40, 2 ** 30])),
        "init_dims_overflow": _add_init(_tensor("w", data_type=F32, dims=[2 ** 62, 2 ** 62], raw_data=b"\0" * 4)),
        "init_string_in_raw": _add_init(_tensor("w", data_type=TensorProto.STRING, dims=[1], raw_data=b"ab")),
        "init_string_bad_utf8": _add_init(_tensor("w", data_type=TensorProto.STRING, dims=[1], string_data=[b"\xff\xfe"])),
        "init_segment": _add_init(_tensor("w", data_type=F32, dims=[2, 3], raw_data=b"\0" * 24,
                                          segment=TensorProto.Segment(begin=0, end=6))),
        "init_empty_name": _model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", F32, [2])], [vi("y", F32, [2])],
                                  [numpy_helper.from_array(np.ones(2, np.float32), "")]),
        "input_elem_type_unknown": _model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", 77, [2])],
                                          [vi("y", F32, [2])]),
        "input_elem_type_undefined": _model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", 0, [2])],
                                            [vi("y", F32, [2])]),
        "input_without_type": _model([helper.make_node("Relu", ["x"], ["y"])], [onnx.ValueInfoProto(name="x")],
                                     [vi("y", F32, [2])]),
        "output_elem_type_undefined": _model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", F32, [2])],
                                             [vi("y", 0, [2])]),
        "value_info_elem_type_unknown": _model(
            [helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Relu", ["t"], ["y"])], [vi("x", F32, [2])],
            [vi("y", F32, [2])], value_info=[vi("t", 123, [2])]),
        "sparse_bomb": _sparse_model([2 ** 40], [0]),
        "sparse_index_out_of_range": _sparse_model([4], [9]),
        "sparse_values_indices_disagree": _sparse_model([4], [0, 1], (1.0,)),
        "ir_version_from_the_future": _relu_model(ir=99),
    }
    invalid["no_opset_import"].ClearField("opset_import")
    return [Case(f"invalid_{k}", "invalid", "any" if k in _AMBIGUOUS else "refuse",
                 lambda d, m=m: Input(m, {"x": _feed_for(m)})) for k, m in invalid.items()]


# Refused here, but running them is not wrong in itself (onnxruntime picks a reading): "any".
_AMBIGUOUS = {"custom_domain_not_imported", "init_empty_name", "init_segment", "opset_imported_twice"}


def _feed_for(m):
    t = m.graph.input[0].type.tensor_type if m.graph.input else None
    shape = [d.dim_value or 2 for d in t.shape.dim] if t is not None else [2]
    return np.ones(shape, np.float32)


# --- lenient: onnx's checker refuses, onnxruntime runs: so must we ---------------------------------------

def _cnn_edit(edit):
    def build(d):
        m, feeds = base("cnn")
        out = edit(m)
        return Input(out if out is not None else m, feeds)
    return build


def _ir3(m):
    m.ir_version = 3
    m.opset_import[0].version = 9
    del m.graph.node[-1]                                   # Gemm needs opset 9 inputs as well
    m.graph.node.append(helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1))


def _reverse_nodes(m):
    nodes = list(m.graph.node)[::-1]
    del m.graph.node[:]
    m.graph.node.extend(nodes)


def _dup_init(m):
    t = onnx.TensorProto()
    t.CopyFrom(m.graph.initializer[-1])
    t.raw_data = np.full(10, 7, np.float32).tobytes()      # the last definition wins
    m.graph.initializer.append(t)


def _no_output_shape(m):
    m.graph.output[0].type.tensor_type.ClearField("shape")


def _no_output_type(m):
    m.graph.output[0].ClearField("type")


def _output_shape_conflict(m):
    for d in m.graph.output[0].type.tensor_type.shape.dim:
        d.ClearField("dim_param")
        d.dim_value = 7


def _value_info_conflict(m):
    m.graph.value_info.append(vi("r", F32, [9, 9]))


def _negative_input_dim(m):
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1


def _optimized_meta(m):
    helper.set_model_props(m, {"ep_core.optimized": "1"})


def _unsorted_body(m):
    body = m.graph.node[1].attribute[0].g
    nodes = list(body.node)[::-1]
    del body.node[:]
    body.node.extend(nodes)


def lenient_cases() -> list[Case]:
    def control(edit):
        def build(d):
            m, feeds = base("control")
            edit(m)
            return Input(m, feeds)
        return build

    def unicode_names(d):
        m, feeds = base("cnn")
        for n in m.graph.node:
            n.name = "узел-" + n.name + "-節點"
        return Input(m.SerializeToString(), feeds)

    def as_path(kind):
        def build(d):
            m, feeds = base("cnn")
            path = _write(d, m)
            return Input({"str": path, "pathlib": Path(path)}[kind], feeds)
        return build

    def no_ir_version(m):
        m.ClearField("ir_version")

    def ir_below_3(m):
        m.ir_version = 2

    def small_sparse(d):
        m = _sparse_model([2, 3], [0, 4], (1.0, 2.0))
        m.graph.input[0].type.tensor_type.shape.dim.extend(
            [onnx.TensorShapeProto.Dimension(dim_value=2), onnx.TensorShapeProto.Dimension(dim_value=3)])
        return Input(m, {"x": np.ones((2, 3), np.float32)})

    C = lambda name, build: Case(f"lenient_{name}", "lenient", "run", build)  # noqa: E731
    return [
        C("ir3_initializers_not_inputs", _cnn_edit(_ir3)),
        Case("lenient_no_ir_version", "lenient", "any", _cnn_edit(no_ir_version)),
        C("ir_version_2", _cnn_edit(ir_below_3)),
        C("unsorted_nodes", _cnn_edit(_reverse_nodes)),
        # onnxruntime refuses unsorted bodies; we sort them (no oracle then: "unverified")
        Case("lenient_unsorted_body", "lenient", "any", control(_unsorted_body)),
        C("duplicate_initializer", _cnn_edit(_dup_init)),
        C("output_without_shape", _cnn_edit(_no_output_shape)),
        C("output_without_type", _cnn_edit(_no_output_type)),
        C("output_shape_contradicts_inference", _cnn_edit(_output_shape_conflict)),
        C("value_info_contradicts_inference", _cnn_edit(_value_info_conflict)),
        # onnxruntime takes any feed size for a declared -1; our feed check (issue 15) may refuse
        Case("lenient_negative_declared_input_dim", "lenient", "any", _cnn_edit(_negative_input_dim)),
        C("optimized_metadata_on_plain_model", _cnn_edit(_optimized_meta)),
        C("unicode_names", unicode_names),
        C("path_str", as_path("str")),
        C("path_pathlib", as_path("pathlib")),
        C("sparse_initializer", small_sparse),
        C("control_flow_as_bytes", lambda d: Input(base("control")[0].SerializeToString(), base("control")[1])),
        C("bert_from_file", lambda d: Input(_write(d, base("bert")[0]), base("bert")[1])),
        C("gpt2_from_file", lambda d: Input(_write(d, base("gpt2")[0]), base("gpt2")[1])),
        C("lstm_as_proto", lambda d: Input(base("lstm")[0], base("lstm")[1])),
    ]


# --- model paths -------------------------------------------------------------------------------------------

def path_cases() -> list[Case]:
    def fifo(d):
        os.mkfifo(d / "model.onnx")
        return Input(str(d / "model.onnx"), None)

    def symlink(d):
        m, feeds = base("cnn")
        real = _write(d / "real", m)
        os.symlink(real, d / "link.onnx")
        return Input(str(d / "link.onnx"), feeds)

    def directory(d):
        (d / "dir.onnx").mkdir()
        return Input(str(d / "dir.onnx"), None)

    P = lambda name, expect, build: Case(f"path_{name}", "path", expect, build)  # noqa: E731
    return [
        P("fifo", "refuse", fifo),
        P("directory", "refuse", directory),
        P("missing", "refuse", lambda d: Input(str(d / "missing.onnx"), None)),
        P("dev_null", "refuse", lambda d: Input("/dev/null", None)),
        P("dev_zero", "refuse", lambda d: Input("/dev/zero", None)),
        P("proc_file", "refuse", lambda d: Input("/proc/self/status", None)),
        # bytes are a serialized model, as in onnxruntime: a path given as bytes does not parse
        P("path_as_bytes", "refuse", lambda d: Input(os.fsencode(_write(d, base("cnn")[0])), None)),
        P("nul_in_path", "refuse", lambda d: Input(str(d / "a\0b.onnx"), None)),
        P("empty_string", "refuse", lambda d: Input("", None)),
        P("not_a_model_object", "refuse", lambda d: Input(12345, None)),
        P("none", "refuse", lambda d: Input(None, None)),
        P("symlink_to_model", "run", symlink),
    ]


# --- structure: nesting depth, invalid UTF-8 -------------------------------------------------------------

def _nested_if(depth: int) -> onnx.ModelProto:
    """If inside If `depth` levels deep, built in place (no copying of the inner levels)."""
    m = _model([], [vi("x", F32, [2]), vi("c", BOOL, [])], [vi("y", F32, None)])
    g, out = m.graph, "y"
    leaf = helper.make_graph([helper.make_node("Relu", ["x"], ["leaf"])], "leaf", [], [vi("leaf", F32, [2])])
    for level in range(depth):
        node = g.node.add()
        node.op_type, node.input[:], node.output[:] = "If", ["c"], [out]
        node.attribute.append(helper.make_attribute("else_branch", leaf))
        attr = node.attribute.add()
        attr.name, attr.type = "then_branch", onnx.AttributeProto.GRAPH
        g = attr.g
        g.name, out = f"level{level}", f"o{level}"
        g.output.append(vi(out, F32, [2]))
    g.node.append(helper.make_node("Relu", ["x"], [out]))
    return m


def _nested_sequence_type(depth: int) -> onnx.ModelProto:
    m = _relu_model()
    tp = m.graph.value_info.add()
    tp.name = "unused"
    t = tp.type
    for _ in range(depth):
        t = t.sequence_type.elem_type
    t.tensor_type.elem_type = F32
    return m


_MARK = "MARKMARK"


def _bad_utf8(where: str) -> Input:
    m, feeds = base("cnn")
    g = m.graph
    target = {"node_name": lambda: setattr(g.node[0], "name", _MARK),
              "op_type": lambda: setattr(g.node[1], "op_type", _MARK),
              "node_input": lambda: _rename_value(m, "c", _MARK),
              "graph_input": lambda: _rename_value(m, "x", _MARK),
              "initializer_name": lambda: _rename_value(m, "fc.b", _MARK),
              "attribute_name": lambda: setattr(g.node[0].attribute[0], "name", _MARK),
              "domain": lambda: setattr(g.node[1], "domain", _MARK),
              "doc_string": lambda: setattr(g, "doc_string", _MARK),
              "metadata_key": lambda: helper.set_model_props(m, {_MARK: "v"}),
              "producer_name": lambda: setattr(m, "producer_name", _MARK),
              "dim_param": lambda: setattr(g.input[0].type.tensor_type.shape.dim[0], "dim_param", _MARK),
              "graph_name": lambda: setattr(g, "name", _MARK)}[where]
    target()
    data = m.SerializeToString().replace(_MARK.encode(), b"\xff\xfe\xc0\x80AB\xed\xa0")
    return Input(data, feeds)


def _rename_value(m, old, new):
    for n in m.graph.node:
        n.input[:] = [new if i == old else i for i in n.input]
        n.output[:] = [new if o == old else o for o in n.output]
    for v in list(m.graph.input) + list(m.graph.output):
        if v.name == old:
            v.name = new
    for t in m.graph.initializer:
        if t.name == old:
            t.name = new


def structure_cases() -> list[Case]:
    S = lambda name, build: Case(f"structure_{name}", "structure", "refuse", build)  # noqa: E731
    out = [
        S("nested_if_300_proto", lambda d: Input(_nested_if(300), None)),
        S("nested_if_2000_proto", lambda d: Input(_nested_if(2000), None)),
        S("nested_if_300_bytes", lambda d: Input(_nested_if(300).SerializeToString(), None)),
        S("nested_if_2000_file", lambda d: Input(_write(d, _nested_if(2000)), None)),
        S("nested_sequence_type_500", lambda d: Input(_nested_sequence_type(500), None)),
    ]
    for where in ("node_name", "op_type", "node_input", "graph_input", "initializer_name", "attribute_name",
                  "domain", "doc_string", "metadata_key", "producer_name", "dim_param", "graph_name"):
        # we refuse them (names are str here); a runtime that runs them correctly is not wrong
        out.append(Case(f"structure_bad_utf8_{where}", "structure", "any", lambda d, w=where: _bad_utf8(w)))
    out.append(Case("structure_nested_if_20", "structure", "run",
                    lambda d: Input(_nested_if(20), {"x": np.array([1, -1], np.float32), "c": np.array(True)})))
    return out


def cases(long: bool = False) -> list[Case]:
    out = (byte_cases(long) + edit_cases(long) + external_cases() + invalid_cases() + lenient_cases()
           + path_cases() + structure_cases())
    names = [c.name for c in out]
    assert len(names) == len(set(names)), "case names must be unique"
    return out

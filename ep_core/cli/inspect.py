"""`python -m ep_core inspect MODEL`: inputs/outputs, opsets, op counts, placement, FLOPs, memory."""
from __future__ import annotations

import argparse
import warnings

import onnx

from .common import (EXIT_MODEL, EXIT_OK, CliError, add_model_arguments, check_model_path,
                     open_session, parse_dims, print_json)
from .flops import estimate


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "inspect", help="inputs/outputs, opsets, op counts, placement, estimated FLOPs and memory",
        description="Describe MODEL: its inputs and outputs, opset imports, op counts by type "
                    "(subgraphs included), which provider runs which nodes (a session built with "
                    "--providers), estimated FLOPs of Conv/ConvTranspose/Gemm/MatMul from inferred "
                    "shapes (symbolic dims from --dim, default 1), weight bytes and a peak-activation "
                    "estimate.")
    add_model_arguments(p, threads=False)
    p.set_defaults(func=run)
    return p


def _op_counts(graph: onnx.GraphProto, counts: dict[str, int]) -> dict[str, int]:
    for node in graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _op_counts(sub, counts)
    return counts


def run(args: argparse.Namespace) -> int:
    check_model_path(args.model)
    dims = parse_dims(args.dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # unavailable providers: shown in placement
        session = open_session(args.model, args.providers)
    try:
        model = onnx.load(args.model, load_external_data=False)
    except Exception as e:   # the session loaded it, so this is rare (onnx's own errors)
        raise CliError(f"cannot read {args.model}: {e}", EXIT_MODEL) from None
    placement = session.get_placement()
    by_provider: dict[str, dict[str, int]] = {}
    for _, op, prov in placement["nodes"]:
        by_provider.setdefault(prov, {})
        by_provider[prov][op] = by_provider[prov].get(op, 0) + 1
    cost = estimate(model, dims)
    doc = {
        "model": args.model,
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "inputs": [{"name": a.name, "type": a.type, "shape": a.shape} for a in session.get_inputs()],
        "outputs": [{"name": a.name, "type": a.type, "shape": a.shape} for a in session.get_outputs()],
        "op_counts": dict(sorted(_op_counts(model.graph, {}).items(), key=lambda kv: (-kv[1], kv[0]))),
        "providers": session.get_providers(),
        "placement": {"nodes_by_provider": by_provider, "copy_nodes": placement["copy_nodes"],
                      "initializer_copies": placement["initializer_copies"]},
        "dims": dims,
        **cost,
    }
    if args.json:
        print_json(doc)
        return EXIT_OK
    print(f"model: {args.model}   IR {doc['ir_version']}   producer: {doc['producer'] or '-'}")
    print("opsets: " + ", ".join(f"{d} {v}" for d, v in doc["opsets"].items()))
    for kind in ("inputs", "outputs"):
        for a in doc[kind]:
            print(f"{kind[:-1]:<7}{a['name']:<28}{a['type']:<20}{a['shape']}")
    print("op counts: " + ", ".join(f"{op} {n}" for op, n in doc["op_counts"].items()))
    print(f"placement with providers {doc['providers']} "
          f"(copy nodes {placement['copy_nodes']}, initializer copies {placement['initializer_copies']}):")
    for prov, ops in by_provider.items():
        print(f"  {prov:<8}{sum(ops.values()):>5} nodes: " + ", ".join(f"{op} {n}" for op, n in ops.items()))
    shown_dims = ", ".join(f"{k}={v}" for k, v in dims.items()) or "every symbolic dim = 1"
    print(f"estimated FLOPs ({shown_dims}): {_si(cost['total_flops'])}FLOP")
    for op, f in sorted(cost["flops"].items(), key=lambda kv: -kv[1]):
        print(f"  {op:<52}{_si(f):>10}FLOP")
    for op, n in cost["flops_unknown_shapes"].items():
        print(f"  {op}: {n} node(s) with shapes unknown after inference (not counted)")
    print(f"weights: {_si(cost['weight_bytes'], 1024)}B   peak activations (estimate): "
          f"{_si(cost['peak_activation_bytes'], 1024)}B")
    return EXIT_OK


def _si(x: float, base: int = 1000) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(x) < base:
            return f"{x:.3g} {unit}" if unit else f"{x:.0f} "
        x /= base
    return f"{x:.3g} P"

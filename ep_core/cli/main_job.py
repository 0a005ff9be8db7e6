"""Main job (`python -m ep_core` without a subcommand): run an embedded CNN with
providers=['cuda', 'cpu'] and compare with CPU only.

    python -m ep_core [--model PATH] [--batch N] [--runs N]

Without a GPU the CUDA provider is reported unavailable and the hybrid session falls back to the CPU.
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import ep_core
from ep_core.providers import availability


def default_model(seed: int = 0):
    """A small image classifier: 3 conv blocks, global pooling, a classifier head (random weights)."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def param(name, shape, scale):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    x, channels = "image", 3
    for k, out_c in enumerate((32, 64, 128)):
        w = param(f"conv{k}.w", (out_c, channels, 3, 3), (2.0 / (channels * 9)) ** 0.5)
        b = param(f"conv{k}.b", (out_c,), 0.01)
        nodes += [helper.make_node("Conv", [x, w, b], [f"c{k}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"]),
                  helper.make_node("MaxPool", [f"r{k}"], [f"p{k}"], kernel_shape=[2, 2], strides=[2, 2])]
        x, channels = f"p{k}", out_c
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["feat"]),
              helper.make_node("Gemm", ["feat", param("fc.w", (channels, 10), 0.1), param("fc.b", (10,), 0.01)],
                               ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "demo_cnn",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 64, 64])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def time_sessions(sessions: list, feeds: dict, runs: int) -> tuple[list[np.ndarray], list]:
    """Per session: its run times in ms and its outputs. The sessions take turns run by run, so
    machine noise hits them alike."""
    outs = [sess.run(None, feeds) for sess in sessions]   # warm-up (kernel compilation, arenas)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for sess, ts in zip(sessions, times):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            ts.append((time.perf_counter() - t0) * 1e3)
    return [np.asarray(ts) for ts in times], outs


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The main job's options (on the top-level parser: they apply when no subcommand is given)."""
    ap.add_argument("--model", help="main job: an .onnx file (default: the embedded CNN)")
    ap.add_argument("--batch", type=int, default=8, help="main job: size of symbolic dims (default 8)")
    ap.add_argument("--runs", type=int, default=10, help="main job: timed runs per session (default 10)")


def main(argv=None) -> int:
    """The main job alone (its own parser, as before the subcommands existed)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    model = args.model or default_model()
    rng = np.random.default_rng(1)

    cpu = ep_core.InferenceSession(model, providers=["cpu"])
    feeds = {}
    for arg in cpu.get_inputs():
        shape = [d if isinstance(d, int) else args.batch for d in (arg.shape or [])]
        feeds[arg.name] = rng.standard_normal(shape).astype(np.float32)

    ok, reason = availability("cuda")
    print(f"ep_core providers available: {ep_core.get_available_providers()}")
    if not ok:
        print(f"CUDA provider unavailable ({reason}); the hybrid session falls back to the CPU.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hybrid = ep_core.InferenceSession(model, providers=["cuda", "cpu"])
    placement = hybrid.get_placement()
    by_provider: dict[str, int] = {}
    for _, op, prov in placement["nodes"]:
        if not op.startswith("Memcpy"):
            by_provider[prov] = by_provider.get(prov, 0) + 1

    (t_cpu, t_hyb), (out_cpu, out_hyb) = time_sessions([cpu, hybrid], feeds, args.runs)
    diff = max(float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in zip(out_cpu, out_hyb))
    print(f"model inputs: {[(a.name, a.shape) for a in cpu.get_inputs()]}  batch={args.batch}")
    print(f"hybrid session providers: {hybrid.get_providers()}  nodes per provider: {by_provider}  "
          f"copy nodes: {placement['copy_nodes']}")
    gpu_ran = "cuda" in by_provider
    print(f"{'session':<30}{'median ms':>12}{'p10-p90 ms':>18}   ({args.runs} runs each, alternating)")
    label = "['cuda','cpu']" + ("" if gpu_ran else " (CPU fallback)")
    for name, ts in ((str(["cpu"]), t_cpu), (label, t_hyb)):
        lo, hi = np.percentile(ts, [10, 90])
        print(f"{name:<30}{np.median(ts):>12.3f}{f'{lo:.3f}-{hi:.3f}':>18}")
    if gpu_ran:
        print(f"speed-up of hybrid (GPU + CPU) over cpu: {np.median(t_cpu) / np.median(t_hyb):.2f}x   "
              f"max |difference|: {diff:.3g}")
    else:
        print("no GPU ran: both sessions ran the same graph on the CPU, so their timings differ only by "
              f"noise (no speed-up to report)   max |difference|: {diff:.3g}")
    return 0

"""Batch inference with ep_core on Ray: a small CNN over a dataset of images, on a local Ray.

    pip install -e ".[ray]"
    python examples/ray_batch_inference.py [--rows 512] [--concurrency N] [--address ADDR]

Builds a 2-conv-block image classifier (random weights), a dataset of random 3x32x32 images
with an id and a caption column, runs `ep_core.ray.predict` with `--concurrency` actors (one
session each; default: the CPUs less one) and checks a few rows against a plain `InferenceSession`. With `--address` it
connects to an existing cluster (whose nodes must have ep-runtime installed) instead.
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import ray
import ray.data
from onnx import TensorProto, helper, numpy_helper

import ep_core
from ep_core.ray import predict


def classifier(seed: int = 0):
    """Conv 3x3 + Relu + MaxPool, twice, then global pooling and a 10-way Gemm + Softmax."""
    rng = np.random.default_rng(seed)
    inits, nodes, x, channels = [], [], "pixels", 3

    def param(name, shape, scale):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    for k, out_c in enumerate((16, 32)):
        w = param(f"w{k}", (out_c, channels, 3, 3), (2.0 / (channels * 9)) ** 0.5)
        nodes += [helper.make_node("Conv", [x, w], [f"c{k}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"]),
                  helper.make_node("MaxPool", [f"r{k}"], [f"p{k}"], kernel_shape=[2, 2], strides=[2, 2])]
        x, channels = f"p{k}", out_c
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["feat"]),
              helper.make_node("Gemm", ["feat", param("fc", (channels, 10), 0.1)], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "classifier",
                              [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def make_images(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows generated from their ids, so the dataset never has to fit in memory."""
    ids = batch["id"]
    images = np.stack([np.random.default_rng(i).standard_normal((3, 32, 32)).astype(np.float32) for i in ids])
    return {"id": ids, "image": images, "caption": np.array([f"photo {i}" for i in ids])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=None,
                    help="actors (default: the cluster's CPUs less one, left for generating rows)")
    ap.add_argument("--address", default=None, help="an existing Ray cluster (default: start a local one)")
    args = ap.parse_args()

    ray.init(address=args.address, logging_level=logging.WARNING)
    concurrency = args.concurrency or max(1, int(ray.cluster_resources()["CPU"]) - 1)
    model = classifier()
    images = ray.data.range(args.rows, override_num_blocks=max(concurrency, args.rows // 64)) \
        .map_batches(make_images)
    scored = predict(images, model, input_columns={"pixels": "image"}, output_columns={"probs": "scores"},
                     batch_size=64, concurrency=concurrency, id_column="id")
    rows = sorted(scored.take_all(), key=lambda r: r["id"])
    print(f"scored {len(rows)} rows; columns {sorted(rows[0])}")

    # The same rows through a plain session give the same scores.
    session = ep_core.InferenceSession(model.SerializeToString())
    first = make_images({"id": np.arange(8)})
    expected = session.run(None, {"pixels": first["image"]})[0]
    got = np.stack([r["scores"] for r in rows[:8]])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    for r in rows[:3]:
        print(f"  {r['caption']}: class {int(np.argmax(r['scores']))} (p={r['scores'].max():.3f})")
    ray.shutdown()


if __name__ == "__main__":
    main()

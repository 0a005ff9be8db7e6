"""Real model architectures with random weights (fixed seeds), built with onnx.helper.

    python -m benchmarks.models [--out DIR] [name ...]   # writes DIR/<name>.onnx

`MODELS` maps a name to a `ModelSpec` (builder, feeds, category). Categories: "cnn",
"transformer", "rnn", "ml", "realtime". `build(name)` returns the ModelProto (built once per process and
cached in memory), `build_all(out_dir)` writes every model whose builder dependencies are present.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from . import cnn, detection, realtime, rnn, sklearn_models, transformer

CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "models"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    category: str
    builder: Callable[[], onnx.ModelProto]
    feeds: Callable[[], dict[str, np.ndarray]]
    description: str
    requires: tuple[str, ...] = field(default=())   # importable modules the builder needs

    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


MODELS: dict[str, ModelSpec] = {s.name: s for s in [
    ModelSpec("resnet50", "cnn", cnn.resnet50, cnn.image_feeds,
              "ResNet-50, torchvision layout, 1x3x224x224, BatchNormalization nodes"),
    ModelSpec("mobilenetv2", "cnn", cnn.mobilenetv2, cnn.image_feeds,
              "MobileNetV2, 1x3x224x224, BN folded, ReLU6 as Clip, depthwise convs"),
    ModelSpec("yolov8n_320", "cnn", detection.yolov8n, detection.detection_feeds,
              "YOLOv8n-style detector, 1x3x320x320: C2f/SPPF backbone, PAN neck, DFL decode head"),
    ModelSpec("bert_base", "transformer", transformer.bert_base, transformer.bert_feeds,
              "BERT-base encoder: 12 layers, hidden 768, 12 heads, seq 128, LayerNormalization, Erf Gelu"),
    ModelSpec("gpt2_decoder_step", "transformer", transformer.gpt2_decoder_step, transformer.gpt2_feeds,
              "GPT-2 small decode step: 12 layers, KV cache past 127 -> 128, decomposed LayerNorm, vocab 50257"),
    ModelSpec("lstm", "rnn", rnn.lstm_classifier, rnn.sequence_feeds,
              "2-layer LSTM (bidirectional + forward), hidden 256, batch 4, seq 100"),
    ModelSpec("gru", "rnn", rnn.gru_classifier, rnn.sequence_feeds,
              "2-layer GRU (bidirectional + forward), hidden 256, batch 4, seq 100"),
    ModelSpec("sklearn_scaler_logreg", "ml", sklearn_models.scaler_logreg, sklearn_models.tabular_feeds,
              "skl2onnx: StandardScaler + LogisticRegression, 20 features, 3 classes, batch 512",
              ("sklearn", "skl2onnx")),
    ModelSpec("sklearn_scaler_forest", "ml", sklearn_models.scaler_random_forest, sklearn_models.tabular_feeds,
              "skl2onnx: StandardScaler + RandomForest (50 trees, depth 8), batch 512",
              ("sklearn", "skl2onnx")),
    ModelSpec("vad_lstm", "realtime", realtime.vad_lstm, realtime.chunk_feeds,
              "Silero-VAD-v5-like streaming step: If on sample rate, STFT conv, 4 conv, LSTM step (hidden 128)"),
]}

_built: dict[str, onnx.ModelProto] = {}


def build(name: str) -> onnx.ModelProto:
    """The model as a ModelProto (built once per process)."""
    if name not in _built:
        spec = MODELS[name]
        missing = spec.missing()
        if missing:
            raise ImportError(f"model {name!r} needs {missing} (pip install -e '.[dev]')")
        _built[name] = spec.builder()
    return _built[name]


def feeds(name: str) -> dict[str, np.ndarray]:
    return MODELS[name].feeds()


def path(name: str, out_dir: str | os.PathLike | None = None, rebuild: bool = False) -> Path:
    """Path of `<name>.onnx` in the cache (or `out_dir`), building it if absent."""
    out = Path(out_dir or CACHE_DIR) / f"{name}.onnx"
    if rebuild or not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".onnx.tmp")
        onnx.save(build(name), str(tmp))
        os.replace(tmp, out)
    return out


def build_all(out_dir: str | os.PathLike | None = None, names: list[str] | None = None,
              rebuild: bool = True) -> dict[str, Path]:
    """Write every (or the named) model; models whose builder dependency is missing are skipped."""
    written = {}
    for name in names or list(MODELS):
        if MODELS[name].missing():
            print(f"skip {name}: needs {MODELS[name].missing()}")
            continue
        written[name] = path(name, out_dir, rebuild=rebuild)
    return written


def model_stats(model: onnx.ModelProto) -> dict:
    """Node and parameter counts (control-flow bodies included) and serialized size."""
    nodes = params = 0
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        nodes += len(g.node)
        params += sum(int(np.prod(t.dims)) for t in g.initializer)
        graphs.extend(a.g for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
        graphs.extend(sg for n in g.node for a in n.attribute for sg in a.graphs)
    return {"nodes": nodes, "params": params, "size_mb": round(model.ByteSize() / 2 ** 20, 1)}

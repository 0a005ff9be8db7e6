"""scikit-learn pipelines converted with skl2onnx (ai.onnx.ml Scaler, LinearClassifier,
TreeEnsembleClassifier ...). Trained on a fixed synthetic data set; probabilities as a tensor
(zipmap disabled) next to the label output."""
from __future__ import annotations

import numpy as np
import onnx

FEATURES, CLASSES = 20, 3


def _data(seed: int):
    from sklearn.datasets import make_classification
    return make_classification(n_samples=2000, n_features=FEATURES, n_informative=12,
                               n_classes=CLASSES, random_state=seed)


def _convert(pipe, name: str) -> onnx.ModelProto:
    from skl2onnx import to_onnx
    x, _ = _data(0)
    model = to_onnx(pipe, x[:1].astype(np.float32), options={"zipmap": False},
                    target_opset={"": 17, "ai.onnx.ml": 3})
    model.graph.name = name
    return model


def scaler_logreg(seed: int = 0) -> onnx.ModelProto:
    """StandardScaler + multinomial LogisticRegression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    x, y = _data(seed)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    return _convert(pipe, "scaler_logreg")


def scaler_random_forest(seed: int = 0) -> onnx.ModelProto:
    """StandardScaler + RandomForestClassifier (50 trees, depth <= 8)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    x, y = _data(seed)
    pipe = make_pipeline(StandardScaler(), RandomForestClassifier(
        n_estimators=50, max_depth=8, random_state=seed)).fit(x, y)
    return _convert(pipe, "scaler_random_forest")


def tabular_feeds(seed: int = 1, batch: int = 512) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"X": (rng.standard_normal((batch, FEATURES)) * 2.0).astype(np.float32)}

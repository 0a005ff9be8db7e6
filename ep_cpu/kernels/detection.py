"""Object-detection ops: NonMaxSuppression.

ImageDecoder needs an image codec library (Pillow); none is a dependency, so it is not provided.
"""
from __future__ import annotations

import numpy as np

from ep_core.kernel import Kernel
from ep_cpu.registry import kernel


def _corners(boxes: np.ndarray, center_point_box: int) -> np.ndarray:
    """[n, 4] boxes -> [n, 4] (y1, x1, y2, x2) with y1<=y2, x1<=x2."""
    b = boxes.astype(np.float32)
    if center_point_box:
        xc, yc, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
        return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=1)
    # Corner format accepts either diagonal pair: normalise to min/max.
    return np.stack([np.minimum(b[:, 0], b[:, 2]), np.minimum(b[:, 1], b[:, 3]),
                     np.maximum(b[:, 0], b[:, 2]), np.maximum(b[:, 1], b[:, 3])], axis=1)


def _iou_exceeds(box: np.ndarray, others: np.ndarray, threshold: np.float32) -> np.ndarray:
    """Whether IoU(box, each of others) > threshold, in float32 like the reference runtime."""
    y1 = np.maximum(box[0], others[:, 0])
    x1 = np.maximum(box[1], others[:, 1])
    y2 = np.minimum(box[2], others[:, 2])
    x2 = np.minimum(box[3], others[:, 3])
    inter = np.maximum(y2 - y1, np.float32(0)) * np.maximum(x2 - x1, np.float32(0))
    area_a = (box[2] - box[0]) * (box[3] - box[1])
    area_b = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area_a + area_b - inter
    valid = (inter > 0) & (area_a > 0) & (area_b > 0) & (union > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(valid, inter / np.where(union > 0, union, np.float32(1)), np.float32(0))
    return valid & (iou.astype(np.float32) > threshold)


@kernel("NonMaxSuppression")
class NonMaxSuppression(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.center_point_box = int(self.attr("center_point_box", 0))

    def compute(self, boxes, scores, max_output_boxes_per_class=None, iou_threshold=None,
                score_threshold=None):
        boxes = np.asarray(boxes)
        scores = np.asarray(scores, dtype=np.float32)
        max_out = (int(np.asarray(max_output_boxes_per_class).reshape(-1)[0])
                   if max_output_boxes_per_class is not None and np.size(max_output_boxes_per_class)
                   else 0)
        iou_t = (np.float32(np.asarray(iou_threshold).reshape(-1)[0])
                 if iou_threshold is not None and np.size(iou_threshold) else np.float32(0))
        score_t = (np.float32(np.asarray(score_threshold).reshape(-1)[0])
                   if score_threshold is not None and np.size(score_threshold) else None)
        selected: list[tuple[int, int, int]] = []
        if max_out <= 0:
            return np.zeros((0, 3), dtype=np.int64)
        for b in range(scores.shape[0]):
            corners = _corners(boxes[b], self.center_point_box)
            for c in range(scores.shape[1]):
                s = scores[b, c]
                cand = np.arange(s.shape[0]) if score_t is None else np.nonzero(s > score_t)[0]
                # Highest score first; ties keep the lower box index first.
                order = cand[np.argsort(-s[cand], kind="stable")]
                kept: list[int] = []
                for idx in order:
                    if len(kept) >= max_out:
                        break
                    if kept and _iou_exceeds(corners[idx], corners[kept], iou_t).any():
                        continue
                    kept.append(int(idx))
                selected.extend((b, c, k) for k in kept)
        return np.array(selected, dtype=np.int64).reshape(-1, 3)

"""A task's metrics from post-processed result records (``vmtl batch --labels``; numpy only).

The records are what the engines of :mod:`vmtl.client.engines` write per video (``record["tasks"][task]``,
window-combined), the ground truth the records of :mod:`vmtl.data.annotations` (read by
:func:`vmtl.client.batch.resolve_labels`); the metrics themselves are those of :mod:`vmtl.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from vmtl.metrics import (
    box_iou,
    classify_metrics,
    detection_ap,
    embed_metrics,
    regress_metrics,
    tag_metrics,
)
from vmtl.tasks import Segment, TaskSpec

__all__ = ["record_metrics"]


def record_metrics(
    task: TaskSpec, preds: Sequence[dict[str, Any]], truths: Sequence[Any]
) -> dict[str, float]:
    """The task kind's metrics from post-processed results (``record["tasks"][task]``) and ground-truth
    records of :mod:`vmtl.data.annotations`, aligned. Works on whole-video (window-combined) results.

    classify: top1 (and top5 when the records carry at least 5 scores); tag: mAP, F1 at the task's
    threshold; localize: mAP@0.5, mAP@0.3; embed: recall@1, recall@5 (leave-one-out over these videos);
    regress: MAE, RMSE; track: mIoU and the share of boxes with IoU >= 0.5 (each predicted box against
    the annotated box nearest in time).
    """
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} results for {len(truths)} ground-truth records")
    if not preds:
        return {}
    k = task.kind
    if k == "classify":
        scores = np.zeros((len(preds), task.num_classes))
        for i, p in enumerate(preds):
            for s in p["top_k"]:
                scores[i, s["index"]] = s["score"]
        metrics = classify_metrics(scores, np.array([t.label for t in truths]))
        if task.top_k < min(5, task.num_classes):
            metrics.pop("top5")  # the records hold only the top_k best labels
        return metrics
    if k == "tag":
        probs = np.array([[p["scores"][lab] for lab in task.labels] for p in preds])
        targets = np.zeros_like(probs, dtype=bool)
        for i, t in enumerate(truths):
            targets[i, list(t.labels)] = True
        return tag_metrics(probs, targets, threshold=task.threshold)
    if k == "embed":
        return embed_metrics(np.array([p["embedding"] for p in preds]), np.array([t.label for t in truths]))
    if k == "regress":
        plain = replace(task, scale=(), offset=())  # the records' values are already scaled
        return regress_metrics(
            plain, np.array([p["values"] for p in preds]), np.array([t.values for t in truths])
        )
    if k == "localize":
        found = [
            [Segment(s["label"], s["start"], s["end"], s["score"]) for s in p["segments"]] for p in preds
        ]
        gt = [[Segment(g.label, g.start, g.end, 1.0) for g in t.segments] for t in truths]
        out: dict[str, float] = {}
        for thr in (0.5, 0.3):
            aps = [
                detection_ap(
                    [[s for s in f if s.label == label] for f in found],
                    [[s for s in g if s.label == label] for g in gt],
                    thr,
                )
                for label in task.labels
            ]
            aps = [a for a in aps if not np.isnan(a)]
            out[f"mAP@{thr}"] = float(np.mean(aps)) if aps else float("nan")
        return out
    ious: list[float] = []
    for p, t in zip(preds, truths, strict=True):
        gt = t.array()
        if not len(gt) or not p["boxes"]:
            continue
        times = np.array([b["time"] for b in p["boxes"]])
        boxes = np.array([b["box"] for b in p["boxes"]], dtype=np.float64)
        nearest = np.abs(gt[:, 0][None, :] - times[:, None]).argmin(axis=1)
        ious.extend(box_iou(boxes, gt[nearest, 1:]).tolist())
    iou = np.array(ious)
    return {
        "mIoU": float(iou.mean()) if len(iou) else float("nan"),
        "IoU>=0.5": float((iou >= 0.5).mean()) if len(iou) else float("nan"),
    }

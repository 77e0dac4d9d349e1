"""Every task kind's metrics in one table, ``KIND_METRICS`` (numpy only).

A row (a :class:`KindMetrics` subclass) says how one kind is scored three ways: on raw head outputs
over a labelled clip set (:func:`vmtl.metrics.evaluate.task_metrics`), by a trivial predictor on those
clips (:func:`vmtl.metrics.evaluate.chance_level`) and on post-processed result records against the
annotation records of :mod:`vmtl.data.annotations` (:func:`vmtl.metrics.records.record_metrics`). The
metric functions themselves are those of :mod:`vmtl.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from vmtl.metrics import (
    box_iou,
    classify_metrics,
    detection_ap,
    embed_metrics,
    localize_metrics,
    regress_metrics,
    tag_metrics,
    track_metrics,
)
from vmtl.tasks import Segment, TaskSpec
from vmtl.video import Clip

__all__ = ["KIND_METRICS", "ClipSet", "KindMetrics", "regress_metrics_constant"]


class ClipSet(Protocol):
    """What the metrics read of a decoded, labelled split (:class:`vmtl.data.clips.ClipSet`)."""

    targets: np.ndarray
    truths: list[list[Segment]]

    def __len__(self) -> int: ...

    def clip(self, i: int) -> Clip: ...


class KindMetrics:
    """One kind's metrics (a subclass per kind; ``KIND_METRICS`` holds one instance per kind)."""

    def clips(self, task: TaskSpec, outputs: np.ndarray, clips: ClipSet) -> dict[str, float]:
        """Every metric of raw outputs [N, ...] aligned with `clips` (same length, checked by the caller)."""
        raise NotImplementedError

    def chance(self, task: TaskSpec, clips: ClipSet) -> float:
        """The primary metric of a trivial predictor on these clips."""
        raise NotImplementedError

    def records(
        self, task: TaskSpec, preds: Sequence[dict[str, Any]], truths: Sequence[Any]
    ) -> dict[str, float]:
        """Every metric of whole-video results (``record["tasks"][task]``) against aligned, non-empty
        ground-truth records."""
        raise NotImplementedError


class _Classify(KindMetrics):
    def clips(self, task: TaskSpec, outputs: np.ndarray, clips: ClipSet) -> dict[str, float]:
        return classify_metrics(outputs, clips.targets)

    def chance(self, task: TaskSpec, clips: ClipSet) -> float:
        y = clips.targets
        return float(np.bincount(y.astype(int)).max() / len(y))  # majority class

    def records(
        self, task: TaskSpec, preds: Sequence[dict[str, Any]], truths: Sequence[Any]
    ) -> dict[str, float]:
        scores = np.zeros((len(preds), task.num_classes))
        for i, p in enumerate(preds):
            for s in p["top_k"]:
                scores[i, s["index"]] = s["score"]
        metrics = classify_metrics(scores, np.array([t.label for t in truths]))
        if task.top_k < min(5, task.num_classes):
            metrics.pop("top5")  # the records hold only the top_k best labels
        return metrics


class _Tag(KindMetrics):
    def clips(self, task: TaskSpec, outputs: np.ndarray, clips: ClipSet) -> dict[str, float]:
        return tag_metrics(outputs, clips.targets)

    def chance(self, task: TaskSpec, clips: ClipSet) -> float:
        y = clips.targets
        return float(np.mean(y.mean(axis=0)[y.sum(axis=0) > 0]))  # AP of a constant score = prevalence

    def records(
        self, task: TaskSpec, preds: Sequence[dict[str, Any]], truths: Sequence[Any]
    ) -> dict[str, float]:
        probs = np.array([[p["scores"][lab] for lab in task.labels] for p in preds])
        targets = np.zeros_like(probs, dtype=bool)
        for i, t in enumerate(truths):
            targets[i, list(t.labels)] = True
        return tag_metrics(probs, targets, threshold=task.threshold)


class _Localize(KindMetrics):
    def clips(self, task: TaskSpec, outputs: np.ndarray, clips: ClipSet) -> dict[str, float]:
        return localize_metrics(task, outputs, [clips.clip(i) for i in range(len(clips))], clips.truths)

    def chance(self, task: TaskSpec, clips: ClipSet) -> float:
        """The best segment mAP@0.5 of a constant answer: every clip gets each token's most frequent
        label (these clips' frequencies), or one segment over the whole clip of a single label."""
        y = clips.targets.astype(int)
        freq = np.stack([np.bincount(y[:, j], minlength=task.out_dim) for j in range(y.shape[1])]) / len(y)
        answers = [freq] + [np.eye(task.out_dim)[[c] * y.shape[1]] for c in range(1, task.out_dim)]
        return max(
            self.clips(task, np.repeat(np.log(np.maximum(a, 1e-6))[None], len(y), axis=0), clips)["mAP@0.5"]
            for a in answers
        )

    def records(
        self, task: TaskSpec, preds: Sequence[dict[str, Any]], truths: Sequence[Any]
    ) -> dict[str, float]:
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


class _Embed(KindMetrics):
    def clips(self, task: TaskSpec, outputs: np.ndarray, clips: ClipSet) -> dict[str, float]:
        return embed_metrics(outputs, clips.targets)

    def chance(self, task: TaskSpec, clips: ClipSet) -> float:
        ids = clips.targets.astype(int)
        counts = np.bincount(ids)
        pair = counts[ids] > 1
        return float(np.mean((counts[ids][pair] - 1) / (len(ids) - 1)))  # random neighbour

    def records(
        self, task: TaskSpec, preds: Sequence[dict[str, Any]], truths: Sequence[Any]
    ) -> dict[str, float]:
        return embed_metrics(np.array([p["embedding"] for p in preds]), np.array([t.label for t in truths]))


class _Regress(KindMetrics):
    def clips(self, task: TaskSpec, outputs: np.ndarray, clips: ClipSet) -> dict[str, float]:
        return regress_metrics(task, outputs, clips.targets)

    def chance(self, task: TaskSpec, clips: ClipSet) -> float:
        return regress_metrics_constant(task, clips.targets)

    def records(
        self, task: TaskSpec, preds: Sequence[dict[str, Any]], truths: Sequence[Any]
    ) -> dict[str, float]:
        plain = replace(task, scale=(), offset=())  # the records' values are already scaled
        return regress_metrics(
            plain, np.array([p["values"] for p in preds]), np.array([t.values for t in truths])
        )


class _Track(KindMetrics):
    def clips(self, task: TaskSpec, outputs: np.ndarray, clips: ClipSet) -> dict[str, float]:
        return track_metrics(outputs, clips.targets)

    def chance(self, task: TaskSpec, clips: ClipSet) -> float:
        y = clips.targets  # the mean training box, approximated by the mean target box
        mean_box = np.broadcast_to(y.reshape(-1, 4).mean(axis=0), y.shape)
        return track_metrics(mean_box, y)["mIoU"]

    def records(
        self, task: TaskSpec, preds: Sequence[dict[str, Any]], truths: Sequence[Any]
    ) -> dict[str, float]:
        """Each predicted box against the annotated box nearest in time."""
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


def regress_metrics_constant(task: TaskSpec, y: np.ndarray) -> float:
    """MAE of always predicting the median value."""
    y = y.reshape(len(y), -1)
    return float(np.abs(y - np.median(y, axis=0)).mean())


KIND_METRICS: Mapping[str, KindMetrics] = MappingProxyType(
    {
        "classify": _Classify(),
        "tag": _Tag(),
        "localize": _Localize(),
        "embed": _Embed(),
        "regress": _Regress(),
        "track": _Track(),
    }
)

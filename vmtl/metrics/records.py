"""A task's metrics from post-processed result records (``vmtl batch --labels``; numpy only).

The records are what the engines of :mod:`vmtl.client.engines` write per video (``record["tasks"][task]``,
window-combined), the ground truth the records of :mod:`vmtl.data.annotations` (read by
:func:`vmtl.client.batch.resolve_labels`); each kind's are its row of :data:`vmtl.metrics.kinds.KIND_METRICS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vmtl.metrics.kinds import KIND_METRICS
from vmtl.tasks import TaskSpec

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
    return KIND_METRICS[task.kind].records(task, preds, truths)

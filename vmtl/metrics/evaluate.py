"""Metrics of one task from its raw outputs on a labelled clip set (numpy only: shared by training,
export's accuracy gate and `vmtl eval`).

The clip set is anything shaped like :class:`vmtl.data.clips.ClipSet` (:class:`ClipSet` below names what
is read of it), so this layer needs nothing from the data readers.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from vmtl.metrics import (
    classify_metrics,
    embed_metrics,
    localize_metrics,
    regress_metrics,
    tag_metrics,
    track_metrics,
)
from vmtl.tasks import Segment, TaskSpec
from vmtl.video import Clip


class ClipSet(Protocol):
    """What the metrics read of a decoded, labelled split (:class:`vmtl.data.clips.ClipSet`)."""

    targets: np.ndarray
    truths: list[list[Segment]]

    def __len__(self) -> int: ...

    def clip(self, i: int) -> Clip: ...


def task_metrics(task: TaskSpec, outputs: np.ndarray, clips: ClipSet) -> dict[str, float]:
    """Every metric of `task.kind` for outputs [N, ...] aligned with `clips`."""
    if len(outputs) != len(clips):
        raise ValueError(f"task {task.name!r}: {len(outputs)} outputs for {len(clips)} clips")
    y = clips.targets
    k = task.kind
    if k == "classify":
        return classify_metrics(outputs, y)
    if k == "tag":
        return tag_metrics(outputs, y)
    if k == "localize":
        return localize_metrics(task, outputs, [clips.clip(i) for i in range(len(clips))], clips.truths)
    if k == "embed":
        return embed_metrics(outputs, y)
    if k == "regress":
        return regress_metrics(task, outputs, y)
    return track_metrics(outputs, y)


def primary(task: TaskSpec, metrics: dict[str, float]) -> tuple[str, float]:
    name = task.kind_spec.primary_metric
    return name, metrics[name]


def chance_level(task: TaskSpec, clips: ClipSet) -> float:
    """The primary metric of a trivial predictor on these clips (what 'clearly beats chance' is against)."""
    y = clips.targets
    k = task.kind
    if k == "classify":
        return float(np.bincount(y.astype(int)).max() / len(y))  # majority class
    if k == "tag":
        return float(np.mean(y.mean(axis=0)[y.sum(axis=0) > 0]))  # AP of a constant score = prevalence
    if k == "localize":
        return _localize_chance(task, clips)
    if k == "embed":
        ids = y.astype(int)
        counts = np.bincount(ids)
        pair = counts[ids] > 1
        return float(np.mean((counts[ids][pair] - 1) / (len(ids) - 1)))  # random neighbour
    if k == "regress":
        return regress_metrics_constant(task, y)
    # track: the mean training box, approximated by the mean target box
    mean_box = np.broadcast_to(y.reshape(-1, 4).mean(axis=0), y.shape)
    return track_metrics(mean_box, y)["mIoU"]


def _localize_chance(task: TaskSpec, clips: ClipSet) -> float:
    """The best segment mAP@0.5 of a constant answer: every clip gets each token's most frequent label
    (these clips' frequencies), or one segment over the whole clip of a single label."""
    y = clips.targets.astype(int)
    freq = np.stack([np.bincount(y[:, j], minlength=task.out_dim) for j in range(y.shape[1])]) / len(y)
    answers = [freq] + [np.eye(task.out_dim)[[c] * y.shape[1]] for c in range(1, task.out_dim)]
    return max(
        task_metrics(task, np.repeat(np.log(np.maximum(a, 1e-6))[None], len(y), axis=0), clips)["mAP@0.5"]
        for a in answers
    )


def regress_metrics_constant(task: TaskSpec, y: np.ndarray) -> float:
    """MAE of always predicting the median value."""
    y = y.reshape(len(y), -1)
    return float(np.abs(y - np.median(y, axis=0)).mean())

"""Metrics of one task from its raw outputs on a labelled clip set (numpy only: shared by training,
export's accuracy gate and `vmtl eval`).

The clip set is anything shaped like :class:`vmtl.data.clips.ClipSet` (:class:`ClipSet` names what is
read of it), so this layer needs nothing from the data readers. Each kind's metrics and chance level are
its row of :data:`vmtl.metrics.kinds.KIND_METRICS`.
"""

from __future__ import annotations

import numpy as np

from vmtl.metrics.kinds import KIND_METRICS, ClipSet, regress_metrics_constant
from vmtl.tasks import TaskSpec

__all__ = ["ClipSet", "chance_level", "primary", "regress_metrics_constant", "task_metrics"]


def task_metrics(task: TaskSpec, outputs: np.ndarray, clips: ClipSet) -> dict[str, float]:
    """Every metric of `task.kind` for outputs [N, ...] aligned with `clips`."""
    if len(outputs) != len(clips):
        raise ValueError(f"task {task.name!r}: {len(outputs)} outputs for {len(clips)} clips")
    return KIND_METRICS[task.kind].clips(task, outputs, clips)


def primary(task: TaskSpec, metrics: dict[str, float]) -> tuple[str, float]:
    name = task.kind_spec.primary_metric
    return name, metrics[name]


def chance_level(task: TaskSpec, clips: ClipSet) -> float:
    """The primary metric of a trivial predictor on these clips (what 'clearly beats chance' is against)."""
    return KIND_METRICS[task.kind].chance(task, clips)

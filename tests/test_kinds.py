"""The KIND_SPECS table: one consistent spec per task kind, whose primary metric the metrics code computes."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vmtl.client.batch import KIND_BATCH, _fitting_kinds
from vmtl.data.annotations import (
    KIND_ANNOTATIONS,
    FrameBox,
    GtSegment,
    KindAnnotations,
    LabelRecord,
    LocalizeRecord,
    RegressRecord,
    TagRecord,
    TrackRecord,
    annotation_suffix,
    read_task_annotations,
    write_records,
)
from vmtl.data.clips import KIND_TARGETS, ClipSet, KindTargets
from vmtl.metrics import LOWER_IS_BETTER, PRIMARY_METRIC, is_better
from vmtl.metrics.evaluate import task_metrics
from vmtl.metrics.kinds import KIND_METRICS, KindMetrics
from vmtl.metrics.records import record_metrics
from vmtl.models.heads import HEADS, TaskHead
from vmtl.models.losses import KIND_LOSSES, KindLoss
from vmtl.tasks import (
    KIND_SPECS,
    KINDS,
    LABELLED_KINDS,
    TEMPORAL_KINDS,
    KindSpec,
    Segment,
    TaskGraph,
    TaskSpec,
    combine_windows,
    kind_spec,
    postprocess,
)

N, FRAMES, TOKENS = 6, 8, 4  # clips, frames per clip, temporal tokens
LABELS = ("run", "jump", "sit")

TASKS = {  # a valid task of every kind: a new kind fails these tests until it is added here
    "classify": TaskSpec("object", "classify", labels=LABELS, top_k=5),
    "tag": TaskSpec("tags", "tag", labels=LABELS),
    "localize": TaskSpec("segments", "localize", labels=LABELS[:2], threshold=0.0),
    "embed": TaskSpec("identity", "embed", dim=8),
    "regress": TaskSpec("count", "regress", dim=2, scale=(2.0,), offset=(1.0, 0.0)),
    "track": TaskSpec("box", "track"),
}


@dataclass
class FakeClip:
    timestamps: np.ndarray
    crop: tuple[float, float, float]
    start: float
    end: float


CLIP = FakeClip(np.arange(FRAMES) * 0.5 + 0.25, (0.0, 0.0, 100.0), 0.0, FRAMES * 0.5)


def _outputs(task: TaskSpec, rng: np.random.Generator) -> np.ndarray:
    shape = (N, TOKENS, task.out_dim) if task.temporal else (N, task.out_dim)
    out = rng.normal(size=shape)
    return 1 / (1 + np.exp(-out)) if task.kind == "track" else out  # track heads emit sigmoids


def _truths(task: TaskSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[Any], list[list[Any]]]:
    """Training targets [N, ...], annotation records and localize's segment truths for N clips."""
    paths = [Path(f"v{i}.mp4") for i in range(N)]
    k = task.kind
    if k in ("classify", "embed"):
        y = np.arange(N) % 3
        return y, [LabelRecord(p, int(c)) for p, c in zip(paths, y, strict=True)], []
    if k == "tag":
        y = (rng.random((N, task.num_classes)) > 0.5).astype(np.float32)
        y[:, 0] = 1.0
        return y, [TagRecord(p, tuple(np.flatnonzero(r).tolist())) for p, r in zip(paths, y, strict=True)], []
    if k == "regress":
        y = rng.normal(size=(N, task.dim)).astype(np.float32)
        return y, [RegressRecord(p, tuple(map(float, r))) for p, r in zip(paths, y, strict=True)], []
    if k == "localize":
        y = np.tile([0, 1, 1, 2], (N, 1))
        segs = [GtSegment(0.5, 2.0, "run", 0), GtSegment(2.0, 4.0, "jump", 1)]
        records = [LocalizeRecord(p.stem, p, 4.0, None, tuple(segs)) for p in paths]
        truths = [[Segment(g.label, g.start, g.end, 1.0) for g in segs] for _ in paths]
        return y, records, truths
    corners = rng.random((N, TOKENS, 4)).astype(np.float32)
    boxes = np.concatenate(
        [np.minimum(corners[..., :2], corners[..., 2:]), np.maximum(corners[..., :2], corners[..., 2:])], -1
    )
    records = [
        TrackRecord(
            p.stem,
            p,
            100,
            100,
            None,
            tuple(FrameBox(0.25 + t, *map(float, b * 100)) for t, b in enumerate(bs)),
        )
        for p, bs in zip(paths, boxes, strict=True)
    ]
    return boxes, records, []


def test_the_table_names_every_kind_once() -> None:
    assert tuple(KIND_SPECS) == KINDS and len(set(KINDS)) == len(KINDS)
    assert set(TASKS) == set(KINDS)
    for kind, spec in KIND_SPECS.items():
        assert isinstance(spec, KindSpec) and spec.name == kind
        assert kind_spec(kind) is spec
    assert {k for k, s in KIND_SPECS.items() if s.labelled} == LABELLED_KINDS
    assert {k for k, s in KIND_SPECS.items() if s.temporal} == TEMPORAL_KINDS
    with pytest.raises(ValueError, match="unknown task kind 'nope'; choose one of classify"):
        kind_spec("nope")


@pytest.mark.parametrize("kind", KINDS)
def test_facts_agree(kind: str) -> None:
    spec = KIND_SPECS[kind]
    assert not spec.scored or spec.labelled, "scores are per label"
    assert spec.pooled != spec.temporal, "a head reads out pooled queries or per-token features"
    assert annotation_suffix(kind) == (".json" if spec.json_annotations else ".txt")
    assert PRIMARY_METRIC[kind] == spec.primary_metric
    assert (spec.primary_metric in LOWER_IS_BETTER) == spec.lower_is_better
    assert is_better(spec.primary_metric, 0.0, 1.0) == spec.lower_is_better
    task = TASKS[kind]
    TaskGraph((task,))  # valid
    if spec.labelled:
        with pytest.raises(ValueError, match="needs labels"):
            TaskGraph((TaskSpec("t", kind),))
    assert task.dim == 0 or spec.default_dim, "only kinds sized by dim take one"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_post_processes_combines_and_formats(kind: str) -> None:
    spec = KIND_SPECS[kind]
    for method in ("out_dim", "postprocess", "combine", "to_dict", "summary"):
        assert getattr(type(spec), method) is not getattr(KindSpec, method), f"{kind} has no {method}"
    task = TASKS[kind]
    out = _outputs(task, np.random.default_rng(0))
    windows = [postprocess(task, o, CLIP) for o in out[:2]]
    for result in [*windows, combine_windows(task, windows)]:
        as_dict = result.to_dict()
        assert result.kind == kind and as_dict["kind"] == kind and len(as_dict) > 1
        json.dumps(as_dict)
        assert isinstance(result.summary(), str)
    assert isinstance(spec.describe_output(task), str)


@pytest.mark.parametrize("kind", KINDS)
def test_the_metrics_compute_every_kinds_primary_metric(kind: str) -> None:
    task = TASKS[kind]
    rng = np.random.default_rng(1)
    outputs = _outputs(task, rng)
    targets, records, truths = _truths(task, rng)
    clips = ClipSet(
        task=task.name,
        frames=np.zeros((N, FRAMES, 2, 2, 3), np.uint8),
        timestamps=np.tile(CLIP.timestamps, (N, 1)),
        crops=np.tile(CLIP.crop, (N, 1)),
        windows=np.tile([CLIP.start, CLIP.end], (N, 1)),
        sizes=np.tile([100, 100], (N, 1)),
        targets=targets,
        truths=truths,
    )
    metric = KIND_SPECS[kind].primary_metric
    assert metric in task_metrics(task, outputs, clips)
    preds = [postprocess(task, o, clips.clip(i)).to_dict() for i, o in enumerate(outputs)]
    assert metric in record_metrics(task, preds, records)


# Every layer's per-kind table, and what each row must define: a new kind fails here, naming the table.
LAYER_TABLES: dict[str, tuple[Any, Any, tuple[str, ...]]] = {
    "vmtl.data.annotations.KIND_ANNOTATIONS": (KIND_ANNOTATIONS, KindAnnotations, ("read",)),
    "vmtl.data.clips.KIND_TARGETS": (KIND_TARGETS, KindTargets, ("target",)),
    "vmtl.metrics.kinds.KIND_METRICS": (KIND_METRICS, KindMetrics, ("clips", "chance", "records")),
    "vmtl.models.losses.KIND_LOSSES": (KIND_LOSSES, KindLoss, ("__call__",)),
    "vmtl.models.heads.HEADS": (HEADS, TaskHead, ()),
    "vmtl.client.batch.KIND_BATCH": (KIND_BATCH, None, ()),
}


@pytest.mark.parametrize("table", LAYER_TABLES)
def test_every_layer_has_a_row_for_every_kind(table: str) -> None:
    rows, base, methods = LAYER_TABLES[table]
    missing = [k for k in KINDS if k not in rows]
    assert not missing, (
        f"kind(s) {missing} have no row in {table}: add one there "
        "(docs/task-graph.md, 'Adding a task kind', lists every table)"
    )
    unknown = [k for k in rows if k not in KIND_SPECS]
    assert not unknown, f"{table} has rows for kinds {unknown} that vmtl.tasks.KIND_SPECS does not know"
    for kind, row in rows.items():
        cls = row if isinstance(row, type) else type(row)
        if base is not None:
            assert issubclass(cls, base), f"{table}[{kind!r}] is not a {base.__name__}"
        for method in methods:
            assert getattr(cls, method) is not getattr(base, method), f"{table}[{kind!r}] has no {method}"
    if table.endswith(".HEADS"):
        assert len(set(rows.values())) == len(rows), "one head class per kind"
        assert all(cls is not TaskHead for cls in rows.values())


@pytest.mark.parametrize("kind", KINDS)
def test_every_kinds_annotations_read_back_into_targets(kind: str, tmp_path: Path) -> None:
    """A kind's annotation file round-trips through its reader, `vmtl batch` recognises its format, and
    its records give targets shaped like the ones the metrics and losses take."""
    task = TASKS[kind]
    targets, records, _ = _truths(task, np.random.default_rng(2))
    records = [replace(r, path=tmp_path / r.path) for r in records]
    path = tmp_path / f"val{annotation_suffix(kind)}"
    write_records(path, records)
    assert read_task_annotations(task, path) == records
    assert kind in _fitting_kinds(path)
    rows = KIND_TARGETS[kind]
    got = np.stack([rows.target(task, r, CLIP, TOKENS) for r in records])  # type: ignore[arg-type]
    assert got.shape == targets.shape and got.dtype.kind == np.asarray(targets).dtype.kind

"""Per-kind evaluation metrics (numpy only: used by training, export's accuracy gate and `vmtl batch`).

Every function takes raw head outputs stacked over N clips, exactly as the model/ONNX graph emits them,
and returns a dict of named floats. `PRIMARY_METRIC` names the one number reported per kind (higher is
better except for those in `LOWER_IS_BETTER`, regress MAE).

Beside these: :mod:`vmtl.metrics.kinds` (``KIND_METRICS``: which of these functions scores each kind,
and how), :mod:`vmtl.metrics.evaluate` (a task's metrics and chance level on a labelled clip set) and
:mod:`vmtl.metrics.records` (a task's metrics from post-processed result records, for `vmtl batch`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vmtl.tasks import KIND_SPECS, ClipLike, Segment, TaskSpec, l2_normalize, postprocess, segment_iou

# The kinds' primary metrics, as vmtl.tasks.KIND_SPECS names them.
PRIMARY_METRIC: dict[str, str] = {kind: spec.primary_metric for kind, spec in KIND_SPECS.items()}
LOWER_IS_BETTER: frozenset[str] = frozenset(
    s.primary_metric for s in KIND_SPECS.values() if s.lower_is_better
)


def classify_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 and top-5 accuracy."""
    logits, labels = np.asarray(logits), np.asarray(labels).reshape(-1)
    order = np.argsort(-logits, axis=1, kind="stable")
    k = min(5, logits.shape[1])
    return {
        "top1": float(np.mean(order[:, 0] == labels)),
        "top5": float(np.mean((order[:, :k] == labels[:, None]).any(axis=1))),
    }


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision-recall curve (VOC/sklearn style, no interpolation); NaN without positives."""
    positives = np.asarray(positives, dtype=bool)
    if not positives.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="stable")
    hits = positives[order]
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / positives.sum())


def tag_metrics(logits: np.ndarray, targets: np.ndarray, threshold: float = 0.0) -> dict[str, float]:
    """Mean average precision over classes with positives, and example-based F1 at a logit threshold."""
    logits, targets = np.asarray(logits), np.asarray(targets, dtype=bool)
    aps = [average_precision(logits[:, c], targets[:, c]) for c in range(targets.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    pred = logits > threshold
    tp = (pred & targets).sum(axis=1)
    denom = pred.sum(axis=1) + targets.sum(axis=1)
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
    return {"mAP": float(np.mean(aps)) if aps else float("nan"), "F1": float(f1.mean())}


def detection_ap(
    preds: Sequence[Sequence[Segment]], truths: Sequence[Sequence[Segment]], iou: float
) -> float:
    """ActivityNet-style AP for one label: predictions ranked by score, each matched to at most one truth."""
    flat = sorted(((s.score, i, s) for i, segs in enumerate(preds) for s in segs), key=lambda x: -x[0])
    n_truth = sum(len(t) for t in truths)
    if n_truth == 0:
        return float("nan")
    used = [np.zeros(len(t), dtype=bool) for t in truths]
    hits = np.zeros(len(flat), dtype=bool)
    for rank, (_, i, seg) in enumerate(flat):
        ious = np.array([segment_iou(seg, t) for t in truths[i]])
        if len(ious) == 0:
            continue
        ious[used[i]] = -1
        j = int(ious.argmax())
        if ious[j] >= iou:
            used[i][j] = True
            hits[rank] = True
    if not hits.any():
        return 0.0
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / n_truth)


def localize_metrics(
    task: TaskSpec, outputs: np.ndarray, clips: Sequence[ClipLike], truths: Sequence[Sequence[Segment]]
) -> dict[str, float]:
    """Segment mAP at IoU 0.5 and 0.3, averaged over labels that have ground truth."""
    preds = [postprocess(task, o, c).segments for o, c in zip(outputs, clips, strict=True)]
    out: dict[str, float] = {}
    for thr in (0.5, 0.3):
        aps = []
        for label in task.labels:
            ap = detection_ap(
                [[s for s in p if s.label == label] for p in preds],
                [[s for s in t if s.label == label] for t in truths],
                thr,
            )
            if not np.isnan(ap):
                aps.append(ap)
        out[f"mAP@{thr}"] = float(np.mean(aps)) if aps else float("nan")
    return out


def embed_metrics(embeddings: np.ndarray, identities: np.ndarray) -> dict[str, float]:
    """Leave-one-out retrieval: recall@1 and recall@5 of the same identity by cosine similarity.

    Queries whose identity appears only once are skipped (nothing to retrieve).
    """
    e = l2_normalize(np.asarray(embeddings))
    ids = np.asarray(identities).reshape(-1)
    sims = e @ e.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")
    has_pair = np.array([(ids == i).sum() > 1 for i in ids])
    if not has_pair.any():
        return {"recall@1": float("nan"), "recall@5": float("nan")}
    match = ids[order] == ids[:, None]
    k = min(5, len(ids) - 1)
    return {
        "recall@1": float(match[has_pair, 0].mean()),
        "recall@5": float(match[has_pair, :k].any(axis=1).mean()),
    }


def regress_metrics(task: TaskSpec, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """MAE (and RMSE) in the task's output units (after `raw * scale + offset`)."""
    scale = np.asarray(task.scale or (1.0,))
    offset = np.asarray(task.offset or (0.0,))
    pred = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1) * scale + offset
    err = pred - np.asarray(targets, dtype=np.float64).reshape(pred.shape)
    return {"MAE": float(np.abs(err).mean()), "RMSE": float(np.sqrt((err**2).mean()))}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise IoU of boxes [..., 4] (x1, y1, x2, y2); corners may come in any order."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a = np.concatenate([np.minimum(a[..., :2], a[..., 2:]), np.maximum(a[..., :2], a[..., 2:])], axis=-1)
    b = np.concatenate([np.minimum(b[..., :2], b[..., 2:]), np.maximum(b[..., :2], b[..., 2:])], axis=-1)
    lo, hi = np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = np.prod(a[..., 2:] - a[..., :2], axis=-1) + np.prod(b[..., 2:] - b[..., :2], axis=-1)
    return np.where(area - inter > 0, inter / np.maximum(area - inter, 1e-12), 0.0)


def track_metrics(boxes: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Mean IoU and the share of boxes with IoU >= 0.5, on normalised boxes [N, T', 4]."""
    iou = box_iou(boxes, targets)
    return {"mIoU": float(iou.mean()), "IoU>=0.5": float((iou >= 0.5).mean())}


def is_better(metric: str, new: float, old: float) -> bool:
    return new < old if metric in LOWER_IS_BETTER else new > old


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per task, its metrics as `name value` pairs."""
    width = max((len(t) for t in rows), default=4)
    lines = [f"{'task':<{width}}  metrics", f"{'-' * width}  {'-' * 40}"]
    for task, metrics in rows.items():
        cells = "  ".join(f"{k} {v:.3f}" for k, v in metrics.items())
        lines.append(f"{task:<{width}}  {cells}")
    return "\n".join(lines)

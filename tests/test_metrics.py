"""Per-kind metrics against hand-computed values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from vmtl.metrics import (
    average_precision,
    box_iou,
    classify_metrics,
    detection_ap,
    embed_metrics,
    format_table,
    localize_metrics,
    regress_metrics,
    tag_metrics,
    track_metrics,
)
from vmtl.tasks import Segment, TaskSpec


@dataclass
class Clip:
    timestamps: np.ndarray
    crop: tuple[float, float, float]
    start: float
    end: float


def test_classify_top1_top5() -> None:
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    m = classify_metrics(logits, np.array([1, 2, 2]))
    assert m["top1"] == pytest.approx(2 / 3)
    assert m["top5"] == 1.0  # only 3 classes: top-5 covers all


def test_average_precision_known_value() -> None:
    # ranks: pos, neg, pos -> precision at hits 1/1 and 2/3 -> AP = (1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(average_precision(np.array([0.1]), np.array([0])))


def test_tag_map_and_f1() -> None:
    logits = np.array([[5.0, -5.0], [-5.0, 5.0], [5.0, 5.0]])
    targets = np.array([[1, 0], [0, 1], [1, 1]])
    m = tag_metrics(logits, targets)
    assert m["mAP"] == 1.0 and m["F1"] == 1.0
    m2 = tag_metrics(-logits, targets)
    assert m2["mAP"] < 1.0 and m2["F1"] < 0.5


def test_detection_ap_matches_each_truth_once() -> None:
    truths = [[Segment("x", 0, 2, 1.0)]]
    preds = [[Segment("x", 0, 2, 0.9), Segment("x", 0.1, 2, 0.8)]]  # duplicate is a false positive
    assert detection_ap(preds, truths, 0.5) == pytest.approx(1.0)
    assert detection_ap([[Segment("x", 5, 6, 0.9)]], truths, 0.5) == 0.0


def test_localize_metrics_end_to_end() -> None:
    task = TaskSpec("seg", "localize", labels=("moving",))
    clip = Clip(np.arange(8) * 0.5 + 0.25, (0, 0, 1), 0.0, 4.0)
    outputs = np.array([[[3, -3], [-3, 3], [-3, 3], [3, -3]]], dtype=np.float32)
    good = localize_metrics(task, outputs, [clip], [[Segment("moving", 1.0, 3.0, 1.0)]])
    bad = localize_metrics(task, outputs, [clip], [[Segment("moving", 3.0, 4.0, 1.0)]])
    assert good["mAP@0.5"] == 1.0 and bad["mAP@0.5"] == 0.0


def test_localize_chance_is_the_best_constant_answer() -> None:
    from vmtl.data.clips import ClipSet
    from vmtl.metrics.evaluate import chance_level

    task = TaskSpec("seg", "localize", labels=("moving", "spinning"), threshold=0.3)
    n = 4
    # Every clip: "moving" over its whole 4 s (tokens 1,1,1,1); one clip also ends with "spinning".
    targets = np.array([[1, 1, 1, 1]] * (n - 1) + [[1, 1, 1, 2]])
    truths = [[Segment("moving", 0.0, 4.0, 1.0)] for _ in range(n - 1)]
    truths.append([Segment("moving", 0.0, 3.0, 1.0), Segment("spinning", 3.0, 4.0, 1.0)])
    clips = ClipSet(
        task="seg",
        frames=np.zeros((n, 8, 2, 2, 3), np.uint8),
        timestamps=np.tile(np.arange(8) * 0.5 + 0.25, (n, 1)),
        crops=np.tile([0.0, 0.0, 2.0], (n, 1)),
        windows=np.tile([0.0, 4.0], (n, 1)),
        sizes=np.tile([2, 2], (n, 1)),
        targets=targets,
        truths=truths,
    )
    # "moving over the whole clip" finds all four moving segments (IoU 1 or 0.75); spinning gets no AP,
    # so the mean over the two labels is 0.5 -- a trivial answer scores, and the chance level says how much.
    assert chance_level(task, clips) == pytest.approx(0.5)


def test_embed_recall_skips_singletons() -> None:
    e = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], dtype=np.float64)
    m = embed_metrics(e, np.array([0, 0, 1, 1, 2]))
    assert m["recall@1"] == 1.0
    m2 = embed_metrics(e, np.array([0, 1, 0, 1, 2]))
    assert m2["recall@1"] == 0.0


def test_regress_mae_in_output_units() -> None:
    task = TaskSpec("count", "regress", dim=1, scale=(2.0,), offset=(1.0,))
    m = regress_metrics(task, np.array([[1.0], [2.0]]), np.array([3.0, 4.0]))
    assert m["MAE"] == pytest.approx(0.5)  # predictions 3 and 5


def test_box_iou_and_track() -> None:
    a = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], dtype=float)
    b = np.array([[0, 0, 1, 1], [0.5, 0, 1.5, 1]], dtype=float)
    np.testing.assert_allclose(box_iou(a, b), [1.0, 1 / 3])
    assert box_iou(np.array([1, 1, 0, 0.0]), np.array([0, 0, 1, 1.0])) == pytest.approx(1.0)
    m = track_metrics(a[None], b[None])
    assert m["mIoU"] == pytest.approx((1 + 1 / 3) / 2) and m["IoU>=0.5"] == 0.5


def test_format_table() -> None:
    text = format_table({"object": {"top1": 0.5}, "count": {"MAE": 1.25}})
    assert "object  top1 0.500" in text and "count   MAE 1.250" in text

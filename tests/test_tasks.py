"""Task graph: validation, stages, round trips, and every kind's post-processing."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from vmtl.tasks import (
    Preprocess,
    Segment,
    TaskGraph,
    TaskGraphError,
    TaskResult,
    TaskSpec,
    combine_windows,
    cosine_search,
    merge_segments,
    postprocess,
    segment_iou,
    temporal_token_bounds,
)

SPEC = """
name: unit
preprocess: {num_frames: 8, size: 64}
tasks:
  - {name: object, kind: classify, labels: [cat, dog, cow], top_k: 2}
  - {name: tags, kind: tag, labels: [a, b, c], auxiliaries: [object], threshold: 0.5}
  - {name: segments, kind: localize, labels: [moving], auxiliaries: [tags, motion]}
  - {name: motion, kind: classify, labels: [left, right]}
  - {name: identity, kind: embed, dim: 16}
  - {name: count, kind: regress, scale: 2.0, offset: 1.0}
  - {name: box, kind: track}
"""


@dataclass
class FakeClip:
    timestamps: np.ndarray
    crop: tuple[float, float, float]
    start: float
    end: float


def graph() -> TaskGraph:
    return TaskGraph.from_text(SPEC)


def test_stages_follow_auxiliaries_in_declaration_order() -> None:
    g = graph()
    assert g.stages() == [["object", "motion", "identity", "count", "box"], ["tags"], ["segments"]]
    assert g.closure(["segments"]) == ["object", "motion", "tags", "segments"]
    assert g.dependents("object") == ["tags"]
    assert g.subset(["tags"]).names == ["object", "tags"]


def test_defaults_and_out_dims() -> None:
    g = graph()
    assert g.task("identity").out_dim == 16
    assert g.task("count").dim == 1 and g.task("count").out_dim == 1
    assert g.task("segments").out_dim == 2  # background + moving
    assert g.task("box").out_dim == 4
    assert g.preprocess == Preprocess(num_frames=8, size=64)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_round_trip(tmp_path, fmt: str) -> None:
    g = graph()
    path = g.save(tmp_path / f"graph.{fmt}")
    assert TaskGraph.load(path) == g
    if fmt == "json":
        assert json.loads(path.read_text())["tasks"][1]["auxiliaries"] == ["object"]


def test_labels_file_resolves_against_data_root_and_is_inlined(tmp_path) -> None:
    (tmp_path / "data" / "object").mkdir(parents=True)
    (tmp_path / "data" / "object" / "labels.txt").write_text("shirt\nshoe\n\n")
    spec = tmp_path / "g.yaml"
    spec.write_text("tasks: [{name: object, kind: classify, labels_file: labels.txt, data: object}]\n")
    g = TaskGraph.load(spec, data_root=tmp_path / "data")
    assert g.task("object").labels == ("shirt", "shoe")
    assert "labels_file" not in g.to_yaml() and "shoe" in g.to_yaml()
    with pytest.raises(TaskGraphError, match=r"labels file 'labels.txt' not found .*generate the data"):
        TaskGraph.load(spec, data_root=tmp_path / "elsewhere")


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ("[{name: a, kind: dance}]", r"task 'a': unknown kind 'dance'; choose one of classify"),
        ("[{name: a, kind: embed}, {name: a, kind: embed}]", r"task 'a': duplicate task name"),
        ("[{name: a, kind: embed, auxiliaries: [ghost]}]", r"auxiliary 'ghost' is not a task"),
        ("[{name: a, kind: embed, auxiliaries: [a]}]", r"cannot be its own auxiliary"),
        (
            "[{name: a, kind: embed, auxiliaries: [b]}, {name: b, kind: embed, auxiliaries: [c]},"
            " {name: c, kind: embed, auxiliaries: [a]}]",
            r"cycle: a -> b -> c -> a",
        ),
        ("[{name: a, kind: classify}]", r"task 'a': kind classify needs labels"),
        ("[{name: a, kind: tag, labels: [x, x]}]", r"duplicate label names"),
        ("[{name: Bad-Name, kind: embed}]", r"lower-case identifiers"),
        ("[{name: a, kind: embed, colour: red}]", r"unknown keys \['colour'\]"),
        ("[{kind: embed}]", r"missing `name`"),
        ("[{name: a, kind: regress, dim: 2, scale: [1, 2, 3]}]", r"scale needs 1 or 2 values"),
        ("[{name: a, kind: tag, labels: abc}]", r"`labels` must be a list"),
        ("[]", r"no tasks"),
        ("[{name: crop, kind: embed}]", r"task 'crop': the name is reserved"),
    ],
)
def test_validation_errors_name_the_problem(tasks: str, message: str) -> None:
    with pytest.raises(TaskGraphError, match=message):
        TaskGraph.from_text(f"tasks: {tasks}")


@pytest.mark.parametrize(
    ("pre", "message"),
    [
        ("{sampling: 4x2x3, num_frames: 8}", r"gives 12 frames but num_frames is 8"),
        ("{sampling: every-other}", r"'uniform' or 'TxIxN'"),
        ("{num_frames: 0}", r"must be positive"),
        ("{std: [1, 0, 1]}", r"std must be positive"),
        ("{fps: 3}", r"unknown keys \['fps'\]"),
    ],
)
def test_preprocess_errors(pre: str, message: str) -> None:
    with pytest.raises(TaskGraphError, match=message):
        TaskGraph.from_text(f"preprocess: {pre}\ntasks: [{{name: a, kind: embed}}]")


def test_dense_sampling_accepted() -> None:
    g = TaskGraph.from_text("preprocess: {sampling: 4x2x2, num_frames: 8}\ntasks: [{name: a, kind: embed}]")
    assert g.preprocess.sampling == "4x2x2"


def test_unknown_task_lookup_lists_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown task 'nope'; this graph has: object, tags"):
        graph().task("nope")


def test_invalid_yaml_is_reported() -> None:
    with pytest.raises(TaskGraphError, match="not valid YAML"):
        TaskGraph.from_text("tasks: [unclosed")


# ---------------------------------------------------------------------------------------------------
# post-processing


def test_classify_top_k_with_label_names() -> None:
    r = postprocess(graph().task("object"), np.array([0.0, 3.0, 1.0], dtype=np.float32))
    assert [s.label for s in r.top] == ["dog", "cow"]
    probs = np.exp([0.0, 3.0, 1.0]) / np.exp([0.0, 3.0, 1.0]).sum()
    assert r.top[0].score == pytest.approx(probs[1])
    assert sum(r.scores.values()) == pytest.approx(1.0)
    assert r.to_dict()["label"] == "dog"


def test_tag_threshold() -> None:
    r = postprocess(graph().task("tags"), np.array([2.0, -2.0, 0.5]))
    assert [s.label for s in r.top] == ["a", "c"]
    assert r.scores["b"] == pytest.approx(1 / (1 + np.exp(2.0)))
    assert r.to_dict()["labels"] == ["a", "c"]


def test_localize_segments_in_seconds_with_merging() -> None:
    task = graph().task("segments")
    # 8 frames at 0.5 s spacing -> 4 temporal tokens; tokens 1 and 2 are "moving".
    clip = FakeClip(np.arange(8) * 0.5 + 0.25, (0, 0, 64), 0.0, 4.0)
    logits = np.array([[3, -3], [-3, 3], [-2, 2], [3, -3]], dtype=np.float32)
    r = postprocess(task, logits, clip)
    assert len(r.segments) == 1
    seg = r.segments[0]
    assert seg.label == "moving"
    assert seg.start == pytest.approx(1.0) and seg.end == pytest.approx(3.0)
    p = np.exp([3, 2]) / (np.exp([3, 2]) + np.exp([-3, -2]))
    assert seg.score == pytest.approx(p.mean())


def test_localize_drops_low_scores() -> None:
    task = TaskSpec("loc", "localize", labels=("x",), threshold=0.9)
    clip = FakeClip(np.arange(4) * 1.0, (0, 0, 1), 0.0, 4.0)
    r = postprocess(task, np.array([[0.0, 0.5], [0.0, 0.5]]), clip)
    assert r.segments == []


def test_temporal_token_bounds() -> None:
    b = temporal_token_bounds(np.array([0.5, 1.5, 2.5, 3.5]), 2, 0.0, 4.0)
    np.testing.assert_allclose(b, [[0.0, 2.0], [2.0, 4.0]])
    with pytest.raises(ValueError, match="cannot be split"):
        temporal_token_bounds(np.arange(5.0), 2, 0.0, 5.0)


def test_merge_segments_joins_overlapping_and_touching() -> None:
    segs = [
        Segment("x", 2.0, 3.0, 0.6),  # touches the union of the two below
        Segment("x", 0.0, 2.0, 0.8),
        Segment("x", 0.5, 2.5, 0.5),  # overlaps the first
        Segment("x", 4.0, 4.5, 0.7),  # apart: kept alone
        Segment("y", 1.0, 2.0, 0.9),  # other label: never joined with x
    ]
    out = merge_segments(segs)
    assert [(s.label, s.start, s.end) for s in out] == [("x", 0.0, 3.0), ("y", 1.0, 2.0), ("x", 4.0, 4.5)]
    first = (0.8 * 2 + 0.5 * 2) / 4
    assert out[0].score == pytest.approx((first * 2.5 + 0.6 * 1) / 3.5)
    assert segment_iou(Segment("x", 0, 2, 1), Segment("x", 1, 3, 1)) == pytest.approx(1 / 3)


def test_embed_is_unit_norm_and_searchable() -> None:
    r = postprocess(graph().task("identity"), np.arange(16, dtype=np.float32))
    assert np.linalg.norm(r.embedding) == pytest.approx(1.0)
    gallery = np.eye(4)
    idx, scores = cosine_search(np.array([[0.1, 0.0, 2.0, 0.0], [1.0, 1.0, 0.0, 0.0]]), gallery, k=2)
    assert idx[0, 0] == 2 and scores[0, 0] == pytest.approx(2.0 / np.hypot(0.1, 2.0))
    assert set(idx[1]) == {0, 1}
    with pytest.raises(ValueError, match="dimension 3 but gallery has 4"):
        cosine_search(np.ones(3), gallery)


def test_regress_scaling() -> None:
    r = postprocess(graph().task("count"), np.array([1.5]))
    assert r.values == [pytest.approx(4.0)]


def test_track_boxes_in_source_pixels() -> None:
    # 1280x720 source, centre crop x0=280, side 720; 4 frames, 2 temporal tokens.
    clip = FakeClip(np.array([0.0, 0.1, 0.2, 0.3]), (280.0, 0.0, 720.0), 0.0, 0.4)
    out = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.25, 1.2]])  # 2nd: swapped corners, out of range
    r = postprocess(graph().task("box"), out, clip)
    assert len(r.boxes) == 4 and [b.time for b in r.boxes] == [0.0, 0.1, 0.2, 0.3]
    assert r.boxes[0].box == pytest.approx((280.0, 0.0, 640.0, 360.0))
    assert r.boxes[3].box == pytest.approx((280 + 180.0, 360.0, 280 + 360.0, 720.0))


@pytest.mark.parametrize(
    ("task", "out", "message"),
    [
        ("object", np.zeros(4), "expected last dimension 3"),
        ("object", np.array([0.0, np.nan, 1.0]), "non-finite"),
        ("box", np.zeros((2, 4)), "needs the clip"),
    ],
)
def test_postprocess_rejects_bad_outputs(task: str, out: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        postprocess(graph().task(task), out)


def test_combine_windows_per_kind() -> None:
    g = graph()
    obj = g.task("object")
    a = postprocess(obj, np.array([5.0, 0.0, 0.0]))
    b = postprocess(obj, np.array([0.0, 0.0, 5.0]))
    c = postprocess(obj, np.array([0.0, 0.0, 5.0]))
    assert combine_windows(obj, [a, b, c]).top[0].label == "cow"
    cnt = g.task("count")
    assert combine_windows(
        cnt, [postprocess(cnt, np.array([0.0])), postprocess(cnt, np.array([1.0]))]
    ).values == [pytest.approx(2.0)]
    seg = g.task("segments")
    w1 = postprocess(seg, np.array([[-3.0, 3.0]] * 2), FakeClip(np.arange(4) * 0.5, (0, 0, 1), 0.0, 2.0))
    w2 = postprocess(seg, np.array([[-3.0, 3.0]] * 2), FakeClip(2 + np.arange(4) * 0.5, (0, 0, 1), 2.0, 4.0))
    merged = combine_windows(seg, [w1, w2])
    assert [(s.start, s.end) for s in merged.segments] == [(0.0, 4.0)]
    with pytest.raises(ValueError, match="no window results"):
        combine_windows(obj, [])


def test_results_are_json_ready_and_summarised() -> None:
    g = graph()
    clip = FakeClip(np.arange(8) * 0.1, (0.0, 0.0, 64.0), 0.0, 0.8)
    outs = {
        "object": np.zeros(3),
        "tags": np.zeros(3),
        "segments": np.zeros((4, 2)),
        "motion": np.zeros(2),
        "identity": np.ones(16),
        "count": np.ones(1),
        "box": np.full((4, 4), 0.5),
    }
    for name, out in outs.items():
        r = postprocess(g.task(name), out, clip)
        json.dumps(r.to_dict())
        assert isinstance(r.summary(), str) and r.summary()


GOLDEN_SPEC = """
name: golden
preprocess: {num_frames: 8, size: 64}
tasks:
  - {name: object, kind: classify, labels: [cat, dog, cow], top_k: 2}
  - {name: tags, kind: tag, labels: [a, b, c], threshold: 0.5}
  - {name: segments, kind: localize, labels: [run, jump], threshold: 0.3}
  - {name: identity, kind: embed, dim: 6}
  - {name: count, kind: regress, dim: 2, scale: [2.0, 1.0], offset: 1.0}
  - {name: box, kind: track}
"""
_BG, _RUN, _JUMP = [3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]
GOLDEN_OUTPUTS = {  # two windows' raw outputs per task
    "object": [[0.5, 2.0, -1.0], [3.0, 0.0, 1.0]],
    "tags": [[2.0, -2.0, 0.1], [-3.0, -1.0, 0.5]],
    "segments": [[_RUN, _RUN, _BG, _JUMP], [_JUMP, _BG, _RUN, _RUN]],
    "identity": [[0.0, 1, 2, 3, 4, 5], [1.0] * 6],
    "count": [[0.5, -1.0], [1.5, 2.0]],
    "box": [[[0.1, 0.2, 0.5, 0.6], [0.6, 0.5, 0.2, 0.1]], [[0.5] * 4] * 2],
}
_SEG = "{'label': '%s', 'start': %s, 'end': %s, 'score': 0.909443}"
GOLDEN_RESULTS = {  # task: (window 1's to_dict, its summary, the combined to_dict, its summary)
    "object": (
        "{'kind': 'classify', 'label': 'dog', 'top_k': [{'label': 'dog', 'index': 1, 'score': 0.785597}, "
        "{'label': 'cat', 'index': 0, 'score': 0.17529}]}",
        "dog 0.79, cat 0.18",
        "{'kind': 'classify', 'label': 'cat', 'top_k': [{'label': 'cat', 'index': 0, 'score': 0.509543}, "
        "{'label': 'dog', 'index': 1, 'score': 0.413804}]}",
        "cat 0.51, dog 0.41",
    ),
    "tags": (
        "{'kind': 'tag', 'labels': ['a', 'c'], 'scores': {'a': 0.880797, 'b': 0.119203, 'c': 0.524979}}",
        "a 0.88, c 0.52",
        "{'kind': 'tag', 'labels': ['c'], 'scores': {'a': 0.464111, 'b': 0.194072, 'c': 0.573719}}",
        "c 0.57",
    ),
    "segments": (
        "{'kind': 'localize', 'segments': ["
        + _SEG % ("run", 0.0, 0.875)
        + ", "
        + _SEG % ("jump", 1.375, 2.0)
        + "]}",
        "run 0.0-0.9s (0.91), jump 1.4-2.0s (0.91)",
        "{'kind': 'localize', 'segments': ["
        + ", ".join([_SEG % ("run", 0.0, 0.875), _SEG % ("jump", 1.375, 2.375), _SEG % ("run", 2.875, 4.0)])
        + "]}",
        "run 0.0-0.9s (0.91), jump 1.4-2.4s (0.91), run 2.9-4.0s (0.91)",
    ),
    "identity": (
        "{'kind': 'embed', 'embedding': [0.0, 0.13484, 0.26968, 0.40452, 0.53936, 0.6742]}",
        "[+0.00, +0.13, +0.27, +0.40, ...] (6-d, unit norm)",
        "{'kind': 'embed', 'embedding': [0.213645, 0.284209, 0.354774, 0.425338, 0.495903, 0.566467]}",
        "[+0.21, +0.28, +0.35, +0.43, ...] (6-d, unit norm)",
    ),
    "count": (
        "{'kind': 'regress', 'values': [2.0, 0.0]}",
        "2.00, 0.00",
        "{'kind': 'regress', 'values': [3.0, 1.5]}",
        "3.00, 1.50",
    ),
    "box": (
        "{'kind': 'track', 'boxes': ["
        + ", ".join(f"{{'time': {t}, 'box': [20.0, 40.0, 60.0, 80.0]}}" for t in (0.0, 0.25, 0.5, 0.75))
        + ", "
        + ", ".join(f"{{'time': {t}, 'box': [30.0, 30.0, 70.0, 70.0]}}" for t in (1.0, 1.25, 1.5, 1.75))
        + "]}",
        "8 boxes, first at t=0.00s: (20,40)-(60,80)",
        None,  # checked by its summary
        "16 boxes, first at t=0.00s: (20,40)-(60,80)",
    ),
}


def _rounded(x: object) -> object:
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


@pytest.mark.parametrize("name", list(GOLDEN_OUTPUTS))
def test_results_keep_their_json_and_summary(name: str) -> None:
    task = TaskGraph.from_text(GOLDEN_SPEC).task(name)
    clips = [
        FakeClip(start + np.arange(8) * 0.25, (10.0, 20.0, 100.0), start, start + 2.0) for start in (0.0, 2.0)
    ]
    windows = [postprocess(task, np.array(o), c) for o, c in zip(GOLDEN_OUTPUTS[name], clips, strict=True)]
    combined = combine_windows(task, windows)
    window_dict, window_summary, combined_dict, combined_summary = GOLDEN_RESULTS[name]
    assert str(_rounded(windows[0].to_dict())) == window_dict
    assert windows[0].summary() == window_summary
    if combined_dict is not None:
        assert str(_rounded(combined.to_dict())) == combined_dict
    assert combined.summary() == combined_summary


def test_empty_results_keep_their_json_and_summary() -> None:
    many = [Segment("run", float(i), i + 0.5, 0.5) for i in range(6)]
    cases = [
        (TaskResult("t", "classify"), {"kind": "classify", "label": None, "top_k": []}, ""),
        (TaskResult("t", "tag"), {"kind": "tag", "labels": [], "scores": {}}, "(none over threshold)"),
        (TaskResult("t", "localize"), {"kind": "localize", "segments": []}, "(no segments)"),
        (TaskResult("t", "track"), {"kind": "track", "boxes": []}, "(no boxes)"),
        (
            TaskResult("t", "localize", segments=many),
            {
                "kind": "localize",
                "segments": [{"label": "run", "start": s.start, "end": s.end, "score": 0.5} for s in many],
            },
            "run 0.0-0.5s (0.50), run 1.0-1.5s (0.50), run 2.0-2.5s (0.50), run 3.0-3.5s (0.50) +2 more",
        ),
    ]
    for result, as_dict, summary in cases:
        assert result.to_dict() == as_dict
        assert result.summary() == summary

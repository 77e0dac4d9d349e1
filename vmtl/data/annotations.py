"""Readers and writers for the annotation files of every task kind (MMAction2 style where one exists).

=========  ==============================  ==========================================================
kind       file                            content
=========  ==============================  ==========================================================
classify   ``train.txt``                   ``videos/x.mp4 LABEL`` per line
embed      ``train.txt``                   ``videos/x.mp4 IDENTITY`` per line
tag        ``train.txt``                   ``videos/x.mp4 L1 L2 ...`` (one or more label indices)
regress    ``train.txt``                   ``videos/x.mp4 V1 [V2 ...]`` (floats)
localize   ``train.json``                  ActivityNet style: ``{id: {"path", "duration_second", "fps",
                                           "annotations": [{"segment": [s, e], "label": name}]}}``
track      ``train.json``                  ``{id: {"path", "width", "height", "fps",
                                           "boxes": [[t, x1, y1, x2, y2], ...]}}`` (seconds, pixels)
=========  ==============================  ==========================================================

Paths in a file are relative to the file's directory; records carry them resolved against it. Box
coordinates are continuous pixel coordinates: a box ``[x1, y1, x2, y2]`` covers pixel columns
``x1 .. x2-1`` and rows ``y1 .. y2-1``. Every error is an :class:`AnnotationError` whose message starts
with ``FILE:LINE:``. The writers put one video per line in the JSON files, so JSON errors carry a line too.
``KIND_ANNOTATIONS`` says which reader reads each kind's files and what it checks them against.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Union

import numpy as np

from vmtl.tasks import KINDS, TaskSpec, kind_spec


class AnnotationError(ValueError):
    """A malformed annotation file; ``str(err)`` is ``FILE:LINE: problem`` (``FILE: problem`` without a line)."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = message
        super().__init__(f"{self.path}:{line}: {message}" if line else f"{self.path}: {message}")


# --------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class LabelRecord:
    """classify (``label`` = class index) or embed (``label`` = identity index)."""

    path: Path
    label: int


@dataclass(frozen=True)
class TagRecord:
    """tag: the sorted, unique label indices present in the video."""

    path: Path
    labels: tuple[int, ...]


@dataclass(frozen=True)
class RegressRecord:
    """regress: one or more target values."""

    path: Path
    values: tuple[float, ...]


@dataclass(frozen=True)
class GtSegment:
    """A ground-truth segment in seconds; ``label_index`` is -1 when no label list was given."""

    start: float
    end: float
    label: str
    label_index: int = -1

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class LocalizeRecord:
    """localize: a video's duration and its labelled segments (everything else is background)."""

    video_id: str
    path: Path
    duration: float
    fps: float | None
    segments: tuple[GtSegment, ...]


@dataclass(frozen=True)
class FrameBox:
    """One frame's box: time in seconds, corners in source-video pixels."""

    time: float
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class TrackRecord:
    """track: the object's box on every annotated frame."""

    video_id: str
    path: Path
    width: int
    height: int
    fps: float | None
    boxes: tuple[FrameBox, ...]

    def array(self) -> np.ndarray:
        """Boxes as float64 [N, 5]: time, x1, y1, x2, y2."""
        return np.array([[b.time, b.x1, b.y1, b.x2, b.y2] for b in self.boxes], dtype=np.float64).reshape(
            -1, 5
        )


Record = Union[LabelRecord, TagRecord, RegressRecord, LocalizeRecord, TrackRecord]  # noqa: UP007


# --------------------------------------------------------------------------------------------------
# Text lists (classify, embed, tag, regress)


def _lines(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line number, stripped line, fields) for every non-blank, non-comment line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AnnotationError(path, None, "file not found") from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, None, f"not UTF-8 text ({exc.reason})") from None
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield n, line, line.split()


def _index(path: Path, n: int, tok: str, what: str, num_classes: int | None) -> int:
    try:
        i = int(tok)
    except ValueError:
        raise AnnotationError(path, n, f"{what} {tok!r} is not an integer") from None
    if i < 0:
        raise AnnotationError(path, n, f"{what} {i} is negative")
    if num_classes is not None and i >= num_classes:
        raise AnnotationError(
            path, n, f"{what} {i} out of range for {num_classes} classes (0..{num_classes - 1})"
        )
    return i


def _base(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    p = Path(path)
    return p, p.absolute().parent


def read_label_list(path: str | os.PathLike[str], num_classes: int | None = None) -> list[LabelRecord]:
    """``videos/x.mp4 LABEL`` lines (classify, embed)."""
    p, base = _base(path)
    out = []
    for n, line, parts in _lines(p):
        if len(parts) != 2:
            raise AnnotationError(p, n, f"expected 'path label', got {line!r}")
        out.append(LabelRecord(base / parts[0], _index(p, n, parts[1], "label", num_classes)))
    return out


def read_tag_list(path: str | os.PathLike[str], num_classes: int | None = None) -> list[TagRecord]:
    """``videos/x.mp4 L1 [L2 ...]`` lines (tag)."""
    p, base = _base(path)
    out = []
    for n, line, parts in _lines(p):
        if len(parts) < 2:
            raise AnnotationError(p, n, f"expected 'path label [label ...]', got {line!r}")
        labels = [_index(p, n, tok, "label", num_classes) for tok in parts[1:]]
        if len(set(labels)) != len(labels):
            raise AnnotationError(p, n, f"duplicate label in {line!r}")
        out.append(TagRecord(base / parts[0], tuple(sorted(labels))))
    return out


def read_regress_list(path: str | os.PathLike[str], num_values: int | None = None) -> list[RegressRecord]:
    """``videos/x.mp4 V1 [V2 ...]`` lines (regress); every line must have the same number of values."""
    p, base = _base(path)
    out: list[RegressRecord] = []
    for n, line, parts in _lines(p):
        if len(parts) < 2:
            raise AnnotationError(p, n, f"expected 'path value [value ...]', got {line!r}")
        values = []
        for tok in parts[1:]:
            try:
                v = float(tok)
            except ValueError:
                raise AnnotationError(p, n, f"value {tok!r} is not a number") from None
            if not math.isfinite(v):
                raise AnnotationError(p, n, f"value {tok!r} is not finite")
            values.append(v)
        expected = num_values if num_values is not None else (len(out[0].values) if out else None)
        if expected is not None and len(values) != expected:
            raise AnnotationError(p, n, f"expected {expected} value(s), got {len(values)} in {line!r}")
        out.append(RegressRecord(base / parts[0], tuple(values)))
    return out


# --------------------------------------------------------------------------------------------------
# JSON (localize, track)


def _load_json(p: Path) -> tuple[dict[str, Any], list[str]]:
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AnnotationError(p, None, "file not found") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(p, exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(data, dict):
        raise AnnotationError(p, 1, f"expected an object {{video_id: {{...}}}}, got {type(data).__name__}")
    return data, text.splitlines()


class _Locator:
    """Finds the line where a video's key appears, so JSON errors can name a line."""

    def __init__(self, p: Path, lines: list[str]) -> None:
        self.p = p
        self.lines = lines

    def line_of(self, video_id: str) -> int | None:
        key = json.dumps(video_id) + ":"
        for n, line in enumerate(self.lines, start=1):
            if key in line:
                return n
        return None

    def error(self, video_id: str, message: str) -> AnnotationError:
        return AnnotationError(self.p, self.line_of(video_id), f"video {video_id!r}: {message}")


def _field(loc: _Locator, vid: str, entry: dict[str, Any], name: str, types: tuple[type, ...]) -> Any:
    if name not in entry:
        raise loc.error(vid, f"missing field {name!r}")
    value = entry[name]
    if not isinstance(value, types) or isinstance(value, bool):
        want = " or ".join(t.__name__ for t in types)
        raise loc.error(vid, f"field {name!r} must be {want}, got {value!r}")
    return value


def _number(loc: _Locator, vid: str, value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise loc.error(vid, f"{what} must be a finite number, got {value!r}")
    return float(value)


def _entries(loc: _Locator, data: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for vid, entry in data.items():
        if not isinstance(entry, dict):
            raise loc.error(vid, f"expected an object, got {type(entry).__name__}")
        yield vid, entry


def read_localize_json(
    path: str | os.PathLike[str], labels: Sequence[str] | None = None, tolerance: float = 1e-3
) -> list[LocalizeRecord]:
    """ActivityNet-style JSON with a ``path`` per video; ``labels`` (if given) must contain every label."""
    p, base = _base(path)
    data, lines = _load_json(p)
    loc = _Locator(p, lines)
    index = {name: i for i, name in enumerate(labels)} if labels is not None else None
    out = []
    for vid, entry in _entries(loc, data):
        rel = _field(loc, vid, entry, "path", (str,))
        duration = _number(
            loc, vid, _field(loc, vid, entry, "duration_second", (int, float)), "duration_second"
        )
        if duration <= 0:
            raise loc.error(vid, f"duration_second must be positive, got {duration}")
        fps = _number(loc, vid, entry["fps"], "fps") if entry.get("fps") is not None else None
        anns = _field(loc, vid, entry, "annotations", (list,))
        segs = []
        for k, ann in enumerate(anns):
            where = f"annotation {k}"
            if not isinstance(ann, dict):
                raise loc.error(vid, f"{where}: expected an object, got {ann!r}")
            if "segment" not in ann or "label" not in ann:
                raise loc.error(vid, f"{where}: needs 'segment' and 'label', got keys {sorted(ann)}")
            seg = ann["segment"]
            if not isinstance(seg, list) or len(seg) != 2:
                raise loc.error(vid, f"{where}: segment must be [start, end], got {seg!r}")
            s = _number(loc, vid, seg[0], f"{where}: segment start")
            e = _number(loc, vid, seg[1], f"{where}: segment end")
            if e <= s:
                raise loc.error(vid, f"{where}: segment [{s}, {e}] has non-positive duration")
            if s < -tolerance or e > duration + tolerance:
                raise loc.error(
                    vid, f"{where}: segment [{s}, {e}] lies outside the video (0 to {duration} s)"
                )
            label = ann["label"]
            if not isinstance(label, str) or not label:
                raise loc.error(vid, f"{where}: label must be a non-empty string, got {label!r}")
            li = -1
            if index is not None:
                if label not in index:
                    raise loc.error(vid, f"{where}: unknown label {label!r} (known: {', '.join(index)})")
                li = index[label]
            segs.append(GtSegment(s, e, label, li))
        segs.sort(key=lambda g: (g.start, g.end, g.label))
        out.append(LocalizeRecord(vid, base / rel, duration, fps, tuple(segs)))
    return out


def read_track_json(path: str | os.PathLike[str]) -> list[TrackRecord]:
    """Track JSON: per video its frame size and one ``[t, x1, y1, x2, y2]`` box per annotated frame."""
    p, base = _base(path)
    data, lines = _load_json(p)
    loc = _Locator(p, lines)
    out = []
    for vid, entry in _entries(loc, data):
        rel = _field(loc, vid, entry, "path", (str,))
        width = _field(loc, vid, entry, "width", (int,))
        height = _field(loc, vid, entry, "height", (int,))
        if width <= 0 or height <= 0:
            raise loc.error(vid, f"width and height must be positive, got {width}x{height}")
        fps = _number(loc, vid, entry["fps"], "fps") if entry.get("fps") is not None else None
        raw = _field(loc, vid, entry, "boxes", (list,))
        boxes: list[FrameBox] = []
        for k, b in enumerate(raw):
            if not isinstance(b, list) or len(b) != 5:
                raise loc.error(vid, f"box {k}: expected [t, x1, y1, x2, y2], got {b!r}")
            t, x1, y1, x2, y2 = (_number(loc, vid, v, f"box {k}") for v in b)
            if t < 0:
                raise loc.error(vid, f"box {k}: negative time {t}")
            if boxes and t <= boxes[-1].time:
                raise loc.error(vid, f"box {k}: time {t} does not increase (previous {boxes[-1].time})")
            if x2 < x1 or y2 < y1:
                raise loc.error(vid, f"box {k}: corners must satisfy x1 <= x2 and y1 <= y2, got {b!r}")
            boxes.append(FrameBox(t, x1, y1, x2, y2))
        out.append(TrackRecord(vid, base / rel, width, height, fps, tuple(boxes)))
    return out


# --------------------------------------------------------------------------------------------------
# Label names, generic entry, datasets


def read_labels(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """``labels.txt``: one label name per line (no blanks inside a name, no duplicates)."""
    p = Path(path)
    names: list[str] = []
    for n, line, parts in _lines(p):
        if len(parts) != 1:
            raise AnnotationError(p, n, f"a label name must be one word, got {line!r}")
        if line in names:
            raise AnnotationError(p, n, f"duplicate label {line!r}")
        names.append(line)
    if not names:
        raise AnnotationError(p, None, "no labels")
    return tuple(names)


class KindAnnotations:
    """How one kind's annotation files are read (a subclass per kind; ``KIND_ANNOTATIONS`` holds one each).

    ``bound`` is what the reader checks the records against: the number of classes for kinds that give
    label indices (scored kinds, embed's identities when the manifest knows them), the number of values
    for regress; None checks nothing.
    """

    def read(
        self, path: str | os.PathLike[str], bound: int | None, labels: Sequence[str] | None
    ) -> list[Any]:
        raise NotImplementedError

    def bound(self, task: TaskSpec) -> int | None:
        """The reader's bound for a task of this kind."""
        return task.num_classes if task.kind_spec.scored else None

    def manifest_bound(self, info: Mapping[str, Any], labels: Sequence[str] | None) -> int | None:
        """The reader's bound from a dataset manifest's entry for a task of this kind."""
        return len(labels) if labels and kind_spec(info["kind"]).scored else info.get("num_classes")


class _LabelList(KindAnnotations):
    def read(
        self, path: str | os.PathLike[str], bound: int | None, labels: Sequence[str] | None
    ) -> list[Any]:
        return read_label_list(path, bound)


class _TagList(KindAnnotations):
    def read(
        self, path: str | os.PathLike[str], bound: int | None, labels: Sequence[str] | None
    ) -> list[Any]:
        return read_tag_list(path, bound)


class _RegressList(KindAnnotations):
    def read(
        self, path: str | os.PathLike[str], bound: int | None, labels: Sequence[str] | None
    ) -> list[Any]:
        return read_regress_list(path, bound)

    def bound(self, task: TaskSpec) -> int | None:
        return task.dim

    def manifest_bound(self, info: Mapping[str, Any], labels: Sequence[str] | None) -> int | None:
        return len(info.get("value_names", [])) or None


class _LocalizeJson(KindAnnotations):
    def read(
        self, path: str | os.PathLike[str], bound: int | None, labels: Sequence[str] | None
    ) -> list[Any]:
        """Labels default to the file's sibling ``labels.txt``, if any."""
        if labels is None and (Path(path).parent / "labels.txt").is_file():
            labels = read_labels(Path(path).parent / "labels.txt")
        return read_localize_json(path, labels)


class _TrackJson(KindAnnotations):
    def read(
        self, path: str | os.PathLike[str], bound: int | None, labels: Sequence[str] | None
    ) -> list[Any]:
        return read_track_json(path)


KIND_ANNOTATIONS: Mapping[str, KindAnnotations] = MappingProxyType(
    {
        "classify": _LabelList(),
        "tag": _TagList(),
        "localize": _LocalizeJson(),
        "embed": _LabelList(),
        "regress": _RegressList(),
        "track": _TrackJson(),
    }
)


def kind_annotations(kind: str) -> KindAnnotations:
    """A kind's row of ``KIND_ANNOTATIONS``; ValueError naming the known kinds for an unknown one."""
    if kind not in KIND_ANNOTATIONS:
        raise ValueError(f"unknown task kind {kind!r}; choose one of {', '.join(KINDS)}")
    return KIND_ANNOTATIONS[kind]


def read_annotations(
    kind: str,
    path: str | os.PathLike[str],
    num_classes: int | None = None,
    labels: Sequence[str] | None = None,
) -> list[Any]:
    """Read any kind's annotation file into its records.

    ``num_classes`` bounds label indices (classify, tag, embed) or fixes the number of values (regress);
    ``labels`` are the class names a localize file may use (default: its sibling ``labels.txt`` if any).
    """
    return kind_annotations(kind).read(path, num_classes, labels)


def read_task_annotations(task: TaskSpec, path: str | os.PathLike[str]) -> list[Any]:
    """Read a task's annotation file, checked against the task (its labels, classes or values)."""
    return kind_annotations(task.kind).read(
        path, kind_annotations(task.kind).bound(task), task.labels or None
    )


def annotation_suffix(kind: str) -> str:
    """File suffix of a kind's annotation files (``.json`` for localize/track, ``.txt`` otherwise)."""
    return ".json" if kind_spec(kind).json_annotations else ".txt"


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """``ROOT/manifest.json`` of a generated dataset collection."""
    p = Path(root) / "manifest.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnnotationError(p, None, "no manifest (generate the data with `vmtl data synth`)") from None
    except json.JSONDecodeError as exc:
        raise AnnotationError(p, exc.lineno, f"invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise AnnotationError(p, None, "not a vmtl dataset manifest (no 'tasks' object)")
    return data


def read_split(root: str | os.PathLike[str], task: str, split: str = "train") -> list[Any]:
    """The records of one task's split (``train``, ``val``, ...) using the manifest's kind and labels."""
    manifest = read_manifest(root)
    if task not in manifest["tasks"]:
        raise KeyError(
            f"no task {task!r} in {Path(root) / 'manifest.json'}; it has: {', '.join(manifest['tasks'])}"
        )
    info = manifest["tasks"][task]
    files = info.get("annotations", {})
    if split not in files:
        raise KeyError(f"task {task!r} has no split {split!r}; it has: {', '.join(files)}")
    kind = info["kind"]
    labels = info.get("labels") or None
    num = kind_annotations(kind).manifest_bound(info, labels)
    return read_annotations(kind, Path(root) / files[split], num_classes=num, labels=labels)


# --------------------------------------------------------------------------------------------------
# Writers (the generator's; records' paths are written relative to the file's directory)


def _rel(p: Path, base: Path) -> str:
    return Path(os.path.relpath(Path(p).absolute(), base)).as_posix()


def _write_text(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{line}\n" for line in lines)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _fmt(v: float) -> str:
    return repr(float(v))


def write_records(path: str | os.PathLike[str], records: Sequence[Record]) -> None:
    """Write records of one kind in that kind's format (text list or one-video-per-line JSON)."""
    p, base = _base(path)
    if not records:
        is_json = p.suffix == ".json"
        _write_text(p, ["{}"] if is_json else [])
        return
    first = records[0]
    if isinstance(first, (LocalizeRecord, TrackRecord)):
        items = []
        for r in records:
            if isinstance(r, LocalizeRecord):
                entry: dict[str, Any] = {"path": _rel(r.path, base), "duration_second": r.duration}
                if r.fps is not None:
                    entry["fps"] = r.fps
                entry["annotations"] = [{"segment": [s.start, s.end], "label": s.label} for s in r.segments]
            elif isinstance(r, TrackRecord):
                entry = {"path": _rel(r.path, base), "width": r.width, "height": r.height}
                if r.fps is not None:
                    entry["fps"] = r.fps
                entry["boxes"] = [[b.time, b.x1, b.y1, b.x2, b.y2] for b in r.boxes]
            else:
                raise TypeError(f"cannot mix {type(first).__name__} and {type(r).__name__} in one file")
            items.append(f"{json.dumps(r.video_id)}: {json.dumps(entry)}")
        _write_text(p, ["{", *(f"{s}," for s in items[:-1]), items[-1], "}"])
        return
    lines = []
    for r in records:
        if type(r) is not type(first):
            raise TypeError(f"cannot mix {type(first).__name__} and {type(r).__name__} in one file")
        if isinstance(r, LabelRecord):
            fields = [str(r.label)]
        elif isinstance(r, TagRecord):
            fields = [str(i) for i in r.labels]
        elif isinstance(r, RegressRecord):
            fields = [_fmt(v) for v in r.values]
        else:  # pragma: no cover
            raise TypeError(f"not an annotation record: {r!r}")
        lines.append(" ".join([_rel(r.path, base), *fields]))
    _write_text(p, lines)


def write_labels(path: str | os.PathLike[str], names: Sequence[str]) -> None:
    """``labels.txt``: one name per line."""
    _write_text(Path(path), names)

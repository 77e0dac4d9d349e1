"""The task graph (tasks, kinds, labels, auxiliaries, preprocessing) and every kind's post-processing.

This module is the single source of truth for what the tasks are. It is numpy-only so the serving and
client paths stay light. ``KIND_SPECS`` is the one table of what each task kind is (labelled, scored,
temporal, pooled, its annotation format and primary metric) and how its outputs are post-processed,
combined over windows and formatted; code elsewhere reads it instead of naming kinds. A spec looks like::

    name: demo
    preprocess: {num_frames: 16, size: 224, sampling: uniform, mean: [...], std: [...]}
    trunks:                                   # optional; default one VideoMAE trunk named "video"
      - {name: video, kind: videomae}         # the first trunk: the adapted VideoMAE (`model:` config)
      - {name: image, kind: frames, preset: efficientnet_lite0, size: 160}
    tasks:
      - {name: object, kind: classify, labels_file: labels.txt, data: object}
      - {name: tags, kind: tag, labels: [a, b, c], auxiliaries: [object], threshold: 0.5}
      - {name: scene, kind: classify, trunk: image, head: pretrained}   # ImageNet's classifier, no training

`labels_file` is read when the graph is loaded (relative to the task's data directory under
`data_root`, else to the spec file's directory); saved graphs always carry their labels inline.

Trunks: every trunk takes the same decoded clip and runs once per clip, only when one of its tasks (or
their auxiliaries) is asked. The first is the VideoMAE trunk with VMT-Adapters; the others are frame-wise
image networks (kind ``frames``: the network on every frame, one feature token per frame), which may
resize the clip's frames to their own ``size`` inside their graph. A task on a ``frames`` trunk with
``head: pretrained`` uses the network's own ImageNet classifier, averaged over frames, untrained; its
labels default to ImageNet's 1000 class names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
import yaml

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_DENSE_RE = re.compile(r"^(\d+)x(\d+)x(\d+)$")
# Names a task cannot take: ensemble tensor names and the keys of the client's JSON records.
RESERVED_NAMES: frozenset[str] = frozenset(
    {
        "video",
        "video_bytes",
        "timestamps",
        "crop",
        "window",
        "clip_window",
        "path",
        "windows",
        "error",
        "start",
        "end",
    }
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


TRUNK_KINDS: tuple[str, ...] = ("videomae", "frames")
FRAME_PRESETS: tuple[str, ...] = ("efficientnet_lite0",)
HEAD_SOURCES: tuple[str, ...] = ("trained", "pretrained")
IMAGENET_CLASSES_RESOURCE = "models/data/imagenet_classes.txt"  # inside the vmtl package


class TaskGraphError(ValueError):
    """A task graph spec is invalid; the message names the task and the problem."""


# --------------------------------------------------------------------------------------------------
# Spec


@dataclass(frozen=True)
class Preprocess:
    """How a clip is sampled and normalised before the trunk (the trunk normalises inside its graph)."""

    num_frames: int = 16
    size: int = 224
    sampling: str = "uniform"  # "uniform" or MMAction2 dense "TxIxN" (clip_len x frame_interval x clips)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def validate(self) -> None:
        if self.num_frames < 1 or self.size < 1:
            raise TaskGraphError(
                f"preprocess: num_frames and size must be positive, got {self.num_frames}, {self.size}"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise TaskGraphError("preprocess: mean and std need 3 values (R, G, B)")
        if any(s <= 0 for s in self.std):
            raise TaskGraphError(f"preprocess: std must be positive, got {list(self.std)}")
        if self.sampling != "uniform":
            m = _DENSE_RE.match(self.sampling)
            if not m:
                raise TaskGraphError(
                    f"preprocess: sampling must be 'uniform' or 'TxIxN' (e.g. 16x4x1), got {self.sampling!r}"
                )
            t, _, n = (int(g) for g in m.groups())
            if t * n != self.num_frames:
                raise TaskGraphError(
                    f"preprocess: sampling {self.sampling} gives {t * n} frames but num_frames is {self.num_frames}"
                )


@dataclass(frozen=True)
class TrunkSpec:
    """One trunk: ``videomae`` (the first, adapted; its architecture is the `model:` config) or ``frames``
    (a pretrained image network on every frame; ``preset`` names it, ``size`` resizes frames inside it)."""

    name: str
    kind: str = "videomae"
    preset: str | None = None  # frames: the image network (default efficientnet_lite0)
    size: int | None = None  # frames: the side its frames are resized to in-graph (default: the clip's)

    def validate(self, index: int) -> None:
        where = f"trunk {self.name!r}"
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise TaskGraphError(f"{where}: names must be lower-case identifiers ([a-z][a-z0-9_]*)")
        if self.kind not in TRUNK_KINDS:
            raise TaskGraphError(
                f"{where}: unknown kind {self.kind!r}; choose one of {', '.join(TRUNK_KINDS)}"
            )
        if (index == 0) != (self.kind == "videomae"):
            raise TaskGraphError(
                f"{where}: the first trunk is the VideoMAE trunk (kind videomae, its architecture in "
                "`model:`) and every other trunk is a frame-wise image network (kind frames)"
            )
        if self.kind == "videomae" and (self.preset is not None or self.size is not None):
            raise TaskGraphError(
                f"{where}: a videomae trunk takes its architecture from `model:`, not preset/size"
            )
        if self.kind == "frames" and (self.preset or FRAME_PRESETS[0]) not in FRAME_PRESETS:
            raise TaskGraphError(
                f"{where}: unknown preset {self.preset!r}; choose one of {', '.join(FRAME_PRESETS)}"
            )
        if self.size is not None and self.size < 32:
            raise TaskGraphError(f"{where}: size must be at least 32 pixels, got {self.size}")


DEFAULT_TRUNKS: tuple[TrunkSpec, ...] = (TrunkSpec("video"),)


@dataclass(frozen=True)
class TaskSpec:
    """One task: its kind, labels, auxiliaries (tasks whose representations prompt it) and options."""

    name: str
    kind: str
    labels: tuple[str, ...] = ()
    auxiliaries: tuple[str, ...] = ()
    data: str | None = None  # the task's dataset directory (relative to the data root)
    dim: int = 0  # embed: vector size (default 64); regress: number of values (default 1)
    top_k: int = 5  # classify
    threshold: float = 0.5  # tag: sigmoid threshold; localize: minimum segment score
    scale: tuple[float, ...] = ()  # regress: value = raw * scale + offset (per value, or one for all)
    offset: tuple[float, ...] = ()
    trunk: str = ""  # the trunk whose features the head reads ("": the graph's first trunk)
    head: str = "trained"  # "pretrained": a frames trunk's own classifier (no training)

    @property
    def pretrained(self) -> bool:
        """The head is a pretrained classifier used as it is: no training data, no training."""
        return self.head == "pretrained"

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def kind_spec(self) -> KindSpec:
        """The facts and post-processing of this task's kind (KeyError for an unknown kind)."""
        return KIND_SPECS[self.kind]

    @property
    def out_dim(self) -> int:
        """Width of the head's output layer (per temporal token for temporal kinds)."""
        return self.kind_spec.out_dim(self)

    @property
    def temporal(self) -> bool:
        return self.kind in TEMPORAL_KINDS


@dataclass(frozen=True)
class TaskGraph:
    """Tasks plus preprocessing; validated on construction."""

    tasks: tuple[TaskSpec, ...]
    preprocess: Preprocess = field(default_factory=Preprocess)
    name: str = "vmtl"
    trunks: tuple[TrunkSpec, ...] = DEFAULT_TRUNKS

    def __post_init__(self) -> None:
        self.validate()

    # -- queries -----------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"unknown task {name!r}; this graph has: {', '.join(self.names)}")

    def __contains__(self, name: object) -> bool:
        return any(t.name == name for t in self.tasks)

    # -- trunks --------------------------------------------------------------------------------------
    @property
    def trunk_names(self) -> list[str]:
        return [t.name for t in self.trunks]

    def trunk(self, name: str) -> TrunkSpec:
        for t in self.trunks:
            if t.name == name:
                return t
        raise KeyError(f"unknown trunk {name!r}; this graph has: {', '.join(self.trunk_names)}")

    def trunk_of(self, task: str) -> str:
        """The trunk whose features ``task``'s head reads."""
        return self.task(task).trunk or self.trunks[0].name

    def trunk_tasks(self, trunk: str) -> list[str]:
        """The tasks whose heads read ``trunk``'s features, in declaration order."""
        return [t.name for t in self.tasks if (t.trunk or self.trunks[0].name) == trunk]

    def trunks_for(self, tasks: Iterable[str]) -> list[str]:
        """The trunks that must run for ``tasks`` (and their auxiliaries), in trunk order."""
        used = {self.trunk_of(n) for n in self.closure(tasks)}
        return [t for t in self.trunk_names if t in used]

    @property
    def multi_trunk(self) -> bool:
        return len(self.trunks) > 1

    def stages(self) -> list[list[str]]:
        """Topological stages: stage 0 has no auxiliaries, stage k needs only earlier stages."""
        level: dict[str, int] = {}
        for name in self._topological_order():
            aux = self.task(name).auxiliaries
            level[name] = 1 + max((level[a] for a in aux), default=-1)
        out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
        for t in self.tasks:  # keep declaration order inside a stage
            out[level[t.name]].append(t.name)
        return out

    def closure(self, names: Iterable[str]) -> list[str]:
        """The given tasks plus every auxiliary they need, transitively, in stage order."""
        wanted: set[str] = set()
        todo = list(names)
        while todo:
            n = todo.pop()
            if n in wanted:
                continue
            self.task(n)  # raises KeyError naming the unknown task
            wanted.add(n)
            todo.extend(self.task(n).auxiliaries)
        return [n for stage in self.stages() for n in stage if n in wanted]

    def dependents(self, name: str) -> list[str]:
        """Tasks that use `name` as an auxiliary."""
        return [t.name for t in self.tasks if name in t.auxiliaries]

    # -- validation ---------------------------------------------------------------------------------
    def validate(self) -> None:
        if not self.tasks:
            raise TaskGraphError("the task graph has no tasks")
        self.preprocess.validate()
        if not self.trunks:
            raise TaskGraphError(
                "`trunks:` needs at least one trunk (or leave it out for one VideoMAE trunk)"
            )
        for i, trunk in enumerate(self.trunks):
            trunk.validate(i)
        if len(set(self.trunk_names)) != len(self.trunks):
            raise TaskGraphError(f"duplicate trunk names in {self.trunk_names}")
        seen: set[str] = set()
        for t in self.tasks:
            where = f"task {t.name!r}"
            if not isinstance(t.name, str) or not _NAME_RE.match(t.name):
                raise TaskGraphError(
                    f"{where}: names must be lower-case identifiers ([a-z][a-z0-9_]*, at most 32 chars); "
                    "they become Triton model and tensor names"
                )
            if t.name in seen:
                raise TaskGraphError(f"{where}: duplicate task name")
            if t.name in RESERVED_NAMES:
                raise TaskGraphError(
                    f"{where}: the name is reserved (one of {', '.join(sorted(RESERVED_NAMES))})"
                )
            seen.add(t.name)
            spec = KIND_SPECS.get(t.kind)
            if spec is None:
                raise TaskGraphError(f"{where}: unknown kind {t.kind!r}; choose one of {', '.join(KINDS)}")
            if spec.labelled and not t.labels:
                raise TaskGraphError(
                    f"{where}: kind {t.kind} needs labels (give `labels:` or `labels_file:`)"
                )
            if len(set(t.labels)) != len(t.labels):
                raise TaskGraphError(f"{where}: duplicate label names")
            problem = spec.check(t)
            if problem:
                raise TaskGraphError(f"{where}: {problem}")
            if t.name in t.auxiliaries:
                raise TaskGraphError(f"{where}: a task cannot be its own auxiliary")
            self._check_trunk(t, where)
        for t in self.tasks:
            for a in t.auxiliaries:
                if a not in seen:
                    raise TaskGraphError(f"task {t.name!r}: auxiliary {a!r} is not a task of this graph")
        self._topological_order()
        for trunk in self.trunks[1:]:
            if not self.trunk_tasks(trunk.name):
                raise TaskGraphError(
                    f"trunk {trunk.name!r} has no tasks: give a task `trunk: {trunk.name}` or remove the trunk"
                )

    def _check_trunk(self, t: TaskSpec, where: str) -> None:
        if t.trunk and t.trunk not in self.trunk_names:
            raise TaskGraphError(
                f"{where}: trunk {t.trunk!r} is not a trunk of this graph ({', '.join(self.trunk_names)})"
            )
        kind = self.trunk(t.trunk or self.trunks[0].name).kind
        if t.head not in HEAD_SOURCES:
            raise TaskGraphError(f"{where}: head must be one of {', '.join(HEAD_SOURCES)}, got {t.head!r}")
        if kind == "frames" and t.temporal:
            raise TaskGraphError(
                f"{where}: a frames trunk gives one pooled token per frame and serves the pooled kinds "
                f"({', '.join(k for k, s in KIND_SPECS.items() if s.pooled)}); put {t.kind} tasks on the "
                "videomae trunk"
            )
        if t.pretrained:
            if kind != "frames" or t.kind not in ("classify", "tag"):
                raise TaskGraphError(
                    f"{where}: head 'pretrained' is a frames trunk's own ImageNet classifier: it needs a "
                    "classify or tag task on a frames trunk"
                )
            if len(t.labels) != 1000 or t.auxiliaries:
                raise TaskGraphError(
                    f"{where}: a pretrained head has ImageNet's 1000 labels (leave `labels` out) and no "
                    "auxiliaries"
                )

    def _topological_order(self) -> list[str]:
        deps = {t.name: list(t.auxiliaries) for t in self.tasks}
        state: dict[str, int] = {}  # 1 = visiting, 2 = done
        order: list[str] = []

        def visit(n: str, path: list[str]) -> None:
            if state.get(n) == 2:
                return
            if state.get(n) == 1:
                cycle = [*path[path.index(n) :], n]
                raise TaskGraphError(f"auxiliaries form a cycle: {' -> '.join(cycle)}")
            state[n] = 1
            for a in deps[n]:
                visit(a, [*path, n])
            state[n] = 2
            order.append(n)

        for t in self.tasks:
            visit(t.name, [])
        return order

    # -- (de)serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        tasks = []
        for t in self.tasks:
            d: dict[str, Any] = {"name": t.name, "kind": t.kind}
            for f in fields(TaskSpec)[2:]:
                v = getattr(t, f.name)
                if v != f.default and v != ():
                    d[f.name] = list(v) if isinstance(v, tuple) else v
            tasks.append(d)
        pre = asdict(self.preprocess)
        pre["mean"], pre["std"] = list(pre["mean"]), list(pre["std"])
        out: dict[str, Any] = {"name": self.name, "preprocess": pre}
        if self.trunks != DEFAULT_TRUNKS:
            out["trunks"] = [{k: v for k, v in asdict(t).items() if v is not None} for t in self.trunks]
        out["tasks"] = tasks
        return out

    @classmethod
    def from_dict(
        cls,
        spec: Mapping[str, Any],
        *,
        base_dir: str | Path | None = None,
        data_root: str | Path | None = None,
    ) -> TaskGraph:
        if not isinstance(spec, Mapping) or "tasks" not in spec:
            raise TaskGraphError("a task graph spec needs a `tasks:` list")
        pre_raw = dict(spec.get("preprocess") or {})
        unknown = set(pre_raw) - {f.name for f in fields(Preprocess)}
        if unknown:
            raise TaskGraphError(f"preprocess: unknown keys {sorted(unknown)}")
        for k in ("mean", "std"):
            if k in pre_raw:
                pre_raw[k] = tuple(float(x) for x in pre_raw[k])
        preprocess = Preprocess(**pre_raw)
        raw_tasks = spec["tasks"]
        if not isinstance(raw_tasks, Sequence) or isinstance(raw_tasks, str):
            raise TaskGraphError("`tasks:` must be a list of task mappings")
        trunks = _trunks_from_dict(spec.get("trunks"))
        tasks = [_task_from_dict(t, i, base_dir, data_root) for i, t in enumerate(raw_tasks)]
        return cls(
            tasks=tuple(tasks), preprocess=preprocess, name=str(spec.get("name", "vmtl")), trunks=trunks
        )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_text(cls, text: str, **kw: Any) -> TaskGraph:
        """Parse YAML (JSON is valid YAML)."""
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TaskGraphError(f"the task graph is not valid YAML/JSON: {exc}") from exc
        return cls.from_dict(spec, **kw)

    @classmethod
    def load(cls, path: str | Path, *, data_root: str | Path | None = None) -> TaskGraph:
        path = Path(path)
        if not path.is_file():
            raise TaskGraphError(f"task graph file not found: {path}")
        return cls.from_text(path.read_text(), base_dir=path.parent, data_root=data_root)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() if path.suffix == ".json" else self.to_yaml())
        return path

    def subset(self, names: Iterable[str]) -> TaskGraph:
        """The graph restricted to `names` and their auxiliaries."""
        keep = set(self.closure(names))
        tasks = tuple(t for t in self.tasks if t.name in keep)
        used = {t.trunk or self.trunks[0].name for t in tasks}
        trunks = (self.trunks[0], *(t for t in self.trunks[1:] if t.name in used))
        return replace(self, tasks=tasks, trunks=trunks)


_TASK_KEYS = {f.name for f in fields(TaskSpec)} | {"labels_file"}
_TRUNK_KEYS = {f.name for f in fields(TrunkSpec)}


def _trunks_from_dict(raw: Any) -> tuple[TrunkSpec, ...]:
    if raw is None:
        return DEFAULT_TRUNKS
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise TaskGraphError("`trunks:` must be a list of trunk mappings")
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, Mapping) or "name" not in t:
            raise TaskGraphError(f"trunks[{i}]: expected a mapping with a `name`")
        unknown = set(t) - _TRUNK_KEYS
        if unknown:
            raise TaskGraphError(
                f"trunk {t['name']!r}: unknown keys {sorted(unknown)}; known: {sorted(_TRUNK_KEYS)}"
            )
        out.append(TrunkSpec(**t))
    return tuple(out)


def imagenet_labels() -> tuple[str, ...]:
    """ImageNet-1k's 1000 class names (the labels of a pretrained head), read from vmtl's package data.

    Two names occur twice in ImageNet (``missile``, ``sunglasses``); their second class gets its index
    appended (``sunglasses (class 837)``) so that every label is unique.
    """
    text = resources.files("vmtl").joinpath(IMAGENET_CLASSES_RESOURCE).read_text(encoding="utf-8")
    seen: set[str] = set()
    out = []
    for i, name in enumerate(line for line in text.splitlines() if line):
        out.append(name if name not in seen else f"{name} (class {i})")
        seen.add(name)
    return tuple(out)


def _task_from_dict(
    raw: Any, index: int, base_dir: str | Path | None, data_root: str | Path | None
) -> TaskSpec:
    if not isinstance(raw, Mapping):
        raise TaskGraphError(f"tasks[{index}]: expected a mapping, got {type(raw).__name__}")
    where = f"task {raw.get('name', f'#{index}')!r}"
    for key in ("name", "kind"):
        if key not in raw:
            raise TaskGraphError(f"{where}: missing `{key}`")
    unknown = set(raw) - _TASK_KEYS
    if unknown:
        raise TaskGraphError(f"{where}: unknown keys {sorted(unknown)}")
    d = dict(raw)
    labels_file = d.pop("labels_file", None)
    if labels_file is not None:
        if d.get("labels"):
            raise TaskGraphError(f"{where}: give `labels` or `labels_file`, not both")
        d["labels"] = _read_labels_file(labels_file, d.get("data"), base_dir, data_root, where)
    if d.get("head") == "pretrained" and not d.get("labels"):
        d["labels"] = imagenet_labels()
    for key in ("labels", "auxiliaries"):
        v = d.get(key) or ()
        if isinstance(v, str):
            raise TaskGraphError(f"{where}: `{key}` must be a list, got the string {v!r}")
        d[key] = tuple(str(x) for x in v)
    for key in ("scale", "offset"):
        v = d.get(key, ())
        d[key] = (float(v),) if isinstance(v, (int, float)) else tuple(float(x) for x in v)
    spec = KIND_SPECS.get(d["kind"])
    if spec is not None and spec.default_dim and not d.get("dim"):
        d["dim"] = spec.default_dim
    return TaskSpec(**d)


def _read_labels_file(
    labels_file: str, data: str | None, base_dir: str | Path | None, data_root: str | Path | None, where: str
) -> tuple[str, ...]:
    candidates = []
    p = Path(labels_file)
    if p.is_absolute():
        candidates.append(p)
    else:
        if data_root is not None and data is not None:
            candidates.append(Path(data_root) / data / p)
        if base_dir is not None:
            candidates.append(Path(base_dir) / p)
        candidates.append(p)
    for c in candidates:
        if c.is_file():
            labels = tuple(line.strip() for line in c.read_text().splitlines() if line.strip())
            if not labels:
                raise TaskGraphError(f"{where}: labels file {c} is empty")
            return labels
    tried = ", ".join(str(c) for c in candidates)
    raise TaskGraphError(
        f"{where}: labels file {labels_file!r} not found (tried {tried}); generate the data first?"
    )


# --------------------------------------------------------------------------------------------------
# Post-processing: raw head outputs (numpy) -> typed, JSON-ready results


class ClipLike(Protocol):
    """What post-processing needs to know of the clip (vmtl.video.Clip satisfies it)."""

    timestamps: np.ndarray
    crop: tuple[float, float, float]
    start: float
    end: float


@dataclass(frozen=True)
class Scored:
    label: str
    index: int
    score: float


@dataclass(frozen=True)
class Segment:
    label: str
    start: float
    end: float
    score: float


@dataclass(frozen=True)
class TimedBox:
    time: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in source-video pixels


@dataclass
class TaskResult:
    """One task's post-processed result for one clip (or window)."""

    task: str
    kind: str
    top: list[Scored] = field(default_factory=list)  # classify: top-k; tag: labels over threshold
    scores: dict[str, float] = field(default_factory=dict)  # classify/tag: every label's probability
    segments: list[Segment] = field(default_factory=list)  # localize
    embedding: list[float] = field(default_factory=list)  # embed (L2-normalised)
    values: list[float] = field(default_factory=list)  # regress
    boxes: list[TimedBox] = field(default_factory=list)  # track

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **KIND_SPECS[self.kind].to_dict(self)}

    def summary(self) -> str:
        """One short human-readable line."""
        return KIND_SPECS[self.kind].summary(self)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def cosine_search(query: np.ndarray, gallery: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery rows by cosine similarity for each query row: (indices [Q,k], scores [Q,k])."""
    q = l2_normalize(np.atleast_2d(query))
    g = l2_normalize(np.atleast_2d(gallery))
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query has dimension {q.shape[1]} but gallery has {g.shape[1]}")
    sims = q @ g.T
    k = min(k, g.shape[0])
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sims, idx, axis=1)


def temporal_token_bounds(timestamps: np.ndarray, num_tokens: int, start: float, end: float) -> np.ndarray:
    """[num_tokens, 2] seconds covered by each temporal token.

    The T sampled frames are split into `num_tokens` equal groups (VideoMAE's tubelets); a group spans
    from the midpoint to the previous group to the midpoint to the next, clamped to [start, end].
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    if num_tokens < 1 or len(ts) % num_tokens:
        raise ValueError(f"{len(ts)} frames cannot be split into {num_tokens} temporal tokens")
    groups = ts.reshape(num_tokens, -1)
    firsts, lasts = groups[:, 0], groups[:, -1]
    edges = np.empty(num_tokens + 1)
    edges[0], edges[-1] = start, end
    edges[1:-1] = (lasts[:-1] + firsts[1:]) / 2
    return np.clip(np.stack([edges[:-1], edges[1:]], axis=1), start, end)


def segment_iou(a: Segment, b: Segment) -> float:
    """Temporal intersection over union (used by the segment mAP metric)."""
    inter = max(0.0, min(a.end, b.end) - max(a.start, b.start))
    union = max(a.end, b.end) - min(a.start, b.start)
    return inter / union if union > 0 else 0.0


def merge_segments(segments: Sequence[Segment]) -> list[Segment]:
    """Join overlapping or touching same-label segments (e.g. from overlapping sliding windows).

    The joined segment spans the union; its score is the duration-weighted mean of the parts.
    """
    out: list[Segment] = []
    for label in sorted({s.label for s in segments}):
        joined: list[Segment] = []
        for s in sorted((s for s in segments if s.label == label), key=lambda s: s.start):
            if joined and s.start <= joined[-1].end + 1e-6:
                last = joined[-1]
                d1, d2 = last.end - last.start, s.end - s.start
                score = (last.score * d1 + s.score * d2) / max(d1 + d2, 1e-9)
                joined[-1] = Segment(label, last.start, max(last.end, s.end), score)
            else:
                joined.append(s)
        out.extend(joined)
    return sorted(out, key=lambda s: (s.start, s.label))


# --------------------------------------------------------------------------------------------------
# Kinds: every per-kind fact and behaviour, in one table


@dataclass(frozen=True)
class KindSpec:
    """One task kind: its facts (fields) and how its raw head outputs become results (methods).

    Each kind is a subclass that defines the methods; ``KIND_SPECS`` holds one instance per kind. The
    primary metric is only named here: the metrics module computes it.
    """

    name: str
    primary_metric: str  # the one number reported per task of this kind
    lower_is_better: bool = False  # of the primary metric
    labelled: bool = False  # tasks need labels (class names)
    scored: bool = False  # one score per label (label indices in annotations, Triton labels files)
    temporal: bool = False  # one output row per temporal token; post-processing needs the clip
    pooled: bool = False  # the head reads out its pooled query tokens (else per-token features)
    json_annotations: bool = False  # annotation files are JSON (else text lists)
    default_dim: int = 0  # kinds sized by `dim:` (embed, regress): its default; 0 = not sized by dim

    def out_dim(self, task: TaskSpec) -> int:
        """Width of the head's output layer (per temporal token for temporal kinds)."""
        raise NotImplementedError

    def check(self, task: TaskSpec) -> str | None:
        """The problem with the task's kind-specific options, or None."""
        if self.default_dim and task.dim < 1:
            return f"dim must be >= 1 for kind {self.name}"
        return None

    def postprocess(self, task: TaskSpec, output: np.ndarray, clip: ClipLike | None) -> TaskResult:
        """One clip's checked raw output -> its result (`clip` is given for temporal kinds)."""
        raise NotImplementedError

    def combine(self, task: TaskSpec, results: Sequence[TaskResult]) -> TaskResult:
        """One result for a whole video from (at least one) per-window results."""
        raise NotImplementedError

    def to_dict(self, result: TaskResult) -> dict[str, Any]:
        """The kind's JSON fields of a result (after ``kind``)."""
        raise NotImplementedError

    def summary(self, result: TaskResult) -> str:
        """One short human-readable line."""
        raise NotImplementedError

    def describe_output(self, task: TaskSpec) -> str:
        """What the task outputs, for task listings (labelled kinds show their labels instead)."""
        return f"{task.out_dim} values"


def _mean_scores(task: TaskSpec, results: Sequence[TaskResult]) -> tuple[dict[str, float], list[int]]:
    """Every label's mean score over windows, and the label indices from best to worst."""
    scores = {lab: float(np.mean([r.scores[lab] for r in results])) for lab in task.labels}
    return scores, sorted(range(task.num_classes), key=lambda i: -scores[task.labels[i]])


def _scored(task: TaskSpec, probs: np.ndarray, keep: Iterable[int]) -> TaskResult:
    return TaskResult(
        task.name,
        task.kind,
        top=[Scored(task.labels[i], int(i), float(probs[i])) for i in keep],
        scores={lab: float(p) for lab, p in zip(task.labels, probs, strict=True)},
    )


class _Classify(KindSpec):
    def out_dim(self, task: TaskSpec) -> int:
        return task.num_classes

    def postprocess(self, task: TaskSpec, output: np.ndarray, clip: ClipLike | None) -> TaskResult:
        probs = softmax(output.reshape(-1))
        return _scored(task, probs, np.argsort(-probs, kind="stable")[: task.top_k])

    def combine(self, task: TaskSpec, results: Sequence[TaskResult]) -> TaskResult:
        scores, ranked = _mean_scores(task, results)
        return _scored(task, np.array([scores[lab] for lab in task.labels]), ranked[: task.top_k])

    def to_dict(self, result: TaskResult) -> dict[str, Any]:
        return {
            "label": result.top[0].label if result.top else None,
            "top_k": [asdict(s) for s in result.top],
        }

    def summary(self, result: TaskResult) -> str:
        return ", ".join(f"{s.label} {s.score:.2f}" for s in result.top[:3])


class _Tag(KindSpec):
    def out_dim(self, task: TaskSpec) -> int:
        return task.num_classes

    def postprocess(self, task: TaskSpec, output: np.ndarray, clip: ClipLike | None) -> TaskResult:
        probs = sigmoid(output.reshape(-1))
        order = np.argsort(-probs, kind="stable")
        return _scored(task, probs, [i for i in order if probs[i] >= task.threshold])

    def combine(self, task: TaskSpec, results: Sequence[TaskResult]) -> TaskResult:
        scores, ranked = _mean_scores(task, results)
        probs = np.array([scores[lab] for lab in task.labels])
        return _scored(task, probs, [i for i in ranked if probs[i] >= task.threshold])

    def to_dict(self, result: TaskResult) -> dict[str, Any]:
        return {"labels": [s.label for s in result.top], "scores": result.scores}

    def summary(self, result: TaskResult) -> str:
        return ", ".join(f"{s.label} {s.score:.2f}" for s in result.top) or "(none over threshold)"


class _Localize(KindSpec):
    def out_dim(self, task: TaskSpec) -> int:
        return task.num_classes + 1  # index 0 is background

    def postprocess(self, task: TaskSpec, output: np.ndarray, clip: ClipLike | None) -> TaskResult:
        assert clip is not None
        probs = softmax(output.reshape(-1, task.out_dim))  # [T', C+1], index 0 = background
        bounds = temporal_token_bounds(clip.timestamps, probs.shape[0], clip.start, clip.end)
        best = probs.argmax(axis=1)
        segs: list[Segment] = []
        i = 0
        while i < len(best):
            j = i
            while j + 1 < len(best) and best[j + 1] == best[i]:
                j += 1
            if best[i] != 0:
                score = float(probs[i : j + 1, best[i]].mean())
                if score >= task.threshold:
                    segs.append(
                        Segment(task.labels[best[i] - 1], float(bounds[i, 0]), float(bounds[j, 1]), score)
                    )
            i = j + 1
        return TaskResult(task.name, task.kind, segments=segs)

    def combine(self, task: TaskSpec, results: Sequence[TaskResult]) -> TaskResult:
        segments = merge_segments([s for r in results for s in r.segments])
        return TaskResult(task.name, task.kind, segments=segments)

    def to_dict(self, result: TaskResult) -> dict[str, Any]:
        return {"segments": [asdict(s) for s in result.segments]}

    def summary(self, result: TaskResult) -> str:
        segs = [f"{s.label} {s.start:.1f}-{s.end:.1f}s ({s.score:.2f})" for s in result.segments[:4]]
        more = f" +{len(result.segments) - 4} more" if len(result.segments) > 4 else ""
        return (", ".join(segs) + more) or "(no segments)"


class _Embed(KindSpec):
    def out_dim(self, task: TaskSpec) -> int:
        return task.dim

    def postprocess(self, task: TaskSpec, output: np.ndarray, clip: ClipLike | None) -> TaskResult:
        vec = l2_normalize(output.reshape(-1))
        return TaskResult(task.name, task.kind, embedding=[float(v) for v in vec])

    def combine(self, task: TaskSpec, results: Sequence[TaskResult]) -> TaskResult:
        vec = l2_normalize(np.mean([r.embedding for r in results], axis=0))
        return TaskResult(task.name, task.kind, embedding=[float(v) for v in vec])

    def to_dict(self, result: TaskResult) -> dict[str, Any]:
        return {"embedding": result.embedding}

    def summary(self, result: TaskResult) -> str:
        head = ", ".join(f"{v:+.2f}" for v in result.embedding[:4])
        return f"[{head}, ...] ({len(result.embedding)}-d, unit norm)"

    def describe_output(self, task: TaskSpec) -> str:
        return f"{task.dim}-d vector"


class _Regress(KindSpec):
    def out_dim(self, task: TaskSpec) -> int:
        return task.dim

    def check(self, task: TaskSpec) -> str | None:
        problem = super().check(task)
        for nm, vals in (("scale", task.scale), ("offset", task.offset)):
            if problem is None and len(vals) not in (0, 1, task.dim):
                problem = f"{nm} needs 1 or {task.dim} values, got {len(vals)}"
        return problem

    def postprocess(self, task: TaskSpec, output: np.ndarray, clip: ClipLike | None) -> TaskResult:
        raw = output.reshape(-1).astype(np.float64)
        scale = np.asarray(task.scale or (1.0,), dtype=np.float64)
        offset = np.asarray(task.offset or (0.0,), dtype=np.float64)
        return TaskResult(task.name, task.kind, values=[float(v) for v in raw * scale + offset])

    def combine(self, task: TaskSpec, results: Sequence[TaskResult]) -> TaskResult:
        values = np.mean([r.values for r in results], axis=0)
        return TaskResult(task.name, task.kind, values=[float(v) for v in values])

    def to_dict(self, result: TaskResult) -> dict[str, Any]:
        return {"values": result.values}

    def summary(self, result: TaskResult) -> str:
        return ", ".join(f"{v:.2f}" for v in result.values)


class _Track(KindSpec):
    def out_dim(self, task: TaskSpec) -> int:
        return 4  # normalised x1, y1, x2, y2 in the crop

    def postprocess(self, task: TaskSpec, output: np.ndarray, clip: ClipLike | None) -> TaskResult:
        assert clip is not None
        boxes = np.clip(output.reshape(-1, 4).astype(np.float64), 0.0, 1.0)
        ts = np.asarray(clip.timestamps, dtype=np.float64)
        if len(ts) % len(boxes):
            raise ValueError(f"{len(ts)} frames cannot be split into {len(boxes)} temporal tokens")
        per_frame = np.repeat(boxes, len(ts) // len(boxes), axis=0)
        x0, y0, side = clip.crop
        lo = np.minimum(per_frame[:, :2], per_frame[:, 2:])
        hi = np.maximum(per_frame[:, :2], per_frame[:, 2:])
        px = np.concatenate([lo, hi], axis=1) * side + np.array([x0, y0, x0, y0])
        return TaskResult(
            task.name,
            task.kind,
            boxes=[TimedBox(float(t), tuple(map(float, b))) for t, b in zip(ts, px, strict=True)],
        )

    def combine(self, task: TaskSpec, results: Sequence[TaskResult]) -> TaskResult:
        boxes = sorted((b for r in results for b in r.boxes), key=lambda b: b.time)
        return TaskResult(task.name, task.kind, boxes=boxes)

    def to_dict(self, result: TaskResult) -> dict[str, Any]:
        return {"boxes": [{"time": b.time, "box": list(b.box)} for b in result.boxes]}

    def summary(self, result: TaskResult) -> str:
        if not result.boxes:
            return "(no boxes)"
        first = result.boxes[0]
        b = first.box
        return f"{len(result.boxes)} boxes, first at t={first.time:.2f}s: ({b[0]:.0f},{b[1]:.0f})-({b[2]:.0f},{b[3]:.0f})"

    def describe_output(self, task: TaskSpec) -> str:
        return "a box per frame"


KIND_SPECS: Mapping[str, KindSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            _Classify("classify", "top1", labelled=True, scored=True, pooled=True),
            _Tag("tag", "mAP", labelled=True, scored=True, pooled=True),
            _Localize("localize", "mAP@0.5", labelled=True, temporal=True, json_annotations=True),
            _Embed("embed", "recall@1", pooled=True, default_dim=64),
            _Regress("regress", "MAE", lower_is_better=True, pooled=True, default_dim=1),
            _Track("track", "mIoU", temporal=True, json_annotations=True),
        )
    }
)
KINDS: tuple[str, ...] = tuple(KIND_SPECS)
LABELLED_KINDS: frozenset[str] = frozenset(k for k, s in KIND_SPECS.items() if s.labelled)
TEMPORAL_KINDS: frozenset[str] = frozenset(k for k, s in KIND_SPECS.items() if s.temporal)


def kind_spec(kind: str) -> KindSpec:
    """The spec of a task kind; ValueError naming the known kinds for an unknown one."""
    try:
        return KIND_SPECS[kind]
    except KeyError:
        raise ValueError(f"unknown task kind {kind!r}; choose one of {', '.join(KINDS)}") from None


# --------------------------------------------------------------------------------------------------
# Post-processing entry points


def postprocess(task: TaskSpec, output: np.ndarray, clip: ClipLike | None = None) -> TaskResult:
    """Turn one clip's raw head output into a TaskResult (temporal kinds need the clip's geometry)."""
    output = np.asarray(output)
    expected = task.out_dim
    if output.size == 0 or output.shape[-1] != expected:
        raise ValueError(
            f"task {task.name!r} ({task.kind}): expected last dimension {expected}, got shape {output.shape}"
        )
    if not np.all(np.isfinite(output)):
        raise ValueError(f"task {task.name!r}: output has non-finite values")
    if task.temporal and clip is None:
        raise ValueError(f"task {task.name!r} ({task.kind}) needs the clip's timestamps and crop")
    return task.kind_spec.postprocess(task, output, clip)


def combine_windows(task: TaskSpec, results: Sequence[TaskResult]) -> TaskResult:
    """One result for a whole video from per-window results (mean scores, merged segments, all boxes)."""
    if not results:
        raise ValueError("no window results to combine")
    return task.kind_spec.combine(task, results)

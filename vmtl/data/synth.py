"""Deterministic synthetic multi-task video datasets: seven tasks, one dataset each, on disjoint videos.

Every video shows objects cut from real labelled images (Fashion-MNIST, MNIST-5k, or drawn shapes) moving
over a muted background, and is labelled for one task only (heterogeneous data, as in DLM-VMTL):

==========  ========  ===========================================================================
task        kind      label
==========  ========  ===========================================================================
motion      classify  the motion pattern of one object (``MOTION_LABELS``)
object      classify  the class of the one object shown (the image source's class names)
tags        tag       the set of classes among 1-3 objects
segments    localize  when one object is ``moving`` or ``spinning`` (seconds); still = background
count       regress   the number of objects (1-5), one float
box         track     one object's tight box on every frame (pixels)
identity    embed     which source image is shown (val: one query and one gallery video per identity)
==========  ========  ===========================================================================

Layout under the output directory::

    manifest.json
    <task>/videos/<task>_00000.mp4 ...      h264, yuv420p, SIZE x SIZE, FPS fps, NUM_FRAMES frames
    <task>/train.txt | train.json            see vmtl.data.annotations for the formats
    <task>/val.txt   | val.json
    <task>/labels.txt                        classify, tag and localize tasks
    identity/val_query.txt, identity/val_gallery.txt

Everything random is drawn from ``numpy`` generators seeded by ``(seed, task, video index)``, so a seed gives
byte-identical annotation files and frames whatever the number of workers (and, with the single-threaded
x264 settings used, identical mp4 bytes with the same FFmpeg build).
"""

from __future__ import annotations

import colorsys
import contextlib
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vmtl.data.annotations import (
    FrameBox,
    GtSegment,
    LabelRecord,
    LocalizeRecord,
    RegressRecord,
    TagRecord,
    TrackRecord,
    annotation_suffix,
    write_labels,
    write_records,
)
from vmtl.data.images import DEFAULT_SOURCE, SOURCES, ImageSet, load_images
from vmtl.data.render import ALPHA_GAIN, BACKGROUNDS, ObjectTrack, VideoPlan, encode_mp4, render_frames

GENERATOR = "vmtl.data.synth"
GENERATOR_VERSION = "1"

TASKS: dict[str, str] = {
    "motion": "classify",
    "object": "classify",
    "tags": "tag",
    "segments": "localize",
    "count": "regress",
    "box": "track",
    "identity": "embed",
}
TASK_DESCRIPTIONS: dict[str, str] = {
    "motion": "motion pattern of one object",
    "object": "class of the one object shown",
    "tags": "set of classes among 1-3 objects",
    "segments": "when one object is moving or spinning (seconds)",
    "count": "number of objects (1-5)",
    "box": "box of one object on every frame (pixels)",
    "identity": "which source image is shown (retrieval)",
}
MOTION_LABELS: tuple[str, ...] = ("still", "left", "right", "up", "down", "circle")
SEGMENT_LABELS: tuple[str, ...] = ("moving", "spinning")
MAX_OBJECTS_TAGS = 3
MAX_COUNT = 5
VIDEOS_PER_IDENTITY = 8


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. ``videos_per_task`` is per task, train and val together."""

    seed: int = 0
    videos_per_task: int = 320
    size: int = 128
    fps: int = 8
    num_frames: int = 32
    source: str = DEFAULT_SOURCE  # "auto" picks what is installed: machine-dependent, so never the default
    val_fraction: float = 0.2
    crf: int = 20
    tasks: tuple[str, ...] = tuple(TASKS)

    def validate(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.videos_per_task < 2:
            raise ValueError(
                f"videos_per_task must be >= 2 (a train and a val video), got {self.videos_per_task}"
            )
        if self.size < 32 or self.size % 2:
            raise ValueError(f"size must be an even number of pixels >= 32 (yuv420p), got {self.size}")
        if not 1 <= self.fps <= 60:
            raise ValueError(f"fps must be in 1..60, got {self.fps}")
        if self.num_frames < 8:
            raise ValueError(f"num_frames must be >= 8, got {self.num_frames}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}; choose one of {', '.join(SOURCES)}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"unknown or no tasks {unknown}; choose from {', '.join(TASKS)}")


@dataclass
class SynthResult:
    """What :func:`generate` made."""

    out_dir: Path
    manifest: dict[str, Any]
    num_videos: int
    total_bytes: int
    seconds: float
    workers: int = 1
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Planning (pure functions of the seed)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _split_sizes(n: int, val_fraction: float) -> tuple[int, int]:
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return n - n_val, n_val


def _reflect(x: np.ndarray, length: float) -> np.ndarray:
    """Fold an unbounded coordinate into [0, length] (bouncing off both walls)."""
    if length <= 0:
        return np.zeros_like(x)
    return length - np.abs(np.mod(x, 2 * length) - length)


def _content_box(image: np.ndarray) -> tuple[float, float, float, float]:
    """Box (x0, y0, x1, y1) of an image's visible pixels in its 28x28 frame, one pixel of margin."""
    ys, xs = np.nonzero(image.astype(np.float32) * ALPHA_GAIN >= 0.1 * 255)
    if not len(xs):
        return 0.0, 0.0, float(image.shape[1]), float(image.shape[0])
    return xs.min() - 1.0, ys.min() - 1.0, xs.max() + 2.0, ys.max() + 2.0


def _color(rng: np.random.Generator) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.55), rng.uniform(0.88, 1.0))
    return (255.0 * r, 255.0 * g, 255.0 * b)


def _path(
    rng: np.random.Generator, pattern: str, T: int, S: int, half: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame centre of an object whose half-extent is ``half`` px, kept inside the frame."""
    lo, hi = half + 1.0, S - half - 1.0
    span = max(hi - lo, 0.0)
    t = np.linspace(0.0, 1.0, T)
    if pattern == "still":
        return np.full(T, rng.uniform(lo, hi)), np.full(T, rng.uniform(lo, hi))
    if pattern in ("left", "right", "up", "down"):
        d = rng.uniform(0.55, 1.0) * span
        a0 = rng.uniform(lo, hi - d)
        along = a0 + d * t if pattern in ("right", "down") else a0 + d - d * t
        across = np.full(T, rng.uniform(lo, hi))
        return (along, across) if pattern in ("left", "right") else (across, along)
    if pattern == "circle":
        r = rng.uniform(0.3, 0.5) * span
        ccx, ccy = rng.uniform(lo + r, hi - r), rng.uniform(lo + r, hi - r)
        revs = rng.uniform(0.85, 1.15) * rng.choice([-1.0, 1.0])
        th = rng.uniform(0, 2 * np.pi) + 2 * np.pi * revs * t
        return ccx + r * np.cos(th), ccy + r * np.sin(th)
    if pattern == "bounce":
        dist = rng.uniform(0.6, 1.4) * span
        d = rng.uniform(0, 2 * np.pi)
        x0, y0 = rng.uniform(0, span, 2)
        return lo + _reflect(x0 + dist * np.cos(d) * t, span), lo + _reflect(y0 + dist * np.sin(d) * t, span)
    raise ValueError(f"unknown motion pattern {pattern!r}")


class _Planner:
    """Draws every video's plan from the seed; one method per task."""

    def __init__(self, config: SynthConfig, images: ImageSet) -> None:
        self.c = config
        self.im = images
        self.C = images.num_classes
        self.S, self.T = config.size, config.num_frames
        prng = _rng(config.seed, 7919)
        self.pools: dict[str, list[np.ndarray]] = {"train": [], "val": []}
        for cls in range(self.C):  # disjoint source images for train and val videos
            idx = prng.permutation(images.indices_of(cls))
            n_val = max(1, round(len(idx) * 0.2)) if len(idx) > 1 else 0
            self.pools["val"].append(idx[:n_val] if n_val else idx)
            self.pools["train"].append(idx[n_val:])

    # -- shared pieces ---------------------------------------------------------------------------
    def _task_rng(self, task: str) -> np.random.Generator:
        return _rng(self.c.seed, list(TASKS).index(task), 1 << 20)

    def _video_rng(self, task: str, i: int) -> np.random.Generator:
        return _rng(self.c.seed, list(TASKS).index(task), i)

    def _plan(
        self,
        task: str,
        i: int,
        split: str,
        rng: np.random.Generator,
        objects: list[ObjectTrack],
        target: dict[str, Any],
    ) -> VideoPlan:
        bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        gain = rng.uniform(0.8, 1.15) * (1.0 + rng.normal(0.0, 0.03, self.T))
        return VideoPlan(
            task,
            f"{task}_{i:05d}",
            split,
            self.S,
            self.c.fps,
            self.T,
            bg,
            int(rng.integers(2**31)),
            np.clip(gain, 0.6, 1.3),
            objects,
            target,
        )

    def _sprite(self, rng: np.random.Generator, split: str, cls: int) -> tuple[np.ndarray, int]:
        idx = int(rng.choice(self.pools[split][cls]))
        return self.im.images[idx], idx

    def _object(
        self,
        rng: np.random.Generator,
        split: str,
        cls: int,
        size: np.ndarray | float,
        pattern: str,
        angle: np.ndarray | None = None,
    ) -> ObjectTrack:
        img, idx = self._sprite(rng, split, cls)
        sizes = np.broadcast_to(np.asarray(size, np.float64), (self.T,)).copy()
        cx, cy = _path(rng, pattern, self.T, self.S, float(sizes.max()) / 2)
        ang = np.zeros(self.T) if angle is None else angle
        return ObjectTrack(img, cls, idx, _color(rng), cx, cy, sizes, ang)

    def _balanced(self, rng: np.random.Generator, n: int, values: Sequence[int]) -> list[int]:
        k = len(values)
        order = (np.arange(n) + int(rng.integers(k))) % k
        return [values[j] for j in rng.permutation(order)]

    def _assign(self, task: str, values: Sequence[int]) -> list[tuple[int, str, int]]:
        """(video index, split, balanced value) for every video of a task; train first."""
        rng = self._task_rng(task)
        n_train, n_val = _split_sizes(self.c.videos_per_task, self.c.val_fraction)
        out = [(i, "train", v) for i, v in enumerate(self._balanced(rng, n_train, values))]
        out += [(n_train + i, "val", v) for i, v in enumerate(self._balanced(rng, n_val, values))]
        return out

    # -- tasks -----------------------------------------------------------------------------------
    def motion(self) -> list[VideoPlan]:
        plans = []
        for i, split, label in self._assign("motion", range(len(MOTION_LABELS))):
            rng = self._video_rng("motion", i)
            size = rng.uniform(0.36, 0.44) * self.S
            ob = self._object(rng, split, int(rng.integers(self.C)), size, MOTION_LABELS[label])
            plans.append(self._plan("motion", i, split, rng, [ob], {"label": label}))
        return plans

    def object(self) -> list[VideoPlan]:
        plans = []
        for i, split, cls in self._assign("object", range(self.C)):
            rng = self._video_rng("object", i)
            size = rng.uniform(0.42, 0.55) * self.S
            pattern = ("still", "bounce", "circle")[int(rng.integers(3))]
            ob = self._object(rng, split, cls, size, pattern)
            plans.append(self._plan("object", i, split, rng, [ob], {"label": cls}))
        return plans

    def _scattered(
        self, rng: np.random.Generator, split: str, classes: Sequence[int], lo: float, hi: float
    ) -> list[ObjectTrack]:
        """Objects whose visible pixels never overlap, drifting slowly around separated centres.

        Placement uses each image's content box (not its 28x28 frame), so thin digits pack closely.
        """
        S, T = self.S, self.T
        amp = 0.04 * S
        gap = 2 * amp + 3
        sprites = [self._sprite(rng, split, int(c)) for c in classes]
        boxes = [_content_box(img) for img, _ in sprites]
        sizes = rng.uniform(lo, hi, len(classes)) * S
        placed: list[tuple[np.ndarray, np.ndarray]] = []  # (content centre, content half-extent)
        for _ in range(300):
            placed = []
            for (x0, y0, x1, y1), sz in zip(boxes, sizes, strict=True):
                half = np.array([x1 - x0, y1 - y0]) * sz / 56.0
                m = half + amp + 1
                for _ in range(40):
                    c = rng.uniform(m, S - m)
                    if all((np.abs(c - o) >= half + oh + gap).any() for o, oh in placed):
                        placed.append((c, half))
                        break
                else:
                    break
            if len(placed) == len(sizes):
                break
            sizes = sizes * 0.97
        else:  # pragma: no cover - the shrinking always leaves room for 5 objects
            raise RuntimeError("could not place the objects without overlap")
        t = np.linspace(-1.0, 1.0, T)
        obs = []
        for cls, (img, idx), (x0, y0, x1, y1), (c, _), sz in zip(
            classes, sprites, boxes, placed, sizes, strict=True
        ):
            off = np.array([(x0 + x1) / 2 - 14.0, (y0 + y1) / 2 - 14.0]) * sz / 28.0
            d, a = rng.uniform(0, 2 * np.pi), amp * rng.uniform(0.4, 1.0)
            cx = c[0] - off[0] + a * np.cos(d) * t
            cy = c[1] - off[1] + a * np.sin(d) * t
            obs.append(ObjectTrack(img, int(cls), idx, _color(rng), cx, cy, np.full(T, sz), np.zeros(T)))
        return obs

    def tags(self) -> list[VideoPlan]:
        plans = []
        for i, split, k in self._assign("tags", range(1, MAX_OBJECTS_TAGS + 1)):
            rng = self._video_rng("tags", i)
            classes = rng.choice(self.C, size=min(k, self.C), replace=False)
            obs = self._scattered(rng, split, classes, 0.36, 0.46)
            plans.append(self._plan("tags", i, split, rng, obs, {"labels": sorted(int(c) for c in classes)}))
        return plans

    def count(self) -> list[VideoPlan]:
        plans = []
        for i, split, k in self._assign("count", range(1, MAX_COUNT + 1)):
            rng = self._video_rng("count", i)
            obs = self._scattered(rng, split, rng.integers(self.C, size=k), 0.30, 0.38)
            plans.append(self._plan("count", i, split, rng, obs, {"values": [float(len(obs))]}))
        return plans

    def _timeline(self, rng: np.random.Generator) -> list[tuple[int, int]]:
        """1-2 action segments [a, b) in frames, each >= ~0.75 s, separated by >= ~0.75 s of stillness."""
        T = self.T
        m = max(2, round(0.75 * self.c.fps))
        k = 2 if 3 * m + 2 <= T and rng.uniform() < 0.6 else 1
        mins = [0, m, m, m, 0] if k == 2 else [0, m, 0]
        m_eff = min(m, T // (2 * k))  # very short clips: shrink the minimum lengths
        mins = [min(v, m_eff) for v in mins]
        extra = T - sum(mins)
        cuts = np.sort(rng.integers(0, extra + 1, len(mins) - 1))
        lengths = np.diff(np.concatenate([[0], cuts, [extra]])) + np.asarray(mins)
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        return [(int(bounds[j]), int(bounds[j + 1])) for j in range(1, len(lengths), 2)]

    def segments(self) -> list[VideoPlan]:
        plans = []
        visible = [c for c in range(self.C) if c not in self.im.rotation_invariant] or list(range(self.C))
        n_train, n_val = _split_sizes(self.c.videos_per_task, self.c.val_fraction)
        for i in range(n_train + n_val):
            split = "train" if i < n_train else "val"
            rng = self._video_rng("segments", i)
            S, T, fps = self.S, self.T, self.c.fps
            size = rng.uniform(0.36, 0.46) * S
            cls = visible[int(rng.integers(len(visible)))]
            img, idx = self._sprite(rng, split, cls)
            lo, span = size / 2 + 1, S - size - 2
            pos = rng.uniform(0, span, 2)
            ang = rng.uniform(-20, 20)
            cx, cy, angle = np.empty(T), np.empty(T), np.empty(T)
            state = np.full(T, -1)
            segs = []
            for a, b in self._timeline(rng):
                label = int(rng.integers(len(SEGMENT_LABELS)))
                state[a:b] = label
                segs.append([a / fps, b / fps, SEGMENT_LABELS[label]])
            step = np.zeros(2)
            omega = 0.0
            for t in range(T):
                if state[t] >= 0 and (t == 0 or state[t - 1] != state[t]):  # a new segment: new speed
                    d = rng.uniform(0, 2 * np.pi)
                    step = rng.uniform(0.35, 0.55) * S / fps * np.array([np.cos(d), np.sin(d)])
                    omega = rng.uniform(200, 320) / fps * rng.choice([-1.0, 1.0])
                if t > 0 and state[t] == 0:
                    pos = pos + step
                elif t > 0 and state[t] == 1:
                    ang += omega
                cx[t], cy[t] = lo + _reflect(np.asarray(pos), span)
                angle[t] = ang
            ob = ObjectTrack(img, cls, idx, _color(rng), cx, cy, np.full(T, size), angle)
            plans.append(self._plan("segments", i, split, rng, [ob], {"segments": segs}))
        return plans

    def box(self) -> list[VideoPlan]:
        plans = []
        n_train, n_val = _split_sizes(self.c.videos_per_task, self.c.val_fraction)
        patterns = ("bounce", "bounce", "circle", "left", "right", "up", "down")
        for i in range(n_train + n_val):
            split = "train" if i < n_train else "val"
            rng = self._video_rng("box", i)
            s0 = rng.uniform(0.28, 0.42) * self.S
            sizes = s0 * np.linspace(1.0, rng.uniform(0.75, 1.3), self.T)
            angle = np.linspace(0.0, rng.uniform(-30, 30), self.T)
            pattern = patterns[int(rng.integers(len(patterns)))]
            ob = self._object(rng, split, int(rng.integers(self.C)), sizes, pattern, angle)
            plans.append(self._plan("box", i, split, rng, [ob], {}))
        return plans

    def identity_count(self) -> int:
        n = self.c.videos_per_task
        return max(1, n // VIDEOS_PER_IDENTITY) if n >= 2 * VIDEOS_PER_IDENTITY else max(1, n // 3)

    def identity(self) -> list[VideoPlan]:
        n_ids = self.identity_count()
        irng = self._task_rng("identity")
        ids: list[tuple[np.ndarray, int, int, tuple[float, float, float]]] = []
        used: set[int] = set()
        for j in range(n_ids):
            cls = j % self.C
            choices = [int(x) for x in self.im.indices_of(cls) if int(x) not in used] or [
                int(x) for x in self.im.indices_of(cls)
            ]
            idx = choices[int(irng.integers(len(choices)))]
            used.add(idx)
            ids.append((self.im.images[idx], cls, idx, _color(irng)))
        plans = []
        patterns = ("still", "bounce", "circle", "left", "right", "up", "down")
        for i in range(self.c.videos_per_task):
            ident, occurrence = i % n_ids, i // n_ids
            role = ("query", "gallery")[occurrence] if occurrence < 2 else "train"
            rng = self._video_rng("identity", i)
            img, cls, idx, col = ids[ident]
            size = rng.uniform(0.40, 0.52) * self.S
            cx, cy = _path(rng, patterns[int(rng.integers(len(patterns)))], self.T, self.S, size / 2)
            color = tuple(float(np.clip(v * rng.uniform(0.9, 1.05), 0, 255)) for v in col)
            ob = ObjectTrack(img, cls, idx, color, cx, cy, np.full(self.T, size), np.zeros(self.T))  # type: ignore[arg-type]
            split = "train" if role == "train" else "val"
            plans.append(self._plan("identity", i, split, rng, [ob], {"label": ident, "role": role}))
        return plans


def plan_dataset(config: SynthConfig, images: ImageSet) -> dict[str, list[VideoPlan]]:
    """Every video's plan, per task (pure: the same config and images give the same plans)."""
    config.validate()
    planner = _Planner(config, images)
    return {task: getattr(planner, task)() for task in TASKS if task in config.tasks}


# --------------------------------------------------------------------------------------------------
# Rendering jobs and annotation files


def _render_job(job: tuple[VideoPlan, str, int]) -> tuple[str, str, list[list[float]] | None, int]:
    plan, path, crf = job
    frames, boxes = render_frames(plan)
    nbytes = encode_mp4(frames, path, plan.fps, crf)
    box = boxes[0].tolist() if plan.task == "box" else None
    return plan.task, plan.video_id, box, nbytes


def task_labels(task: str, images: ImageSet) -> tuple[str, ...]:
    """Label names of a task (empty for regress, track and embed)."""
    if task == "motion":
        return MOTION_LABELS
    if task in ("object", "tags"):
        return tuple(images.class_names)
    if task == "segments":
        return SEGMENT_LABELS
    return ()


def _records(
    plans: list[VideoPlan], task_dir: Path, boxes: dict[str, list[list[float]]]
) -> dict[str, list[Any]]:
    """Annotation records per file stem (train, val, and identity's val_query / val_gallery)."""
    out: dict[str, list[Any]] = {"train": [], "val": []}
    for p in plans:
        path = task_dir / "videos" / f"{p.video_id}.mp4"
        rec: Any
        if p.task in ("motion", "object", "identity"):
            rec = LabelRecord(path, int(p.target["label"]))
        elif p.task == "tags":
            rec = TagRecord(path, tuple(p.target["labels"]))
        elif p.task == "count":
            rec = RegressRecord(path, tuple(p.target["values"]))
        elif p.task == "segments":
            segs = tuple(
                GtSegment(s, e, lab, SEGMENT_LABELS.index(lab)) for s, e, lab in p.target["segments"]
            )
            rec = LocalizeRecord(p.video_id, path, p.duration, float(p.fps), segs)
        else:  # box
            fb = tuple(FrameBox(round(t / p.fps, 6), *b) for t, b in enumerate(boxes[p.video_id]))
            rec = TrackRecord(p.video_id, path, p.size, p.size, float(p.fps), fb)
        out[p.split].append(rec)
        if p.task == "identity" and p.split == "val":
            out.setdefault(f"val_{p.target['role']}", []).append(rec)
    return out


def _check_out(out: Path, force: bool) -> None:
    """Refuse a file, or a non-empty directory that this generator did not write (unless ``force``)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        ours = False
        with contextlib.suppress(OSError, ValueError, AttributeError):
            ours = json.loads((out / "manifest.json").read_text()).get("generator") == GENERATOR
        if not ours:
            raise FileExistsError(
                f"{out} is not empty and holds no vmtl synthetic dataset; choose another --out or pass --force"
            )


def _prepare(out: Path, tasks: Sequence[str]) -> None:
    (out / "manifest.json").unlink(missing_ok=True)  # written last: its presence means complete
    for task in TASKS:  # every task directory, so a regenerated subset leaves nothing stale behind
        if (out / task).is_dir():
            shutil.rmtree(out / task)
    for task in tasks:
        (out / task / "videos").mkdir(parents=True)


def generate(
    out_dir: str | os.PathLike[str],
    config: SynthConfig | None = None,
    workers: int = 2,
    progress: bool = True,
    force: bool = False,
    images: ImageSet | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Generate the datasets of ``config.tasks`` under ``out_dir`` and write ``manifest.json``.

    Regenerates in place over a previous output of this generator (its task directories are replaced);
    refuses any other non-empty directory unless ``force``. ``workers`` > 1 renders in a process pool.
    """
    config = config or SynthConfig()
    config.validate()
    t0 = time.perf_counter()
    out = Path(out_dir)
    _check_out(out, force)
    images = images if images is not None else load_images(config.source)
    t_load = time.perf_counter() - t0
    plans = plan_dataset(config, images)
    t_plan = time.perf_counter() - t0 - t_load
    _prepare(out, list(plans))
    jobs = [
        (p, str(out / task / "videos" / f"{p.video_id}.mp4"), config.crf)
        for task in plans
        for p in plans[task]
    ]
    boxes: dict[str, list[list[float]]] = {}
    total_bytes = 0
    workers = max(1, min(int(workers), len(jobs)))

    bar = tqdm(
        total=len(jobs), desc="vmtl data synth", unit="video", disable=not progress, dynamic_ncols=True
    )
    pool = None
    try:
        if workers == 1:
            results: Any = map(_render_job, jobs)
        else:
            pool = multiprocessing.get_context("spawn").Pool(workers)
            results = pool.imap_unordered(_render_job, jobs, chunksize=4)
        for done, (_task, vid, box, nbytes) in enumerate(results, start=1):
            total_bytes += nbytes
            if box is not None:
                boxes[vid] = box
            bar.update(1)
            if on_progress is not None:
                on_progress(done, len(jobs))
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    t_render = time.perf_counter() - t0 - t_load - t_plan

    manifest = _manifest(config, images, plans)
    for task, task_plans in plans.items():
        kind = TASKS[task]
        suffix = annotation_suffix(kind)
        for stem, records in _records(task_plans, out / task, boxes).items():
            records.sort(key=lambda r: r.path.name)
            write_records(out / task / f"{stem}{suffix}", records)
        labels = task_labels(task, images)
        if labels:
            write_labels(out / task / "labels.txt", labels)
    text = json.dumps(manifest, indent=2) + "\n"
    tmp = out / "manifest.json.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out / "manifest.json")
    seconds = time.perf_counter() - t0
    timings = {"load_images": t_load, "plan": t_plan, "render_encode": t_render, "total": seconds}
    return SynthResult(out, manifest, len(jobs), total_bytes, seconds, workers, timings)


def _manifest(config: SynthConfig, images: ImageSet, plans: dict[str, list[VideoPlan]]) -> dict[str, Any]:
    """The manifest: deterministic (no times, no absolute paths); file paths relative to the output dir."""
    cfg = asdict(config)
    cfg["tasks"] = list(config.tasks)
    tasks: dict[str, Any] = {}
    for task, task_plans in plans.items():
        kind = TASKS[task]
        suffix = annotation_suffix(kind)
        counts = {s: sum(p.split == s for p in task_plans) for s in ("train", "val")}
        files = {s: f"{task}/{s}{suffix}" for s in ("train", "val")}
        labels = list(task_labels(task, images))
        info: dict[str, Any] = {
            "kind": kind,
            "description": TASK_DESCRIPTIONS[task],
            "dir": task,
            "videos": f"{task}/videos",
            "counts": counts,
            "annotations": files,
            "labels": labels,
            "labels_file": f"{task}/labels.txt" if labels else None,
            "num_classes": len(labels),
        }
        if task == "identity":
            n_ids = len({p.target["label"] for p in task_plans})
            info["num_classes"] = n_ids
            info["num_identities"] = n_ids
            info["annotations"]["val_query"] = f"{task}/val_query.txt"
            info["annotations"]["val_gallery"] = f"{task}/val_gallery.txt"
            info["protocol"] = (
                "recall@1: each val_query video against the val_gallery videos (one per identity)"
            )
        elif task == "count":
            info["value_names"] = ["count"]
            info["value_range"] = [1.0, float(MAX_COUNT)]
        elif task == "box":
            info["box_format"] = (
                "[t_seconds, x1, y1, x2, y2] in source pixels, x2/y2 exclusive, one per frame"
            )
        elif task == "segments":
            info["background"] = "still"
        tasks[task] = info
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "seed": config.seed,
        "config": cfg,
        "image_source": {
            "name": images.name,
            "origin": images.origin,
            "num_images": len(images.images),
            "class_names": list(images.class_names),
            "sha256": images.digest(),
        },
        "video": {
            "container": "mp4",
            "codec": "h264",
            "pix_fmt": "yuv420p",
            "width": config.size,
            "height": config.size,
            "fps": config.fps,
            "num_frames": config.num_frames,
            "duration_second": config.num_frames / config.fps,
        },
        "tasks": tasks,
    }

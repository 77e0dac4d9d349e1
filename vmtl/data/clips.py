"""Decoded clips and training targets for one task's split (numpy; torch-free).

Decoding is the slow part of training on a small machine, so a split is decoded once with the graph's
preprocessing and cached as an `.npz` beside the data (keyed by the preprocessing, the number of
temporal tokens and the annotation file's content). Targets are built per kind from the annotation
records and the clip geometry (timestamps and crop) that `vmtl.video.read_clip` reports (each kind's row
of ``KIND_TARGETS``):

| kind | target |
| --- | --- |
| classify, embed | int64 class / identity index |
| tag | float32 multi-hot [C] |
| localize | int64 [T'] label per temporal token (0 = background, else 1 + label index) |
| regress | float32 [K] values as annotated (the loss normalises by the task's scale/offset) |
| track | float32 [T', 4] box at each token's centre time, normalised to the crop (x1, y1, x2, y2) |
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vmtl.data.annotations import annotation_suffix, read_task_annotations
from vmtl.tasks import Preprocess, Segment, TaskSpec, temporal_token_bounds
from vmtl.video import Clip, read_clip

CACHE_VERSION = 1


@dataclass
class ClipSet:
    """Every clip of one task's split, decoded, with its targets."""

    task: str
    frames: np.ndarray  # uint8 [N, T, S, S, 3]
    timestamps: np.ndarray  # float64 [N, T]
    crops: np.ndarray  # float64 [N, 3]: x0, y0, side in source pixels
    windows: np.ndarray  # float64 [N, 2]: start, end seconds
    sizes: np.ndarray  # int64 [N, 2]: source width, height
    targets: np.ndarray  # per kind, see the module docstring
    paths: list[str] = field(default_factory=list)
    truths: list[list[Segment]] = field(default_factory=list)  # localize: ground truth for segment mAP

    def __len__(self) -> int:
        return len(self.frames)

    def clip(self, i: int) -> Clip:
        """Clip i's geometry (for post-processing) with its frames."""
        return Clip(
            frames=self.frames[i],
            timestamps=self.timestamps[i],
            source_size=(int(self.sizes[i, 0]), int(self.sizes[i, 1])),
            crop=(float(self.crops[i, 0]), float(self.crops[i, 1]), float(self.crops[i, 2])),
            start=float(self.windows[i, 0]),
            end=float(self.windows[i, 1]),
        )


def annotation_path(data_root: str | os.PathLike[str], task: TaskSpec, split: str) -> Path:
    """`DATA_ROOT/<task.data or task.name>/<split>.txt|json`."""
    return Path(data_root) / (task.data or task.name) / f"{split}{annotation_suffix(task.kind)}"


def load_clipset(
    data_root: str | os.PathLike[str],
    task: TaskSpec,
    split: str,
    preprocess: Preprocess,
    num_tokens: int,
    *,
    cache: bool = True,
    workers: int = 2,
    progress: bool = True,
) -> ClipSet:
    """Decode (or load from cache) one task's split and build its targets."""
    ann = annotation_path(data_root, task, split)
    if not ann.is_file():
        raise FileNotFoundError(
            f"task {task.name!r}: no {split} annotations at {ann} "
            f"(generate the data with `vmtl data synth --out {data_root}` or fix `data:` in the config)"
        )
    key = hashlib.sha256(
        f"{CACHE_VERSION}|{preprocess}|{num_tokens}|{task}".encode() + ann.read_bytes()
    ).hexdigest()[:16]
    cache_file = ann.parent / ".cache" / f"{split}-{key}.npz"
    if cache and cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return _from_arrays(task, arrays)

    records = read_task_annotations(task, ann)
    targets = KIND_TARGETS[task.kind]
    if not records:
        raise ValueError(f"task {task.name!r}: {ann} has no records")

    def decode(rec: object) -> Clip:
        return read_clip(rec.path, preprocess.num_frames, preprocess.size, sampling=preprocess.sampling)  # type: ignore[attr-defined]

    with ThreadPoolExecutor(max(1, workers)) as pool:
        clips = list(
            tqdm(
                pool.map(decode, records),
                total=len(records),
                desc=f"decode {task.name}/{split}",
                unit="clip",
                disable=not progress,
                leave=False,
            )
        )
    arrays = {
        "frames": np.stack([c.frames for c in clips]),
        "timestamps": np.stack([c.timestamps for c in clips]).astype(np.float64),
        "crops": np.array([c.crop for c in clips], dtype=np.float64),
        "windows": np.array([(c.start, c.end) for c in clips], dtype=np.float64),
        "sizes": np.array([c.source_size for c in clips], dtype=np.int64),
        "targets": np.stack(
            [targets.target(task, r, c, num_tokens) for r, c in zip(records, clips, strict=True)]
        ),
        "paths": np.array([str(r.path) for r in records]),
        **targets.truth_arrays(records),
    }
    if cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp.npz")  # ranks may decode concurrently
        np.savez(tmp, **arrays)
        os.replace(tmp, cache_file)
    return _from_arrays(task, arrays)


def _from_arrays(task: TaskSpec, a: dict[str, np.ndarray]) -> ClipSet:
    return ClipSet(
        task=task.name,
        frames=a["frames"],
        timestamps=a["timestamps"],
        crops=a["crops"],
        windows=a["windows"],
        sizes=a["sizes"],
        targets=a["targets"],
        paths=[str(p) for p in a["paths"]],
        truths=KIND_TARGETS[task.kind].truths(a, len(a["frames"])),
    )


class KindTargets:
    """How one kind's training targets (and evaluation ground truth) come from its annotation records (a
    subclass per kind; ``KIND_TARGETS`` holds one each)."""

    def target(self, task: TaskSpec, rec: Any, clip: Clip, num_tokens: int) -> np.ndarray:
        """One clip's target (see the module docstring)."""
        raise NotImplementedError

    def truth_arrays(self, records: Sequence[Any]) -> dict[str, np.ndarray]:
        """Ground truth the metrics need beyond the targets, as arrays for the cache (none by default)."""
        return {}

    def truths(self, arrays: Mapping[str, np.ndarray], n: int) -> list[list[Segment]]:
        """``ClipSet.truths`` from those arrays (empty by default)."""
        return []


class _Index(KindTargets):
    def target(self, task: TaskSpec, rec: Any, clip: Clip, num_tokens: int) -> np.ndarray:
        return np.array(rec.label, dtype=np.int64)


class _MultiHot(KindTargets):
    def target(self, task: TaskSpec, rec: Any, clip: Clip, num_tokens: int) -> np.ndarray:
        hot = np.zeros(task.num_classes, dtype=np.float32)
        hot[list(rec.labels)] = 1.0
        return hot


class _Values(KindTargets):
    def target(self, task: TaskSpec, rec: Any, clip: Clip, num_tokens: int) -> np.ndarray:
        return np.asarray(rec.values, dtype=np.float32)


def _token_centres(clip: Clip, num_tokens: int) -> np.ndarray:
    return temporal_token_bounds(clip.timestamps, num_tokens, clip.start, clip.end).mean(axis=1)


class _TokenLabels(KindTargets):
    def target(self, task: TaskSpec, rec: Any, clip: Clip, num_tokens: int) -> np.ndarray:
        centres = _token_centres(clip, num_tokens)
        out = np.zeros(num_tokens, dtype=np.int64)
        for g in rec.segments:
            out[(centres >= g.start) & (centres < g.end)] = task.labels.index(g.label) + 1
        return out

    def truth_arrays(self, records: Sequence[Any]) -> dict[str, np.ndarray]:
        """The segments flattened: their video index, bounds and label."""
        rows = [(i, g.start, g.end, g.label) for i, r in enumerate(records) for g in r.segments]
        return {
            "seg_video": np.array([r[0] for r in rows], dtype=np.int64),
            "seg_bounds": np.array([(r[1], r[2]) for r in rows], dtype=np.float64).reshape(-1, 2),
            "seg_label": np.array([r[3] for r in rows], dtype=str),
        }

    def truths(self, arrays: Mapping[str, np.ndarray], n: int) -> list[list[Segment]]:
        truths: list[list[Segment]] = [[] for _ in range(n)]
        for v, (s, e), lab in zip(
            arrays["seg_video"], arrays["seg_bounds"], arrays["seg_label"], strict=True
        ):
            truths[int(v)].append(Segment(str(lab), float(s), float(e), 1.0))
        return truths


class _TokenBoxes(KindTargets):
    def target(self, task: TaskSpec, rec: Any, clip: Clip, num_tokens: int) -> np.ndarray:
        """The annotated box nearest each token's centre time, normalised to the crop."""
        centres = _token_centres(clip, num_tokens)
        boxes = rec.array()
        nearest = np.abs(boxes[:, :1] - centres[None, :]).argmin(axis=0)
        x0, y0, side = clip.crop
        norm = (boxes[nearest, 1:] - np.array([x0, y0, x0, y0])) / side
        return np.clip(norm, 0.0, 1.0).astype(np.float32)


KIND_TARGETS: Mapping[str, KindTargets] = MappingProxyType(
    {
        "classify": _Index(),
        "tag": _MultiHot(),
        "localize": _TokenLabels(),
        "embed": _Index(),
        "regress": _Values(),
        "track": _TokenBoxes(),
    }
)

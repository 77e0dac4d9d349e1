"""Object mosaics: endless warm-up clips in which every temporal token shows a different object.

A trunk trained from scratch learns what objects look like slowly: a clip of the `object` dataset shows
one object for all its frames and carries one label, and a few hundred such videos are memorised long
before the trunk generalises. A mosaic clip is rendered on the fly from the same image source, its
train-split images only (the val videos' images stay unseen), with the same renderer as the synthetic
videos: each temporal token (``frames // tokens`` frames) shows one random image at a random place, size
and colour over a random background, so one clip carries ``tokens`` labels and no clip repeats.

Where an object may appear is a curriculum (``spread``): a from-scratch ViT learns shapes at one place
quickly but has to learn them again at every other place, so objects start at the frame's centre and
spread out to anywhere in the frame over the warm-up. On the demo trunk (1000 steps of mosaics only,
`benchmarks/bench_mosaic.py`): per-token top-1 0.36 with the curriculum, 0.19 without; on the held-out
`object` videos, read zero-shot by the same readout, 0.41 and 0.23 (chance 0.10).

Stage 0 of the trainer mixes these clips into the trunk warm-up (``train.mosaic`` in the config); the
labels are the image source's classes, i.e. those of a classify task such as the demo's ``object``.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import numpy as np

from vmtl.data.images import ImageSet, load_images
from vmtl.data.render import BACKGROUNDS, ObjectTrack, VideoPlan, render_frames
from vmtl.data.synth import SynthConfig, _color, _Planner

SIZE_RANGE = (0.42, 0.55)  # object side as a share of the frame, as in the `object` task's videos
MAX_DRIFT = 1 / 32  # per-frame drift as a share of the frame (objects in the videos move, too)


class MosaicError(ValueError):
    """Mosaic clips cannot be made from this data root (not synthetic, or other classes)."""


class ObjectMosaic:
    """Renders batches of mosaic clips: uint8 [N, frames, size, size, 3] and int64 labels [N, tokens]."""

    def __init__(self, images: ImageSet, pool: np.ndarray, *, frames: int, size: int, tokens: int) -> None:
        if tokens < 1 or frames % tokens:
            raise ValueError(f"frames ({frames}) must be a positive multiple of tokens ({tokens})")
        if not len(pool):
            raise MosaicError("no train images to make mosaic clips from")
        self.images, self.pool = images, np.asarray(pool)
        self.frames, self.size, self.tokens = frames, size, tokens
        self.per_token = frames // tokens

    @classmethod
    def from_dataset(
        cls,
        data_root: str | os.PathLike[str],
        *,
        frames: int,
        size: int,
        tokens: int,
        labels: tuple[str, ...],
    ) -> ObjectMosaic:
        """Mosaics from the image source and train split of a `vmtl data synth` output directory.

        `labels` are the task's class names; they must be the image source's, in the same order.
        """
        manifest_path = Path(data_root) / "manifest.json"
        if not manifest_path.is_file():
            raise MosaicError(
                f"mosaic clips need the image source of data made by `vmtl data synth`, but {manifest_path} "
                "does not exist; drop train.mosaic from the config for other data"
            )
        manifest = json.loads(manifest_path.read_text())
        source = manifest["image_source"]
        if tuple(source["class_names"]) != tuple(labels):
            raise MosaicError(
                f"mosaic task labels {list(labels)[:4]}... are not the classes of {manifest_path}'s image "
                f"source {source['name']!r} ({source['class_names'][:4]}...); point train.mosaic.task at "
                "the task that classifies the source's images (the demo's `object`)"
            )
        images = load_images(source["name"])
        if source.get("sha256") not in (None, images.digest()):
            raise MosaicError(
                f"the image source {source['name']!r} installed here ({images.origin}) is not the one "
                f"{manifest_path} was generated from (sha256 differs); install the same version or "
                "regenerate the data"
            )
        known = {f.name for f in fields(SynthConfig)}
        raw = {k: v for k, v in manifest["config"].items() if k in known}
        raw["tasks"] = tuple(raw.get("tasks", ()))
        planner = _Planner(SynthConfig(**raw), images)  # the generator's own train/val image split
        return cls(images, np.concatenate(planner.pools["train"]), frames=frames, size=size, tokens=tokens)

    @property
    def num_classes(self) -> int:
        return self.images.num_classes

    def _token(self, rng: np.random.Generator, spread: float) -> tuple[np.ndarray, int]:
        idx = int(rng.choice(self.pool))
        S, n = self.size, self.per_token
        side = rng.uniform(*SIZE_RANGE) * S
        lo, hi = side / 2 + 1, S - side / 2 - 1
        drift = rng.uniform(-MAX_DRIFT, MAX_DRIFT, 2) * S * np.arange(n)[:, None] * spread
        reach = spread * (hi - lo) / 2
        start = rng.uniform(S / 2 - reach, S / 2 + reach, 2)
        cx, cy = (np.clip(start[None, :] + drift, lo, hi)).T
        cls = int(self.images.labels[idx])
        track = ObjectTrack(
            self.images.images[idx], cls, idx, _color(rng), cx, cy, np.full(n, side), np.zeros(n)
        )
        gain = rng.uniform(0.8, 1.15) * (1.0 + rng.normal(0.0, 0.03, n))
        plan = VideoPlan(
            "mosaic",
            "",
            "train",
            S,
            8,
            n,
            BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
            int(rng.integers(2**31)),
            gain,
            [track],
        )
        frames, _ = render_frames(plan)
        return frames, cls

    def batch(self, rng: np.random.Generator, n: int, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """`n` mosaic clips and their per-token class labels; objects lie within `spread` (0: the centre,
        1: anywhere in the frame) of the centre, and drift as far as `spread` allows."""
        if not 0.0 <= spread <= 1.0:
            raise ValueError(f"spread must be in [0, 1], got {spread}")
        video = np.empty((n, self.frames, self.size, self.size, 3), np.uint8)
        labels = np.empty((n, self.tokens), np.int64)
        for i in range(n):
            for k in range(self.tokens):
                frames, labels[i, k] = self._token(rng, spread)
                video[i, k * self.per_token : (k + 1) * self.per_token] = frames
        return video, labels

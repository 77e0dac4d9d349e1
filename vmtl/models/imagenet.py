"""The ImageNet-1k class names shipped with vmtl (data/imagenet_classes.txt; its provenance beside it)."""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["IMAGENET_CLASSES_FILE", "imagenet_classes"]

IMAGENET_CLASSES_FILE = "models/data/imagenet_classes.txt"  # inside the vmtl package


@cache
def _names() -> tuple[str, ...]:
    text = resources.files("vmtl").joinpath(IMAGENET_CLASSES_FILE).read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise RuntimeError(f"vmtl/{IMAGENET_CLASSES_FILE} has {len(names)} names, expected 1000")
    return names


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names; index i is the classifier's logit i (e.g. 0 'tench', 779 'school bus')."""
    return list(_names())

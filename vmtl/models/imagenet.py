"""The ImageNet-1k class names shipped with vmtl (data/imagenet_classes.txt; its provenance beside it)."""

from __future__ import annotations

from functools import cache

from ..tasks import IMAGENET_CLASSES_RESOURCE, imagenet_labels

__all__ = ["IMAGENET_CLASSES_FILE", "imagenet_classes"]

IMAGENET_CLASSES_FILE = IMAGENET_CLASSES_RESOURCE  # inside the vmtl package


@cache
def _names() -> tuple[str, ...]:
    names = imagenet_labels()
    if len(names) != 1000:
        raise RuntimeError(f"vmtl/{IMAGENET_CLASSES_FILE} has {len(names)} names, expected 1000")
    return names


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names; index i is the classifier's logit i (e.g. 0 'tench', 779 'school bus')."""
    return list(_names())

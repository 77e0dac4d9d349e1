"""The cpu flavour's fused heads (one python step runs the asked heads) against separate per-head models,
both served by a real Triton on the same hand-made ONNX graphs (no torch)."""

from __future__ import annotations

import itertools
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from vmtl.client import VmtlClient
from vmtl.contract import (
    BACKBONE,
    CLIP_ENSEMBLE,
    FEAT_STACK,
    HEADS_MODEL,
    PARAM_FEAT_STACK,
    PARAM_TASKS,
    Manifest,
    RepositoryError,
    feat_output,
    head_model,
    load_configs,
)
from vmtl.export.repository import write_repository
from vmtl.runtime import LocalModel
from vmtl.server.hosting import METRICS_FLUSH_S
from vmtl.tasks import TaskGraph

pytestmark = pytest.mark.triton

grpcclient = pytest.importorskip("tritonclient.grpc")
from test_repository import DIM, FRAMES, SIZE, make_toy_models, ort_reference, toy_graph  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402


@dataclass
class Pair:
    graph: TaskGraph
    fused: object  # TritonServer
    separate: object
    trunk: Path
    heads: dict[str, Path]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, start_triton) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("fused")
    graph = toy_graph()
    trunk, heads = make_toy_models(root / "onnx", graph)
    fused = write_repository(root / "fused", graph, trunk, heads)  # the cpu default
    separate = write_repository(root / "separate", graph, trunk, heads, heads="separate")
    with (
        start_triton(fused, root / "fused.log") as f_server,
        start_triton(separate, root / "separate.log") as s_server,
    ):
        yield Pair(graph, f_server, s_server, trunk, heads)


def _infer(url: str, video: np.ndarray, outputs: list[str], tasks: str | None) -> dict[str, np.ndarray]:
    client = grpcclient.InferenceServerClient(url)
    try:
        inp = grpcclient.InferInput("video", list(video.shape), "UINT8")
        inp.set_data_from_numpy(video)
        result = client.infer(
            CLIP_ENSEMBLE,
            [inp],
            outputs=[grpcclient.InferRequestedOutput(n) for n in outputs],
            parameters={PARAM_TASKS: tasks} if tasks is not None else None,
        )
        return {n: result.as_numpy(n) for n in outputs if result.as_numpy(n) is not None}
    finally:
        client.close()


def _head_counts(server: object) -> dict[str, float]:
    """vmtl_head_executions_total per task, from Triton's Prometheus endpoint."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read()  # type: ignore[attr-defined]
    counts = {}
    for line in text.decode().splitlines():
        m = re.match(r"vmtl_head_executions_total\{(.*)\} ([0-9.e+]+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            counts[labels["task"]] = float(m.group(2))
    return counts


def _settled_counts(server: object) -> dict[str, float]:
    """The counters once the heads model has published what earlier requests ran (two reads two publishing
    intervals apart agree)."""
    last = _head_counts(server)
    for _ in range(20):
        time.sleep(2 * METRICS_FLUSH_S)
        now = _head_counts(server)
        if now == last:
            return now
        last = now
    return last


def _deltas(server: object, before: dict[str, float], want: dict[str, float]) -> dict[str, float]:
    """The counters' growth since ``before``, once it equals ``want`` or after 5 s (the heads model
    publishes its counters every METRICS_FLUSH_S seconds, so the endpoint lags by up to that)."""
    deadline = time.monotonic() + 5.0
    while True:
        now = _head_counts(server)
        got = {n: now[n] - before[n] for n in want}
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def _video(seed: int, batch: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, FRAMES, SIZE, SIZE, 3), dtype=np.uint8)


def test_the_repository_layouts(pair: Pair, tmp_path: Path) -> None:
    fused_repo = Path(pair.fused.repo)  # type: ignore[attr-defined]
    configs = load_configs(fused_repo)
    assert HEADS_MODEL in configs and not any(head_model(n) in configs for n in pair.graph.names)
    steps = [s.model_name for s in configs[CLIP_ENSEMBLE].ensemble_scheduling.step]
    assert steps == ["backbone", HEADS_MODEL]
    manifest = Manifest.read(fused_repo)
    assert manifest.models.layout == "fused" and manifest.models.head("c") == HEADS_MODEL
    local = LocalModel.load(fused_repo)  # the local engine finds the heads inside the fused model
    video = _video(1, 2)
    got = local.pipeline().run(video)
    want = ort_reference(pair.trunk, pair.heads, pair.graph, video)
    for n in pair.graph.names:
        np.testing.assert_allclose(got[n], want[n], atol=1e-5)
    separate = load_configs(Path(pair.separate.repo))  # type: ignore[attr-defined]
    assert HEADS_MODEL not in separate and head_model("a") in separate
    with pytest.raises(RepositoryError, match="native flavour"):
        write_repository(tmp_path / "x", pair.graph, pair.trunk, pair.heads, flavour="native", heads="fused")


def test_fused_equals_separate_for_every_task_subset(pair: Pair) -> None:
    names = pair.graph.names
    video = _video(2)
    for k in range(1, len(names) + 1):
        for subset in itertools.combinations(names, k):
            asked = ",".join(subset)
            got = _infer(pair.fused.grpc_url, video, list(subset), asked)  # type: ignore[attr-defined]
            want = _infer(pair.separate.grpc_url, video, list(subset), None)  # type: ignore[attr-defined]
            assert sorted(got) == sorted(subset), asked
            for n in subset:
                np.testing.assert_allclose(got[n], want[n], atol=1e-5, err_msg=f"{n} of {asked}")


def test_the_backbone_sends_the_heads_one_stacked_tensor(pair: Pair) -> None:
    """The fused layout's backbone answers feat_stack: its tasks' features stacked in the order its config
    names; a batch of clips through it equals the separate layout's one tensor per task."""
    import onnxruntime as ort

    backbone = load_configs(Path(pair.fused.repo))[BACKBONE]  # type: ignore[attr-defined]
    assert backbone.parameters[PARAM_FEAT_STACK].string_value.split(",") == pair.graph.names
    video = _video(7, 3)
    client = grpcclient.InferenceServerClient(pair.fused.grpc_url)  # type: ignore[attr-defined]
    try:
        inp = grpcclient.InferInput("video", list(video.shape), "UINT8")
        inp.set_data_from_numpy(video)
        stacked = client.infer(BACKBONE, [inp]).as_numpy(FEAT_STACK)  # no outputs named: all of them
    finally:
        client.close()
    trunk = ort.InferenceSession(str(pair.trunk), providers=["CPUExecutionProvider"])
    want = trunk.run([feat_output(n) for n in pair.graph.names], {"video": video})
    assert stacked.shape == (3, len(pair.graph.names), FRAMES, DIM)
    for i, n in enumerate(pair.graph.names):
        np.testing.assert_allclose(stacked[:, i], want[i], atol=1e-5, err_msg=n)
    for asked in ("a,b,c", "c", "b"):  # c's auxiliary a reads its slice too
        subset = asked.split(",")
        got = _infer(pair.fused.grpc_url, video, subset, asked)  # type: ignore[attr-defined]
        expected = _infer(pair.separate.grpc_url, video, subset, None)  # type: ignore[attr-defined]
        for n in subset:
            np.testing.assert_allclose(got[n], expected[n], atol=1e-5, err_msg=f"{n} of {asked}")


def test_only_the_asked_heads_and_their_auxiliaries_run(pair: Pair) -> None:
    video = _video(3)
    before = _settled_counts(pair.fused)
    assert set(before) == set(pair.graph.names)
    _infer(pair.fused.grpc_url, video, ["c"], "c")  # type: ignore[attr-defined]  # c needs a's repr
    want = {"a": 1, "b": 0, "c": 1}
    assert _deltas(pair.fused, before, want) == want
    after = _settled_counts(pair.fused)
    assert {n: after[n] - before[n] for n in want} == want  # and nothing more came later
    _infer(pair.fused.grpc_url, video, ["b"], "b")  # type: ignore[attr-defined]
    want = {"a": 0, "b": 1, "c": 0}
    assert _deltas(pair.fused, after, want) == want


def test_a_raw_request_without_the_parameter_gets_every_output(pair: Pair) -> None:
    video = _video(4)
    before = _settled_counts(pair.fused)
    got = _infer(pair.fused.grpc_url, video, pair.graph.names, None)  # type: ignore[attr-defined]
    want = ort_reference(pair.trunk, pair.heads, pair.graph, video)
    assert sorted(got) == sorted(pair.graph.names)
    for n in pair.graph.names:
        np.testing.assert_allclose(got[n], want[n], atol=1e-5)
    want = dict.fromkeys(pair.graph.names, 1)
    assert _deltas(pair.fused, before, want) == want


def test_an_unknown_task_in_the_parameter_is_a_clear_error_and_the_server_serves_on(pair: Pair) -> None:
    video = _video(5)
    with pytest.raises(
        InferenceServerException, match=r"unknown task\(s\) \['nope'\].*the model has: a, b, c"
    ):
        _infer(pair.fused.grpc_url, video, ["a"], "a,nope")  # type: ignore[attr-defined]
    assert sorted(_infer(pair.fused.grpc_url, video, ["a"], "a")) == ["a"]  # type: ignore[attr-defined]


def test_the_client_asks_only_for_its_tasks(pair: Pair) -> None:
    before = _settled_counts(pair.fused)
    with VmtlClient(pair.fused.grpc_url) as client:  # type: ignore[attr-defined]
        result = client.infer_clip(_video(6)[0], tasks=["b"])
    assert set(result) == {"b"}
    want = {"a": 0, "b": 1, "c": 0}
    assert _deltas(pair.fused, before, want) == want


def test_a_killed_server_leaves_no_heads_stub_behind(pair: Pair, tmp_path: Path) -> None:
    """tritonserver SIGKILLed right after a request: every stub ends on its own, the fused heads' too. Its
    counters' publisher used to send the request's counts to the dead server and wait for the answer
    forever, so the stub never ended; it no longer sends once the server is gone, and a watchdog ends the
    stub ORPHAN_GRACE_S after its server should an update be on its way at that instant. The server's own
    cleanup, which kills what is left, comes after the check."""
    import os
    import signal

    from test_server_launcher import _processes_mentioning

    from vmtl.server.launcher import TritonServer

    server = TritonServer(
        pair.fused.repo,  # type: ignore[attr-defined]
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        log_file=tmp_path / "killed.log",
    )
    server.start_ready(90)
    try:
        assert _processes_mentioning(server.shm_prefix)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        inp = grpcclient.InferInput("video", [1, FRAMES, SIZE, SIZE, 3], "UINT8")
        inp.set_data_from_numpy(_video(7))
        for _ in range(5):
            client.infer(CLIP_ENSEMBLE, [inp])
        # Killed within a few ms of the last answer: its counts wait for the next publishing tick. No
        # request is in flight, but the deadline allows for python-backend's 30 s stub timeout anyway.
        os.kill(server.pid, signal.SIGKILL)  # type: ignore[arg-type]
        client.close()
        deadline = time.monotonic() + 45
        while server.returncode is None and time.monotonic() < deadline:  # reaped: stubs get a new parent
            time.sleep(0.05)
        assert server.returncode == -signal.SIGKILL
        while _processes_mentioning(server.shm_prefix) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {pid: _model_of(pid) for pid in _processes_mentioning(server.shm_prefix)}
        assert not left, f"stubs outlived their killed server: {left}"
    finally:
        server.stop()


def _model_of(pid: int) -> str:
    """The model file a python-backend stub runs (from its command line), or '?'."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    return next((a for a in args if a.endswith("model.py")), "?")

"""Adding a task to a live server (issue 16): a server answering tasks A and B under a steady load of 4
client threads gets task C, trained on the frozen trunk (`vmtl train --init-from`), exported heads-only and
loaded with `vmtl reload`; then rolled back. Zero failed requests throughout, the backbone's stub process
and execution count carry on, A's and B's outputs stay bit-identical.

Also the offline pieces: the incremental run trains only C (every other weight bit-identical), refuses a
changed trunk or preprocessing; the heads-only export leaves the backbone's files untouched.

Set ``VMTL_LIVE_RESULTS=FILE`` to write the timings and the load's latency percentiles as JSON.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from vmtl.client import VmtlClient
from vmtl.client.client import UnknownTaskError
from vmtl.contract import BACKBONE, HEADS_MODEL, Manifest, validate_repository
from vmtl.demo.config import quick_spec, video_trunk_only
from vmtl.export.generations import HISTORY_FILE
from vmtl.export.onnx import export_checkpoint
from vmtl.models.checkpoint import CheckpointError
from vmtl.server.launcher import TritonServer
from vmtl.server.reload import precompile_models, reload_repository
from vmtl.training.config import load_config
from vmtl.training.trainer import Trainer

A, B, C = "motion", "object", "tags"  # C reads B's representation through its DLM


def _spec(data: Path, tasks: set[str]) -> dict:
    spec = video_trunk_only(
        quick_spec(
            yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text())
        )
    )
    spec["data_root"] = str(data)
    spec["tasks"] = [t for t in spec["tasks"] if t["name"] in tasks]
    spec["train"] = {**spec["train"], "task_weights": {}}
    return spec


def _train(root: Path, name: str, spec: dict, init_from: Path | None = None) -> Path:
    cfg_path = root / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(spec))
    out = root / name
    Trainer(load_config(cfg_path), out, init_from=init_from, progress=False, log=lambda _m: None).run()
    return out


@dataclass
class Checkpoints:
    root: Path
    data: Path
    base: Path  # A, B
    plus: Path  # A, B + C from base
    seconds_to_train_c: float


@pytest.fixture(scope="module")
def ckpts(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    root = tmp_path_factory.mktemp("live")
    base = _train(root, "base", _spec(tiny_data, {A, B}))
    t0 = time.perf_counter()
    plus = _train(root, "plus", _spec(tiny_data, {A, B, C}), init_from=base)
    return Checkpoints(root, tiny_data, base, plus, time.perf_counter() - t0)


def test_the_incremental_run_trains_only_the_new_task(ckpts: Checkpoints) -> None:
    old = load_file(str(ckpts.base / "model.safetensors"))
    new = load_file(str(ckpts.plus / "model.safetensors"))
    assert all(torch.equal(old[k], new[k]) for k in old)  # every weight of A, B and the trunk
    added = set(new) - set(old)
    assert added and all(f".{C}." in k or k.startswith(f"heads.{C}.") for k in added)
    state = json.loads((ckpts.plus / "trainer_state.json").read_text())
    assert state["increment"]["new"] == [C] and state["increment"]["trained"] == [C]


def test_the_incremental_run_refuses_another_trunk_or_preprocessing(
    ckpts: Checkpoints, tmp_path: Path
) -> None:
    spec = _spec(ckpts.data, {A, B, C})
    spec["preprocess"] = {**spec["preprocess"], "size": 64}
    with pytest.raises(CheckpointError, match="preprocessing changes"):
        _train(tmp_path, "pre", spec, init_from=ckpts.base)
    spec = _spec(ckpts.data, {A, B, C})
    spec["model"] = {**spec["model"], "adapter_bottleneck": 16}
    with pytest.raises(CheckpointError, match=r"model config changes.*adapter_bottleneck"):
        _train(tmp_path, "trunk", spec, init_from=ckpts.base)
    with pytest.raises(CheckpointError, match="missing from the new graph"):
        _train(tmp_path, "fewer", _spec(ckpts.data, {B, C}), init_from=ckpts.base)


def _tree(path: Path) -> dict[str, tuple[float, int]]:
    return {str(p.relative_to(path)): (p.stat().st_mtime, p.stat().st_size) for p in [path, *path.rglob("*")]}


@pytest.mark.parametrize("layout", ["fused", "separate"])
def test_heads_only_export_of_a_new_task_leaves_the_backbone_untouched(
    ckpts: Checkpoints, tmp_path: Path, layout: str
) -> None:
    repo = tmp_path / "repo"
    export_checkpoint(ckpts.base, repo, heads=layout)
    backbone, decode = _tree(repo / BACKBONE), _tree(repo / "video_decode")
    export_checkpoint(ckpts.plus, repo, only_heads=True)
    assert _tree(repo / BACKBONE) == backbone and _tree(repo / "video_decode") == decode
    manifest = Manifest.read(repo)
    assert manifest.graph.names == [A, B, C] and manifest.metadata.extra["tap_tasks"] == [C]
    if layout == "fused":
        assert sorted(p.name for p in (repo / HEADS_MODEL).iterdir() if p.name.isdigit()) == ["1", "2"]
        for task in (A, B):  # unchanged heads: the same file in the new version
            name = f"head_{task}.onnx"
            assert (repo / HEADS_MODEL / "2" / name).read_bytes() == (
                repo / HEADS_MODEL / "1" / name
            ).read_bytes()
    else:
        assert (repo / f"head_{C}" / "1" / "model.onnx").is_file() and not (repo / f"head_{A}" / "2").exists()
    assert (repo / HISTORY_FILE).is_file()
    validate_repository(repo)


# --------------------------------------------------------------------------------------------------
# The live server


@dataclass
class Load:
    """4 client threads sending clips for A and B in a loop; every request's (end time, latency, error)."""

    client: VmtlClient
    clip: np.ndarray
    records: list[tuple[float, float, str | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, n: int = 4) -> None:
        for _ in range(n):
            t = threading.Thread(target=self._loop, daemon=True)
            t.start()
            self.threads.append(t)

    def _loop(self) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            error = None
            try:
                self.client.infer_clip(self.clip, [A, B])
            except Exception as exc:  # every failure counts
                error = f"{type(exc).__name__}: {exc}"
            t1 = time.perf_counter()
            self.records.append((t1, t1 - t0, error))

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def between(self, start: float, end: float) -> list[float]:
        return [lat for t, lat, _ in self.records if start <= t < end]


def _stub_pids(repo: Path, name: str) -> set[int]:
    """Process ids of the python-backend stubs running model ``name`` of ``repo``."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            args
            and args[0].endswith(b"triton_python_backend_stub")
            and any(f"{repo}/{name}/".encode() in a for a in args)
        ):
            pids.add(int(proc.name))
    return pids


def _percentiles(lat: list[float]) -> dict[str, float]:
    if not lat:
        return {"n": 0}
    ms = np.asarray(lat) * 1000
    return {"n": len(lat), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


@pytest.fixture()
def live(ckpts: Checkpoints, tmp_path: Path, start_triton) -> Iterator[tuple[TritonServer, Path]]:
    repo = tmp_path / "repo"
    export_checkpoint(ckpts.base, repo)
    precompile_models(repo)
    with start_triton(
        repo, tmp_path / "triton.log", model_control="explicit", extra_args=["--load-model=*"]
    ) as server:
        yield server, repo


@pytest.mark.triton
@pytest.mark.slow
def test_a_task_is_added_and_rolled_back_on_a_live_server_under_load(
    ckpts: Checkpoints, live: tuple[TritonServer, Path]
) -> None:
    server, repo = live
    clip = np.random.default_rng(7).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    watcher = VmtlClient(server.grpc_url)
    assert watcher.tasks == [A, B]
    before = watcher.infer_clip(clip, [A, B])
    stubs = _stub_pids(repo, BACKBONE)
    assert len(stubs) == 1
    load = Load(VmtlClient(server.grpc_url), clip)
    load.start(4)
    time.sleep(3.0)
    executions = watcher.statistics()[BACKBONE]["executions"]
    assert executions > 0

    # New task trained (the checkpoint exists) -> served.
    t_trained = time.perf_counter()
    export_checkpoint(ckpts.plus, repo, only_heads=True)
    t_exported = time.perf_counter()
    report = reload_repository(repo, server.grpc_url)
    t_served = time.perf_counter()
    assert BACKBONE not in report.loaded and report.tasks == [A, B, C]
    got = watcher.infer_clip(clip, [C])  # the client picks up the new graph by itself
    assert got[C].shape[-1] == 10 and watcher.tasks == [A, B, C]
    after = watcher.infer_clip(clip, [A, B])
    for task in (A, B):
        assert np.array_equal(after[task], before[task])
    time.sleep(3.0)
    assert _stub_pids(repo, BACKBONE) == stubs
    grown = watcher.statistics()[BACKBONE]["executions"]
    assert grown > executions  # the same backbone instance: its count carried on

    # Roll back: C goes away the same way.
    t_rollback = time.perf_counter()
    back = reload_repository(repo, server.grpc_url, rollback=True)
    t_rolled = time.perf_counter()
    assert back.tasks == [A, B]
    with pytest.raises(UnknownTaskError):
        watcher.infer_clip(clip, [C])
    assert watcher.tasks == [A, B]
    again = watcher.infer_clip(clip, [A, B])
    for task in (A, B):
        assert np.array_equal(again[task], before[task])
    time.sleep(3.0)
    load.finish()
    assert _stub_pids(repo, BACKBONE) == stubs
    assert watcher.statistics()[BACKBONE]["executions"] > grown

    errors = [e for _, _, e in load.records if e is not None]
    assert not errors, errors[:3]
    assert len(load.records) > 50
    results = {
        "train_c_s": ckpts.seconds_to_train_c,
        "export_s": t_exported - t_trained,
        "reload_s": t_served - t_exported,
        "trained_to_served_s": t_served - t_trained,
        "rollback_s": t_rolled - t_rollback,
        "loads": report.loaded,
        "requests": len(load.records),
        "failed": len(errors),
        "latency": {
            "before": _percentiles(load.between(0, t_trained)),
            "during": _percentiles(load.between(t_trained, t_served)),
            "after": _percentiles(load.between(t_served, t_rollback)),
            "during_rollback": _percentiles(load.between(t_rollback, t_rolled)),
            "after_rollback": _percentiles(load.between(t_rolled, float("inf"))),
        },
    }
    out = os.environ.get("VMTL_LIVE_RESULTS")
    if out:
        Path(out).write_text(json.dumps(results, indent=2) + "\n")
    watcher.close()
    load.client.close()

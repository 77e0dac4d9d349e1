"""The training module on tiny generated data: stages, frozen trunk, checkpoints, resume, DDP, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vmtl.cli import main
from vmtl.data.clips import load_clipset
from vmtl.demo.config import quick_spec
from vmtl.models.checkpoint import CheckpointError
from vmtl.models.multitask import MultiTaskModel
from vmtl.tasks import Preprocess, TaskGraph
from vmtl.training import trainer as trainer_mod
from vmtl.training.config import ConfigError, load_config
from vmtl.training.trainer import Trainer, task_probabilities

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp: Path, data: Path, **train: object) -> Path:
    spec = quick_spec(yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text()))
    spec["data_root"] = str(data)
    spec["train"] = {
        "stage0": {"steps": 2, "batch_size": 4, "warmup": 1},
        "stage1": {"steps": 3, "batch_size": 4, "warmup": 1},
        "stage2": {"steps": 2, "batch_size": 4, "warmup": 1},
        "eval_batch_size": 8,
        "save_every": 0,
        **train,
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    assert main(["data", "synth", "--out", str(root), "--seed", "0", "--videos-per-task", "10"]) == 0
    return root


def _trunk_state(model: MultiTaskModel) -> dict[str, torch.Tensor]:
    return {f"{i}": p.detach().clone() for i, p in enumerate(model.trunk.backbone_parameters())}


def test_stages_train_the_right_parts_and_write_a_checkpoint(tmp_path: Path, data: Path) -> None:
    cfg = load_config(_config(tmp_path, data))
    t = Trainer(cfg, tmp_path / "ckpt", progress=False, log=lambda _m: None)
    assert t.stages() == [0, 1, 2]
    t._run_stage(0)
    after0 = _trunk_state(t.model)
    heads0 = {n: p.detach().clone() for n, p in t.model.heads.named_parameters()}
    t.state["completed"].append(0)
    t.run()  # stages 1 and 2
    for k, v in _trunk_state(t.model).items():
        assert torch.equal(v, after0[k]), "the trunk must stay frozen after stage 0"
    changed = [n for n, p in t.model.heads.named_parameters() if not torch.equal(p, heads0[n])]
    assert any(".dlms." in n for n in changed) and any(".dlms." not in n for n in changed)
    out = tmp_path / "ckpt"
    for f in ("model.safetensors", "task_graph.yaml", "model_config.json", "config.yaml", "metrics.json"):
        assert (out / f).is_file(), f
    metrics = json.loads((out / "metrics.json").read_text())
    trained = {t.name for t in cfg.graph.tasks if not t.pretrained}  # the pretrained scene head has no data
    assert "scene" in cfg.graph and "scene" not in trained
    assert set(metrics) == {"stage1", "stage2"} and set(metrics["stage2"]) == trained
    reloaded = MultiTaskModel.load_checkpoint(out / "model.safetensors")
    video = torch.from_numpy(t.val_sets["tags"].frames[:2])
    t.model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(
            reloaded.eval()(video)["tags"].numpy(), t.model(video)["tags"].numpy(), atol=1e-6
        )


def test_resume_continues_mid_stage(tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_path = _config(tmp_path, data, save_every=2, stage1={"steps": 5, "batch_size": 4, "warmup": 1})
    cfg = load_config(cfg_path)
    real_lr = trainer_mod.lr_at
    calls = {"n": 0}

    def interrupt(step: int, *a: object) -> float:
        if calls["n"] == 0 and step == 3:
            calls["n"] += 1
            raise KeyboardInterrupt
        return real_lr(step, *a)

    monkeypatch.setattr(trainer_mod, "lr_at", interrupt)
    t = Trainer(cfg, tmp_path / "ckpt", progress=False, log=lambda _m: None)
    with pytest.raises(KeyboardInterrupt):
        t.run()
    state = json.loads((tmp_path / "ckpt" / "trainer_state.json").read_text())
    assert state["completed"] == [0] and state["stage"] == 1 and state["step"] == 2
    assert (tmp_path / "ckpt" / "optimizer.pt").is_file()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(cfg, tmp_path / "ckpt", progress=False)
    seen: list[int] = []
    monkeypatch.setattr(trainer_mod, "lr_at", lambda step, *a: seen.append(step) or real_lr(step, *a))
    t2 = Trainer(cfg, tmp_path / "ckpt", resume=True, progress=False, log=lambda _m: None)
    t2.run()
    assert seen[:3] == [2, 3, 4]  # stage 1 resumed at step 2, then stage 2 from 0
    assert json.loads((tmp_path / "ckpt" / "trainer_state.json").read_text())["completed"] == [0, 1, 2]


def test_targets_per_kind(data: Path) -> None:
    graph = TaskGraph.load(ROOT / "configs" / "demo.yaml", data_root=data)
    pre = Preprocess(num_frames=4, size=32)
    seg = load_clipset(data, graph.task("segments"), "train", pre, num_tokens=2, cache=False, progress=False)
    assert seg.targets.shape == (len(seg), 2) and seg.targets.max() <= 2 and len(seg.truths) == len(seg)
    box = load_clipset(data, graph.task("box"), "train", pre, num_tokens=2, cache=False, progress=False)
    assert box.targets.shape == (len(box), 2, 4) and box.targets.min() >= 0 and box.targets.max() <= 1
    assert np.all(box.targets[..., 2] > box.targets[..., 0])
    tags = load_clipset(data, graph.task("tags"), "train", pre, num_tokens=2, cache=False, progress=False)
    assert tags.targets.shape[1] == 10 and set(np.unique(tags.targets)) <= {0.0, 1.0}
    cached = load_clipset(data, graph.task("tags"), "train", pre, num_tokens=2, progress=False)
    again = load_clipset(data, graph.task("tags"), "train", pre, num_tokens=2, progress=False)
    np.testing.assert_array_equal(cached.frames, again.frames)
    np.testing.assert_array_equal(cached.frames, tags.frames)


def test_task_sampling_temperature() -> None:
    p = task_probabilities({"a": 100, "b": 25}, 1.0)
    assert p["a"] == pytest.approx(0.8)
    u = task_probabilities({"a": 100, "b": 25}, 0.0)
    assert u["a"] == pytest.approx(0.5)
    w = task_probabilities({"a": 100, "b": 25}, 0.0, {"b": 3.0})
    assert w["b"] == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["tasks"][2].update(auxiliaries=["ghost"]), r"auxiliary 'ghost' is not a task"),
        (
            lambda s: (
                s["tasks"][0].update(auxiliaries=["tags"]),
                s["tasks"][1].update(auxiliaries=["motion"]),
            ),
            r"cycle: .*motion",
        ),
        (lambda s: s["tasks"][0].update(kind="dance"), r"unknown kind 'dance'"),
        (lambda s: s["train"].update(stage9={}), r"train: unknown keys \['stage9'\]"),
        (lambda s: s["model"].update(adapter="huge"), r"adapter must be one of"),
        (
            lambda s: s["train"].update(task_weights={"ghost": 2}),
            r"task_weights names unknown tasks \['ghost'\]",
        ),
        (lambda s: s["train"].update(task_weights={"object": 0}), r"task_weights must be positive"),
    ],
)
def test_bad_config_gives_a_clear_error(tmp_path: Path, data: Path, mutate, message: str) -> None:
    path = _config(tmp_path, data)
    spec = yaml.safe_load(path.read_text())
    mutate(spec)
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_train_cli_reports_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_ddp_two_processes_write_a_checkpoint(tmp_path: Path, data: Path) -> None:
    cfg = _config(tmp_path, data, stage0={"steps": 2, "batch_size": 2, "warmup": 1}, stage2={"steps": 0})
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "vmtl.training",
        "--config",
        str(cfg),
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = MultiTaskModel.load_checkpoint(out / "model.safetensors")
    assert json.loads((out / "trainer_state.json").read_text())["completed"] == [0, 1]
    trained = {t.name for t in model.graph.tasks if not t.pretrained}
    assert set(json.loads((out / "metrics.json").read_text())["stage1"]) == trained


def test_eval_cli_prints_a_table(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(_config(tmp_path, data, stage0={"steps": 1}, stage1={"steps": 1}, stage2={"steps": 0}))
    Trainer(cfg, tmp_path / "ck", progress=False, log=lambda _m: None).run()
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "ck"), "--data", str(data), "--tasks", "object,count"]) == 0
    out = capsys.readouterr().out
    assert "object" in out and "top1" in out and "MAE" in out
    assert main(["eval", str(tmp_path / "nope"), "--data", str(data)]) == 1
    assert "not found" in capsys.readouterr().err


def test_init_from_shares_a_warmed_up_trunk(tmp_path: Path, data: Path) -> None:
    cfg = load_config(_config(tmp_path, data, stage1={"steps": 1}, stage2={"steps": 0}))
    first = Trainer(cfg, tmp_path / "a", progress=False, log=lambda _m: None)
    first.run()
    cfg2 = load_config(_config(tmp_path, data))
    cfg2.model = cfg2.model.replace(adapter="none", dlm=False)
    second = Trainer(cfg2, tmp_path / "b", init_from=tmp_path / "a", progress=False, log=lambda _m: None)
    assert second.stages() == [1]  # pretrained trunk: no stage 0; no DLMs: no stage 2
    for a, b in zip(
        first.model.trunk.backbone_parameters(), second.model.trunk.backbone_parameters(), strict=True
    ):
        assert torch.equal(a, b)
    other = load_config(_config(tmp_path, data))
    other.model = other.model.replace(hidden_size=64, intermediate_size=128)
    with pytest.raises(CheckpointError, match="has shape"):
        Trainer(other, tmp_path / "c", init_from=tmp_path / "a", progress=False)
    with pytest.raises(CheckpointError, match="no vmtl checkpoint"):
        Trainer(cfg2, tmp_path / "d", init_from=tmp_path / "nowhere", progress=False)

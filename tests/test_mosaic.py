"""Object mosaics (vmtl.data.mosaic) and their use in stage 0 of the trainer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vmtl.data.images import load_images
from vmtl.data.mosaic import MosaicError, ObjectMosaic
from vmtl.data.synth import SynthConfig, _Planner
from vmtl.demo.config import quick_spec, video_trunk_only
from vmtl.training.config import ConfigError, load_config
from vmtl.training.trainer import MOSAIC, Trainer

ROOT = Path(__file__).resolve().parents[1]


def _labels(data: Path) -> tuple[str, ...]:
    return tuple(json.loads((data / "manifest.json").read_text())["image_source"]["class_names"])


def _mosaic(data: Path, frames: int = 8, size: int = 32, tokens: int = 4) -> ObjectMosaic:
    return ObjectMosaic.from_dataset(data, frames=frames, size=size, tokens=tokens, labels=_labels(data))


def test_mosaic_clips_show_one_train_image_per_token(tiny_data: Path) -> None:
    m = _mosaic(tiny_data)
    video, labels = m.batch(np.random.default_rng(0), 6)
    assert video.shape == (6, 8, 32, 32, 3) and video.dtype == np.uint8
    assert labels.shape == (6, 4) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < m.num_classes
    # Within a token the object drifts a little over the same background; across tokens all changes.
    within = np.abs(video[:, 0].astype(int) - video[:, 1].astype(int)).mean()
    across = np.abs(video[:, 1].astype(int) - video[:, 2].astype(int)).mean()
    assert across > 3 * within
    again, labels2 = m.batch(np.random.default_rng(0), 6)
    assert np.array_equal(again, video) and np.array_equal(labels2, labels)  # a pure function of the rng
    # Only the generator's train-split images: the val videos' images stay unseen.
    manifest = json.loads((tiny_data / "manifest.json").read_text())
    images = load_images(manifest["image_source"]["name"])
    raw = {**manifest["config"], "tasks": tuple(manifest["config"]["tasks"])}
    val = set(np.concatenate(_Planner(SynthConfig(**raw), images).pools["val"]).tolist())
    assert len(m.pool) and not val & set(m.pool.tolist())
    assert np.array_equal(images.labels[m.pool], m.images.labels[m.pool])


def test_mosaic_needs_synthetic_data_of_the_same_classes(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(MosaicError, match=r"vmtl data synth.*manifest\.json does not exist"):
        ObjectMosaic.from_dataset(tmp_path, frames=8, size=32, tokens=4, labels=_labels(tiny_data))
    with pytest.raises(MosaicError, match="not the classes"):
        ObjectMosaic.from_dataset(tiny_data, frames=8, size=32, tokens=4, labels=("left", "right"))
    with pytest.raises(ValueError, match="multiple of tokens"):
        _mosaic(tiny_data, frames=6, tokens=4)


def _config(tmp: Path, data: Path, **train: object) -> Path:
    spec = video_trunk_only(quick_spec(yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())))
    spec["data_root"] = str(data)
    spec["train"] = {
        "stage0": {"steps": 6, "batch_size": 2, "warmup": 1},
        "stage1": {"steps": 0},
        "stage2": {"steps": 0},
        "save_every": 0,
        **train,
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    ("mosaic", "message"),
    [
        ({"task": "ghost", "share": 0.5}, r"mosaic.task must name a classify task.*'ghost'"),
        ({"task": "tags", "share": 0.5}, r"mosaic.task must name a classify task.*'tags'"),
        ({"task": "object", "share": 1.0}, r"mosaic.share must be in \[0, 1\)"),
        ({"task": "object", "ratio": 0.5}, r"train.mosaic: unknown keys \['ratio'\]"),
    ],
)
def test_bad_mosaic_config(tmp_path: Path, tiny_data: Path, mosaic: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_config(tmp_path, tiny_data, mosaic=mosaic))


def test_stage0_mosaics_train_the_trunk_through_a_throwaway_readout(
    tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(_config(tmp_path, tiny_data, mosaic={"task": "object", "share": 0.9}))
    logs: list[str] = []
    t = Trainer(cfg, tmp_path / "ckpt", progress=False, log=logs.append)
    draws: list[str] = []
    real_loss = t._mosaic_loss
    monkeypatch.setattr(t, "_mosaic_loss", lambda v, y: draws.append(MOSAIC) or real_loss(v, y))
    before = [p.detach().clone() for p in t.model.trunk.backbone_parameters()]
    t.run()
    assert len(draws) >= 4  # share 0.9 of 6 steps
    assert t.mosaic_readout is not None
    readout = t.mosaic_readout.weight.detach().clone()
    assert any(
        not torch.equal(a, b) for a, b in zip(before, t.model.trunk.backbone_parameters(), strict=True)
    )
    assert any("object mosaics, per-token top-1" in m for m in logs)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert not any("mosaic" in k for k in saved)  # the readout is not part of the model
    assert torch.equal(readout, t.mosaic_readout.weight)


def test_resume_mid_stage0_restores_the_mosaic_readout(
    tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmtl.training import trainer as trainer_mod

    cfg = load_config(_config(tmp_path, tiny_data, save_every=2, mosaic={"task": "object", "share": 0.9}))
    real_lr = trainer_mod.lr_at
    saved: dict[str, torch.Tensor] = {}

    def interrupt(step: int, *a: object) -> float:
        if step == 2 and not saved:  # steps 0-1 done and checkpointed
            saved["w"] = t.mosaic_readout.weight.detach().clone()  # type: ignore[union-attr]
            raise KeyboardInterrupt
        return real_lr(step, *a)

    monkeypatch.setattr(trainer_mod, "lr_at", interrupt)
    t = Trainer(cfg, tmp_path / "ckpt", progress=False, log=lambda _m: None)
    with pytest.raises(KeyboardInterrupt):
        t.run()
    monkeypatch.setattr(trainer_mod, "lr_at", real_lr)
    t2 = Trainer(cfg, tmp_path / "ckpt", resume=True, progress=False, log=lambda _m: None)
    assert t2._mosaic() is not None and torch.equal(t2.mosaic_readout.weight, saved["w"])  # type: ignore[union-attr]
    t2.run()
    assert json.loads((tmp_path / "ckpt" / "trainer_state.json").read_text())["completed"] == [0]

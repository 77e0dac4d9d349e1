"""Reproducible training: one config, data and seed give bit-identical weights and identical metrics on one
machine (single process), an interrupted and resumed run gives what an uninterrupted one gives, and the
demo's data cache treats data made with ``--source auto`` as the source it picked (docs/reproducibility.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vmtl.demo.run import _resolved_config
from vmtl.training import trainer as trainer_mod
from vmtl.training.config import load_config
from vmtl.training.trainer import Trainer


def _train(cfg_path: Path, out: Path) -> Path:
    Trainer(load_config(cfg_path), out, progress=False, log=lambda _m: None).run()
    return out


def _same_checkpoint(a: Path, b: Path) -> None:
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "metrics.json").read_text() == (b / "metrics.json").read_text()
    state_a, state_b = (json.loads((d / "trainer_state.json").read_text()) for d in (a, b))
    assert state_a == state_b


def test_same_config_data_and_seed_give_identical_weights_and_metrics(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """A second training of the tiny_checkpoint fixture's config (demo.yaml --quick: all three stages, object
    mosaics in stage 0, one thread) on the same data; its clips now come from the decode cache."""
    again = _train(tiny_checkpoint.parent / "config.yaml", tmp_path / "again")
    _same_checkpoint(tiny_checkpoint, again)
    env = json.loads((again / "trainer_state.json").read_text())["environment"]
    assert env["threads"] == 1 and env["world_size"] == 1 and env["torch"]


def test_a_resumed_run_gives_what_an_uninterrupted_run_gives(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = yaml.safe_load((tiny_checkpoint.parent / "config.yaml").read_text())
    spec["train"].update(
        stage0={"steps": 6, "batch_size": 4, "warmup": 1},
        stage1={"steps": 2, "batch_size": 4, "warmup": 1},
        stage2={"steps": 0},
        save_every=2,
    )
    spec["train"]["mosaic"]["share"] = 0.5  # clip and mosaic draws share the sampler being restored
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(spec))
    whole = _train(cfg_path, tmp_path / "whole")

    real_lr = trainer_mod.lr_at
    calls = {"n": 0}

    def interrupt(step: int, *a: object) -> float:
        if calls["n"] == 0 and step == 5:  # stage 0, after the save at step 4 and one more step
            calls["n"] += 1
            raise KeyboardInterrupt
        return real_lr(step, *a)

    monkeypatch.setattr(trainer_mod, "lr_at", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg_path, tmp_path / "resumed")
    assert json.loads((tmp_path / "resumed" / "trainer_state.json").read_text())["step"] == 4
    Trainer(
        load_config(cfg_path), tmp_path / "resumed", resume=True, progress=False, log=lambda _m: None
    ).run()
    _same_checkpoint(whole, tmp_path / "resumed")


def test_demo_data_cache_resolves_source_auto() -> None:
    config = {"seed": 0, "source": "auto", "size": 64}
    old = {"config": config, "image_source": {"name": "mnist"}}
    assert _resolved_config(old) == {"seed": 0, "source": "mnist", "size": 64}
    new = {"config": {**config, "source": "mnist"}, "image_source": {"name": "mnist"}}
    assert _resolved_config(new) == new["config"]

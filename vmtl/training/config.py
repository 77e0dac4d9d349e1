"""Training configuration: one YAML file holds the task graph, the model and the training schedule.

name: demo
seed: 0
data_root: data/demo            # relative to the working directory; `--data` overrides
preprocess: {...}               # \\ the task graph (vmtl.tasks)
tasks: [...]                    # /
model: {backbone: tiny, ...}    # vmtl.models.config.ModelConfig fields
train:
  temperature: 0.5              # task sampling p_t ∝ n_t ** temperature (1: by size, 0: uniform)
  stage0: {steps: 300, lr: 1e-3, batch_size: 16}   # trunk warm-up; only without a pretrained trunk
  stage1: {steps: 600, lr: 2e-3, batch_size: 16}   # VMT-Adapters + heads, heterogeneous batches
  stage2: {steps: 200, lr: 1e-3, batch_size: 16}   # DLMs only, on the primary tasks' losses
  mosaic: {task: object, share: 0.5}                # stage 0: object mosaics (vmtl.data.mosaic)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from vmtl.models.config import ModelConfig
from vmtl.tasks import TaskGraph, TaskGraphError


class ConfigError(ValueError):
    """A training config is invalid; the message names the file and the key."""


@dataclass
class StageConfig:
    steps: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 16
    warmup: int = 20  # linear warm-up steps, then cosine decay to 5% of lr
    grad_clip: float = 1.0


@dataclass
class MosaicSettings:
    """Stage-0 object mosaics (vmtl.data.mosaic): `share` of the warm-up steps train the trunk on clips
    whose every temporal token shows a different object of `task`'s classes (0: off). The objects spread
    from the frame's centre to anywhere in it over the first `ramp` of stage 0 (0: anywhere from the start)."""

    task: str = ""
    share: float = 0.0
    ramp: float = 0.6


@dataclass
class TrainSettings:
    temperature: float = 0.5
    task_weights: dict[str, float] = field(default_factory=dict)  # extra sampling weight per task (default 1)
    stage0: StageConfig = field(default_factory=lambda: StageConfig(steps=0))
    stage1: StageConfig = field(default_factory=lambda: StageConfig(steps=200))
    stage2: StageConfig = field(default_factory=lambda: StageConfig(steps=100))
    eval_batch_size: int = 32
    save_every: int = 200  # steps between mid-stage checkpoints (resume points)
    threads: int | None = None  # torch intra-op threads (default: all cores / processes)
    embed_loss: str = "normsoftmax"
    mosaic: MosaicSettings = field(default_factory=MosaicSettings)

    def stage(self, i: int) -> StageConfig:
        return (self.stage0, self.stage1, self.stage2)[i]


@dataclass
class TrainConfig:
    name: str
    graph: TaskGraph
    model: ModelConfig
    train: TrainSettings
    data_root: Path
    seed: int = 0
    source: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "seed": self.seed, "data_root": str(self.data_root)}
        d.update(self.graph.to_dict())
        d["model"] = self.model.to_dict()
        d["train"] = asdict(self.train)
        return d


def _dataclass_from(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return cls(**raw)


def load_config(
    path: str | os.PathLike[str], *, data_root: str | os.PathLike[str] | None = None
) -> TrainConfig:
    """Read and validate a training config; `data_root` overrides the file's."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    unknown = set(raw) - {"name", "seed", "data_root", "preprocess", "trunks", "tasks", "model", "train"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys {sorted(unknown)}")
    root = Path(data_root if data_root is not None else raw.get("data_root", "data"))
    try:
        graph = TaskGraph.from_dict(
            {k: raw[k] for k in ("name", "preprocess", "trunks", "tasks") if k in raw},
            base_dir=path.parent,
            data_root=root,
        )
    except TaskGraphError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        model = ModelConfig.from_dict(dict(raw.get("model") or {}))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: model: {exc}") from exc
    train_raw = dict(raw.get("train") or {})
    stages = {
        k: _dataclass_from(StageConfig, train_raw.pop(k, None), f"{path}: train.{k}")
        for k in ("stage0", "stage1", "stage2")
        if k in train_raw
    }
    mosaic = _dataclass_from(MosaicSettings, train_raw.pop("mosaic", None), f"{path}: train.mosaic")
    settings = _dataclass_from(TrainSettings, train_raw, f"{path}: train")
    for k, v in stages.items():
        setattr(settings, k, v)
    settings.mosaic = mosaic
    if not 0.0 <= mosaic.share < 1.0:
        raise ConfigError(f"{path}: train.mosaic.share must be in [0, 1), got {mosaic.share}")
    if not 0.0 <= mosaic.ramp <= 1.0:
        raise ConfigError(f"{path}: train.mosaic.ramp must be in [0, 1], got {mosaic.ramp}")
    if mosaic.share > 0:
        task = next((t for t in graph.tasks if t.name == mosaic.task), None)
        if task is None or task.kind != "classify":
            raise ConfigError(
                f"{path}: train.mosaic.task must name a classify task of the graph (e.g. object), got "
                f"{mosaic.task!r}; classify tasks: {[t.name for t in graph.tasks if t.kind == 'classify']}"
            )
    unknown_tasks = sorted(set(settings.task_weights) - set(graph.names))
    if unknown_tasks:
        raise ConfigError(
            f"{path}: train.task_weights names unknown tasks {unknown_tasks}; tasks: {graph.names}"
        )
    if any(not w > 0 for w in settings.task_weights.values()):
        raise ConfigError(f"{path}: train.task_weights must be positive, got {settings.task_weights}")
    return TrainConfig(
        name=str(raw.get("name", path.stem)),
        graph=graph,
        model=model,
        train=settings,
        data_root=root,
        seed=int(raw.get("seed", 0)),
        source=path,
    )


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

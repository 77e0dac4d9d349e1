"""Training one more task: `vmtl train --init-from CKPT` with a task graph that extends CKPT's trains only
the new or changed tasks and keeps every other weight bit-identical.

It applies when the new graph adds or changes tasks of CKPT's (else `--init-from` only starts the trunk
from CKPT, as before). The trained tasks are the new ones, the changed ones (a spec that differs from CKPT's, its dataset
directory aside) and the tasks that use a changed one as an auxiliary (their DLMs read its representation).
Of those only their own parts train: each tapped block's knowledge extraction (gamma, beta) and LayerNorm
in the trunk, the head and its DLMs. The VideoMAE weights, the shared adapter weights and every other
task's parts are loaded from CKPT and stay out of the optimiser. Refused, with the reason: a different
preprocessing, any model-config change (it would change the trunk or every head), a task left out.

The checkpoint's ``trainer_state.json`` records the increment (``"increment"``: base, new, changed,
dependents, trained); ``vmtl export --only-heads`` then ships the trained tasks' heads alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file

from vmtl.models.checkpoint import CheckpointError, resolve_weights
from vmtl.models.multitask import MultiTaskModel
from vmtl.tasks import TaskGraph, TaskSpec
from vmtl.training.config import TrainConfig

__all__ = ["Increment", "IncrementError", "apply_increment", "plan_increment", "restrict_to_increment"]


class IncrementError(CheckpointError):
    """The new task graph cannot extend the checkpoint's (the message says why)."""


@dataclass
class Increment:
    """Which tasks an incremental run trains, relative to its base checkpoint."""

    base: str
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    dependents: list[str] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Increment:
        return cls(**{k: data[k] for k in ("base", "new", "changed", "dependents", "trained") if k in data})

    def owns(self, parameter: str) -> bool:
        """Whether a `MultiTaskModel` parameter/buffer name belongs to a trained task."""
        return any(_owned_by(parameter, t) for t in self.trained)


def _owned_by(name: str, task: str) -> bool:
    return (
        f".adapter.extract.{task}." in name
        or name.startswith(f"trunk.task_norms.{task}.")
        or name.startswith(f"heads.{task}.")
    )


def _same_task(a: TaskSpec, b: TaskSpec) -> bool:
    return replace(a, data=None) == replace(b, data=None)


def _read_base(ckpt: Path) -> tuple[Path, TaskGraph, dict[str, Any]]:
    weights = resolve_weights(ckpt)
    with safe_open(str(weights), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "vmtl" or "task_graph" not in meta or "model_config" not in meta:
        raise CheckpointError(
            f"--init-from: {weights} is not a vmtl checkpoint (no task graph in its metadata)"
        )
    return weights, TaskGraph.from_dict(json.loads(meta["task_graph"])), json.loads(meta["model_config"])


def plan_increment(cfg: TrainConfig, ckpt: Path) -> Increment | None:
    """The increment from ``ckpt`` to ``cfg``'s task graph, or None when the graph adds or changes no task
    of ``ckpt``'s, or shares none (then ``--init-from`` only starts the trunk from ``ckpt``, as for an
    ablation of the same tasks). Raises :class:`IncrementError` for a graph that adds or changes tasks but
    changes the preprocessing or leaves a task out."""
    try:
        weights, old, _ = _read_base(ckpt)
    except CheckpointError:
        return None  # load_trunk says what is wrong with it
    graph = cfg.graph
    common = [n for n in graph.names if n in old]
    new = [n for n in graph.names if n not in old]
    changed = [n for n in common if not _same_task(graph.task(n), old.task(n))]
    if not common or not (new or changed):
        return None
    if graph.preprocess != old.preprocess:
        raise IncrementError(
            f"--init-from {weights}: the preprocessing changes ({old.preprocess} -> {graph.preprocess}); "
            "the trunk reads clips as its checkpoint was trained, so adding a task keeps the preprocessing "
            "(a different one needs a full training run)"
        )
    removed = [n for n in old.names if n not in graph]
    if removed:
        raise IncrementError(
            f"--init-from {weights}: tasks {removed} of the checkpoint are missing from the new graph; an "
            "incremental run adds or changes tasks (keep them, or roll back the served repository with "
            "`vmtl reload --rollback`)"
        )
    dependents: list[str] = []
    todo = list(changed)
    while todo:
        for d in graph.dependents(todo.pop()):
            if d not in new and d not in changed and d not in dependents:
                dependents.append(d)
                todo.append(d)
    trained = [n for n in graph.names if n in {*new, *changed, *dependents}]
    return Increment(str(weights.parent.resolve()), new, changed, dependents, trained)


def apply_increment(model: MultiTaskModel, increment: Increment) -> None:
    """Load every weight the increment does not train from its base (bit for bit) and mark the trunk
    pretrained. Raises :class:`IncrementError` when the model config differs from the base's."""
    weights, _, old_cfg = _read_base(Path(increment.base))
    new_cfg = model.cfg.to_dict()
    differ = {
        k: (old_cfg.get(k), new_cfg.get(k))
        for k in sorted(set(old_cfg) | set(new_cfg))
        if k != "checkpoint" and _norm(old_cfg.get(k)) != _norm(new_cfg.get(k))
    }
    if differ:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(differ.items())[:6])
        raise IncrementError(
            f"--init-from {weights}: the model config changes ({shown}); that changes the frozen trunk or "
            "every head, so it needs a full training run. Keep the checkpoint's `model:` section"
        )
    state = load_file(str(weights))
    own = model.state_dict()
    load = {}
    for name, tensor in own.items():
        if increment.owns(name):
            continue
        if name not in state or state[name].shape != tensor.shape:
            raise IncrementError(f"--init-from {weights}: {name} is missing or has another shape there")
        load[name] = state[name]
    model.load_state_dict(load, strict=False)
    model.pretrained = True


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def restrict_to_increment(model: MultiTaskModel, increment: Increment) -> None:
    """After ``set_stage``: freeze every parameter that belongs to no trained task."""
    for name, p in model.named_parameters():
        if not increment.owns(name):
            p.requires_grad_(False)

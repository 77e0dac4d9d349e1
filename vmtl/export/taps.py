"""Trunk taps: the task-independent trunk output from which a task added after the backbone was exported
computes its own features, so a new (or retrained) task ships as a head alone and the backbone stays.

A task's trunk features are ``pool_t(LN_t(mean_i(base_i + s * up_i(gamma_t,i * z_i + beta_t,i))))`` over
the tapped blocks ``i`` (:mod:`vmtl.models.vmt_adapter`): ``base_i`` (the frozen block's output) and
``z_i`` (the shared adapter bottleneck) do not depend on the task, and ``up_i`` is linear. So the backbone
exports one more output, ``trunk_taps`` = ``[mean_i base_i, z_1, ..., z_k]`` concatenated on the last axis
([B, N, D + k * r]), and a *tap head* (:class:`TapFeatures` in front of the usual head) adds the task's
own extraction, LayerNorm and pooling. The result equals the trunk's ``feat_<task>`` up to float rounding.

Also here: the fingerprints ``vmtl export --only-heads`` compares with the repository's record: the trunk
core (VideoMAE + shared adapters + layout, which must not change) and each task's trunk-side parts (an
unchanged task keeps reading ``feat_<task>``; a new or changed one becomes a tap task), and each head's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vmtl.models.backbone import VideoTrunk
from vmtl.models.multitask import MultiTaskModel

__all__ = [
    "TapFeatures",
    "hash_state",
    "head_fingerprints",
    "task_fingerprints",
    "tensor_bytes",
    "trunk_core_fingerprint",
    "trunk_taps",
]


def tensor_bytes(t: Tensor) -> bytes:
    """The raw bytes of a tensor (what the fingerprints hash)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def taps_width(trunk: VideoTrunk) -> int:
    """D + k * r: the last axis of ``trunk_taps``."""
    return trunk.hidden_size + len(_adapted_taps(trunk)) * int(trunk.cfg.adapter_bottleneck)


def _adapted_taps(trunk: VideoTrunk) -> list[int]:
    return [i for i in trunk.tap_layers if trunk.blocks[i].adapter is not None]


def trunk_forward_with_taps(
    trunk: VideoTrunk, video: Tensor, tasks: Sequence[str]
) -> tuple[dict[str, Tensor], Tensor]:
    """One trunk pass: ({task: features} as ``VideoTrunk.forward`` computes them, ``trunk_taps``)."""
    x: Tensor | None = trunk.embed(video)
    last = trunk.tap_layers[-1]
    acc: dict[str, Tensor] = {}
    base_sum: Tensor | None = None
    zs: list[Tensor] = []
    for i, block in enumerate(trunk.blocks[: last + 1]):
        tapped = i in trunk.tap_layers
        layer = block.layer
        x1 = layer.attention(layer.layernorm_before(x)) + x
        h = layer.layernorm_after(x1)
        base = layer.output(layer.intermediate(h), x1)
        adapter = block.adapter
        taps: dict[str, Tensor] = {}
        if adapter is None:
            x = base
            taps = dict.fromkeys(tasks if tapped else (), base)
        else:
            z = adapter.bottleneck(h)
            main = base + adapter.up(z)
            x = main
            if tapped:
                zs.append(z)
                for t in tasks:
                    taps[t] = base + adapter.up(adapter.extract[t](z)) if t in adapter.extract else main
        if tapped:
            base_sum = base if base_sum is None else base_sum + base
        for t, v in taps.items():
            acc[t] = v if t not in acc else acc[t] + v
    k = float(len(trunk.tap_layers))
    feats = {t: trunk.pool(t, trunk.task_norms[t](acc[t] / k if k > 1 else acc[t])) for t in tasks}
    assert base_sum is not None
    mean_base = base_sum / k if k > 1 else base_sum
    return feats, torch.cat([mean_base, *zs], dim=-1)


def trunk_taps(trunk: VideoTrunk, video: Tensor) -> Tensor:
    """``trunk_taps`` of a uint8 clip batch (see the module docstring)."""
    return trunk_forward_with_taps(trunk, video, [])[1]


class TapFeatures(nn.Module):
    """``trunk_taps`` [B, N, D + k*r] -> one task's features [B, N', D]: its own knowledge extraction in
    each tapped block (through the frozen shared up-projection), its LayerNorm and its pooling."""

    def __init__(self, trunk: VideoTrunk, task: str) -> None:
        super().__init__()
        self.task = task
        self.hidden = trunk.hidden_size
        self.bottleneck = int(trunk.cfg.adapter_bottleneck)
        self.count = len(trunk.tap_layers)
        self.adapters = nn.ModuleList([trunk.blocks[i].adapter for i in _adapted_taps(trunk)])  # type: ignore[misc]
        self.norm = trunk.task_norms[task]
        self.temporal_tokens = trunk.temporal_tokens
        self.patch_grid = trunk.patch_grid
        self.grid = trunk.grids[task]
        if self.grid != self.patch_grid:
            self.register_buffer("pool_matrix", getattr(trunk, f"pool_{self.grid}").clone(), persistent=False)

    @property
    def width(self) -> int:
        return self.hidden + len(self.adapters) * self.bottleneck

    def forward(self, taps: Tensor) -> Tensor:
        acc = taps[..., : self.hidden]
        extra: Tensor | None = None
        for j, adapter in enumerate(self.adapters):
            start = self.hidden + j * self.bottleneck
            z = taps[..., start : start + self.bottleneck]
            a = adapter.up(adapter.extract[self.task](z))  # type: ignore[index, operator]
            extra = a if extra is None else extra + a
        if extra is not None:
            acc = acc + (extra / self.count if self.count > 1 else extra)
        x = self.norm(acc)
        if self.grid == self.patch_grid:
            return x
        d = x.shape[-1]
        x = x.reshape(-1, self.temporal_tokens, self.patch_grid**2, d)
        x = torch.matmul(self.pool_matrix, x)
        return x.reshape(-1, self.temporal_tokens * self.grid * self.grid, d)


# --------------------------------------------------------------------------------------------------
# Fingerprints


def hash_state(h: Any, state: dict[str, Tensor], prefix: str = "") -> None:
    """Feed every tensor of ``state`` (name, dtype, shape, bytes; sorted by name) to the hash ``h``."""
    for name in sorted(state):
        t = state[name]
        h.update(f"{prefix}{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(tensor_bytes(t))


_HEAD_CONFIG = ("head_", "dlm", "track_readout", "embed_normalize")


def trunk_core_fingerprint(model: MultiTaskModel) -> str:
    """SHA-256 of the trunk without any task's own parts: VideoMAE weights, shared adapter weights,
    normalisation constants and the trunk's model-config entries. ``--only-heads`` requires it unchanged."""
    trunk = model.trunk
    h = hashlib.sha256()
    state = trunk.state_dict()
    hash_state(
        h,
        {k: v for k, v in state.items() if ".adapter.extract." not in k and not k.startswith("task_norms.")},
    )
    for name in ("pixel_scale", "pixel_shift"):
        h.update(name.encode())
        h.update(tensor_bytes(getattr(trunk, name)))
    skip = ("checkpoint", "backbone", *_HEAD_CONFIG)
    config = {k: v for k, v in model.cfg.to_dict().items() if not k.startswith(skip)}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    return h.hexdigest()


def task_fingerprints(model: MultiTaskModel) -> dict[str, str]:
    """SHA-256 per task of its trunk-side parts (knowledge extraction per tapped block, LayerNorm, grid)."""
    trunk = model.trunk
    state = trunk.state_dict()
    out = {}
    for task in model.graph.names:
        h = hashlib.sha256()
        if task not in trunk.grids:  # a frames trunk's task: no trunk-side parts of its own
            h.update(f"trunk={model.graph.trunk_of(task)}".encode())
            out[task] = h.hexdigest()
            continue
        own = {
            k: v
            for k, v in state.items()
            if f".adapter.extract.{task}." in k or k.startswith(f"task_norms.{task}.")
        }
        hash_state(h, own)
        h.update(f"grid={trunk.grids[task]}".encode())
        out[task] = h.hexdigest()
    return out


def head_fingerprints(model: MultiTaskModel, tap_tasks: Sequence[str]) -> dict[str, str]:
    """SHA-256 per task of what its exported head computes: the head's weights (DLMs included), the task's
    spec, whether it reads ``trunk_taps`` (then its trunk-side parts too) and its auxiliaries' heads."""
    parts = task_fingerprints(model)
    out: dict[str, str] = {}
    for task in model.graph.closure(model.graph.names):
        h = hashlib.sha256()
        hash_state(h, model.heads[task].state_dict())
        spec = model.graph.task(task)
        h.update(json.dumps({"task": spec.name, "kind": spec.kind, "labels": list(spec.labels)}).encode())
        h.update(
            json.dumps({k: v for k, v in model.cfg.to_dict().items() if k.startswith(_HEAD_CONFIG)}).encode()
        )
        if task in tap_tasks:
            h.update(f"taps|{parts[task]}".encode())
        for aux in spec.auxiliaries:
            h.update(f"aux|{aux}|{out[aux]}".encode())
        out[task] = h.hexdigest()
    return out

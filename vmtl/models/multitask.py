"""`MultiTaskModel`: the trunk (run once) + one light head per task of the task graph.

Training stages (`set_stage`; docs/task-graph.md has the whole picture):

* 0, trunk warm-up (only without a pretrained checkpoint): VideoMAE weights + adapters + heads train.
* 1, adapters + heads train on heterogeneous batches (one task per batch). DLMs are *off*: every head keeps
  its prompt slots but fills them with zeros - exactly what its untrained DLMs emit, since a DLM's last
  projection is zero-initialised - so auxiliary heads need not run and stage 2 starts from the identical
  function.
* 2, only the DLMs train (on the primary task's loss); auxiliary heads run on the primary's input. The
  auxiliary representations are detached, so a loss trains only its own head's DLMs (never, through a
  chain of auxiliaries, the DLMs of another task).

A freshly built or loaded model (no stage set) has the VideoMAE weights frozen, everything else trainable
and DLMs on (the inference path). Export (`vmtl.export.wrappers`) always uses DLMs on.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..tasks import TaskGraph
from .backbone import VideoTrunk, build_videomae
from .checkpoint import CheckpointError, save_weights
from .config import ModelConfig, ModelConfigError
from .frame_trunk import FrameTrunk, PretrainedHead, build_frame_trunk
from .heads import TaskHead, build_head

__all__ = ["HeadCall", "MultiTaskModel", "MultiTaskOutput", "run_heads"]

#: Runs one head: (task, its trunk features, its auxiliaries' representations) -> (output, repr).
HeadCall = Callable[[str, Tensor, list[Tensor]], tuple[Tensor, Tensor]]


@dataclass
class MultiTaskOutput:
    """Everything one forward computed: outputs, representations and trunk features, per task."""

    outputs: dict[str, Tensor]
    reprs: dict[str, Tensor]
    features: dict[str, Tensor]


def run_heads(
    names: Sequence[str],
    features: Mapping[str, Tensor],
    auxiliaries: Mapping[str, Sequence[str]],
    call: HeadCall,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The heads of `names` (in stage order) on their trunk features, each fed its `auxiliaries`'
    representations (`repr_<aux>`, computed earlier in the order). Returns ({task: output}, {task: repr}).

    The one place the multi-task inference order lives: `MultiTaskModel.run` and `.flops_report`, and
    export's PyTorch reference for the parity check, differ only in how they `call` a head.
    """
    outs: dict[str, Tensor] = {}
    reprs: dict[str, Tensor] = {}
    for n in names:
        outs[n], reprs[n] = call(n, features[n], [reprs[a] for a in auxiliaries[n]])
    return outs, reprs


class MultiTaskModel(nn.Module):
    """Frozen VideoMAE + VMT-Adapters (`.trunk`), the graph's frame-wise image trunks (`.frame_trunks`,
    frozen, no adapters) and one `TaskHead` per task (`.heads`) on its trunk's features.

    `cfg` is resolved on construction (`self.cfg` is complete and self-describing); with `cfg.checkpoint`
    and `load_pretrained`, the trunk is initialised from that local HF VideoMAE directory (and the frame
    trunks from their pretrained weights; a saved vmtl checkpoint carries all of them).
    """

    def __init__(
        self, graph: TaskGraph, cfg: ModelConfig | None = None, *, load_pretrained: bool = True
    ) -> None:
        super().__init__()
        cfg = copy.deepcopy(cfg) if cfg is not None else ModelConfig()
        hf, cfg, head_norm = build_videomae(cfg, graph.preprocess, load_pretrained=load_pretrained)
        width = int(cfg.hidden_size)  # type: ignore[arg-type]
        auto = width if cfg.dlm_layer == "trunk" else min(128, width // 2)
        cfg = cfg.replace(head_dim=min(int(cfg.head_dim or auto), width))
        if cfg.dlm_layer == "trunk" and cfg.head_dim != width:
            raise ModelConfigError(
                f"dlm_layer 'trunk' reuses a frozen trunk block (width {width}) on the auxiliary representations "
                f"(width head_dim={cfg.head_dim}); set head_dim to {width} (or null) or use dlm_layer 'new'"
            )
        self.graph = graph
        self.cfg = cfg
        self.pretrained = cfg.checkpoint is not None
        self.video_trunk_name = graph.trunks[0].name
        video_tasks = [t for t in graph.tasks if graph.trunk_of(t.name) == self.video_trunk_name]
        self.trunk = VideoTrunk(hf, cfg, video_tasks, head_norm)
        # The frames trunks are pretrained networks: built under a forked RNG so that adding one leaves
        # every other part's random initialisation (and so a seeded training run) exactly as it was.
        with torch.random.fork_rng(devices=[]):
            self.frame_trunks = nn.ModuleDict(
                {
                    spec.name: build_frame_trunk(spec, graph.preprocess, load_pretrained=load_pretrained)
                    for spec in graph.trunks[1:]
                }
            )
        factory = (lambda: copy.deepcopy(self.trunk.blocks[-1].layer)) if cfg.dlm_layer == "trunk" else None
        heads: dict[str, TaskHead | PretrainedHead] = {}
        for stage in graph.stages():
            for name in stage:
                task = graph.task(name)
                frames = self.frame_trunk(name)
                if frames is not None and task.pretrained:
                    heads[name] = PretrainedHead(task, frames.net.classifier, frames.num_frames)
                    continue
                heads[name] = build_head(
                    task,
                    cfg,
                    feature_dim=width if frames is None else frames.feature_dim,
                    temporal_tokens=self.trunk.temporal_tokens if frames is None else frames.num_frames,
                    grid=self.trunk.grid(name) if frames is None else 1,
                    aux_dims={a: heads[a].dim for a in task.auxiliaries},
                    frozen_block_factory=factory,
                )
        self.heads = nn.ModuleDict({n: heads[n] for n in graph.names})
        self.stage: int | None = None

    # -- structure -----------------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return self.graph.names

    @property
    def temporal_tokens(self) -> int:
        return self.trunk.temporal_tokens

    def frame_trunk(self, task: str) -> FrameTrunk | None:
        """The frames trunk whose tokens `task`'s head reads, or None for a task on the VideoMAE trunk."""
        name = self.graph.trunk_of(task)
        return None if name == self.video_trunk_name else self.frame_trunks[name]  # type: ignore[return-value]

    def feature_shape(self, task: str) -> tuple[int, int]:
        """(N', D) of `feat_<task>`."""
        frames = self.frame_trunk(task)
        if frames is not None:
            return frames.num_frames, frames.feature_dim
        return self.trunk.feature_tokens(task), self.trunk.hidden_size

    def features(self, video: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        """{task: trunk features} for `tasks`: each trunk they need runs once (the frames trunks frozen)."""
        on_video = [n for n in tasks if self.graph.trunk_of(n) == self.video_trunk_name]
        feats = self.trunk(video, on_video) if on_video else {}
        for name, frames in self.frame_trunks.items():
            mine = [n for n in tasks if self.graph.trunk_of(n) == name]
            if mine:
                with torch.no_grad():
                    tokens = frames.tokens(video)  # type: ignore[operator]
                feats.update(dict.fromkeys(mine, tokens))
        return feats

    def repr_shape(self, task: str) -> tuple[int, int]:
        """(P, head width) of a head's `repr`."""
        h = self.heads[task]
        return h.num_queries, h.dim

    def output_shape(self, task: str) -> tuple[int, ...]:
        return self.heads[task].output_shape()

    def required_tasks(self, tasks: Sequence[str] | None = None) -> list[str]:
        """`tasks` plus the auxiliaries whose heads must run (none while DLMs are off), in stage order."""
        names = list(self.graph.names if tasks is None else tasks)
        wanted: set[str] = set()
        todo = list(names)
        while todo:
            n = todo.pop()
            if n in wanted:
                continue
            if n not in self.heads:
                raise KeyError(f"unknown task {n!r}; this model has: {', '.join(self.graph.names)}")
            wanted.add(n)
            head = self.heads[n]
            if head.dlm_enabled:
                todo.extend(head.aux_names)
        return [n for stage in self.graph.stages() for n in stage if n in wanted]

    # -- forward -------------------------------------------------------------------------------------------
    def run(self, video: Tensor, tasks: Sequence[str] | None = None) -> MultiTaskOutput:
        """One trunk pass, then the needed heads in stage order; returns everything computed."""
        names = self.required_tasks(tasks)
        feats = self.features(video, names)

        def call(n: str, features: Tensor, aux: list[Tensor]) -> tuple[Tensor, Tensor]:
            # Detached: a task's DLMs train on its own loss only, never through another task's DLMs.
            return self.heads[n](features, [a.detach() for a in aux] or None)

        live = {n: self.heads[n].aux_names if self.heads[n].dlm_enabled else () for n in names}
        outs, reprs = run_heads(names, feats, live, call)
        return MultiTaskOutput(outs, reprs, feats)

    def forward(self, video: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        """uint8 video [B,T,S,S,3] -> {task: raw output} for `tasks` (default: all)."""
        res = self.run(video, tasks)
        asked = self.graph.names if tasks is None else list(tasks)
        return {n: res.outputs[n] for n in asked}

    # -- training stages -----------------------------------------------------------------------------------
    def head_parameters(self) -> list[nn.Parameter]:
        return [p for h in self.heads.values() for p in h.head_parameters()]  # type: ignore[union-attr]

    def dlm_parameters(self) -> list[nn.Parameter]:
        """Trainable DLM parameters (a reused frozen block excluded)."""
        return [p for h in self.heads.values() for d in h.dlms.values() for p in d.trainable_parameters()]  # type: ignore[union-attr]

    def has_dlms(self) -> bool:
        return any(len(h.dlms) for h in self.heads.values())  # type: ignore[arg-type]

    def set_stage(self, stage: int, *, force: bool = False) -> None:
        """Freeze/unfreeze for a training stage (0 warm-up, 1 adapters + heads, 2 DLMs only); see module doc."""
        if stage not in (0, 1, 2):
            raise ValueError(f"stage must be 0, 1 or 2, got {stage!r}")
        if stage == 0 and self.pretrained and not force:
            raise ValueError(
                f"stage 0 (trunk warm-up) is for a trunk without a pretrained checkpoint; this one was initialised "
                f"from {self.cfg.checkpoint}. Start at stage 1, or pass force=True to fine-tune the trunk anyway."
            )
        if stage == 2 and not self.has_dlms():
            raise ValueError("stage 2 trains the DLMs, but no task has auxiliaries (or cfg.dlm is False)")
        for p in self.parameters():
            p.requires_grad_(False)
        trainable: list[nn.Parameter] = []
        if stage == 0:
            trainable += self.trunk.backbone_parameters()
        if stage in (0, 1):
            trainable += (
                self.trunk.adapter_parameters()
                + self.trunk.task_specific_parameters()
                + self.head_parameters()
            )
        else:
            trainable += self.dlm_parameters()
        for p in trainable:
            p.requires_grad_(True)
        self.trunk.backbone_frozen = stage != 0
        for h in self.heads.values():
            h.dlm_enabled = stage == 2
        self.stage = stage
        self.train(self.training)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> MultiTaskModel:
        super().train(mode)
        if mode and self.stage == 2:  # frozen parts: dropout off
            self.trunk.eval()
            for h in self.heads.values():
                for name, child in h.named_children():
                    if name != "dlms":
                        child.eval()
        return self

    # -- reports -------------------------------------------------------------------------------------------
    def parameter_report(self) -> dict[str, Any]:
        """Parameter counts per part and the trainable shares relative to the frozen trunk."""

        def count(ps: Sequence[nn.Parameter]) -> int:
            return sum(p.numel() for p in {id(p): p for p in ps}.values())

        trunk = count(self.trunk.backbone_parameters())
        frame_trunks = {n: count(list(t.parameters())) for n, t in self.frame_trunks.items()}
        adapters = count(self.trunk.adapter_parameters())
        task_specific = count(self.trunk.task_specific_parameters())
        heads = {n: count(h.head_parameters()) for n, h in self.heads.items()}  # type: ignore[union-attr]
        dlms = {
            n: count([p for d in h.dlms.values() for p in d.trainable_parameters()])
            for n, h in self.heads.items()
            if len(h.dlms)
        }  # type: ignore[arg-type, union-attr]
        dlm_all = count([p for h in self.heads.values() for p in h.dlms.parameters()])  # type: ignore[union-attr]
        dlms_total = sum(dlms.values())
        trainable_parts = adapters + task_specific + sum(heads.values()) + dlms_total
        return {
            "trunk": trunk,
            "frame_trunks": frame_trunks,
            "adapters": adapters,
            "task_specific": task_specific,
            "heads": heads,
            "heads_total": sum(heads.values()),
            "dlms": dlms,
            "dlms_total": dlms_total,
            "dlm_frozen": dlm_all - dlms_total,
            "total": count(list(self.parameters())),
            "trainable_now": count(self.trainable_parameters()),
            "adapter_share": (adapters + task_specific) / trunk,
            "dlm_share": dlms_total / trunk,
            "trainable_share": trainable_parts / trunk,
        }

    @torch.no_grad()
    def flops_report(self, batch: int = 1) -> dict[str, Any]:
        """FLOPs (2 per multiply-add; matmul/conv/attention, as FlopCounterMode counts) per part.

        The trunk counts every task's features; each head counts its DLMs (DLMs on, the inference path).
        """
        was_training = self.training
        self.eval()
        try:
            dev = self.trunk.pixel_scale.device
            video = torch.zeros(
                batch,
                self.trunk.num_frames,
                self.trunk.image_size,
                self.trunk.image_size,
                3,
                dtype=torch.uint8,
                device=dev,
            )
            with FlopCounterMode(display=False) as fc:
                feats = self.trunk(video)
            trunk = fc.get_total_flops()
            adapters = _module_flops(fc, r"\.blocks\.\d+\.adapter$")
            frame_trunks: dict[str, int] = {}
            for name in self.frame_trunks:
                tasks = self.graph.trunk_tasks(name)
                with FlopCounterMode(display=False) as fc:
                    feats.update(self.features(video, tasks))
                frame_trunks[name] = fc.get_total_flops()
            heads: dict[str, int] = {}
            dlms: dict[str, int] = {}

            def call(n: str, features: Tensor, aux: list[Tensor]) -> tuple[Tensor, Tensor]:
                with FlopCounterMode(display=False) as fc:
                    out = self.heads[n](features, aux or None, use_dlm=True)
                heads[n] = fc.get_total_flops()
                if aux:
                    dlms[n] = _module_flops(fc, r"\.dlms\.[a-z0-9_]+$")
                return out

            order = self.graph.closure(self.graph.names)
            run_heads(order, feats, {n: self.heads[n].aux_names for n in order}, call)
        finally:
            self.train(was_training)
        total_heads = sum(heads.values())
        return {
            "batch": batch,
            "trunk": trunk,
            "trunk_adapters": adapters,
            "frame_trunks": frame_trunks,
            "heads": heads,
            "dlms": dlms,
            "heads_total": total_heads,
            "heads_over_trunk": total_heads / trunk,
        }

    def summary(self, flops: bool = True) -> str:
        """A short human-readable table of the parameter (and FLOPs) report."""
        p = self.parameter_report()
        c = self.cfg
        lines = [
            f"trunk {c.backbone} D={c.hidden_size} L={c.num_layers} patch={c.patch_size} T={c.num_frames} "
            f"S={c.image_size} adapter={c.adapter} r={c.adapter_bottleneck} taps={list(self.trunk.tap_layers)}",
            f"params: trunk {p['trunk']:,} | adapters {p['adapters']:,} + task-specific {p['task_specific']:,} "
            f"({p['adapter_share']:.2%}) | heads {p['heads_total']:,} | DLMs {p['dlms_total']:,} "
            f"| trainable share {p['trainable_share']:.2%}",
        ]
        if flops:
            f = self.flops_report()
            lines.append(
                f"GFLOPs/clip: trunk {f['trunk'] / 1e9:.3f} (adapters {f['trunk_adapters'] / 1e9:.4f}) | "
                f"heads {f['heads_total'] / 1e9:.4f} ({f['heads_over_trunk']:.2%} of trunk)"
            )
        return "\n".join(lines)

    # -- checkpoints ---------------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
        """Write all weights to one .safetensors file; the resolved ModelConfig and the task graph go into
        its metadata (plus `metadata`, string to string)."""
        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {
            "format": "vmtl",
            "model_config": json.dumps(self.cfg.to_dict()),
            "task_graph": self.graph.to_json(),
        }
        meta.update(metadata or {})
        save_weights(state, path, meta)
        return path

    @classmethod
    def load_checkpoint(cls, path: str | Path, *, graph: TaskGraph | None = None) -> MultiTaskModel:
        """Rebuild a model saved by `save_checkpoint` (the HF directory is not needed)."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"vmtl checkpoint not found: {path}")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "vmtl" or "model_config" not in meta:
            raise CheckpointError(
                f"{path} is not a vmtl checkpoint (no model_config metadata); "
                "was it written by MultiTaskModel.save_checkpoint?"
            )
        cfg = ModelConfig.from_dict(json.loads(meta["model_config"]))
        graph = graph or TaskGraph.from_dict(json.loads(meta["task_graph"]))
        model = cls(graph, cfg, load_pretrained=False)
        try:
            model.load_state_dict(load_file(str(path)), strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path} does not fit its model config / task graph: {exc}") from exc
        return model


def _module_flops(fc: Any, pattern: str) -> int:
    """Sum FlopCounterMode counts over the modules whose dotted name matches `pattern` (no double counting)."""
    rx = re.compile(pattern)
    total = 0
    for name, ops in fc.get_flop_counts().items():
        if rx.search(name):
            total += sum(ops.values())
    return int(total)

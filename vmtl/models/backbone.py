"""The frozen VideoMAE trunk (HF `transformers`) with VMT-Adapters: uint8 video in, per-task features out.

`VideoTrunk.forward(video)` takes the clip as decoded, uint8 [B, T, S, S, 3]; the /255, mean/std
normalisation and the permute to VideoMAE's [B, T, 3, S, S] happen inside, so they are part of the exported
graph. One pass yields every task's features:

    task features = per-task LayerNorm(mean over `tap_layers` of the task's tapped block outputs)
                    -> average-pooled from the g x g patch grid to G x G cells per temporal token
                    -> [B, T' * G * G, D]    (T' = T / tubelet, token order: time, then row, then column)

Checkpoints are local HF directories only (`save_pretrained`, read by `vmtl.models.checkpoint`); nothing is
ever downloaded.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import VideoMAEConfig, VideoMAEModel

from ..tasks import Preprocess, TaskSpec
from .checkpoint import load_hf_videomae, square_dim
from .config import PRESETS, ModelConfig, ModelConfigError
from .heads import head_grid
from .vmt_adapter import AdaptedLayer, VMTAdapter

__all__ = ["ModelConfig", "VideoTrunk", "build_videomae", "pool_matrix"]


def _videomae_config(cfg: ModelConfig) -> VideoMAEConfig:
    vc = VideoMAEConfig(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_channels=3,
        num_frames=cfg.num_frames,
        tubelet_size=cfg.tubelet_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act,
        layer_norm_eps=cfg.layer_norm_eps,
        qv_bias=cfg.qv_bias,
        use_mean_pooling=not cfg.final_norm,
    )
    vc._attn_implementation = cfg.attn_implementation
    return vc


def _check_geometry(cfg: ModelConfig) -> None:
    if cfg.num_frames % cfg.tubelet_size:  # type: ignore[operator]
        raise ModelConfigError(
            f"num_frames {cfg.num_frames} is not a multiple of the tubelet size {cfg.tubelet_size}"
        )
    if cfg.image_size % cfg.patch_size:  # type: ignore[operator]
        raise ModelConfigError(
            f"clip size {cfg.image_size} is not a multiple of the patch size {cfg.patch_size}"
        )
    if cfg.hidden_size % cfg.num_heads:  # type: ignore[operator]
        raise ModelConfigError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")


def build_videomae(
    cfg: ModelConfig, preprocess: Preprocess, *, load_pretrained: bool = True
) -> tuple[VideoMAEModel, ModelConfig, dict[str, Tensor] | None]:
    """The HF trunk for `cfg` and the resolved config (every `None` trunk field filled in).

    With `cfg.checkpoint` and `load_pretrained`, the architecture and weights come from that directory;
    otherwise from the fields (filled from the preset), randomly initialised. Returns also the checkpoint's
    fc_norm state (or None) to initialise the per-task LayerNorms.
    """
    cfg.validate()
    head_norm = None
    if cfg.checkpoint is not None and load_pretrained:
        hf = load_hf_videomae(
            cfg.checkpoint,
            num_frames=preprocess.num_frames,
            image_size=preprocess.size,
            attn_implementation=cfg.attn_implementation,
        )
        c = hf.config
        differ = hf.mean is not None and (tuple(hf.mean), tuple(hf.std or ())) != (
            preprocess.mean,
            preprocess.std,
        )
        if differ and cfg.mean is None:
            warnings.warn(
                f"{hf.path}: preprocessor mean/std {hf.mean}/{hf.std} differ from the task graph's "
                f"{preprocess.mean}/{preprocess.std}; the trunk uses the checkpoint's",
                stacklevel=2,
            )
        resolved = cfg.replace(
            backbone="hf",
            checkpoint=str(hf.path),
            hidden_size=int(c.hidden_size),
            num_layers=int(c.num_hidden_layers),
            num_heads=int(c.num_attention_heads),
            intermediate_size=int(c.intermediate_size),
            patch_size=square_dim(c.patch_size, "patch_size", hf.path),
            tubelet_size=int(c.tubelet_size),
            hidden_act=str(c.hidden_act),
            layer_norm_eps=float(c.layer_norm_eps),
            qv_bias=bool(c.qv_bias),
            final_norm=not bool(c.use_mean_pooling),
            num_frames=int(c.num_frames),
            image_size=square_dim(c.image_size, "image_size", hf.path),
            mean=tuple(cfg.mean or hf.mean or preprocess.mean),
            std=tuple(cfg.std or hf.std or preprocess.std),
        )
        _check_geometry(resolved)
        return hf.model, resolved, hf.head_norm

    preset = PRESETS.get(cfg.backbone, {})
    fill: dict[str, Any] = {}
    for key, val in preset.items():
        if getattr(cfg, key) is None:
            fill[key] = val
    if cfg.num_frames is None:
        fill["num_frames"] = preprocess.num_frames
    if cfg.image_size is None:
        fill["image_size"] = preprocess.size
    resolved = cfg.replace(**fill)
    if resolved.patch_size is None:  # tiny: a finer patch for small clips
        resolved = resolved.replace(patch_size=8 if resolved.image_size <= 96 else 16)  # type: ignore[operator]
    resolved = resolved.replace(mean=tuple(cfg.mean or preprocess.mean), std=tuple(cfg.std or preprocess.std))
    missing = [
        k
        for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "tubelet_size")
        if getattr(resolved, k) is None
    ]
    if missing:
        raise ModelConfigError(f"backbone {cfg.backbone!r} without a checkpoint needs {missing} set")
    if (resolved.num_frames, resolved.image_size) != (preprocess.num_frames, preprocess.size):
        raise ModelConfigError(
            f"the model was built for num_frames={resolved.num_frames}, size={resolved.image_size} but the task "
            f"graph's preprocess gives num_frames={preprocess.num_frames}, size={preprocess.size}"
        )
    _check_geometry(resolved)
    return VideoMAEModel(_videomae_config(resolved)).eval(), resolved, head_norm


def pool_matrix(grid: int, cells: int) -> Tensor:
    """[cells^2, grid^2] averaging weights pooling a grid x grid patch map to cells x cells (adaptive bins)."""

    def bins(n: int, m: int) -> list[tuple[int, int]]:
        return [(math.floor(i * n / m), math.ceil((i + 1) * n / m)) for i in range(m)]

    w = torch.zeros(cells * cells, grid * grid)
    for i, (r0, r1) in enumerate(bins(grid, cells)):
        for j, (c0, c1) in enumerate(bins(grid, cells)):
            block = torch.zeros(grid, grid)
            block[r0:r1, c0:c1] = 1.0 / ((r1 - r0) * (c1 - c0))
            w[i * cells + j] = block.reshape(-1)
    return w


class VideoTrunk(nn.Module):
    """Frozen VideoMAE embeddings + blocks (each an `AdaptedLayer`), per-task norms and pooling.

    Parameter groups: `backbone` (the HF weights, frozen unless stage 0), `adapters` (shared adapter
    weights), `task_specific` (per-task knowledge extraction and LayerNorms).
    """

    def __init__(
        self,
        hf_model: VideoMAEModel,
        cfg: ModelConfig,
        tasks: Sequence[TaskSpec],
        head_norm: Mapping[str, Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.task_names = [t.name for t in tasks]
        self.num_frames, self.image_size = int(cfg.num_frames), int(cfg.image_size)  # type: ignore[arg-type]
        self.hidden_size = int(cfg.hidden_size)  # type: ignore[arg-type]
        self.temporal_tokens = self.num_frames // int(cfg.tubelet_size)  # type: ignore[arg-type]
        self.patch_grid = self.image_size // int(cfg.patch_size)  # type: ignore[arg-type]
        layers = list(hf_model.encoder.layer)
        n = len(layers)
        self.tap_layers = self._indices(cfg.tap_layers, n, "tap_layers")
        adapted = (
            set(range(n))
            if cfg.adapter_layers is None
            else set(self._indices(cfg.adapter_layers, n, "adapter_layers"))
        )
        blocks = []
        for i, layer in enumerate(layers):
            adapter = None
            if cfg.adapter != "none" and i in adapted:
                adapter = VMTAdapter(
                    self.hidden_size,
                    cfg.adapter_bottleneck,
                    self.task_names if i in self.tap_layers else (),
                    lite=cfg.adapter == "lite",
                    scale=cfg.adapter_scale,
                    act=cfg.adapter_act,
                )
            blocks.append(AdaptedLayer(layer, adapter))
        self.embeddings = hf_model.embeddings
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = hf_model.layernorm  # None unless the checkpoint has one (use_mean_pooling=False)
        self.task_norms = nn.ModuleDict(
            {t: nn.LayerNorm(self.hidden_size, eps=cfg.layer_norm_eps) for t in self.task_names}
        )
        init = (
            dict(head_norm)
            if head_norm
            else (self.final_norm.state_dict() if self.final_norm is not None else None)
        )
        if init:
            for norm in self.task_norms.values():
                norm.load_state_dict(init)
        self.grids: dict[str, int] = {}
        for t in tasks:
            g = head_grid(t, cfg)
            g = self.patch_grid if g == 0 else min(g, self.patch_grid)
            self.grids[t.name] = g
        for g in sorted(set(self.grids.values())):
            if g != self.patch_grid:
                self.register_buffer(f"pool_{g}", pool_matrix(self.patch_grid, g), persistent=False)
        mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 1, 3, 1, 1)
        std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 1, 3, 1, 1)
        self.register_buffer("pixel_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("pixel_shift", mean / std, persistent=False)
        self.freeze_backbone(True)

    @staticmethod
    def _indices(idx: Sequence[int], n: int, what: str) -> list[int]:
        out = []
        for i in idx:
            if not -n <= int(i) < n:
                raise ModelConfigError(f"{what}: block {i} does not exist (the trunk has {n} blocks)")
            out.append(int(i) % n)
        return sorted(set(out))

    # -- parameter groups ------------------------------------------------------------------------------
    def backbone_parameters(self) -> list[nn.Parameter]:
        ps = list(self.embeddings.parameters())
        for b in self.blocks:
            ps.extend(b.layer.parameters())
        if self.final_norm is not None:
            ps.extend(self.final_norm.parameters())
        return ps

    def adapter_parameters(self) -> list[nn.Parameter]:
        """Shared adapter weights (down/up projections, biases, Lite gates)."""
        return [
            p
            for b in self.blocks
            if b.adapter is not None
            for n, p in b.adapter.named_parameters()
            if not n.startswith("extract.")
        ]

    def task_specific_parameters(self) -> list[nn.Parameter]:
        """Per-task knowledge extraction (gamma, beta) and per-task LayerNorms."""
        ps = [p for b in self.blocks if b.adapter is not None for p in b.adapter.extract.parameters()]
        return ps + list(self.task_norms.parameters())

    def freeze_backbone(self, frozen: bool = True) -> None:
        for p in self.backbone_parameters():
            p.requires_grad_(not frozen)
        self.backbone_frozen = frozen
        if frozen:
            self._backbone_eval()

    def _backbone_eval(self) -> None:
        self.embeddings.eval()
        for b in self.blocks:
            b.layer.eval()
        if self.final_norm is not None:
            self.final_norm.eval()

    def train(self, mode: bool = True) -> VideoTrunk:
        super().train(mode)
        if self.backbone_frozen:
            self._backbone_eval()  # frozen weights: dropout off
        return self

    # -- shapes ------------------------------------------------------------------------------------------
    def grid(self, task: str) -> int:
        return self.grids[task]

    def feature_tokens(self, task: str) -> int:
        """N' = T' * G * G."""
        return self.temporal_tokens * self.grids[task] ** 2

    # -- forward -----------------------------------------------------------------------------------------
    def embed(self, video: Tensor) -> Tensor:
        """uint8 [B, T, S, S, 3] -> normalised patch + position embeddings [B, N, D]."""
        if not isinstance(video, Tensor) or video.dtype != torch.uint8:
            got = video.dtype if isinstance(video, Tensor) else type(video).__name__
            raise TypeError(
                f"the trunk expects the decoded clip as uint8 [B, T, S, S, 3] (values 0-255), got {got}; "
                "do not normalise or convert it to float: /255 and mean/std happen inside the model"
            )
        want = (self.num_frames, self.image_size, self.image_size, 3)
        if video.dim() != 5 or tuple(video.shape[1:]) != want:
            raise ValueError(
                f"the trunk expects video [B, {', '.join(map(str, want))}] (uint8, RGB last), "
                f"got {list(video.shape)}"
            )
        x = video.permute(0, 1, 4, 2, 3).to(self.pixel_scale.dtype) * self.pixel_scale - self.pixel_shift
        return self.embeddings(x, None)

    def pool(self, task: str, tokens: Tensor) -> Tensor:
        """[B, N, D] patch tokens -> [B, T' * G * G, D] pooled cells."""
        g = self.grids[task]
        if g == self.patch_grid:
            return tokens
        x = tokens.reshape(-1, self.temporal_tokens, self.patch_grid**2, self.hidden_size)
        x = torch.matmul(getattr(self, f"pool_{g}"), x)
        return x.reshape(-1, self.temporal_tokens * g * g, self.hidden_size)

    def forward(self, video: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        """uint8 video -> {task: features [B, N', D]} for `tasks` (default all), in one trunk pass."""
        names = list(self.task_names if tasks is None else tasks)
        for t in names:
            if t not in self.task_norms:
                raise KeyError(f"unknown task {t!r}; the trunk has: {', '.join(self.task_names)}")
        x: Tensor | None = self.embed(video)
        last = self.tap_layers[-1]
        acc: dict[str, Tensor] = {}
        for i, block in enumerate(self.blocks[: last + 1]):
            tapped = i in self.tap_layers
            x, taps = block(x, names if tapped else (), need_main=i < last)
            for t, v in taps.items():
                acc[t] = v if t not in acc else acc[t] + v
        k = float(len(self.tap_layers))
        return {t: self.pool(t, self.task_norms[t](acc[t] / k if k > 1 else acc[t])) for t in names}

    def last_hidden_state(self, video: Tensor) -> Tensor:
        """The main stream after every block (+ the checkpoint's final LayerNorm): HF's last_hidden_state."""
        x = self.embed(video)
        for block in self.blocks:
            x, _ = block(x)
        return self.final_norm(x) if self.final_norm is not None else x

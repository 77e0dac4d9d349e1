"""Light task heads: one structure for every kind, differing only in the output layer.

    tokens = [P task queries, DLM prompts (one DLM per auxiliary, VPT-shallow), in_proj(features) + pos]
    tokens = LN(TransformerBlock^head_layers(tokens))           at the head width (cfg.head_dim)
    repr   = tokens at the query positions                     [B, P, head_dim]  (for other tasks' DLMs)
    output = classify/tag/embed/regress: Linear(mean of the query outputs)            [B, out_dim]
             localize: Linear(feature outputs averaged over each temporal token's cells) [B, T', C+1]
             track:    sigmoid(Linear(the temporal token's G*G cell outputs, concatenated or averaged))
                                                                                         [B, T', 4]
The DLM prompt outputs are dropped before the output layer. Embed outputs are L2-normalised in the graph
(switch `embed_normalize`). A head is self-contained (it owns its DLMs) so it exports to ONNX on its own.
Each kind has its head class (``HEADS``; `build_head` picks it): what it changes is its grid, its readout
of the cells, its output layer's initialisation and its activation.

DLMs off (`dlm_enabled = False`, stages 0 and 1): the prompt slots stay in the sequence but hold zeros,
which is exactly what an untrained DLM emits (its last projection is zero-initialised); auxiliaries are
then not needed. So a head trained in stage 1 starts stage 2 with exactly the same function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks import TaskSpec
from .config import ModelConfig
from .dlm import DoubleLayerMapper
from .layers import TransformerBlock, init_linear


def check_features(task: str, features: Tensor, num_features: int, feature_dim: int) -> None:
    """ValueError unless ``features`` is [B, num_features, feature_dim] (what a head of ``task`` reads)."""
    if features.dim() != 3 or tuple(features.shape[1:]) != (num_features, feature_dim):
        raise ValueError(
            f"head {task!r} expects features [B, {num_features}, {feature_dim}], got {list(features.shape)}"
        )


class TaskHead(nn.Module):
    """The head of one task: `forward(features, aux_reprs) -> (output, repr)`."""

    def __init__(
        self,
        task: TaskSpec,
        cfg: ModelConfig,
        *,
        feature_dim: int,
        temporal_tokens: int,
        grid: int,
        aux_dims: Mapping[str, int] | None = None,
        frozen_block_factory: Callable[[], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.task = task
        self.kind = task.kind
        self.feature_dim = feature_dim
        self.dim = int(cfg.head_dim or feature_dim)
        self.temporal_tokens = temporal_tokens
        self.grid = grid
        self.num_features = temporal_tokens * grid * grid
        self.num_queries = cfg.head_queries
        self.out_dim = task.out_dim
        self.pooled = task.kind_spec.pooled
        self.embed_normalize = False  # EmbedHead: L2-normalise the output in the graph
        self.track_readout = cfg.track_readout

        self.in_proj: nn.Module = (
            nn.Linear(feature_dim, self.dim) if self.dim != feature_dim else nn.Identity()
        )
        self.pos = nn.Parameter(torch.zeros(1, self.num_features, self.dim))
        self.queries = nn.Parameter(torch.zeros(1, self.num_queries, self.dim))
        self.blocks = nn.ModuleList(
            [
                TransformerBlock(self.dim, cfg.head_heads, cfg.head_mlp_ratio, cfg.head_dropout)
                for _ in range(cfg.head_layers)
            ]
        )
        self.norm = nn.LayerNorm(self.dim, eps=1e-6)
        self.out = nn.Linear(self.readout_width(), self.out_dim)
        self.apply(init_linear)
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.init_output()

        # DLMs: one per auxiliary, in task.auxiliaries order.
        self.aux_names: tuple[str, ...] = tuple(task.auxiliaries) if cfg.dlm else ()
        self.dlm_combine = cfg.dlm_combine
        self.dlm_prompts = cfg.dlm_prompts
        self.dlms = nn.ModuleDict()
        for a in self.aux_names:
            d = (aux_dims or {}).get(a, self.dim)
            self.dlms[a] = DoubleLayerMapper(
                d,
                self.dim,
                num_prompts=cfg.dlm_prompts,
                heads=cfg.dlm_heads,
                mlp_ratio=cfg.dlm_mlp_ratio,
                bottleneck=cfg.dlm_bottleneck,
                frozen_block=frozen_block_factory() if frozen_block_factory else None,
            )
        self.dlm_enabled = True

    # -- what a kind's head class changes --------------------------------------------------------------
    @staticmethod
    def grid_size(cfg: ModelConfig) -> int:
        """The spatial cells per side of the features this kind's head reads (0: the full patch grid)."""
        return cfg.feature_grid

    def readout_width(self) -> int:
        """Input width of the output layer."""
        return self.dim

    def init_output(self) -> None:
        """Initialise the output layer beyond `init_linear` (nothing by default)."""

    def cells(self, cells: Tensor) -> Tensor:
        """Per-token readout: a temporal token's cell outputs [B, T', G*G, dim] -> the output layer's input."""
        return cells.mean(dim=2)

    def activation(self, out: Tensor) -> Tensor:
        """The output layer's activation, inside the exported graph (none by default: logits/values)."""
        return out

    # -- shapes ------------------------------------------------------------------------------------------
    @property
    def num_prompt_tokens(self) -> int:
        if not self.aux_names:
            return 0
        return self.dlm_prompts * (len(self.aux_names) if self.dlm_combine == "concat" else 1)

    def output_shape(self) -> tuple[int, ...]:
        """Output shape without the batch axis."""
        return (self.temporal_tokens, self.out_dim) if self.task.temporal else (self.out_dim,)

    def head_parameters(self) -> list[nn.Parameter]:
        """Everything except the DLMs."""
        return [p for n, p in self.named_parameters() if not n.startswith("dlms.")]

    # -- forward -----------------------------------------------------------------------------------------
    def prompts(
        self, aux_reprs: Sequence[Tensor] | None, batch: int, like: Tensor, use_dlm: bool
    ) -> Tensor | None:
        """The DLM prompt tokens [B, L', dim] (zeros when DLMs are off), or None without auxiliaries."""
        if not self.aux_names:
            return None
        if not use_dlm:
            return like.new_zeros(batch, self.num_prompt_tokens, self.dim)
        if aux_reprs is None or len(aux_reprs) != len(self.aux_names):
            n = 0 if aux_reprs is None else len(aux_reprs)
            raise ValueError(
                f"head {self.task.name!r} needs {len(self.aux_names)} auxiliary representations "
                f"({', '.join(self.aux_names)}), got {n}"
            )
        ps = [self.dlms[a](r) for a, r in zip(self.aux_names, aux_reprs, strict=True)]
        if len(ps) == 1:
            return ps[0]
        return torch.cat(ps, dim=1) if self.dlm_combine == "concat" else torch.stack(ps, 0).sum(0)

    def forward(
        self, features: Tensor, aux_reprs: Sequence[Tensor] | None = None, *, use_dlm: bool | None = None
    ) -> tuple[Tensor, Tensor]:
        """features [B, N', D] (+ one [B, P, d] representation per auxiliary) -> (output, repr [B, P, dim])."""
        check_features(self.task.name, features, self.num_features, self.feature_dim)
        use = self.dlm_enabled if use_dlm is None else use_dlm
        batch = features.shape[0]
        x = self.in_proj(features) + self.pos
        parts = [self.queries.expand(batch, -1, -1)]
        prompts = self.prompts(aux_reprs, batch, x, use)
        if prompts is not None:
            parts.append(prompts)
        parts.append(x)
        t = torch.cat(parts, dim=1)
        for block in self.blocks:
            t = block(t)
        t = self.norm(t)
        rep = t[:, : self.num_queries]
        feats = t[:, self.num_queries + self.num_prompt_tokens :]
        return self.readout(rep, feats), rep

    def readout(self, rep: Tensor, feats: Tensor) -> Tensor:
        if self.pooled:
            return self.activation(self.out(rep.mean(dim=1)))
        cells = feats.reshape(-1, self.temporal_tokens, self.grid * self.grid, self.dim)
        return self.activation(self.out(self.cells(cells)))

    def extra_repr(self) -> str:
        return (
            f"task={self.task.name}, kind={self.kind}, dim={self.dim}, tokens={self.num_queries}+"
            f"{self.num_prompt_tokens}+{self.num_features}, aux={list(self.aux_names)}"
        )


# --------------------------------------------------------------------------------------------------
# One head class per kind


class ClassifyHead(TaskHead):
    """Logits [B, C] from the pooled queries."""


class TagHead(TaskHead):
    """Logits [B, C] from the pooled queries (sigmoid in post-processing)."""


class LocalizeHead(TaskHead):
    """Logits [B, T', C+1] from each temporal token's averaged cells (index 0 = background)."""


class EmbedHead(TaskHead):
    """A vector [B, E] from the pooled queries, L2-normalised in the graph (switch `embed_normalize`)."""

    def __init__(self, task: TaskSpec, cfg: ModelConfig, **kw: Any) -> None:
        super().__init__(task, cfg, **kw)
        self.embed_normalize = cfg.embed_normalize

    def activation(self, out: Tensor) -> Tensor:
        return F.normalize(out, dim=-1) if self.embed_normalize else out


class RegressHead(TaskHead):
    """Raw values [B, K] from the pooled queries (post-processing applies scale and offset)."""


class TrackHead(TaskHead):
    """Boxes [B, T', 4] in [0, 1] of the crop from each temporal token's cells, on the finer track grid;
    `track_readout` concat reads the cells side by side, mean averages them."""

    @staticmethod
    def grid_size(cfg: ModelConfig) -> int:
        return cfg.track_grid

    def readout_width(self) -> int:
        return self.grid * self.grid * self.dim if self.track_readout == "concat" else self.dim

    def init_output(self) -> None:
        """Start at a centred box covering half the crop."""
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():
            self.out.bias.copy_(torch.logit(torch.tensor([0.25, 0.25, 0.75, 0.75])))

    def cells(self, cells: Tensor) -> Tensor:
        if self.track_readout == "concat":
            return cells.reshape(-1, self.temporal_tokens, self.grid * self.grid * self.dim)
        return cells.mean(dim=2)

    def activation(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out)


HEADS: Mapping[str, type[TaskHead]] = MappingProxyType(
    {
        "classify": ClassifyHead,
        "tag": TagHead,
        "localize": LocalizeHead,
        "embed": EmbedHead,
        "regress": RegressHead,
        "track": TrackHead,
    }
)


def build_head(task: TaskSpec, cfg: ModelConfig, **kw: Any) -> TaskHead:
    """The head of `task`: its kind's class of ``HEADS`` (keyword arguments as for `TaskHead`)."""
    return HEADS[task.kind](task, cfg, **kw)


def head_grid(task: TaskSpec, cfg: ModelConfig) -> int:
    """The spatial cells per side of the trunk features `task`'s head reads (0: the full patch grid)."""
    return HEADS[task.kind].grid_size(cfg)

"""Double-Layer Mapper (DLM-VMTL, Bo et al. 2024): an auxiliary task's representation -> prompts.

Layer 1, knowledge extraction: L learnable prompts joined to the auxiliary representation go through one
pre-LN transformer layer, `[P_aux, E'] = Layer([P, E_aux])`; the outputs at the prompt positions are kept.
Switch `frozen_block`: reuse a frozen transformer block (e.g. a copy of the trunk's last block) so only the
prompts (and layer 2) train.
Layer 2, dimension alignment: a two-step FC `d -> r -> d_primary` with GELU, r = max(8, d // 40) by default.
Its last projection is zero-initialised, so an untrained DLM emits all-zero prompts: a head trained with
zero prompt tokens (stage 1) is exactly unchanged when DLM training (stage 2) starts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import TransformerBlock, init_linear


def default_bottleneck(dim: int) -> int:
    """r for layer 2: max(8, d // 40). DLM-VMTL reports ~95% fewer parameters than one d x d map, which
    at d=768 means r ~ 16-19."""
    return max(8, dim // 40)


class DoubleLayerMapper(nn.Module):
    """Maps an auxiliary representation [B, P, aux_dim] to `num_prompts` prompts [B, L, primary_dim]."""

    def __init__(
        self,
        aux_dim: int,
        primary_dim: int,
        *,
        num_prompts: int = 8,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        bottleneck: int | None = None,
        frozen_block: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.num_prompts = num_prompts
        self.aux_dim = aux_dim
        self.primary_dim = primary_dim
        self.prompts = nn.Parameter(torch.empty(1, num_prompts, aux_dim))
        nn.init.trunc_normal_(self.prompts, std=0.02)
        self.frozen_layer = frozen_block is not None
        if frozen_block is not None:
            for p in frozen_block.parameters():
                p.requires_grad_(False)
            self.layer: nn.Module = frozen_block.eval()
        else:
            self.layer = TransformerBlock(aux_dim, heads, mlp_ratio)
        r = bottleneck or default_bottleneck(aux_dim)
        self.bottleneck = r
        self.norm = nn.LayerNorm(aux_dim, eps=1e-6)
        self.fc1 = nn.Linear(aux_dim, r)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(r, primary_dim)
        for m in (self.norm, self.fc1):
            init_linear(m)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, aux_repr: Tensor) -> Tensor:
        if aux_repr.dim() != 3 or aux_repr.shape[-1] != self.aux_dim:
            raise ValueError(
                f"DLM expects an auxiliary representation [B, P, {self.aux_dim}], got {tuple(aux_repr.shape)}"
            )
        p = self.prompts.expand(aux_repr.shape[0], -1, -1)
        y = self.layer(torch.cat([p, aux_repr], dim=1))[
            :, : self.num_prompts
        ]  # layer 1: knowledge extraction
        return self.fc2(self.act(self.fc1(self.norm(y))))  # layer 2: dimension alignment

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything but a reused frozen block."""
        frozen = {id(p) for p in self.layer.parameters()} if self.frozen_layer else set()
        return [p for p in self.parameters() if id(p) not in frozen]

    def train(self, mode: bool = True) -> DoubleLayerMapper:
        super().train(mode)
        if self.frozen_layer:
            self.layer.eval()
        return self

"""Small building blocks shared by heads and DLMs (ONNX-friendly: plain Linear/LayerNorm/SDPA)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def init_linear(m: nn.Module) -> None:
    """ViT-style init: truncated normal(0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class TransformerBlock(nn.Module):
    """Pre-LN transformer layer: x + MHSA(LN(x)), then + MLP(LN(x)). Input/output [B, N, dim]."""

    def __init__(self, dim: int, heads: int = 4, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} attention heads")
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = max(1, round(dim * mlp_ratio))
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)
        self.apply(init_linear)

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[1], x.shape[2]
        qkv = self.qkv(self.norm1(x)).reshape(-1, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        a = a.transpose(1, 2).reshape(-1, n, c)
        x = x + self.drop(self.proj(a))
        return x + self.drop(self.fc2(self.act(self.fc1(self.norm2(x)))))

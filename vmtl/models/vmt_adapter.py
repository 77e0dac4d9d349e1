"""VMT-Adapter (Xin et al., AAAI 2024) parallel to the MLP of a frozen HF `VideoMAELayer`.

Per block (the paper describes the structure; these equations are a reconstruction consistent with
it, each open choice a `ModelConfig` switch):

    x' = x + Attn(LN_before(x))                  (frozen)
    h  = LN_after(x');  base = x' + MLP(h)        (frozen)
    z  = act(h W_down + b_down)                    shared bottleneck, computed once
    z_t = gamma_t * z + beta_t                     per-task knowledge extraction
    a_t = z_t W_up + b_up                          shared up-projection (Lite: W_up = W_down^T)
    main stream: base + s * a_generic (gamma=1, beta=0);   task tap t: base + s * a_t

Per-task taps are side outputs: they do not feed the next block (that would cost one pass per task).
So per-task parameters only exist in the tapped blocks; the other blocks carry a shared adapter only.

Identity at initialisation: the untied W_up is zero-initialised; Lite cannot be (a tied zero matrix gets no
gradient), so Lite instead multiplies by a learnable scalar gate initialised to 0. Either way the trunk
starts exactly as the pretrained VideoMAE.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ACTS = {"gelu": nn.GELU, "relu": nn.ReLU}


class KnowledgeExtraction(nn.Module):
    """Per-task scale and shift of the shared bottleneck: z_t = gamma_t * z + beta_t."""

    def __init__(self, bottleneck: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(bottleneck))
        self.beta = nn.Parameter(torch.zeros(bottleneck))

    def forward(self, z: Tensor) -> Tensor:
        return z * self.gamma + self.beta


class VMTAdapter(nn.Module):
    """Shared down/up projections plus per-task knowledge extraction for the tasks in `tasks`."""

    def __init__(
        self,
        dim: int,
        bottleneck: int = 32,
        tasks: Sequence[str] = (),
        *,
        lite: bool = False,
        scale: float = 0.1,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        self.lite = lite
        self.scale = float(scale)
        self.down = nn.Linear(dim, bottleneck)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.down.bias)
        self.act = _ACTS[act]()
        if lite:
            self.up_weight = None
            self.gate = nn.Parameter(torch.zeros(()))
        else:
            self.up_weight = nn.Parameter(torch.zeros(dim, bottleneck))
            self.gate = None
        self.up_bias = nn.Parameter(torch.zeros(dim))
        self.extract = nn.ModuleDict({t: KnowledgeExtraction(bottleneck) for t in tasks})

    @property
    def task_names(self) -> list[str]:
        return list(self.extract.keys())

    def bottleneck(self, h: Tensor) -> Tensor:
        """The shared z = act(h W_down + b)."""
        return self.act(self.down(h))

    def up(self, z: Tensor) -> Tensor:
        """s * (z W_up + b_up), times the Lite gate."""
        w = self.down.weight.t() if self.up_weight is None else self.up_weight
        a = F.linear(z, w, self.up_bias)
        if self.gate is not None:
            a = a * self.gate
        return a * self.scale

    def forward(
        self, h: Tensor, tasks: Sequence[str] = (), *, generic: bool = True
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """h = LN_after(x') -> (s * a_generic or None, {task: s * a_t}) for tasks with their own extraction."""
        z = self.bottleneck(h)
        gen = self.up(z) if generic else None
        return gen, {t: self.up(self.extract[t](z)) for t in tasks}


class AdaptedLayer(nn.Module):
    """A frozen HF `VideoMAELayer` (owned as `.layer`) with an optional parallel `VMTAdapter`.

    The forward re-uses the layer's own sub-modules (attention, intermediate, output, the two LayerNorms)
    and only adds the adapter branch, so any VideoMAE attention implementation works unchanged.
    """

    def __init__(self, layer: nn.Module, adapter: VMTAdapter | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.adapter = adapter

    def forward(
        self, x: Tensor, taps: Sequence[str] = (), *, need_main: bool = True
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Returns (main stream or None, {task: tapped output}) for the tasks in `taps`.

        A task without its own knowledge extraction in this block is tapped from the main stream.
        """
        layer = self.layer
        x1 = layer.attention(layer.layernorm_before(x)) + x
        h = layer.layernorm_after(x1)
        base = layer.output(layer.intermediate(h), x1)  # x' + MLP(h), HF adds the residual
        if self.adapter is None:
            return base, {t: base for t in taps}
        own = [t for t in taps if t in self.adapter.extract]
        gen, per_task = self.adapter(h, own, generic=need_main or len(own) < len(taps))
        main = base + gen if gen is not None else None
        out: dict[str, Tensor] = {}
        for t in taps:
            out[t] = base + per_task[t] if t in per_task else main  # type: ignore[assignment]
        return main, out

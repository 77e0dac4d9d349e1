"""The PyTorch modules that `vmtl export` turns into ONNX, and the export itself.

`export_modules(model)` gives eval-mode copies with DLMs on: the trunk as `TrunkExport` (`video` uint8
[B,T,S,S,3] -> `feat_<task>`... in graph order, then `trunk_taps`) and each head as `HeadExport` (`features`,
`repr_<aux>`... -> `output`, `repr`; a *tap task*'s `features` are the trunk's `trunk_taps`, see
`vmtl.export.taps`); `export_onnx` writes one of them with a dynamic batch axis; `export_spec(model)`
lists every exported model's inputs and outputs.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from vmtl.contract import TAPS_OUTPUT
from vmtl.export.taps import TapFeatures, trunk_forward_with_taps
from vmtl.models.backbone import VideoTrunk
from vmtl.models.frame_trunk import FrameTrunk
from vmtl.models.heads import TaskHead
from vmtl.models.multitask import MultiTaskModel

__all__ = [
    "FrameTrunkExport",
    "HeadExport",
    "TrunkExport",
    "export_modules",
    "export_onnx",
    "export_spec",
    "frame_trunk_modules",
]


class TrunkExport(nn.Module):
    """The trunk as exported: `video` uint8 [B,T,S,S,3] -> (`feat_<task>` [B,N',D], ...) in graph order,
    then `trunk_taps` [B,N,D+k*r] (what heads added later compute their features from)."""

    def __init__(self, trunk: VideoTrunk, tasks: Sequence[str]) -> None:
        super().__init__()
        self.trunk = trunk
        self.tasks = list(tasks)
        self.input_names = ["video"]
        self.output_names = [*(f"feat_{t}" for t in self.tasks), TAPS_OUTPUT]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {n: {0: "batch"} for n in (*self.input_names, *self.output_names)}

    def example_inputs(self, batch: int = 1, seed: int = 0) -> tuple[Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        t, s = self.trunk.num_frames, self.trunk.image_size
        return (torch.randint(0, 256, (batch, t, s, s, 3), generator=g, dtype=torch.uint8),)

    def forward(self, video: Tensor) -> tuple[Tensor, ...]:
        feats, taps = trunk_forward_with_taps(self.trunk, video, self.tasks)
        return (*(feats[t] for t in self.tasks), taps)


class FrameTrunkExport(nn.Module):
    """A frames trunk as exported: `video` uint8 [B,T,S,S,3] -> `feat_<task>` [B,T,D] for each of its tasks
    (the same per-frame tokens under every task's name, so heads read `feat_<task>` whatever the trunk)."""

    def __init__(self, trunk: FrameTrunk, tasks: Sequence[str]) -> None:
        super().__init__()
        self.trunk = trunk
        self.tasks = list(tasks)
        self.input_names = ["video"]
        self.output_names = [f"feat_{t}" for t in self.tasks]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {n: {0: "batch"} for n in (*self.input_names, *self.output_names)}

    def example_inputs(self, batch: int = 1, seed: int = 0) -> tuple[Tensor, ...]:
        return self.trunk.example_inputs(batch, seed)

    def forward(self, video: Tensor) -> tuple[Tensor, ...]:
        tokens = self.trunk.tokens(video)
        return (tokens, *(tokens.clone() for _ in self.tasks[1:]))


class HeadExport(nn.Module):
    """One head as exported: (`features`, `repr_<aux>`...) -> (`output`, `repr`), DLMs on."""

    def __init__(self, head: TaskHead, aux_dims: Mapping[str, int], taps: TapFeatures | None = None) -> None:
        super().__init__()
        self.head = head
        self.taps = taps  # a tap task: its features come from `trunk_taps`
        self.aux_names = list(head.aux_names)
        self.aux_dims = dict(aux_dims)
        self.input_names = ["features", *(f"repr_{a}" for a in self.aux_names)]
        self.output_names = ["output", "repr"]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {n: {0: "batch"} for n in (*self.input_names, *self.output_names)}

    def example_inputs(self, batch: int = 1, seed: int = 0) -> tuple[Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        h = self.head
        if self.taps is None:
            feats = torch.randn(batch, h.num_features, h.feature_dim, generator=g)
        else:
            feats = torch.randn(
                batch, self.taps.temporal_tokens * self.taps.patch_grid**2, self.taps.width, generator=g
            )
        reprs = [torch.randn(batch, h.num_queries, self.aux_dims[a], generator=g) for a in self.aux_names]
        return (feats, *reprs)

    def forward(self, features: Tensor, *aux_reprs: Tensor) -> tuple[Tensor, Tensor]:
        if self.taps is not None:
            features = self.taps(features)
        return self.head(features, list(aux_reprs) if aux_reprs else None, use_dlm=True)


def export_onnx(
    module: TrunkExport | FrameTrunkExport | HeadExport, path: str | Path, *, opset: int = 18, batch: int = 2
) -> Path:
    """Export a `TrunkExport`/`HeadExport` with the TorchScript exporter (dynamo=False), dynamic batch axis."""
    path = Path(path)
    module = module.eval()
    inputs = module.example_inputs(batch)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer warnings
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=module.input_names,
            output_names=module.output_names,
            dynamic_axes=module.dynamic_axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
        outputs = module(*inputs)
    # The tracer leaves non-batch output dims symbolic after reshapes; declare them (Triton/TensorRT read them).
    model = onnx.load(str(path))
    for out, val in zip(model.graph.output, outputs, strict=True):
        for i, d in enumerate(out.type.tensor_type.shape.dim):
            if i == 0:
                d.dim_param = "batch"
            else:
                d.dim_value = int(val.shape[i])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def export_modules(
    model: MultiTaskModel, tap_tasks: Sequence[str] = ()
) -> tuple[TrunkExport, dict[str, HeadExport]]:
    """Eval-mode copies for ONNX: the trunk (`video` -> `feat_<task>`..., `trunk_taps`) and each head
    (`features`, `repr_<aux>`... -> `output`, `repr`), DLMs on; the heads of `tap_tasks` read `trunk_taps`."""
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(False)
    for h in m.heads.values():
        h.dlm_enabled = True
    m.stage = None
    m.eval()
    dims = {n: h.dim for n, h in m.heads.items()}  # type: ignore[union-attr]
    heads = {
        n: HeadExport(h, dims, TapFeatures(m.trunk, n) if n in tap_tasks else None)  # type: ignore[arg-type]
        for n, h in m.heads.items()
    }
    on_video = [n for n in m.graph.names if m.graph.trunk_of(n) == m.video_trunk_name]
    return TrunkExport(m.trunk, on_video), heads


def frame_trunk_modules(model: MultiTaskModel) -> dict[str, FrameTrunkExport]:
    """Eval-mode copies of the graph's frames trunks for ONNX, by trunk name (`video` -> `feat_<task>`...)."""
    out = {}
    for name, trunk in model.frame_trunks.items():
        t = copy.deepcopy(trunk).eval()
        for p in t.parameters():
            p.requires_grad_(False)
        out[name] = FrameTrunkExport(t, model.graph.trunk_tasks(name))  # type: ignore[arg-type]
    return out


def export_spec(model: MultiTaskModel) -> dict[str, Any]:
    """Names, dtypes and shapes (without the batch axis) of every exported model's inputs and outputs."""
    t, s = model.trunk.num_frames, model.trunk.image_size
    trunk = {
        "inputs": [{"name": "video", "dtype": "uint8", "shape": [t, s, s, 3]}],
        "outputs": [
            {"name": f"feat_{n}", "dtype": "float32", "shape": list(model.feature_shape(n))}
            for n in model.graph.names
            if model.frame_trunk(n) is None
        ],
    }
    heads = {}
    for n, h in model.heads.items():
        ins = [{"name": "features", "dtype": "float32", "shape": list(model.feature_shape(n))}]
        ins += [
            {"name": f"repr_{a}", "dtype": "float32", "shape": list(model.repr_shape(a))} for a in h.aux_names
        ]
        outs = [
            {"name": "output", "dtype": "float32", "shape": list(model.output_shape(n))},
            {"name": "repr", "dtype": "float32", "shape": list(model.repr_shape(n))},
        ]
        heads[n] = {"inputs": ins, "outputs": outs, "auxiliaries": list(h.aux_names)}
    return {"trunk": trunk, "heads": heads}

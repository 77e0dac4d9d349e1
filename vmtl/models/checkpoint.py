"""Checkpoints on disk: the vmtl checkpoint directory's layout, the HF VideoMAE directory loader, and
`CheckpointError` for both.

A vmtl checkpoint is a directory (written by `vmtl train`, read by `vmtl eval` / `vmtl export`)::

    model.safetensors   weights (+ model config and task graph in its metadata); byte-identical for
                        identical weights (`save_weights` sorts the metadata safetensors writes unordered)
    task_graph.yaml     the task graph (labels inline, preprocessing)
    model_config.json   the resolved ModelConfig
    config.yaml         the training config as run
    metrics.json        held-out metrics after each stage
    trainer_state.json  where training stands (resume point), and the run's environment (torch version,
                        threads, CPU capability: what else decides the exact weights)
    optimizer.pt        loss state (embed prototypes), plus the optimizer and the clip sampler's state
                        while a stage is unfinished

A pretrained trunk is a local HF VideoMAE directory (`save_pretrained`: config.json + weights);
nothing is ever downloaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers import VideoMAEConfig, VideoMAEModel

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "MODEL_CONFIG_FILE",
    "OPTIMIZER_FILE",
    "STATE_FILE",
    "TASK_GRAPH_FILE",
    "WEIGHTS_FILE",
    "CheckpointError",
    "HFVideoMAE",
    "checkpoint_dir",
    "load_hf_videomae",
    "resolve_weights",
    "save_weights",
    "square_dim",
]

WEIGHTS_FILE = "model.safetensors"
TASK_GRAPH_FILE = "task_graph.yaml"
MODEL_CONFIG_FILE = "model_config.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, of the wrong kind, or does not fit the task graph."""


def resolve_weights(path: str | Path) -> Path:
    """The weights file of a checkpoint directory (``model.safetensors``), or the file itself."""
    path = Path(path).expanduser()
    if path.is_dir():
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"{path} is not a vmtl checkpoint directory: no {WEIGHTS_FILE} in it")
        return weights
    if path.is_file():
        return path
    raise CheckpointError(f"checkpoint {path} does not exist (train one with `vmtl train`)")


def checkpoint_dir(weights: Path) -> Path:
    """The checkpoint a weights file stands for: its directory when it is the layout's ``model.safetensors``."""
    return weights.parent if weights.name == WEIGHTS_FILE else weights


# --------------------------------------------------------------------------------------------------
# HF VideoMAE directories


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_PREPROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json")


@dataclass
class HFVideoMAE:
    """A loaded local HF VideoMAE checkpoint."""

    model: VideoMAEModel
    config: VideoMAEConfig
    path: Path
    mean: tuple[float, float, float] | None = None  # from preprocessor_config.json
    std: tuple[float, float, float] | None = None
    head_norm: dict[str, Tensor] | None = (
        None  # fc_norm of a classification checkpoint (initialises task norms)
    )


def square_dim(v: Any, what: str, path: Path) -> int:
    """A config entry that must be square (an int, or a list of equal ints) as one int."""
    if isinstance(v, (list, tuple)):
        if len(set(v)) != 1:
            raise CheckpointError(
                f"{path}/config.json: non-square {what} {list(v)}; vmtl needs square clips/patches"
            )
        v = v[0]
    return int(v)


def _read_weights(path: Path) -> dict[str, Tensor]:
    if (path / "model.safetensors").is_file():
        return load_file(str(path / "model.safetensors"))
    if (path / "model.safetensors.index.json").is_file():
        index = json.loads((path / "model.safetensors.index.json").read_text())
        out: dict[str, Tensor] = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            if not (path / shard).is_file():
                raise CheckpointError(
                    f"{path}: shard {shard} named in model.safetensors.index.json is missing"
                )
            out.update(load_file(str(path / shard)))
        return out
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    found = sorted(p.name for p in path.iterdir())
    raise CheckpointError(
        f"{path}: no weights file; expected one of {', '.join(_WEIGHT_FILES)} next to config.json "
        f"(found: {', '.join(found) or 'nothing'}). Write it with `model.save_pretrained(dir)`."
    )


# transformers saves (and the original VideoMAE checkpoints name) the q/v biases q_bias/v_bias.
_RENAMES = (
    (re.compile(r"attention\.attention\.q_bias$"), "attention.attention.query.bias"),
    (re.compile(r"attention\.attention\.v_bias$"), "attention.attention.value.bias"),
)


def _rename(key: str) -> str:
    for rx, new in _RENAMES:
        key = rx.sub(new, key)
    return key


def _read_mean_std(path: Path) -> tuple[tuple[float, float, float] | None, tuple[float, float, float] | None]:
    for name in _PREPROCESSOR_FILES:
        f = path / name
        if f.is_file():
            try:
                d = json.loads(f.read_text())
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{f} is not valid JSON: {exc}") from exc
            mean, std = d.get("image_mean"), d.get("image_std")
            if mean is not None and std is not None:
                if len(mean) != 3 or len(std) != 3:
                    raise CheckpointError(f"{f}: image_mean/image_std need 3 values, got {mean} / {std}")
                return tuple(float(x) for x in mean), tuple(float(x) for x in std)  # type: ignore[return-value]
    return None, None


def load_hf_videomae(
    path: str | Path,
    *,
    num_frames: int | None = None,
    image_size: int | None = None,
    attn_implementation: str = "sdpa",
) -> HFVideoMAE:
    """Load a local HF VideoMAE directory (VideoMAEModel, ...ForVideoClassification or ...ForPreTraining).

    `num_frames`/`image_size`, when given, must equal the checkpoint's (the task graph's preprocess).
    Raises `CheckpointError` naming what was expected, what was found and what to do.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"HF VideoMAE checkpoint directory not found: {path}. Expected a local directory written by "
            "`save_pretrained` (config.json + model.safetensors); vmtl never downloads from the hub."
        )
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no config.json; is this a HF `save_pretrained` directory?")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {exc}") from exc
    if raw.get("model_type") != "videomae":
        raise CheckpointError(
            f"{cfg_file}: model_type is {raw.get('model_type')!r}, expected 'videomae' (a VideoMAEModel, "
            "VideoMAEForVideoClassification or VideoMAEForPreTraining checkpoint)"
        )
    try:
        config = VideoMAEConfig.from_json_file(str(cfg_file))
    except Exception as exc:  # transformers' strict config validation raises several types
        raise CheckpointError(f"{cfg_file} is not a valid VideoMAE config: {exc}") from exc
    if int(config.num_channels) != 3:
        raise CheckpointError(f"{cfg_file}: num_channels is {config.num_channels}, vmtl decodes RGB (3)")
    ck_frames, ck_size = int(config.num_frames), square_dim(config.image_size, "image_size", path)
    square_dim(config.patch_size, "patch_size", path)
    if (num_frames is not None and num_frames != ck_frames) or (
        image_size is not None and image_size != ck_size
    ):
        raise CheckpointError(
            f"{path}: the checkpoint expects clips of num_frames={ck_frames}, image_size={ck_size}, but the "
            f"task graph's preprocess gives num_frames={num_frames}, size={image_size}. Set preprocess "
            f"num_frames: {ck_frames} and size: {ck_size} in the task graph, or use a matching checkpoint."
        )
    try:
        state = {_rename(k): v for k, v in _read_weights(path).items()}
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt safetensors / pickle
        raise CheckpointError(f"{path}: cannot read the weights: {exc}") from exc
    prefix = "videomae."
    if any(k.startswith(prefix) for k in state):
        head_norm = {k[len("fc_norm.") :]: v for k, v in state.items() if k.startswith("fc_norm.")} or None
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    else:
        head_norm = None
    config._attn_implementation = attn_implementation
    model = VideoMAEModel(config)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    if missing:
        raise CheckpointError(
            f"{path}: the weights lack {len(missing)} of the {len(expected)} VideoMAE trunk tensors "
            f"(e.g. {', '.join(missing[:3])}); found {len(state)} tensors with other names. Expected a "
            "VideoMAEModel state dict, optionally under the 'videomae.' prefix."
        )
    try:
        model.load_state_dict({k: state[k] for k in expected}, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the weights do not fit config.json: {exc}") from exc
    mean, std = _read_mean_std(path)
    return HFVideoMAE(model=model.eval(), config=config, path=path, mean=mean, std=std, head_norm=head_norm)


def save_weights(state: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    """`safetensors.torch.save_file` with its header made canonical: safetensors (0.8) writes the metadata
    map in hash order, which changes from run to run, so identical weights gave different files (and
    sha256s). The header is rewritten with the metadata keys sorted; the tensor data is not touched."""
    save_file(state, str(path), metadata=metadata)
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:  # never for save_file's own compact JSON; rewrite the file rather than fail
            f.seek(8 + n)
            data = f.read()
            text += b" " * (-(8 + len(text)) % 8)
            f.seek(0)
            f.write(len(text).to_bytes(8, "little") + text + data)
            f.truncate()
            return
        f.seek(8)
        f.write(text + b" " * (n - len(text)))  # safetensors pads its header with spaces too

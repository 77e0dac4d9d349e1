"""`ModelConfig`: every architecture choice of the trunk, adapters, heads and DLMs, as one dataclass.

Fields left at `None` are resolved when a `MultiTaskModel` is built (from the backbone preset, the task
graph's preprocess spec or the HF checkpoint); the model keeps the *resolved* copy in `model.cfg`, which is
what checkpoints store, so a saved model rebuilds without the original HF directory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# Trunk presets. `patch_size=None` in `tiny` means: 8 for clips up to 96 px, else 16.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 128,
        "num_layers": 3,
        "num_heads": 4,
        "intermediate_size": 512,
        "patch_size": None,
        "tubelet_size": 2,
    },
    "small": {
        "hidden_size": 384,
        "num_layers": 12,
        "num_heads": 6,
        "intermediate_size": 1536,
        "patch_size": 16,
        "tubelet_size": 2,
    },
    "base": {
        "hidden_size": 768,
        "num_layers": 12,
        "num_heads": 12,
        "intermediate_size": 3072,
        "patch_size": 16,
        "tubelet_size": 2,
    },
}
ADAPTERS = ("vmt", "lite", "none")
DLM_LAYERS = ("new", "trunk")
DLM_COMBINE = ("concat", "sum")
TRACK_READOUTS = ("concat", "mean")
ACTIVATIONS = ("gelu", "relu")


class ModelConfigError(ValueError):
    """A `ModelConfig` is inconsistent (with itself, the task graph or a checkpoint)."""


@dataclass
class ModelConfig:
    """Architecture of a `MultiTaskModel`. Defaults follow the papers (see vmt_adapter.py, dlm.py);
    `None` means "resolve at build"."""

    # -- trunk (frozen VideoMAE) -------------------------------------------------------------------------
    backbone: str = "tiny"  # preset: tiny | small | base; "hf" once taken from a checkpoint
    checkpoint: str | None = None  # local HF VideoMAE directory (save_pretrained) to initialise the trunk
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    intermediate_size: int | None = None
    patch_size: int | None = None
    tubelet_size: int | None = None
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    qv_bias: bool = True
    final_norm: bool = False  # HF `use_mean_pooling=False`: the checkpoint has a final `layernorm`
    attn_implementation: str = "sdpa"  # "sdpa" or "eager"; both export to ONNX opset 18 as MatMul/Softmax
    num_frames: int | None = None  # from the task graph's preprocess (must match a checkpoint)
    image_size: int | None = None
    mean: tuple[float, float, float] | None = None  # in [0, 1] units; None: checkpoint's, else the graph's
    std: tuple[float, float, float] | None = None

    # -- VMT-Adapters ---------------------------------------------------------------------------------------
    adapter: str = "vmt"  # vmt | lite (W_up = W_down^T) | none (single-task / frozen-feature baseline)
    adapter_bottleneck: int = 32
    adapter_scale: float = 0.1  # s; AdaptFormer's best value on VideoMAE
    adapter_act: str = "gelu"
    adapter_layers: tuple[int, ...] | None = None  # blocks that get an adapter (None: all)
    tap_layers: tuple[int, ...] = (-2, -1)  # blocks whose per-task outputs are averaged into task features
    feature_grid: int = 2  # spatial cells per side after pooling (0: the full patch grid)
    track_grid: int = 4  # the same for track tasks (finer, boxes need where)

    # -- heads ----------------------------------------------------------------------------------------------
    head_dim: int | None = None  # head width (None: min(128, D / 2), D with dlm_layer 'trunk'); <= D
    head_queries: int = 4  # P task queries; their outputs are the exported representation [P, head_dim]
    head_layers: int = 1
    head_heads: int = 4
    head_mlp_ratio: float = 2.0
    head_dropout: float = 0.0
    track_readout: str = "concat"  # concat: linear over a temporal token's G*G cells; mean: their average
    embed_normalize: bool = True  # embed heads L2-normalise inside the graph

    # -- DLM ------------------------------------------------------------------------------------------------
    dlm: bool = True  # False: heads ignore auxiliaries (no DLMs, no prompt tokens)
    dlm_prompts: int = 8  # L learnable prompts per auxiliary
    dlm_layer: str = "new"  # new: a fresh pre-LN layer; trunk: a frozen copy of the trunk's last block
    dlm_heads: int = 4
    dlm_mlp_ratio: float = 2.0
    dlm_bottleneck: int | None = None  # r of layer 2 (None: max(8, d // 40))
    dlm_combine: str = "concat"  # several auxiliaries: concat their prompts, or sum them

    # -- (de)serialisation -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ModelConfigError(f"unknown ModelConfig keys {sorted(unknown)}; known: {sorted(names)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def replace(self, **changes: Any) -> ModelConfig:
        return replace(self, **changes)

    # -- checks ----------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the choices that do not need the task graph (value ranges, enum fields)."""

        def one_of(name: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, name) not in allowed:
                raise ModelConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

        if self.backbone not in (*PRESETS, "hf"):
            raise ModelConfigError(f"backbone must be one of {(*PRESETS, 'hf')}, got {self.backbone!r}")
        if self.backbone == "hf" and self.checkpoint is None and self.hidden_size is None:
            raise ModelConfigError("backbone 'hf' needs `checkpoint` (a local HF VideoMAE directory)")
        one_of("adapter", ADAPTERS)
        one_of("adapter_act", ACTIVATIONS)
        one_of("dlm_layer", DLM_LAYERS)
        one_of("dlm_combine", DLM_COMBINE)
        one_of("track_readout", TRACK_READOUTS)
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ModelConfigError(
                f"attn_implementation must be 'sdpa' or 'eager', got {self.attn_implementation!r}"
            )
        for name in (
            "adapter_bottleneck",
            "head_queries",
            "head_layers",
            "head_heads",
            "dlm_prompts",
            "dlm_heads",
        ):
            if int(getattr(self, name)) < 1:
                raise ModelConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.tap_layers:
            raise ModelConfigError("tap_layers needs at least one block index (e.g. [-1])")
        if self.feature_grid < 0 or self.track_grid < 0:
            raise ModelConfigError("feature_grid and track_grid must be >= 0 (0 = full patch grid)")

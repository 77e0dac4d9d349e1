"""vmtl.models: frozen VideoMAE trunk + VMT-Adapters, light task heads with DLMs, losses (PyTorch)."""

from .backbone import VideoTrunk, build_videomae
from .checkpoint import CheckpointError, HFVideoMAE, load_hf_videomae
from .config import PRESETS, ModelConfig, ModelConfigError
from .dlm import DoubleLayerMapper
from .heads import HEADS, TaskHead, build_head
from .losses import KIND_LOSSES, TaskLoss, build_loss
from .multitask import MultiTaskModel, MultiTaskOutput
from .vmt_adapter import AdaptedLayer, KnowledgeExtraction, VMTAdapter

__all__ = [
    "HEADS",
    "KIND_LOSSES",
    "PRESETS",
    "AdaptedLayer",
    "CheckpointError",
    "DoubleLayerMapper",
    "HFVideoMAE",
    "KnowledgeExtraction",
    "ModelConfig",
    "ModelConfigError",
    "MultiTaskModel",
    "MultiTaskOutput",
    "TaskHead",
    "TaskLoss",
    "VMTAdapter",
    "VideoTrunk",
    "build_head",
    "build_loss",
    "build_videomae",
    "load_hf_videomae",
]

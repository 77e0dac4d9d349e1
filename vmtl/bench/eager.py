"""Eager PyTorch baseline: the training checkpoint's shared trunk + heads, ``torch.inference_mode``.

Imported only when ``vmtl bench --checkpoint`` asks for it: torch stays out of the serving and client paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vmtl.contract import feat_output
from vmtl.models.checkpoint import WEIGHTS_FILE
from vmtl.models.multitask import MultiTaskModel


class EagerTorch:
    """``MultiTaskModel.forward`` on uint8 clips, all cores' intra-op threads (PyTorch's default)."""

    def __init__(self, checkpoint: str | Path, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        path = Path(checkpoint)
        self.model = MultiTaskModel.load_checkpoint(path / WEIGHTS_FILE if path.is_dir() else path).eval()
        self.graph = self.model.graph

    def run(self, video: np.ndarray, tasks: Sequence[str] | None) -> dict[str, np.ndarray]:
        """Outputs of ``tasks``; ``None``: the trunk alone (its features)."""
        with self.torch.inference_mode():
            x = self.torch.from_numpy(video)
            if tasks is None:
                return {feat_output(n): f.numpy() for n, f in self.model.trunk(x).items()}
            return {n: v.numpy() for n, v in self.model(x, list(tasks)).items()}

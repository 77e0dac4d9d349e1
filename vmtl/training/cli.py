"""`vmtl train`'s arguments (also `python -m vmtl.training` under torchrun); the run is ``vmtl.training.run``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train the heads, VMT-Adapters and DLMs of a multi-task model on heterogeneous per-task datasets. "
        "Stage 0 warms up the trunk only when no pretrained checkpoint is given (model.checkpoint or --backbone). "
        "Run under `torchrun --nproc_per_node N -m vmtl.training ...` for DDP (gloo on CPU)."
    )
    parser.add_argument(
        "--config",
        required=True,
        type=Path,
        help="training config YAML (`vmtl demo --print-config` prints the demo's)",
    )
    parser.add_argument("--data", type=Path, help="data root (overrides the config's data_root)")
    parser.add_argument("--out", type=Path, help="checkpoint directory (default: runs/<config name>)")
    parser.add_argument(
        "--backbone", type=Path, help="local Hugging Face VideoMAE directory to start the trunk from"
    )
    parser.add_argument(
        "--init-from", type=Path, help="start the trunk from another vmtl checkpoint's trunk (skips stage 0)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the checkpoint in --out where it stopped"
    )
    parser.add_argument(
        "--steps-scale", type=float, default=1.0, help="multiply every stage's steps (quick runs)"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: cores / processes)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")

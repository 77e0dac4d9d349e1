"""`vmtl train --config FILE`: train a multi-task model (also `python -m vmtl.training` under torchrun)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmtl.models.checkpoint import CheckpointError
from vmtl.training.config import ConfigError, load_config
from vmtl.training.trainer import Trainer, summarise


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


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, data_root=args.data)
    except ConfigError as exc:
        print(f"vmtl train: {exc}", file=sys.stderr)
        return 2
    if args.threads is not None:
        cfg.train.threads = args.threads
    if args.backbone is not None:
        cfg.model = cfg.model.replace(checkpoint=str(args.backbone), backbone="hf")
    if args.steps_scale != 1.0:
        for i in range(3):
            sc = cfg.train.stage(i)
            sc.steps = max(1, round(sc.steps * args.steps_scale)) if sc.steps else 0
    out = args.out or Path("runs") / cfg.name
    try:
        trainer = Trainer(
            cfg, out, resume=args.resume, init_from=args.init_from, progress=not args.no_progress
        )
        trainer.run()
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"vmtl train: {exc}", file=sys.stderr)
        return 1
    if trainer.dist.main:
        final = trainer.state["metrics"]
        last = final[max(final)] if final else {}
        print(f"checkpoint: {out}\n{summarise(last, trainer.model)}")
    return 0

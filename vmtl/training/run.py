"""`vmtl train --config FILE`: train a multi-task model (also `python -m vmtl.training` under torchrun)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmtl.models.checkpoint import CheckpointError
from vmtl.training.config import ConfigError, load_config
from vmtl.training.trainer import Trainer, summarise


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

"""`vmtl eval`'s arguments; the run is ``vmtl.training.eval_run``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory written by `vmtl train`")
    parser.add_argument("--data", type=Path, required=True, help="data root holding each task's split")
    parser.add_argument("--split", default="val", help="annotation split to evaluate (default: val)")
    parser.add_argument("--tasks", help="comma-separated subset of tasks (default: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")

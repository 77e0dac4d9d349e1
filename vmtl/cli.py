"""The `vmtl` command line.

Every subcommand lives in its own module, imported only when that subcommand runs, so `vmtl analyze`
never pays for importing torch. A command module provides::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help). The single list of subcommands.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("vmtl.data.cli", "generate the synthetic multi-task video datasets (`vmtl data synth`)"),
    "train": ("vmtl.training.cli", "train a multi-task model from a config (stages 0/1/2)"),
    "eval": ("vmtl.training.eval_cli", "evaluate a checkpoint on held-out data and print a metrics table"),
    "export": ("vmtl.export.cli", "export a checkpoint to ONNX and write a Triton model repository"),
    "serve": ("vmtl.server.cli", "start the real Triton server on a model repository"),
    "analyze": ("vmtl.client.cli", "analyse videos through a running server over gRPC"),
    "batch": ("vmtl.client.batch_cli", "offline batch inference over many videos (local, triton or ray)"),
    "bench": ("vmtl.bench.cli", "latency/throughput benchmark in perf_analyzer's vocabulary"),
    "deploy": ("vmtl.deploy.cli", "Kubernetes manifests and the Grafana dashboard for a repository"),
    "demo": ("vmtl.demo", "the whole path: data, train, export, serve, analyse a real video"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmtl",
        description="Multi-task video understanding: one frozen VideoMAE trunk, many light task heads, "
        "served by NVIDIA Triton.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `vmtl COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vmtl")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    if not argv or argv[0].startswith("-"):
        top.parse_args(argv)  # handles --help / --version and exits
        top.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        top.print_usage(sys.stderr)
        print(f"vmtl: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(
                f"vmtl {name}: this command is not implemented yet in this version of vmtl.", file=sys.stderr
            )
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"vmtl {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"vmtl {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

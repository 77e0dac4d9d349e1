"""The `vmtl` command line: the lazy table of subcommands and the dispatch to them.

A subcommand is two modules, imported only when needed: its *arguments* module, light (argparse,
pathlib and layer-0 constants), imported for ``vmtl X --help`` and argument errors, and its *run*
module, which imports what the command needs (torch, ONNX Runtime...) and is imported only when the
command runs. So ``vmtl train --help`` answers at once and ``vmtl analyze`` never imports torch. A
command whose run imports nothing heavy keeps both in one module. They provide::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...   # the arguments module
    def run(args: argparse.Namespace) -> int: ...                      # the run module

An arguments module may also answer options that need nothing heavy (``vmtl demo --print-config``)::

    def answer(args: argparse.Namespace) -> int | None: ...   # an exit status, or None: go on to run
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NamedTuple


class Command(NamedTuple):
    """One subcommand: where its arguments and its run live, and its one-line help."""

    arguments: str  #: module with ``add_arguments(parser)``: imported for --help and argument errors
    run: str  #: module with ``run(args)``: imported only when the command runs
    help: str


# The single list of subcommands.
COMMANDS: dict[str, Command] = {
    "data": Command(
        "vmtl.data.cli",
        "vmtl.data.cli",
        "generate the synthetic multi-task video datasets (`vmtl data synth`)",
    ),
    "train": Command(
        "vmtl.training.cli", "vmtl.training.run", "train a multi-task model from a config (stages 0/1/2)"
    ),
    "eval": Command(
        "vmtl.training.eval_cli",
        "vmtl.training.eval_run",
        "evaluate a checkpoint on held-out data and print a metrics table",
    ),
    "export": Command(
        "vmtl.export.cli",
        "vmtl.export.run",
        "export a checkpoint to ONNX and write a Triton model repository",
    ),
    "serve": Command(
        "vmtl.server.cli", "vmtl.server.cli", "start the real Triton server on a model repository"
    ),
    "reload": Command(
        "vmtl.server.reload_cli",
        "vmtl.server.reload_cli",
        "load new or changed heads into a running server (or roll back)",
    ),
    "analyze": Command(
        "vmtl.client.cli", "vmtl.client.cli", "analyse videos through a running server over gRPC"
    ),
    "batch": Command(
        "vmtl.client.batch_cli",
        "vmtl.client.batch_run",
        "offline batch inference over many videos (local, triton or ray)",
    ),
    "bench": Command(
        "vmtl.bench.cli", "vmtl.bench.run", "latency/throughput benchmark in perf_analyzer's vocabulary"
    ),
    "deploy": Command(
        "vmtl.deploy.cli",
        "vmtl.deploy.cli",
        "Kubernetes manifests and the Grafana dashboard for a repository",
    ),
    "demo": Command(
        "vmtl.demo.cli", "vmtl.demo.run", "the whole path: data, train, export, serve, analyse a real video"
    ),
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
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.help, add_help=False)
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
    command = COMMANDS[name]
    arguments = _import(name, command.arguments)
    if arguments is None:
        return 2
    parser = argparse.ArgumentParser(prog=f"vmtl {name}", description=command.help)
    arguments.add_arguments(parser)
    args = parser.parse_args(rest)  # --help and argument errors exit here, before the run module loads
    answer = getattr(arguments, "answer", None)
    status = answer(args) if answer is not None else None
    if status is not None:
        return int(status)
    runner = _import(name, command.run)
    if runner is None:
        return 2
    try:
        return int(runner.run(args) or 0)
    except KeyboardInterrupt:
        print(f"vmtl {name}: interrupted", file=sys.stderr)
        return 130


def _import(name: str, module_name: str) -> ModuleType | None:
    """A command's module; None (after saying so) when this version of vmtl lacks it."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(
                f"vmtl {name}: this command is not implemented yet in this version of vmtl.", file=sys.stderr
            )
            return None
        raise


if __name__ == "__main__":
    raise SystemExit(main())

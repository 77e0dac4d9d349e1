"""`vmtl reload REPO --url HOST:PORT`: load the repository's new or changed heads and its ensembles into a
running server (`vmtl serve`, explicit model control) without restarting it or reloading the backbone;
`--rollback` returns to the previous generation first.

Exit status: 0 loaded; 1 the repository is invalid (nothing loaded) or the server refused a load; 2 bad
arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vmtl.contract import RepositoryError, is_model_repository
from vmtl.server.reload import ReloadError, reload_repository

_EPILOG = """\
examples:
  vmtl train --init-from runs/demo --config with_new_task.yaml --out runs/demo-plus
  vmtl export runs/demo-plus --only-heads --out model_repository/
  vmtl reload model_repository/ --url localhost:8001
  vmtl reload model_repository/ --url localhost:8001 --rollback
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Load a repository's new or changed heads model(s), then its ensembles, into a live Triton server "
        "through its repository API (the server must run with explicit model control: `vmtl serve` does). "
        "The backbone is never reloaded; requests in flight finish on the old graph, new ones see the new."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("repo", metavar="REPO", type=Path, help="the repository the server serves")
    parser.add_argument(
        "--url", default="localhost:8001", help="the server's gRPC endpoint (default: %(default)s)"
    )
    parser.add_argument(
        "--rollback",
        action="store_true",
        help="return to the previous generation (the heads before the last `export --only-heads` that "
        "added or changed tasks) and load it the same way",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds each load may take (default: %(default)s)",
    )
    parser.add_argument(
        "--admin-header",
        default=None,
        metavar="KEY=VALUE",
        help="header the model-control calls carry (the server's `vmtl serve --restrict-admin KEY=VALUE`)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="also write the report as JSON"
    )


def run(args: argparse.Namespace) -> int:
    repo: Path = args.repo.expanduser()
    if (repo / "cpu").is_dir() and not is_model_repository(repo):
        repo = repo / "cpu"
    if not is_model_repository(repo):
        print(
            f"vmtl reload: error: {repo} is not a model repository (write one with `vmtl export`)",
            file=sys.stderr,
        )
        return 2
    headers = None
    if args.admin_header:
        key, sep, value = args.admin_header.partition("=")
        if not sep or not key:
            print("vmtl reload: error: --admin-header takes KEY=VALUE", file=sys.stderr)
            return 2
        headers = {key: value}
    try:
        report = reload_repository(
            repo,
            args.url,
            rollback=args.rollback,
            timeout=args.timeout,
            log=lambda m: print(m, file=sys.stderr),
            headers=headers,
        )
    except (RepositoryError, ReloadError) as exc:
        print(f"vmtl reload: error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    if args.json is not None:
        data = {
            "repo": str(report.repo),
            "tasks": report.tasks,
            "previous_tasks": report.previous_tasks,
            "loaded": report.loaded,
            "unloaded": report.unloaded,
            "rollback": report.rollback,
            "seconds": report.seconds,
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0

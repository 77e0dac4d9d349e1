"""Command-line options the client commands share: which servers to use and how to reach them (TLS)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from vmtl.client.client import DEFAULT_URL

__all__ = ["add_server_arguments", "client_options"]


def add_server_arguments(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """``--url`` (one or several servers), ``--tls``, ``--ca``, ``--cert``, ``--key``; ``prefix`` starts
    each help text (e.g. ``"triton: "`` where only one engine uses them)."""
    parser.add_argument(
        "--url",
        default=os.environ.get("VMTL_URL", DEFAULT_URL),
        help=f"{prefix}the server's gRPC endpoint HOST:PORT, or several comma-separated (requests are "
        "spread over them and a server that goes away loses none) (default: $VMTL_URL or %(default)s)",
    )
    parser.add_argument(
        "--tls", action="store_true", help=f"{prefix}connect over TLS (`vmtl serve --tls-cert ...`)"
    )
    parser.add_argument(
        "--ca",
        default=None,
        metavar="PEM",
        help=f"{prefix}CA certificate to trust for TLS (default: the system's; implies --tls)",
    )
    parser.add_argument(
        "--cert",
        default=None,
        metavar="PEM",
        help=f"{prefix}client certificate, for servers that ask for one (mutual TLS; implies --tls)",
    )
    parser.add_argument("--key", default=None, metavar="PEM", help=f"{prefix}the client certificate's key")


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`vmtl.client.VmtlClient` keywords of the options above (besides the URL)."""
    return {"tls": bool(args.tls), "ca": args.ca, "cert": args.cert, "key": args.key}

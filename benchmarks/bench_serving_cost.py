"""Serving cost measured by Triton's perf_analyzer: what the served ensemble costs next to the model.

For one checkpoint, in one run on one machine:

1. the in-process ONNX Runtime trunk + heads (the host's session options), p50 at batch 1, measured right
   before and right after the served ensemble's concurrency-1 window (this machine's speed drifts);
2. perf_analyzer (2.51, gRPC, batch 1, random uint8 clips) on the served `backbone` alone and on
   `vmtl_clip` asked for every task, at concurrency 1 and 8, for each heads layout (fused, separate) and
   each backbone batcher delay (--delays, microseconds) and backbone thread count (--backbone-threads);
3. the issue's targets: all-task ensemble throughput >= X x the backbone alone at concurrency 8, and p50 at
   concurrency 1 <= Y x the in-process trunk + heads;
4. the model bound: in process at batch 8, trunk / (trunk + every head), the share of the backbone's
   throughput an ensemble can reach when the backbone alone keeps every core busy (heads are compute too).

Configurations (heads layout x backbone batcher delay x backbone threads) are measured in turn, --rounds
times, and the report gives medians with every round's ratio: on a shared machine one run moves by more
than the differences being judged.

    python benchmarks/bench_serving_cost.py --checkpoint .cache/demo/checkpoint --update-results
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from results import update_section

from vmtl.bench import perf_analyzer
from vmtl.contract import BACKBONE, CLIP_ENSEMBLE, PARAM_TASKS, config_params, load_configs
from vmtl.export.onnx import export_checkpoint
from vmtl.runtime import LocalModel, OrtPipeline, cores
from vmtl.server.launcher import TritonServer

HEADING = "## Serving cost (perf_analyzer)"


def cpu_line() -> str:
    """The CPU model and its vector/matrix flags, as lscpu says."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return platform.processor() or "unknown CPU"
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(info.get("Flags", "").split())
    keep = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")) or "vnni" in f or "bf16" in f)
    return f"{info.get('Model name', '?').strip()}, {info.get('CPU(s)', '?').strip()} CPUs, flags: {' '.join(keep)}"


def _host_model(repo: Path, batch: int, seed: int) -> tuple[OrtPipeline, list[str], np.ndarray]:
    """The repository's in-process pipeline with the host's session options, its tasks, and a random
    uint8 batch of ``batch`` clips of its input shape."""
    model = LocalModel.load(repo)
    pre = model.graph.preprocess
    shape = (batch, pre.num_frames, pre.size, pre.size, 3)
    video = np.random.default_rng(seed).integers(0, 256, shape, np.uint8)
    return model.host_pipeline(), model.graph.names, video


def inprocess_p50(repo: Path, iters: int = 60) -> Callable[[], float]:
    """A measurement of the p50 (ms) of the in-process trunk + every head (the host's session options),
    batch 1, ``iters`` calls after 5 warm-up calls, on a pipeline loaded once."""
    pipe, _, video = _host_model(repo, 1, seed=0)

    def p50_ms() -> float:
        for _ in range(5):
            pipe.run(video)
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            pipe.run(video)
            times.append(time.perf_counter() - t)
        return float(np.percentile(times, 50) * 1e3)

    return p50_ms


def model_bound(repo: Path, batch: int = 8, seconds: float = 3.0) -> dict:
    """The model's own share of the trunk-alone throughput, in process at ``batch`` (the host's session
    options): trunk / (trunk + every head), medians over about ``seconds`` (at least 3 runs).

    An ensemble runs the trunk and then the heads; when the backbone alone keeps every core busy, the
    ensemble cannot serve more than this share of the backbone's throughput, whatever serving costs.
    """
    pipe, names, video = _host_model(repo, batch, seed=1)
    pipe.run_heads(pipe.features(video, names), names)  # warm-up
    trunk, heads = [], []
    deadline = time.perf_counter() + seconds
    while len(trunk) < 3 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        feats = pipe.features(video, names)
        t1 = time.perf_counter()
        pipe.run_heads(feats, names)
        trunk.append(t1 - t0)
        heads.append(time.perf_counter() - t1)
    t, h = float(np.median(trunk)) * 1e3, float(np.median(heads)) * 1e3
    return {"batch": batch, "trunk_ms": t, "heads_ms": h, "bound": t / (t + h)}


def measure(
    repo: Path, tool: perf_analyzer.PerfAnalyzer, out: Path, interval_ms: int, inprocess: Callable[[], float]
) -> dict:
    """perf_analyzer on backbone and vmtl_clip (all tasks) at concurrency 1 and 8 on one server, with the
    in-process p50 measured right before and right after vmtl_clip's concurrency-1 window (the server idle):
    this machine's speed drifts by more than the served cost within minutes, so the two are paired."""
    graph = LocalModel.load(repo).graph
    rows: dict = {}
    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=out / "triton.log") as server:
        server.wait_ready(300)
        for model, params in ((BACKBONE, {}), (CLIP_ENSEMBLE, {PARAM_TASKS: ",".join(graph.names)})):
            for conc in (1, 8):
                paired = model == CLIP_ENSEMBLE and conc == 1
                before = inprocess() if paired else 0.0
                csv_file = out / f"{model}_c{conc}.csv"
                (row,) = tool.sweep(
                    model, server.grpc_url, [conc], csv_file, measurement_ms=interval_ms, parameters=params
                )
                rows[f"{model}@{conc}"] = {
                    "infer_per_s": row["Inferences/Second"],
                    "p50_ms": row["p50 latency"] / 1e3,
                    "p99_ms": row["p99 latency"] / 1e3,
                    "queue_us": row.get("Server Queue", 0.0),
                    "compute_infer_us": row.get("Server Compute Infer", 0.0),
                }
                if paired:
                    bracket = [before, inprocess()]
                    rows["inprocess_bracket_ms"] = bracket
                    rows["inprocess_p50_ms"] = float(np.mean(bracket))
    return rows


def variants(args: argparse.Namespace) -> list[dict]:
    """Every (heads layout, backbone batcher delay, backbone threads) the run compares."""
    return [
        {"layout": layout.strip(), "delay_us": int(delay), "threads": threads.strip()}
        for layout in args.layouts.split(",")
        for delay in args.delays.split(",")
        for threads in args.backbone_threads.split(",")
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint directory")
    ap.add_argument("--delays", default="0", help="backbone batcher delays to compare (us)")
    ap.add_argument("--layouts", default="fused", help="heads layouts to compare (fused, separate)")
    ap.add_argument(
        "--backbone-threads",
        default="auto",
        help="backbone intra-op threads to compare: auto (`vmtl export`'s default: every core), N "
        "(`vmtl export --cpu-threads N`)",
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="rounds; each measures every configuration in turn (medians)"
    )
    ap.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer measurement window")
    ap.add_argument(
        "--bound-batch",
        type=int,
        default=8,
        help="batch of the in-process model bound (trunk / trunk + heads)",
    )
    ap.add_argument("--ensemble-vs-trunk", type=float, default=0.85, help="target: throughput ratio @8")
    ap.add_argument("--p50-vs-inprocess", type=float, default=1.3, help="target: p50 ratio @1")
    ap.add_argument("--label", default="demo", help="what the checkpoint is (for the table)")
    ap.add_argument("--out", type=Path, default=Path(".cache/bench_serving_cost"))
    ap.add_argument("--update-results", action="store_true", help=f"rewrite {HEADING!r} in RESULTS.md")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    tool = perf_analyzer.find() or perf_analyzer.install()
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = Path("/proc/loadavg").read_text().split()[0]
    configs = variants(args)
    with tempfile.TemporaryDirectory(prefix="vmtl-serving-cost-") as tmp:
        for cfg in configs:
            cfg["repo"] = Path(tmp) / f"{cfg['layout']}-{cfg['delay_us']}-t{cfg['threads']}"
            export_checkpoint(
                args.checkpoint,
                cfg["repo"],
                heads=cfg["layout"],
                queue_delay_us=cfg["delay_us"],
                cpu_threads=None if cfg["threads"] == "auto" else int(cfg["threads"]),
            )
            cfg["backbone_threads"] = backbone_threads(cfg["repo"])
            cfg["model_bound"] = model_bound(cfg["repo"], args.bound_batch)
            cfg["rounds"] = []
        for r in range(args.rounds):
            for cfg in configs:  # alternated, so a change in the machine's load hits every one alike
                run_dir = args.out / f"{cfg['repo'].name}-r{r}"
                run_dir.mkdir(parents=True, exist_ok=True)
                rows = measure(cfg["repo"], tool, run_dir, args.interval_ms, inprocess_p50(cfg["repo"]))
                cfg["rounds"].append(rows)
                print(
                    f"round {r + 1}/{args.rounds} {cfg['repo'].name}: {json.dumps(cfg['rounds'][-1])}",
                    file=sys.stderr,
                )
    load_after = Path("/proc/loadavg").read_text().split()[0]
    for cfg in configs:
        cfg["repo"] = str(cfg["repo"].name)
    (args.out / "serving_cost.json").write_text(json.dumps(configs, indent=2) + "\n")
    section = report(args, configs, tool.version(), load_before, load_after)
    print(section)
    if args.update_results:
        update_section(HEADING, section)
    return 0


def backbone_threads(repo: Path) -> int:
    """The intra-op threads the exported backbone's host will use (its config; 0 = every core)."""
    params = config_params(load_configs(repo)[BACKBONE])
    threads = int(params.get("intra_op_threads") or 0)
    return threads or cores()


def ratios(cfg: dict) -> tuple[list[float], list[float]]:
    """Per round: ensemble / backbone throughput at concurrency 8, and served / in-process p50 at 1."""
    tput = [r[f"{CLIP_ENSEMBLE}@8"]["infer_per_s"] / r[f"{BACKBONE}@8"]["infer_per_s"] for r in cfg["rounds"]]
    p50 = [r[f"{CLIP_ENSEMBLE}@1"]["p50_ms"] / r["inprocess_p50_ms"] for r in cfg["rounds"]]
    return tput, p50


def report(args: argparse.Namespace, configs: list[dict], version: str, before: str, after: str) -> str:
    med = statistics.median
    lines = [
        HEADING,
        "",
        f"Model: {args.label} (`{args.checkpoint}`), every task asked (`vmtl_tasks`), batch 1, random uint8 "
        f"clips over gRPC; {version}, {args.interval_ms} ms windows. In-process: ONNX Runtime trunk + heads "
        f"with the host's session options, p50 of 60 calls, the mean of one measurement right before and one "
        f"right after `vmtl_clip`'s concurrency-1 window (the server idle). {args.rounds} round(s); each round "
        "measures every configuration in turn (a fresh server: backbone and `vmtl_clip` at concurrency 1 and "
        "8). Medians over the rounds; each round's ratio in brackets.",
        "",
        f"Command: `python benchmarks/bench_serving_cost.py --checkpoint {args.checkpoint} --label "
        f"{args.label} --delays {args.delays} --layouts {args.layouts} --backbone-threads "
        f"{args.backbone_threads} --rounds {args.rounds} --interval-ms {args.interval_ms} --bound-batch "
        f"{args.bound_batch} --update-results`",
        "",
        f"Machine: {cpu_line()}; no GPU; Python {platform.python_version()}. Load average {before} before, "
        f"{after} after (a shared machine: compare within one run).",
        "",
        "| heads | backbone delay (us) | backbone threads | backbone @8 infer/s | vmtl_clip @8 infer/s "
        "| ensemble / backbone @8 | model bound | vmtl_clip p50 @1 (ms) | in-process p50 (ms) "
        "| p50 / in-process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cfg in configs:
        rounds = cfg["rounds"]
        tput, p50 = ratios(cfg)
        lines.append(
            f"| {cfg['layout']} | {cfg['delay_us']} | {cfg['backbone_threads']}"
            f"{' (default)' if cfg['threads'] == 'auto' else ''} | "
            f"{med(r[f'{BACKBONE}@8']['infer_per_s'] for r in rounds):.1f} | "
            f"{med(r[f'{CLIP_ENSEMBLE}@8']['infer_per_s'] for r in rounds):.1f} | "
            f"{_verdict(med(tput), tput, med(tput) >= args.ensemble_vs_trunk)} | "
            f"{cfg['model_bound']['bound']:.2f}x | "
            f"{med(r[f'{CLIP_ENSEMBLE}@1']['p50_ms'] for r in rounds):.2f} | "
            f"{med(r['inprocess_p50_ms'] for r in rounds):.2f} | "
            f"{_verdict(med(p50), p50, med(p50) <= args.p50_vs_inprocess)} |"
        )
    lines += [
        "",
        f"Targets: ensemble >= {args.ensemble_vs_trunk}x the backbone alone at concurrency 8; p50 at "
        f"concurrency 1 <= {args.p50_vs_inprocess}x in-process trunk + heads. Model bound: in process at "
        f"batch {args.bound_batch}, trunk / (trunk + every head): the share of the backbone's throughput an "
        "ensemble can serve when the backbone alone keeps every core busy (the steps overlapping on idle "
        "cores can beat it). perf_analyzer's CSV files: "
        f"`{args.out}/<configuration>-r<round>/`.",
        "",
    ]
    return "\n".join(lines)


def _verdict(median: float, each: list[float], met: bool) -> str:
    rounds = ", ".join(f"{x:.2f}" for x in each)
    return f"{median:.2f}x ({rounds}) {'met' if met else '**missed**'}"


if __name__ == "__main__":
    sys.exit(main())

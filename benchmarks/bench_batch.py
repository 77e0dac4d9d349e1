"""Offline batch inference: `vmtl batch` over 200 generated videos with the demo model, every engine.

The videos: `vmtl data synth --tasks motion object --videos-per-task 100 --seed 1` (a seed the demo model
was not trained on; 128 px, 32 frames, h264). The model: the demo's checkpoint (.cache/demo/checkpoint,
written by `vmtl demo`), exported once to .cache/bench_batch/repo. Each engine writes its own JSONL;
``local`` and ``ray`` run in this process / a local Ray instance, ``triton`` sends to a tritonserver this
script starts. The motion videos' annotation list is then run once more to show the metrics path.

    .venv/bin/python benchmarks/bench_batch.py --update-results
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import update_section

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench_batch"
SECTION = "## Offline batch inference"
DEMO_CHECKPOINT = ROOT / ".cache" / "demo" / "checkpoint"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--engines", default="local,triton,ray", help="comma-separated (default local,triton,ray)"
    )
    ap.add_argument("--concurrency", type=int, default=4, help="--concurrency of every engine (default 4)")
    ap.add_argument("--update-results", action="store_true", help=f"rewrite '{SECTION}' in RESULTS.md")
    args = ap.parse_args(argv)

    from vmtl.cli import main as vmtl
    from vmtl.client.batch import batch, read_records
    from vmtl.server.launcher import TritonServer

    if not (DEMO_CHECKPOINT / "model.safetensors").is_file():
        sys.exit("bench_batch: no .cache/demo/checkpoint: run `vmtl demo` first")
    data, repo = CACHE / "data", CACHE / "repo"
    if not (data / "manifest.json").is_file():
        synth = [
            "data",
            "synth",
            "--out",
            str(data),
            "--tasks",
            "motion",
            "object",
            "--videos-per-task",
            "100",
        ]
        if vmtl([*synth, "--seed", "1", "--quiet"]) != 0:
            sys.exit("bench_batch: data generation failed")
    if not (repo / "vmtl.json").is_file() and vmtl(["export", str(DEMO_CHECKPOINT), "--out", str(repo)]) != 0:
        sys.exit("bench_batch: export failed")
    videos = sorted(data.rglob("*.mp4"))
    assert len(videos) == 200, len(videos)

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    rows = []
    load0 = os.getloadavg()[0]
    for engine in engines:
        if engine == "ray" and importlib.util.find_spec("ray") is None:
            rows.append((engine, None, "not installed (pip install -e '.[ray]')"))
            continue
        out = CACHE / f"{engine}.jsonl"
        out.unlink(missing_ok=True)
        kw: dict = {"engine": engine, "out": out, "concurrency": args.concurrency}
        server = None
        if engine == "triton":
            server = TritonServer(
                repo, http_port=0, grpc_port=0, metrics_port=0, log_file=CACHE / "tritonserver.log"
            )
            server.start_ready(600)
            kw["url"] = server.grpc_url
        else:
            kw["repo"] = repo
        try:
            t0 = time.perf_counter()
            summary = batch(str(data / "*" / "videos" / "*.mp4"), **kw)
            wall = time.perf_counter() - t0
        finally:
            if server is not None:
                server.stop()
        records = read_records(out)
        ok = sum(1 for r in records if r.get("ok"))
        unique = len({r["path"] for r in records})
        rows.append((engine, (summary, wall, len(records), unique, ok), ""))
        print(f"{engine}: {summary.describe()} (wall {wall:.1f} s)", file=sys.stderr, flush=True)

    labelled = CACHE / "labelled.jsonl"
    labelled.unlink(missing_ok=True)
    lab = batch(str(data / "motion" / "val.txt"), engine="local", repo=repo, out=labelled)

    lines = [
        f"{SECTION}",
        "",
        "`vmtl batch` over 200 generated videos (motion + object datasets, seed 1: not the demo's training videos; "
        "128 px, 32 frames, h264) with the demo model (configs/demo.yaml trained by `vmtl demo`, exported), all seven tasks, "
        f"`--concurrency {args.concurrency}`, default batch size.",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_batch.py --update-results`. Machine: {platform.machine()}, "
        f"{os.cpu_count()} cores; load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after.",
        "",
        "| engine | videos | records written | distinct videos | ok | errors | wall (s) | videos/s (run) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for engine, res, note in rows:
        if res is None:
            lines.append(f"| {engine} | 200 | - | - | - | - | - | {note} |")
            continue
        summary, wall, n, unique, ok = res
        lines.append(
            f"| {engine} | {summary.total} | {n} | {unique} | {ok} | {summary.errors} | {wall:.1f} | {summary.rate:.1f} |"
        )
    lines += [
        "",
        "`wall` includes the engine's start (ONNX Runtime sessions; for ray, starting the local Ray instance; the "
        "triton row excludes starting the server). Every run completed with one record per video.",
        "",
        f"Labelled input: `vmtl batch .cache/bench_batch/data/motion/val.txt --repo ...` printed the motion metrics over "
        f"{lab.evaluated} held-out videos: "
        + ", ".join(f"{k} {v:.3f}" for k, v in lab.metrics.items())
        + ".",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.update_results:
        update_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

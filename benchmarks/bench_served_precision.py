"""The trunk's chosen precision served end to end: `vmtl_clip` through Triton, the host's own choice vs fp32.

A single-trunk checkpoint (default: bench_throughput.py's ViT-S/16 ``small`` model, 16 x 112 px, 12 blocks,
random weights, with the labels of ``--data``) is exported with ``vmtl export --precision fp32,int8 --runtime auto --data DATA``: every variant
goes through the export's accuracy gate (each task's primary held-out metric within one point of ONNX
Runtime fp32) and is timed; the accepted ones ship side by side. Then one Triton serves the repository
twice:

* ``chosen`` -- as shipped: the backbone host runs the fastest accepted variant this CPU runs natively;
* ``fp32``   -- the same repository with ``VMTL_RUNTIME=ort VMTL_PRECISION=fp32`` (the override a user has).

Per server: the variant the host logged, then `vmtl_clip` with every task on random uint8 clips: latency
(p50 / p90) at concurrency 1 and throughput at concurrency 4 (one client per thread).

    .venv/bin/python benchmarks/bench_served_precision.py --data .cache/demo/data [--update-results]

Random weights make the gate's metrics chance-level: its verdicts say whether the variant changes them by
more than a point, nothing about accuracy on a trained model (bench_precision.py gates the trained demo
trunk).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from vmtl.client import VmtlClient
from vmtl.server.launcher import TritonServer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving_cost import cpu_line  # noqa: E402
from bench_throughput import small_checkpoint  # noqa: E402
from results import publish  # noqa: E402

CACHE = ROOT / ".cache" / "bench_served_precision"
SECTION = "## Served trunk precision (chosen vs fp32, end to end)"


def export(checkpoint: Path, data: Path, out: Path) -> dict:
    """The repository (exported once per checkpoint) and its vmtl.json metadata."""
    if not (out / "vmtl.json").is_file():
        cmd = [
            sys.executable,
            "-m",
            "vmtl.cli",
            "export",
            str(checkpoint),
            "--out",
            str(out),
            "--data",
            str(data),
        ]
        cmd += ["--precision", "fp32,int8", "--runtime", "auto"]
        subprocess.run(cmd, check=True)
    return json.loads((out / "vmtl.json").read_text())["metadata"]


def measure(url: str, rounds: int, concurrency: int) -> dict[str, float]:
    """vmtl_clip latency at concurrency 1 and throughput at ``concurrency`` (every task, random clips)."""
    with VmtlClient(url, timeout=600) as client:
        p = client.preprocess
        shape = (p.num_frames, p.size, p.size, 3)
        rng = np.random.default_rng(0)
        clips = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(8)]
        for clip in clips[:3]:
            client.infer_clip(clip)  # warm-up
        lat = []
        for i in range(rounds):
            t0 = time.perf_counter()
            client.infer_clip(clips[i % len(clips)])
            lat.append(time.perf_counter() - t0)
    done = [0] * concurrency

    def worker(k: int, stop: float) -> None:
        with VmtlClient(url, timeout=600) as c:
            while time.perf_counter() < stop:
                c.infer_clip(clips[k % len(clips)])
                done[k] += 1

    t0 = time.perf_counter()
    stop = t0 + max(10.0, 3 * statistics.median(lat) * rounds / concurrency)
    threads = [threading.Thread(target=worker, args=(k, stop)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "p50_ms": 1e3 * statistics.median(lat),
        "p90_ms": 1e3 * float(np.percentile(lat, 90)),
        "rps": sum(done) / wall,
    }


def serve(repo: Path, env: dict[str, str], rounds: int, concurrency: int) -> tuple[str, dict[str, float]]:
    """(the variant the backbone host logged, the measurements) for one server on ``repo``, with ``env``
    added to this process's environment."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-served-precision-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        log = Path(tmp) / "triton.log"
        server = TritonServer(
            repo, http_port=0, grpc_port=0, metrics_port=0, log_file=log, env={**os.environ, **env}
        )
        server.start_ready(300)
        stack.callback(server.stop)
        found = re.findall(r'backbone: runs ([^"\n]+)', log.read_text())
        runs = found[-1].strip() if found else "?"
        return runs, measure(server.grpc_url, rounds, concurrency)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: a random-init ViT-S/16 model")
    ap.add_argument(
        "--data", type=Path, required=True, help="the checkpoint's tasks' data (the gate's val clips)"
    )
    ap.add_argument("--rounds", type=int, default=30, help="requests at concurrency 1 (default 30)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--update-results", action="store_true")
    args = ap.parse_args(argv)

    if args.checkpoint is None:
        args.checkpoint = CACHE / "vits-checkpoint"
        if not (args.checkpoint / "model.safetensors").is_file():
            small_checkpoint(args.checkpoint, args.data)
    repo = CACHE / "repo"
    meta = export(args.checkpoint, args.data, repo)
    accepted = [f"{v['runtime']} {v['precision']} ({v['speedup']:.2f}x)" for v in meta.get("variants", [])]
    refused = [f"{v['runtime']} {v['precision']}" for v in meta.get("refused", [])]
    rows = {
        "chosen": serve(repo, {}, args.rounds, args.concurrency),
        "fp32": serve(repo, {"VMTL_RUNTIME": "ort", "VMTL_PRECISION": "fp32"}, args.rounds, args.concurrency),
    }
    base = rows["fp32"][1]
    lines = [
        SECTION,
        "",
        f"`.venv/bin/python benchmarks/bench_served_precision.py --data {args.data}`: CPU {cpu_line()}. "
        f"Model: `{args.checkpoint.relative_to(ROOT) if args.checkpoint.is_relative_to(ROOT) else args.checkpoint}` "
        f"({meta['flops']['trunk'] / 1e9:.1f} GFLOP a clip), exported with `--precision fp32,int8 "
        f"--runtime auto`: accepted (export's speed-up at batch 1) {', '.join(accepted) or 'none'}; refused "
        f"{', '.join(refused) or 'none'}. `vmtl_clip`, every task, random uint8 clips; one Triton per row.",
        "",
        "| server | backbone runs | p50 / p90 ms (c=1) | vs fp32 p50 | clips/s (c="
        + str(args.concurrency)
        + ") | vs fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for name, (runs, m) in rows.items():
        lines.append(
            f"| {name} | {runs} | {m['p50_ms']:.1f} / {m['p90_ms']:.1f} | {base['p50_ms'] / m['p50_ms']:.2f}x | "
            f"{m['rps']:.2f} | {m['rps'] / base['rps']:.2f}x |"
        )
    chosen = rows["chosen"][1]
    lines += [
        "",
        f"The served all-task request with the host's own choice is {base['p50_ms'] / chosen['p50_ms']:.2f}x "
        f"as fast as fp32 at concurrency 1 and serves {chosen['rps'] / base['rps']:.2f}x the clips at "
        f"concurrency {args.concurrency}, with no edit to the repository. The issue's target (the served ViT-S "
        "trunk >= 2x ONNX Runtime fp32 at <= 1 point of metric loss) is for a bf16 CPU; on a CPU without bf16 "
        "this is what the fallback gives. The gate's metrics are chance-level (random weights).",
    ]
    publish(SECTION, "\n".join(lines) + "\n", args.update_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

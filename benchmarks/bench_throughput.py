"""Throughput and baselines: `vmtl bench` on two models, recorded in RESULTS.md ("Throughput and baselines").

Models (both the demo's seven-task graph, six tasks asked: motion, object, tags, segments, count, box):

* ``demo``  -- the demo's trained checkpoint (.cache/demo/checkpoint, written by `vmtl demo`): the tiny
               trunk (D=128, 3 layers) on 8 x 64 px clips. Its trunk is so small that fixed per-request
               serving costs weigh heavily.
* ``small`` -- the ``small`` preset (ViT-S/16: D=384, 12 layers, 21.9M parameters, VideoMAE's small
               geometry) on 16 x 112 px clips, randomly initialised (weights do not change the cost; no
               pretrained checkpoint can be downloaded here). Its compute per clip is what a real
               deployment pays, scaled down from 224 px so that a sweep fits in minutes on 2 cores.

Each is exported with `vmtl export` (cached under .cache/bench_throughput/), then `vmtl bench` runs the
sweep with every configuration (the eager PyTorch baseline from the checkpoint) and writes its CSV/JSON/PNG
to benchmarks/results/throughput_<model>.*; ``--update-results`` rewrites the RESULTS.md section.

    .venv/bin/python benchmarks/bench_throughput.py --update-results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import update_section

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench_throughput"
OUT = ROOT / "benchmarks" / "results"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Throughput and baselines"
DEMO_CHECKPOINT = ROOT / ".cache" / "demo" / "checkpoint"
TASKS = "motion,object,tags,segments,count,box"


def small_checkpoint(out: Path, data: Path | None = None) -> Path:
    """A random-init ``small`` (ViT-S/16) model of the demo graph at 16 x 112 px, saved as a checkpoint dir
    (labels from the generated data ``data``, default .cache/demo/data, when present)."""
    import yaml

    from vmtl.demo.config import video_trunk_only
    from vmtl.models.config import ModelConfig
    from vmtl.models.multitask import MultiTaskModel
    from vmtl.tasks import TaskGraph

    spec = video_trunk_only(yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text()))
    data = data or ROOT / ".cache" / "demo" / "data"
    tasks = []
    for t in spec["tasks"]:
        t = dict(t)
        if "labels_file" in t:  # labels from the generated data when present, else placeholders
            f = data / t["data"] / t.pop("labels_file")
            t["labels"] = f.read_text().split() if f.is_file() else [f"class_{i}" for i in range(10)]
        t.pop("data", None)
        tasks.append(t)
    graph = TaskGraph.from_dict(
        {
            "name": "bench-small",
            "preprocess": {"num_frames": 16, "size": 112, "sampling": "uniform"},
            "tasks": tasks,
        }
    )
    model_cfg = {k: v for k, v in spec["model"].items() if k != "backbone"}
    model = MultiTaskModel(graph, ModelConfig(backbone="small", **model_cfg)).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_checkpoint(out / "model.safetensors")
    return out


def export(checkpoint: Path, repo: Path, data: Path | None) -> Path:
    from vmtl.cli import main as vmtl

    manifest = repo / "vmtl.json"
    if manifest.is_file():
        meta = json.loads(manifest.read_text())["metadata"]
        weights = checkpoint / "model.safetensors"
        fresh = not weights.is_file() or manifest.stat().st_mtime >= weights.stat().st_mtime
        if meta.get("flops") and fresh:  # an export of this very checkpoint (not of an older one)
            return repo
        shutil.rmtree(repo)
    argv = ["export", str(checkpoint), "--out", str(repo)]
    if data is not None:
        argv += ["--data", str(data)]
    if vmtl(argv) != 0:
        sys.exit(f"bench_throughput: export of {checkpoint} failed")
    return repo


def run_bench(model: str, repo: Path, checkpoint: Path, concurrency: str, requests: int) -> dict:
    from vmtl.cli import main as vmtl

    out = CACHE / f"run-{model}"
    argv = ["bench", str(repo), "--tasks", TASKS, "--checkpoint", str(checkpoint), "--out", str(out)]
    argv += ["--concurrency", concurrency, "--requests", str(requests)]
    if vmtl(argv) != 0:
        sys.exit(f"bench_throughput: vmtl bench on {repo} failed")
    OUT.mkdir(parents=True, exist_ok=True)
    for name, ext in (("bench", "csv"), ("bench_composing", "csv"), ("bench", "png"), ("bench", "json")):
        suffix = "_composing" if name == "bench_composing" else ""
        shutil.copy2(out / f"{name}.{ext}", OUT / f"throughput_{model}{suffix}.{ext}")
    data = json.loads((out / "bench.json").read_text())
    data["command"] = "vmtl " + " ".join(
        a if not a.startswith(str(ROOT)) else os.path.relpath(a, ROOT) for a in argv
    )
    return data


def _table(data: dict) -> list[str]:
    rows = data["rows"]
    top = max(data["concurrency"])
    lines = [
        "| configuration | concurrency | infer/s | p50 (ms) | p90 (ms) | p99 (ms) | server queue (µs) | server compute infer (µs) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["Configuration"], r["Concurrency"])):
        if r["Concurrency"] not in (min(data["concurrency"]), top):
            continue
        lines.append(
            f"| {r['Configuration']} | {r['Concurrency']} | {float(r['Inferences/Second']):.1f} | "
            f"{r['p50 latency'] / 1e3:.1f} | {r['p90 latency'] / 1e3:.1f} | {r['p99 latency'] / 1e3:.1f} | "
            f"{r['Server Queue']} | {r['Server Compute Infer']} |"
        )
    return lines


def _section(
    results: dict[str, dict], args: argparse.Namespace, load: tuple[float, float], seconds: float
) -> str:
    import onnxruntime

    lines = [
        "Every configuration asked for the same six tasks (motion, object, tags, segments, count, box) on one real clip "
        "(bikes.mp4) sent as a uint8 tensor; perf_analyzer's concurrency mode (N callers, one request in flight each); "
        "configurations measured in turn at each concurrency, in one process.",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_throughput.py --concurrency {args.concurrency} --requests {args.requests} --update-results` ({seconds / 60:.0f} min)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU, Python {platform.python_version()}, onnxruntime "
        f"{onnxruntime.__version__}; Triton 2.51 (nvidia-pytriton's tritonserver, CPU, python-backend ONNX Runtime hosts). "
        f"Load average {load[0]:.1f} before, {load[1]:.1f} after (a shared machine: the ratios measured in one run are the result, not the absolute numbers).",
        "",
    ]
    for model, data in results.items():
        eff = data.get("efficiency") or {}
        lines += [f"### {model}: {MODELS[model]}", "", f"`{data['command']}`", ""]
        lines += _table(data)
        lines += ["", "Targets (at the top concurrency):", ""]
        lines += [
            f"- {'met' if t['met'] else '**missed**'}: {t['target']}: {t['measured']}"
            for t in data["targets"]
        ]
        if eff:
            peak = eff["peak_gflops"]
            lines.append(
                f"- trunk {eff['trunk_flops_per_clip'] / 1e9:.2f} GFLOPs per clip; matmul peak "
                + ", ".join(f"{k} {v:.1f}" for k, v in peak.items())
                + " GFLOP/s; in-process trunk "
                + ", ".join(
                    f"batch {b}: {c * eff['trunk_flops_per_clip'] / 1e9:.1f} GFLOP/s"
                    for b, c in eff["inprocess_clips_per_s"].items()
                )
            )
        lines += [
            "",
            f"Files: `benchmarks/results/throughput_{model}.csv` (perf_analyzer columns), `throughput_{model}_composing.csv` "
            f"(per composing model), `throughput_{model}.png`, `throughput_{model}.json`.",
            "",
        ]
    lines += [
        "Reading it: the served ensemble runs the trunk once per clip, so against six independent models (six trunk "
        "passes per clip) it wins by about the number of tasks once the trunk dominates the cost; against the trunk "
        "alone it loses only the heads' python-backend hops, a few ms per request. Those hops are why the "
        "demo model misses the first two targets: its trunk (16 px patches, 0.11 GFLOPs a clip) costs about "
        "as much as the hops, whereas the ViT-S trunk, what a real trunk costs, meets both (the demo's "
        "previous trunk, 8 px patches and 0.37 GFLOPs, met them at 0.86x and 4.9x). Dynamic batching is what "
        "lifts the tiny model's throughput with concurrency; the ViT-S trunk already keeps both cores busy at "
        "batch 1, so batching adds little there (0.96x-1.08x across runs: noise). The trunk's share of the "
        "matmul peak depends on its matrix sizes: ViT-S's 384-wide matmuls over 392 tokens reach most of the "
        "peak, the tiny trunk's 128-wide ones do not. Until session 2 the repository wrote a `max_queue_size` "
        "queue policy on every batcher; Triton 2.51 then loses a batcher wake-up and stalls in-flight requests "
        "for ~520 ms about once a second under concurrent load (the same sweep gave the tiny ensemble 34 "
        "infer/s at concurrency 8 instead of 139); `vmtl export` now writes no queue policy unless "
        "`--max-queue-size` asks for one.",
        "",
    ]
    return "\n".join(lines).rstrip() + "\n"


MODELS = {
    "demo": "the demo's trained tiny trunk (D=128, 3 layers), 8 x 64 px clips",
    "small": "ViT-S/16 (`small` preset, 21.9M-parameter trunk, random weights), 16 x 112 px clips",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="demo,small", help="comma-separated: demo, small (default both)")
    ap.add_argument("--concurrency", default="1,2,4,8", help="sweep (default 1,2,4,8)")
    ap.add_argument("--requests", type=int, default=24, help="timed requests per point (default 24)")
    ap.add_argument("--update-results", action="store_true", help=f"rewrite '{SECTION}' in {RESULTS}")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        sys.exit(f"bench_throughput: unknown model(s) {bad}; choose from {', '.join(MODELS)}")
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    results: dict[str, dict] = {}
    for model in models:
        if model == "demo":
            if not (DEMO_CHECKPOINT / "model.safetensors").is_file():
                sys.exit(
                    "bench_throughput: no .cache/demo/checkpoint: run `vmtl demo` first (or --models small)"
                )
            ckpt = DEMO_CHECKPOINT
            data = ROOT / ".cache" / "demo" / "data"
            repo = export(ckpt, CACHE / "demo-repo", data if data.is_dir() else None)
        else:
            ckpt = CACHE / "small-checkpoint"
            if not (ckpt / "model.safetensors").is_file():
                small_checkpoint(ckpt)
            repo = export(ckpt, CACHE / "small-repo", None)
        print(f"== {model}: {MODELS[model]}", file=sys.stderr, flush=True)
        results[model] = run_bench(model, repo, ckpt, args.concurrency, args.requests)
    seconds = time.perf_counter() - t0
    text = _section(results, args, (load0, os.getloadavg()[0]), seconds)
    print(text)
    if args.update_results:
        update_section(SECTION, f"{SECTION}\n\n{text}")
        print(f"updated {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

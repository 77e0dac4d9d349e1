"""Two local servers against one, on the same batch: `vmtl batch --engine triton --url a[,b]`, videos/s.

Writes the tests' toy repository (tests/test_repository.py: 3 tasks, hand-made ONNX, 4x32x32 clips; no
torch), generates ``--videos`` synthetic videos (vmtl.data.synth, motion task, 64 px, 16 frames, h264),
starts two tritonservers on it, and runs the same batch (``--concurrency`` videos in flight, the server
decodes) through one server, then through both (``--url a,b``), ``--repeat`` times each, alternating.
A run's rate is videos over its wall time; the table keeps the best of the repeats and the mean.

    .venv/bin/python benchmarks/bench_servers.py --update-results
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from overload import _cpu  # noqa: E402
from results import update_section  # noqa: E402

SECTION = "## Several servers"


def main(argv: list[str] | None = None) -> int:
    from test_repository import make_toy_models, toy_graph

    from vmtl.client.batch import batch
    from vmtl.data.synth import SynthConfig, generate
    from vmtl.export.repository import write_repository
    from vmtl.server.launcher import TritonServer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--update-results", action="store_true", help=f"rewrite '{SECTION}' in RESULTS.md")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="vmtl-servers-") as tmp:
        work = Path(tmp)
        graph = toy_graph()
        trunk, heads = make_toy_models(work / "onnx", graph)
        repo = write_repository(work / "repo", graph, trunk, heads, max_batch_size=8)
        cfg = SynthConfig(videos_per_task=args.videos, size=64, num_frames=16, tasks=("motion",))
        generate(work / "data", cfg, workers=2, progress=False)
        videos = str(work / "data" / "motion" / "videos")
        n = len(list(Path(videos).glob("*.mp4")))
        rates: dict[str, list[float]] = {"one server": [], "two servers": []}
        servers = [
            TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=work / f"{k}.log")
            for k in "ab"
        ]
        try:
            for s in servers:
                s.start_ready(120)
            urls = {"one server": servers[0].grpc_url, "two servers": ",".join(s.grpc_url for s in servers)}
            batch(videos, engine="triton", url=urls["two servers"], out=work / "warm.jsonl", progress=False)
            for i in range(args.repeat):
                for label, url in urls.items():
                    out = work / f"{label}-{i}.jsonl"
                    t0 = time.perf_counter()
                    summary = batch(
                        videos,
                        engine="triton",
                        url=url,
                        out=out,
                        concurrency=args.concurrency,
                        progress=False,
                    )
                    seconds = time.perf_counter() - t0
                    assert summary.ok == n, summary.describe()
                    rates[label].append(n / seconds)
                    print(f"{label}: {n} videos in {seconds:.2f} s = {n / seconds:.1f} videos/s")
        finally:
            for s in servers:
                s.stop()
    rows = "".join(
        f"| {label} | {n} | {args.concurrency} | {max(r):.1f} | {statistics.mean(r):.1f} |\n"
        for label, r in rates.items()
    )
    speedup = max(rates["two servers"]) / max(rates["one server"])
    text = (
        f"{SECTION}\n\n"
        f"`benchmarks/bench_servers.py --videos {args.videos} --concurrency {args.concurrency} --repeat {args.repeat}`: "
        "`vmtl batch --engine triton` over the same generated videos (motion task, 64 px, 16 frames, h264; "
        "the server decodes) on the tests' toy repository, through one server and through two "
        "(`--url a,b`: the client sends each request to the server with fewer in flight). Both servers "
        "run on this one machine.\n\n"
        "| servers | videos | videos in flight | videos/s (best) | videos/s (mean) |\n|---|---:|---:|---:|---:|\n"
        f"{rows}\n"
        f"Two servers / one: **{speedup:.2f}x**. On this machine both servers share the same CPUs, so a "
        "second server adds no compute: it helps only where one server leaves cores idle (one model "
        "instance, a serial stage). Across machines each server brings its own CPUs or GPU; the test "
        "tests/test_several_servers.py shows that losing one mid-batch loses and repeats no video.\n\n"
        f"CPU: {_cpu()}.\n"
    )
    print(text)
    if args.update_results:
        update_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

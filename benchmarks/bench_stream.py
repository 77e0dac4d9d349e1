"""Long-video benchmark: one stream (``vmtl_stream``) vs per-window bytes requests vs clip mode, and the
backbone's response cache.

A generated 720p h264 video (default 10 minutes, 25 fps, 2 s GOP; written with PyAV into
``.cache/bench_stream`` on first use) is analysed at 4 s windows three ways against one real Triton:

* ``stream`` -- :meth:`vmtl.client.VmtlClient.stream`: the file sent once, windows back as decoded;
* ``bytes``  -- the per-window path (one ``vmtl_video`` request carrying the whole file per window);
* ``clip``   -- decode here, send each window's uint8 clip to ``vmtl_clip``.

For each: payload bytes sent, seconds to the first window result, total seconds, measured after one
warm-up stream and analysis of a short video (a cold server's first request pays its sessions' set-up).
The stream runs twice: on the video with its index in front (``faststart``, decoding starts on the first
uploaded chunk) and on the same video with its index at the end. Beside them, the decoder's own share of
the stream's first window, timed in process on the same file: opening it, then indexing and decoding what
the first window needs. Then the cache: the
latency of a clip's first request (tasks ``A``) and of the same clip again with other tasks (a cache hit,
trunk skipped), median over a few fresh clips.

The model: ``--repo`` (a repository written by ``vmtl export --cache``, e.g. bench_throughput.py's ViT-S/16
``small`` model) or, by default, hand-made ONNX graphs (the tests' toy trunk: 4 frames of 32 px, compute
close to nothing, so the numbers are transport + decoding).

    .venv/bin/python benchmarks/bench_stream.py                       # print the table
    .venv/bin/python benchmarks/bench_stream.py --minutes 2           # a shorter video
    .venv/bin/python benchmarks/bench_stream.py --update-results      # also rewrite its RESULTS.md section
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from vmtl.client import VmtlClient
from vmtl.client.stream import StreamInfo
from vmtl.export.repository import write_repository
from vmtl.server.launcher import TritonServer, response_cache_args
from vmtl.video import window_stream

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from results import update_section  # noqa: E402

CACHE = ROOT / ".cache" / "bench_stream"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Long videos: streaming and the trunk cache"


def make_video(path: Path, minutes: float, fps: int = 25, *, faststart: bool = True) -> Path:
    """A 1280x720 h264 mp4: a textured pan with a moving box, 2 s GOP (x264 veryfast, crf 28); its index
    (``moov``) in front with ``faststart`` (what a web-ready file has), else at the end."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = 1280, 720
    rng = np.random.default_rng(0)
    tex = np.repeat(np.repeat(rng.integers(0, 256, (h // 16 + 80, w // 16 + 80, 3), np.uint8), 16, 0), 16, 1)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"g": str(2 * fps), "preset": "veryfast", "crf": "28"}
        for i in range(int(minutes * 60 * fps)):
            x = (i * 2) % 1200
            frame = np.ascontiguousarray(tex[(i // 7) % 600 : (i // 7) % 600 + h, x : x + w])
            frame[300:400, (i * 5) % (w - 100) : (i * 5) % (w - 100) + 100] = (255, 64, 0)
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            out.mux(stream.encode(vf))
        out.mux(stream.encode(None))
    tmp.rename(path)
    return path


def toy_repository(out: Path) -> Path:
    """The tests' hand-made ONNX graphs (toy trunk + 3 heads), exported with the backbone cache on."""
    from test_repository import make_toy_models, toy_graph  # the tests' models (no torch)

    graph = toy_graph()
    trunk, heads = make_toy_models(out / "onnx", graph)
    return write_repository(out / "repo", graph, trunk, heads, cache=True)


def run_stream(client: VmtlClient, video: Path, tasks: list[str], window: float) -> dict[str, float]:
    t0 = time.perf_counter()
    with client.stream(video, tasks, window=window) as stream:
        first = None
        n = 0
        for _ in stream:
            n += 1
            first = first if first is not None else time.perf_counter() - t0
        sent = stream.bytes_sent
    return {"windows": n, "bytes": sent, "first_s": first or 0.0, "total_s": time.perf_counter() - t0}


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _totals(runs: list[dict[str, float]]) -> str:
    return ", ".join(f"{r['total_s']:.2f}" for r in runs)


def decoder_parts(video: Path, client: VmtlClient, window: float) -> dict[str, float]:
    """In process, what the streaming decoder spends before the first window: opening the file, then
    indexing and decoding what the first window needs; and one later window's."""
    p = client.preprocess
    data = video.read_bytes()
    t0 = time.perf_counter()
    stream = window_stream(data, p.num_frames, p.size, window=window, stride=window, sampling=p.sampling)
    index = time.perf_counter() - t0
    windows = iter(stream)
    next(windows)
    first = time.perf_counter() - t0 - index
    t1 = time.perf_counter()
    next(windows)
    second = time.perf_counter() - t1
    stream.close()
    return {"index_s": index, "first_decode_s": first, "next_decode_s": second}


def warm_up(client: VmtlClient, window: float) -> None:
    """One short stream and one windowed clip-mode analysis, so no measured path pays a cold start."""
    short = make_video(CACHE / "720p-0.1min-faststart.mp4", 0.1)
    with client.stream(short, client.tasks, window=window) as stream:
        for _ in stream:
            pass
    run_analyze(client, short, client.tasks, window, "clip")


def run_analyze(
    client: VmtlClient, video: Path, tasks: list[str], window: float, mode: str
) -> dict[str, float]:
    """Today's windowed analyze (bytes: one whole-file request per window; clip: decoded here); nothing
    comes back before every window is done, so the first window's time is the total."""
    saved = getattr(client, "_stream_info", None)
    client._stream_info = StreamInfo(False, 0, "benchmark: per-window path")  # type: ignore[attr-defined]
    try:
        t0 = time.perf_counter()
        result = client.analyze(video, tasks, mode=mode, window=window)  # type: ignore[arg-type]
        total = time.perf_counter() - t0
    finally:
        client._stream_info = saved  # type: ignore[attr-defined]
    n = len(result.windows)
    size = video.stat().st_size
    p = client.preprocess
    sent = size * n if mode == "bytes" else n * p.num_frames * p.size * p.size * 3
    return {"windows": n, "bytes": sent, "first_s": total, "total_s": total}


def run_cache(client: VmtlClient, rounds: int) -> dict[str, float]:
    """Latency of a fresh clip (tasks: the first) vs the same clip again (the other tasks: a cache hit)."""
    shape = client.clip_shape
    tasks = client.tasks
    first, again = [], []
    rng = np.random.default_rng(int(time.time()))
    client.infer_clip(rng.integers(0, 256, shape, dtype=np.uint8), tasks[:1])  # warm-up
    for _ in range(rounds):
        clip = rng.integers(0, 256, shape, dtype=np.uint8)
        t0 = time.perf_counter()
        client.infer_clip(clip, tasks[:1])
        first.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        client.infer_clip(clip, tasks[1:] or tasks)
        again.append(time.perf_counter() - t0)
    return {"first_ms": 1e3 * statistics.median(first), "again_ms": 1e3 * statistics.median(again)}


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    model = fields.get("Model name", platform.processor() or "?").strip()
    flags = [
        f for f in fields.get("Flags", "").split() if f in ("avx2", "avx512f", "avx512_vnni", "fma", "sse4_2")
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{model}, {os.cpu_count()} cores (flags: {' '.join(flags) or '?'}), Python {platform.python_version()}, "
        f"PyAV {av.__version__}; load average {load:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="video length (default: 10)")
    ap.add_argument("--window", type=float, default=4.0, help="window seconds (default: 4)")
    ap.add_argument(
        "--repo", type=Path, default=None, help="a repository exported with --cache (default: toy)"
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="rounds of stream / clip, alternated (medians; default: 3)"
    )
    ap.add_argument("--cache-rounds", type=int, default=5)
    ap.add_argument("--skip-bytes", action="store_true", help="leave out the per-window bytes path (slow)")
    ap.add_argument("--update-results", action="store_true")
    args = ap.parse_args(argv)

    video = make_video(CACHE / f"720p-{args.minutes:g}min-faststart.mp4", args.minutes)
    moov_last = make_video(CACHE / f"720p-{args.minutes:g}min.mp4", args.minutes, faststart=False)
    size = video.stat().st_size
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp, contextlib.ExitStack() as stack:
        repo = args.repo or toy_repository(Path(tmp))
        server = TritonServer(
            repo, http_port=0, grpc_port=0, metrics_port=0, log_file=Path(tmp) / "triton.log",
            extra_args=response_cache_args(256),
        )  # fmt: skip
        server.start_ready(300)
        stack.callback(server.stop)
        client = stack.enter_context(VmtlClient(server.grpc_url, timeout=3600))
        tasks = client.tasks
        warm_up(client, args.window)
        parts = decoder_parts(video, client, args.window)
        chunk = client._client.get_model_config("video_stream").config.parameters
        chunk_bytes = int(chunk["upload_chunk_bytes"].string_value) if "upload_chunk_bytes" in chunk else 0
        runs: dict[str, list[dict[str, float]]] = {"stream": [], "stream, moov at end": [], "clip": []}
        for _ in range(args.rounds):  # alternated, so a noisy moment does not land on one path only
            runs["stream"].append(run_stream(client, video, tasks, args.window))
            runs["stream, moov at end"].append(run_stream(client, moov_last, tasks, args.window))
            runs["clip"].append(run_analyze(client, video, tasks, args.window, "clip"))
        rows = {name: _median(rs) for name, rs in runs.items()}
        if not args.skip_bytes:
            rows["bytes"] = run_analyze(client, video, tasks, args.window, "bytes")
        cache = run_cache(client, args.cache_rounds)
    model = (
        f"`{args.repo}`" if args.repo else "the tests' toy ONNX graphs (4 frames x 32 px; trunk compute ~0)"
    )
    lines = [
        SECTION,
        "",
        f"A generated {args.minutes:g}-minute 1280x720 h264 video ({size / 2**20:.1f} MiB, 25 fps, 2 s GOP, its "
        f"index in front: `movflags=faststart`) at {args.window:g} s windows, every task; one Triton 2.51 (cpu "
        f"flavour), model: {model}. The stream uploads it in chunks of {chunk_bytes / 2**20:g} MiB "
        "(`upload_chunk_bytes`); `stream, moov at end` is the same video written with its index at the end, "
        "which the decoder can only start on once the last chunk is in.",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_stream.py --minutes {args.minutes:g} --rounds {args.rounds}"
        + (f" --repo {args.repo}" if args.repo else "")
        + (" --skip-bytes" if args.skip_bytes else "")
        + " --update-results`",
        "",
        f"Machine: {machine()} (shared: wall times are noisy).",
        "",
        f"Medians of {args.rounds} alternated rounds (`bytes`: one run).",
        "",
        "| path | windows | bytes sent | sent / file | first window (s) | total (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['windows']:.0f} | {r['bytes']:.0f} | {r['bytes'] / size:.2f}x | "
            f"{r['first_s']:.2f} | {r['total_s']:.2f} |"
        )
    lines += [
        "",
        "Per round, total (s): "
        + "; ".join(f"{name} {_totals(rs)}" for name, rs in runs.items())
        + "; stream / clip "
        + ", ".join(
            f"{a['total_s'] / b['total_s']:.2f}x" for a, b in zip(runs["stream"], runs["clip"], strict=True)
        )
        + ".",
        "",
        "`bytes` and `clip` are the per-window paths: nothing comes back before every window is done, so "
        "their first window is their total. `clip` sends uint8 clips, not the file. All after a warm-up "
        "stream and clip-mode analysis of a 6 s video.",
        "",
        f"The decoder's share of the stream's first window (in process, same file): open "
        f"{parts['index_s']:.2f} s, indexing and decoding what the first window needs "
        f"{parts['first_decode_s']:.2f} s, a later window {parts['next_decode_s']:.2f} s. "
        f"Clip mode's mean per window: {rows['clip']['total_s'] / max(rows['clip']['windows'], 1):.3f} s.",
        "",
        f"Cache (median of {args.cache_rounds} fresh clips): first request {cache['first_ms']:.1f} ms, the "
        f"same clip again with other tasks {cache['again_ms']:.1f} ms "
        f"({cache['again_ms'] / cache['first_ms']:.2f}x; the backbone answered from Triton's response cache).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.update_results:
        update_section(SECTION, text, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())

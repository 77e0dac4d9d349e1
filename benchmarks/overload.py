"""Overload: offer a server 4x what it can serve, with and without the client's ``max_pending`` bound.

Starts tritonserver on the tests' toy repository with a deliberately slow backbone (tests/
test_reliability.py's ``slow_trunk``: ~50 ms per clip, batch 1, one thread, no queue policy), measures
its capacity with a closed loop, then offers ``--factor`` times that rate open-loop (requests started on
a clock, whatever came back) for ``--seconds``: once through a client with ``max_pending`` (requests
beyond it refused at once with ``ServerBusyError``), once without (every request waits in Triton's
unbounded queue). Reports offered and served rates, refusals, the worst latency of a served request,
the most requests in flight, and the server's resident memory (tritonserver + stubs, /proc) before and
after.

    .venv/bin/python benchmarks/overload.py                      # prints the table
    .venv/bin/python benchmarks/overload.py --update-results     # also rewrites its RESULTS.md section
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from results import update_section  # noqa: E402
from soak import tree_rss  # noqa: E402

SECTION = "## Overload and backpressure"


@dataclass
class OverloadResult:
    bound: int | None  # max_pending (None: no bound)
    capacity: float  # req/s, closed loop
    offered: int
    seconds: float  # of offering
    drained: float  # from the first request until the last answer
    served: int
    refused: int  # ServerBusyError
    other_errors: int
    worst_latency: float  # s, of a served request
    worst_refusal: float  # s, until a refusal came back
    most_in_flight: int
    rss_before: int
    rss_after: int
    refusal: str = ""  # the first refusal's message

    @property
    def offered_rate(self) -> float:
        return self.offered / self.seconds

    @property
    def served_rate(self) -> float:
        return self.served / self.drained

    def row(self) -> str:
        bound = f"max_pending {self.bound}" if self.bound else "none"
        return (
            f"| {bound} | {self.offered_rate:.1f} | {self.served_rate:.1f} | {self.refused} | {self.other_errors} | "
            f"{self.worst_latency:.2f} | {self.worst_refusal * 1000:.0f} | {self.most_in_flight} | "
            f"{self.rss_before / 2**20:.0f} -> {self.rss_after / 2**20:.0f} |"
        )


def capacity(client: Any, clip: Any, seconds: float = 2.0, concurrency: int = 4) -> float:
    """Requests per second the server answers to a closed loop of ``concurrency`` callers."""
    done = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def loop() -> None:
        nonlocal done
        while time.monotonic() < stop:
            client.analyze(clip, mode="clip")
            with lock:
                done += 1

    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(loop) for _ in range(concurrency)]:
            f.result()
    return done / (time.monotonic() - t0)


def offer(
    url: str, server_pid: int, clip: Any, rate: float, seconds: float, bound: int | None, cap: float
) -> OverloadResult:
    """Open loop: start a request every 1/rate s for ``seconds`` (a pool large enough never to hold one
    back), each through one shared client with ``max_pending=bound``; wait for all to end."""
    from vmtl.client import ServerBusyError, VmtlClient

    n = int(rate * seconds)
    outcomes: list[tuple[str, float]] = []
    refusals: list[str] = []
    lock = threading.Lock()
    in_flight = most = 0
    with VmtlClient(url, timeout=120, max_pending=bound) as client:
        client.analyze(clip, mode="clip")
        rss_before = tree_rss(server_pid)

        def one() -> None:
            nonlocal in_flight, most
            with lock:
                in_flight += 1
                most = max(most, in_flight)
            t0 = time.monotonic()
            try:
                client.analyze(clip, mode="clip")
                kind = "ok"
            except ServerBusyError as exc:
                kind = "busy"
                refusals.append(str(exc))
            except Exception:
                kind = "error"
            with lock:
                in_flight -= 1
                outcomes.append((kind, time.monotonic() - t0))

        t0 = time.monotonic()
        with ThreadPoolExecutor(max(64, n)) as pool:
            for i in range(n):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(one)
            sent_for = time.monotonic() - t0
        drained = time.monotonic() - t0
        rss_after = tree_rss(server_pid)
    lat = [s for k, s in outcomes if k == "ok"]
    busy = [s for k, s in outcomes if k == "busy"]
    return OverloadResult(
        bound=bound,
        capacity=cap,
        offered=n,
        seconds=sent_for,
        drained=drained,
        served=len(lat),
        refused=len(busy),
        other_errors=sum(k == "error" for k, _ in outcomes),
        worst_latency=max(lat, default=0.0),
        worst_refusal=max(busy, default=0.0),
        most_in_flight=most,
        rss_before=rss_before,
        rss_after=rss_after,
        refusal=refusals[0] if refusals else "",
    )


def slow_repository(work: Path) -> Path:
    """The toy repository with a ~50 ms backbone, batch 1, one thread, no batching delay, no queue bound."""
    from test_reliability import slow_trunk
    from test_repository import make_toy_models, toy_graph

    from vmtl.export.repository import write_repository

    graph = toy_graph()
    trunk, heads = make_toy_models(work / "onnx", graph)
    slow = slow_trunk(trunk, work / "slow_trunk.onnx")
    return write_repository(
        work / "repo", graph, slow, heads, max_batch_size=1, cpu_threads=1, queue_delay_us=0
    )


def run(factor: float, seconds: float, bound: int, work: Path) -> list[OverloadResult]:
    from soak import sample_clip_path
    from test_repository import FRAMES, SIZE

    from vmtl.client import VmtlClient
    from vmtl.server.launcher import TritonServer
    from vmtl.video import read_clip

    repo = slow_repository(work)
    clip = read_clip(sample_clip_path(), FRAMES, SIZE)
    results = []
    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=work / "triton.log") as server:
        server.wait_ready(120)
        assert server.pid is not None
        with VmtlClient(server.grpc_url) as probe:
            cap = capacity(probe, clip)
        for b in (bound, None):
            results.append(offer(server.grpc_url, server.pid, clip, factor * cap, seconds, b, cap))
    return results


def section(results: list[OverloadResult], factor: float) -> str:
    cpu = _cpu()
    cap = results[0].capacity
    return (
        f"{SECTION}\n\n"
        f"`benchmarks/overload.py --factor {factor:g}`: the real tritonserver on the tests' toy repository "
        "with a slow backbone (~50 ms per clip, batch 1, one thread, no queue policy: Triton's queue is "
        f"unbounded). Capacity, closed loop of 4 callers: **{cap:.1f} req/s**. Then {factor:g}x that, open "
        "loop (a request started on a clock whatever came back) through one `VmtlClient`, with and "
        "without `max_pending`. RSS: tritonserver and its stubs, before and after.\n\n"
        "| client bound | offered (req/s) | served (req/s, until the last answer) | refused (ServerBusyError) | other errors | "
        "worst served latency (s) | worst refusal (ms) | most in flight | server RSS (MiB) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---|\n"
        + "\n".join(r.row() for r in results)
        + "\n\nWith the bound, what the server cannot take is refused at once and the latency of what it "
        "serves stays near one request's; without it every request is accepted and waits, the wait grows "
        "with the run (Triton's queue has no bound: `max_queue_size` needs a queue policy, which Triton "
        "2.51's batcher turns into ~500 ms stalls; `--rate-limit` only orders executions, it refuses "
        "nothing). The clips here are 12 KB, so the queue's memory stays small; at 16x224x224 a queued "
        "clip holds 2.4 MB.\n\n"
        f"CPU: {cpu}.\n"
    )


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    info = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    flags = info.get("Flags", "").split()
    simd = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if f in flags)
    return f"{info.get('Model name', '?')}, {info.get('CPU(s)', '?')} CPUs, flags {simd or 'none of avx2/avx512'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--factor", type=float, default=4.0, help="offered load over capacity (default 4)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds of offered load (default 5)")
    ap.add_argument("--bound", type=int, default=4, help="the client's max_pending (default 4)")
    ap.add_argument("--update-results", action="store_true", help=f"rewrite '{SECTION}' in RESULTS.md")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vmtl-overload-") as tmp:
        results = run(args.factor, args.seconds, args.bound, Path(tmp))
    text = section(results, args.factor)
    print(text)
    if args.update_results:
        update_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""perf_analyzer-style load: N synchronous callers in a loop (concurrency mode), latencies and throughput,
and Triton's server-side breakdown per model from two statistics-API snapshots around the window.

Vocabulary and units follow perf_analyzer: throughput in inferences/second over the measurement window,
latency percentiles and the server columns in microseconds (``Server Queue``, ``Server Compute Input``,
``Server Compute Infer``, ``Server Compute Output``: mean per request; for an ensemble, the sum over its
composing models, as perf_analyzer reports it).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: perf_analyzer's CSV columns that vmtl bench fills (the ones it cannot measure, client send/recv, are left
#: out rather than faked); ``Configuration`` is vmtl's, first, since one file holds every configuration.
CSV_COLUMNS = (
    "Configuration",
    "Concurrency",
    "Inferences/Second",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
    "Avg latency",
    "Requests",
    "Errors",
)
COMPOSING_COLUMNS = (
    "Configuration",
    "Concurrency",
    "Model",
    "Requests",
    "Executions",
    "Avg Batch",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Server Total",
)
STAGES = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class ModelTimes:
    """One model's share of a window, from Triton's statistics API: mean microseconds per request."""

    requests: int
    executions: int
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float
    total_us: float

    @property
    def avg_batch(self) -> float:
        """Requests per execution: how much the dynamic batcher merged."""
        return self.requests / self.executions if self.executions else 0.0


def breakdown(before: Mapping[str, Mapping], after: Mapping[str, Mapping]) -> dict[str, ModelTimes]:
    """Per-model :class:`ModelTimes` between two ``get_inference_statistics(as_json=True)`` snapshots
    (keyed by model name); models without successful requests in between are left out."""
    rows: dict[str, ModelTimes] = {}
    for name, a in after.items():
        b = before.get(name, {})
        ia, ib = a.get("inference_stats", {}), b.get("inference_stats", {})

        def delta(stage: str, key: str, ia: Mapping = ia, ib: Mapping = ib) -> int:
            return int(ia.get(stage, {}).get(key, 0)) - int(ib.get(stage, {}).get(key, 0))

        count = delta("success", "count")
        if count <= 0:
            continue
        us = {s: delta(s, "ns") / count / 1e3 for s in (*STAGES, "success")}
        rows[name] = ModelTimes(
            requests=count,
            executions=int(a.get("execution_count", 0)) - int(b.get("execution_count", 0)),
            queue_us=us["queue"],
            compute_input_us=us["compute_input"],
            compute_infer_us=us["compute_infer"],
            compute_output_us=us["compute_output"],
            total_us=us["success"],
        )
    return dict(sorted(rows.items()))


@dataclass
class Measurement:
    """One configuration at one concurrency."""

    config: str
    concurrency: int
    latencies_s: np.ndarray
    window_s: float
    errors: int = 0
    first_error: str | None = None
    model: str | None = None  # the Triton model the requests named (None: in-process)
    server: dict[str, ModelTimes] = field(default_factory=dict)
    clips_per_request: int = 1

    @property
    def throughput(self) -> float:
        """Inferences (clips) per second over the window."""
        return len(self.latencies_s) * self.clips_per_request / self.window_s if self.window_s > 0 else 0.0

    def latency_us(self, q: float | None = None) -> float:
        """Percentile ``q`` of the request latency (None: the mean), microseconds."""
        if not len(self.latencies_s):
            return math.nan
        lat = self.latencies_s * 1e6
        return float(lat.mean() if q is None else np.percentile(lat, q))

    def composing(self) -> dict[str, ModelTimes]:
        """The server rows of the models this configuration's requests ran, its own model excluded."""
        return {k: v for k, v in self.server.items() if k != self.model}

    def server_columns(self) -> dict[str, float]:
        """perf_analyzer's Server Queue/Compute columns: the requested model's own times, or for an
        ensemble (whose own stats are its end-to-end time) the sum over its composing models, each weighted
        by its requests per top-level request."""
        top = self.server.get(self.model or "")
        parts = self.composing() if self.composing() else ({self.model: top} if top else {})
        if not parts or top is None or not top.requests:
            return {}
        out = {"queue": 0.0, "compute_input": 0.0, "compute_infer": 0.0, "compute_output": 0.0}
        for t in parts.values():
            w = t.requests / top.requests
            out["queue"] += t.queue_us * w
            out["compute_input"] += t.compute_input_us * w
            out["compute_infer"] += t.compute_infer_us * w
            out["compute_output"] += t.compute_output_us * w
        out["total"] = top.total_us
        return out

    def row(self) -> dict[str, Any]:
        """One CSV row (:data:`CSV_COLUMNS`)."""
        s = self.server_columns()
        avg = self.latency_us()
        return {
            "Configuration": self.config,
            "Concurrency": self.concurrency,
            "Inferences/Second": round(self.throughput, 3),
            "Network+Server Send/Recv": round(avg - s["total"]) if s else "",
            "Server Queue": round(s["queue"]) if s else "",
            "Server Compute Input": round(s["compute_input"]) if s else "",
            "Server Compute Infer": round(s["compute_infer"]) if s else "",
            "Server Compute Output": round(s["compute_output"]) if s else "",
            "p50 latency": round(self.latency_us(50)),
            "p90 latency": round(self.latency_us(90)),
            "p95 latency": round(self.latency_us(95)),
            "p99 latency": round(self.latency_us(99)),
            "Avg latency": round(avg),
            "Requests": len(self.latencies_s),
            "Errors": self.errors,
        }

    def composing_rows(self) -> list[dict[str, Any]]:
        """One row per model the server ran (:data:`COMPOSING_COLUMNS`)."""
        return [
            {
                "Configuration": self.config,
                "Concurrency": self.concurrency,
                "Model": name,
                "Requests": t.requests,
                "Executions": t.executions,
                "Avg Batch": round(t.avg_batch, 2),
                "Server Queue": round(t.queue_us),
                "Server Compute Input": round(t.compute_input_us),
                "Server Compute Infer": round(t.compute_infer_us),
                "Server Compute Output": round(t.compute_output_us),
                "Server Total": round(t.total_us),
            }
            for name, t in self.server.items()
        ]


class LoadError(RuntimeError):
    """Every request of a configuration failed: there is nothing to measure."""


def settled(
    stats: Callable[[], Mapping[str, Mapping]], *, pause_s: float = 0.02, tries: int = 25
) -> Mapping[str, Mapping]:
    """A statistics snapshot whose success counts no longer move: Triton counts a composing model's
    request a moment after the ensemble's response has reached the client, so a snapshot taken at once
    can miss the window's last requests (or catch the warm-up's)."""

    def counts(snap: Mapping[str, Mapping]) -> dict[str, int]:
        return {
            n: int(m.get("inference_stats", {}).get("success", {}).get("count", 0)) for n, m in snap.items()
        }

    prev = stats()
    for _ in range(tries):
        time.sleep(pause_s)
        cur = stats()
        if counts(cur) == counts(prev):
            return cur
        prev = cur
    return prev


def run_load(
    config: str,
    call: Callable[[], object],
    concurrency: int,
    *,
    requests: int,
    warmup: int = 0,
    stats: Callable[[], Mapping[str, Mapping]] | None = None,
    model: str | None = None,
    clips_per_request: int = 1,
) -> Measurement:
    """Run ``requests`` timed calls of ``call`` from ``concurrency`` threads, each calling in a loop (one
    request in flight per thread, as perf_analyzer's concurrency mode), after about ``warmup`` untimed
    calls spread over the same threads (at least one each when ``warmup`` > 0). ``stats`` (Triton's
    statistics) is read just before and after the timed window.

    A failing call is counted in ``errors`` (its first message kept) and not timed; if every call fails,
    :class:`LoadError` says why."""
    if concurrency < 1 or requests < 1:
        raise ValueError(f"concurrency and requests must be >= 1, got {concurrency} and {requests}")
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    tickets = [requests]
    # The same threads warm up and then measure: a caller's first requests (a new gRPC channel, lazily
    # created sessions) must not land in the window.
    warm_each = math.ceil(warmup / concurrency) if warmup else 0
    warmed = threading.Barrier(concurrency + 1)
    start = threading.Barrier(concurrency + 1)

    def worker() -> None:
        for _ in range(warm_each):
            with contextlib.suppress(Exception):  # a failing call fails again in the window, counted there
                call()
        warmed.wait()
        start.wait()
        while True:
            with lock:
                if tickets[0] <= 0:
                    return
                tickets[0] -= 1
            t0 = time.perf_counter()
            try:
                call()
            except Exception as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    warmed.wait()
    before = settled(stats) if stats else {}
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    window = time.perf_counter() - t0
    after = settled(stats) if stats else {}
    if not latencies:
        raise LoadError(
            f"{config}: all {requests} requests failed; first error: {errors[0] if errors else '?'}"
        )
    return Measurement(
        config=config,
        concurrency=concurrency,
        latencies_s=np.asarray(latencies),
        window_s=window,
        errors=len(errors),
        first_error=errors[0] if errors else None,
        model=model,
        server=breakdown(before, after) if stats else {},
        clips_per_request=clips_per_request,
    )

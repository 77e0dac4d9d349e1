"""How many ONNX Runtime threads the ``cpu`` flavour's backbone host gets: measured at export.

In the served ensemble the trunk's step and the heads' step are separate processes that overlap under load,
beside Triton's own threads. A trunk thread that barely speeds the trunk up takes a core from them: on the
demo's tiny trunk (0.1 GFLOP a clip, 2 cores) one thread runs a clip as fast as two, and the all-task
ensemble served ~13% more clips a second at concurrency 8 with one (benchmarks/RESULTS.md, "Serving cost").
A ViT-S trunk is twice as fast on two threads and keeps them.

The rule: time the trunk at batch 1 with the host's session options (no spinning) on 1, 2, 4, ... threads
up to the cores, in interleaved rounds (the best of each, so a busy moment of a shared machine favours
none), and take the fewest threads within :data:`TOLERANCE` of the fastest. When that is every core the
config says ``0`` (every core of the machine that loads it); otherwise the number, for this machine.
``vmtl export --cpu-threads N`` skips the measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vmtl.export.precision import latency_ms
from vmtl.runtime import cores, ort_session

__all__ = ["TOLERANCE", "ThreadChoice", "candidates", "choose_threads"]

#: A thread count within this fraction of the fastest one's batch-1 latency counts as as fast.
TOLERANCE = 0.10


@dataclass(frozen=True)
class ThreadChoice:
    """The measured batch-1 latency per thread count and the count chosen (0: every core)."""

    threads: int
    cores: int
    ms: dict[int, float] = field(default_factory=dict)

    @property
    def chosen(self) -> int:
        """The thread count itself (``threads``, with 0 read as every core)."""
        return self.threads or self.cores

    def line(self) -> str:
        timings = ", ".join(f"{t} thread{'s' if t > 1 else ''} {ms:.1f} ms" for t, ms in self.ms.items())
        return (
            f"backbone threads: {self.chosen} of {self.cores} cores (batch 1: {timings}; the fewest within "
            f"{TOLERANCE:.0%} of the fastest, leaving the rest to the heads and the server)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "threads": self.chosen,
            "cores": self.cores,
            "batch1_ms": {str(t): v for t, v in self.ms.items()},
        }


def candidates(n_cores: int) -> list[int]:
    """1, 2, 4, ... below ``n_cores``, and ``n_cores`` itself."""
    out, t = [], 1
    while t < n_cores:
        out.append(t)
        t *= 2
    return [*out, n_cores]


def choose_threads(
    trunk_onnx: Path, video_shape: tuple[int, ...], *, n_cores: int | None = None, rounds: int = 3
) -> ThreadChoice:
    """Measure the trunk ``trunk_onnx`` (input ``video`` uint8 of ``video_shape``, batch 1) on each of
    :func:`candidates` thread counts and choose by the module's rule."""
    n_cores = n_cores or cores()
    if n_cores <= 1:
        return ThreadChoice(0, n_cores)
    video = np.random.default_rng(0).integers(0, 256, (1, *video_shape[1:]), dtype=np.uint8)
    sessions = {
        t: ort_session(trunk_onnx, threads=t, inter_threads=1, spinning=False) for t in candidates(n_cores)
    }
    best = {t: float("inf") for t in sessions}
    for _ in range(rounds):
        for t, session in sessions.items():
            ms = latency_ms(lambda v, s=session: s.run(None, {"video": v}), video, 0.3)
            best[t] = min(best[t], ms)
    return pick_threads(best, n_cores)


def pick_threads(ms: dict[int, float], n_cores: int) -> ThreadChoice:
    """The rule on measured batch-1 latencies {threads: ms}: the fewest threads within TOLERANCE of the
    fastest (0 when that is every core)."""
    fastest = min(ms.values())
    chosen = min(t for t, v in ms.items() if v <= fastest * (1 + TOLERANCE))
    rounded = {t: round(v, 3) for t, v in ms.items()}
    return ThreadChoice(0 if chosen == n_cores else chosen, n_cores, rounded)

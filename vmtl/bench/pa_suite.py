"""`vmtl bench`'s Triton configurations measured by Triton's own perf_analyzer, and the cross-check
against vmtl's load generator on the same server in the same run.

perf_analyzer (:mod:`vmtl.bench.perf_analyzer`) runs once per configuration and concurrency, at batch 1
over gRPC with random inputs of the model's shape (the trunk's cost does not depend on the pixels), and
its CSV is kept as it wrote it (``<out>/perf_analyzer/<model>_c<N>.csv``):

- ``triton-ensemble``: ``vmtl_clip`` with the ``vmtl_tasks`` request parameter naming the asked tasks (the
  fused heads run only those; perf_analyzer asks for every output, so with ``--heads separate`` and a
  subset of the tasks it runs more heads than vmtl's load generator does);
- ``triton-trunk``: the ``backbone`` model alone;
- ``triton-independent``: one perf_analyzer per single-task model, all at once, each at the concurrency;
  a clip is answered when all K are, so the configuration's rate is the slowest model's.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from vmtl.bench.independent import single_model
from vmtl.bench.load import Measurement
from vmtl.bench.perf_analyzer import PerfAnalyzer, PerfAnalyzerError
from vmtl.bench.suite import label
from vmtl.contract import BACKBONE, CLIP_ENSEMBLE, PARAM_TASKS

__all__ = ["PaRow", "cross_check", "perf_analyzer_sweep"]

#: vmtl's load generator and perf_analyzer should agree within this (issue 12's target).
AGREEMENT = 0.10


@dataclass(frozen=True)
class PaRow:
    """One perf_analyzer measurement: a configuration at a concurrency (latencies in microseconds)."""

    config: str
    concurrency: int
    throughput: float  # inferences/second (clips/second)
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    server_queue_us: float
    server_compute_infer_us: float
    csv: list[str]  # the CSV files perf_analyzer wrote

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _row(config: str, conc: int, rows: Sequence[dict[str, float]], files: list[str]) -> PaRow:
    """The configuration's row from one CSV row per model (several for the independent models: the
    slowest model's throughput, the worst latencies)."""
    slowest = min(rows, key=lambda r: r["Inferences/Second"])

    def worst(key: str) -> float:
        return max(r.get(key, 0.0) for r in rows)

    return PaRow(
        config=config,
        concurrency=conc,
        throughput=slowest["Inferences/Second"],
        p50_us=worst("p50 latency"),
        p90_us=worst("p90 latency"),
        p95_us=worst("p95 latency"),
        p99_us=worst("p99 latency"),
        server_queue_us=worst("Server Queue"),
        server_compute_infer_us=worst("Server Compute Infer"),
        csv=files,
    )


def perf_analyzer_sweep(
    tool: PerfAnalyzer,
    url: str,
    tasks: Sequence[str],
    concurrency: Sequence[int],
    configs: Sequence[str],
    out_dir: Path,
    *,
    measurement_ms: int = 2000,
    ready: Callable[[str], bool] = lambda _m: True,
    log: Callable[[str], None] = print,
    then: Callable[[str, int], None] | None = None,
) -> tuple[list[PaRow], dict[str, str]]:
    """perf_analyzer over every asked Triton configuration at every concurrency: (rows, skipped).
    ``then(config, concurrency)`` runs right after each measured point (vmtl bench re-measures the same
    point with its own load generator there, so that the cross-check compares two measurements taken
    back to back)."""
    k = len(tasks)
    params = {PARAM_TASKS: ",".join(tasks)}
    plans: dict[str, list[tuple[str, dict[str, str]]]] = {}
    skipped: dict[str, str] = {}
    for c in configs:
        if c == "triton-ensemble":
            plans[c] = [(CLIP_ENSEMBLE, params)]
        elif c == "triton-trunk":
            plans[c] = [(BACKBONE, {})]
        elif c == "triton-independent":
            models = [single_model(t) for t in tasks]
            missing = [m for m in models if not ready(m)]
            if missing:
                skipped[f"perf_analyzer {c}"] = f"the server does not serve {', '.join(missing)}"
                continue
            plans[c] = [(single_model(t), {PARAM_TASKS: t}) for t in tasks]
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[PaRow] = []
    for conc in concurrency:
        for c, plan in plans.items():
            files = [out_dir / f"{model}_c{conc}.csv" for model, _ in plan]
            with cf.ThreadPoolExecutor(len(plan)) as pool:
                futures = [
                    pool.submit(tool.sweep, m, url, [conc], f, measurement_ms=measurement_ms, parameters=p)
                    for (m, p), f in zip(plan, files, strict=True)
                ]
                try:
                    per_model = [f.result()[0] for f in futures]
                except PerfAnalyzerError as exc:
                    skipped[f"perf_analyzer {c} @{conc}"] = str(exc).splitlines()[0]
                    continue
            row = _row(label(c, k), conc, per_model, [str(f) for f in files])
            rows.append(row)
            log(
                f"  perf_analyzer {row.config:<26} c={conc:<3} {row.throughput:8.1f} infer/s   "
                f"p50 {row.p50_us / 1e3:8.2f} ms   p99 {row.p99_us / 1e3:8.2f} ms"
            )
            if then is not None:
                then(c, conc)
    return rows, skipped


def cross_check(
    rows: Sequence[PaRow], measurements: Sequence[Measurement], back_to_back: bool = False
) -> list[dict[str, object]]:
    """perf_analyzer's throughput against vmtl's load generator's for each configuration and
    concurrency both measured: {config, concurrency, vmtl, perf_analyzer, ratio, agree, back_to_back}
    (``back_to_back``: ``measurements`` were taken right after perf_analyzer's, point by point)."""
    ours = {(m.config, m.concurrency): m.throughput for m in measurements}
    out: list[dict[str, object]] = []
    for r in rows:
        mine = ours.get((r.config, r.concurrency))
        if not mine:
            continue
        ratio = r.throughput / mine
        out.append(
            {
                "config": r.config,
                "concurrency": r.concurrency,
                "vmtl": round(mine, 2),
                "perf_analyzer": round(r.throughput, 2),
                "ratio": round(ratio, 3),
                "agree": abs(ratio - 1.0) <= AGREEMENT,
                "back_to_back": back_to_back,
            }
        )
    return out

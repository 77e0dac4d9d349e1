"""`vmtl bench`'s run: a concurrency sweep over the served ensemble and the baselines, on one clip, in one
process, configuration by configuration at each concurrency (so drift in the machine's load hits all alike).

Configurations (``--configs``):

- ``triton-ensemble``   the ``vmtl_clip`` ensemble asked for the K tasks (the trunk once, K heads);
- ``triton-trunk``      the ``backbone`` model alone (the ceiling the ensemble is held to);
- ``triton-independent`` K single-task models served side by side (their own trunk each; one clip = K
  requests sent together); needs a server that serves them: the one ``vmtl bench`` starts does;
- ``ort-shared``        in-process ONNX Runtime, trunk once + K heads, the host's session options;
- ``ort-trunk``         in-process ONNX Runtime, the trunk alone;
- ``ort-independent``   in-process ONNX Runtime, K single-task models one after another;
- ``torch``             eager PyTorch shared trunk + K heads from ``--checkpoint``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from vmtl.bench.config_names import CONFIGS
from vmtl.bench.eager import EagerTorch
from vmtl.bench.independent import single_model
from vmtl.bench.inprocess import IndependentOrt
from vmtl.bench.load import LoadError, Measurement, run_load
from vmtl.bench.peak import Peak, manifest_flops, precision_peak
from vmtl.contract import (
    BACKBONE,
    CLIP_ENSEMBLE,
    FEAT_STACK,
    PARAM_FEAT_STACK,
    PARAM_TASKS,
    feat_output,
    load_configs,
)
from vmtl.runtime import LocalModel, cores
from vmtl.runtime_openvino import host_pipeline


class BenchError(RuntimeError):
    """A bench run cannot be set up (bad arguments, missing model or server)."""


@dataclass
class TrunkEfficiency:
    """Trunk FLOPs against the measured matmul peak."""

    flops_per_clip: int
    peak: Peak
    inprocess: dict[int, float] = field(default_factory=dict)  # batch -> clips/s (ORT, trunk alone, 1 caller)
    served: float | None = None  # clips/s of the served trunk at the top concurrency
    runs: str = "ort fp32"  # the trunk's runtime and precision (the host's choice on this machine)

    def gflops(self, clips_per_s: float) -> float:
        return self.flops_per_clip * clips_per_s / 1e9

    def share(self, clips_per_s: float) -> float:
        return self.gflops(clips_per_s) / self.peak.best


@dataclass
class BenchResult:
    repo: str
    tasks: list[str]
    clip_shape: list[int]
    concurrency: list[int]
    measurements: list[Measurement]
    skipped: dict[str, str]
    efficiency: TrunkEfficiency | None
    environment: dict[str, Any]
    seconds: float
    perf_analyzer: list[Any] = field(default_factory=list)  # vmtl.bench.pa_suite.PaRow
    cross_check: list[dict[str, Any]] = field(default_factory=list)  # vmtl.bench.pa_suite.cross_check

    def at(self, config: str, concurrency: int) -> Measurement | None:
        for m in self.measurements:
            if m.config == config and m.concurrency == concurrency:
                return m
        return None

    def targets(self) -> list[tuple[str, str, bool | None]]:
        """(target, measured, met) for the issue's throughput targets; met None: not measured."""
        k, top, low = len(self.tasks), max(self.concurrency), min(self.concurrency)
        ens, trunk, ind = (
            self.at(label(c, k), top) for c in ("triton-ensemble", "triton-trunk", "triton-independent")
        )
        rows: list[tuple[str, str, bool | None]] = []
        if ens and trunk:
            r = ens.throughput / trunk.throughput
            rows.append((f"ensemble ({k} tasks) >= 0.85x the trunk alone @{top}", f"{r:.2f}x", r >= 0.85))
        if ens and ind:
            r = ens.throughput / ind.throughput
            rows.append((f"ensemble >= 4x {k} independent models @{top}", f"{r:.2f}x", r >= 4.0))
        ens_low = self.at(label("triton-ensemble", k), low)
        if ens and ens_low and top > low:
            r = ens.throughput / ens_low.throughput
            batch = ens.server.get(BACKBONE)
            how = f" (backbone avg batch {batch.avg_batch:.2f})" if batch else ""
            rows.append((f"dynamic batching: ensemble @{top} > @{low}", f"{r:.2f}x{how}", r > 1.0))
        if self.cross_check:
            worst = max(self.cross_check, key=lambda r: abs(float(r["ratio"]) - 1.0))
            rows.append(
                (
                    "vmtl's load generator and perf_analyzer agree within 10%",
                    f"worst {worst['ratio']:.2f}x ({worst['config']} @{worst['concurrency']})",
                    all(bool(r["agree"]) for r in self.cross_check),
                )
            )
        eff = self.efficiency
        if eff is not None and eff.inprocess:
            b = max(eff.inprocess)
            s = eff.share(eff.inprocess[b])
            rows.append(
                (
                    "trunk >= 0.5 of the measured matmul peak",
                    f"{s:.2f} ({eff.gflops(eff.inprocess[b]):.1f} of {eff.peak.best:.1f} GFLOP/s, batch {b})",
                    s >= 0.5,
                )
            )
        return rows


def label(config: str, k: int) -> str:
    """The human label of a configuration (used in tables, CSV and the plot)."""
    return {
        "triton-ensemble": f"triton vmtl_clip, {k} tasks",
        "triton-trunk": "triton backbone alone",
        "triton-independent": f"triton {k} independent models",
        "ort-shared": f"ort shared trunk + {k} heads",
        "ort-trunk": "ort trunk alone",
        "ort-independent": f"ort {k} independent models",
        "torch": f"torch eager shared trunk + {k} heads",
    }[config]


class TritonCalls:
    """Request makers for one server; one gRPC client per calling thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        try:
            self.models = {
                m["name"] for m in self.client.get_model_repository_index(as_json=True).get("models", [])
            }
        except Exception as exc:
            raise BenchError(f"no Triton server answers at {url}: {exc}") from exc

    @property
    def client(self) -> Any:
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._local.client = grpcclient.InferenceServerClient(self.url)
        return c

    def ready(self, model: str) -> bool:
        try:
            return bool(self.client.is_model_ready(model))
        except Exception:
            return False

    def _inputs(self, video: np.ndarray) -> list[Any]:
        inp = grpcclient.InferInput("video", list(video.shape), "UINT8")
        inp.set_data_from_numpy(video)
        return [inp]

    def infer(
        self, model: str, video: np.ndarray, outputs: Sequence[str], tasks: Sequence[str] = ()
    ) -> Callable[[], object]:
        """One request; ``tasks`` go into the ``vmtl_tasks`` parameter (what the fused heads run)."""
        inputs = self._inputs(video)
        outs = [grpcclient.InferRequestedOutput(n) for n in outputs]
        params = {PARAM_TASKS: ",".join(tasks)} if tasks else None

        def call() -> object:
            return self.client.infer(model, inputs, outputs=outs, client_timeout=600, parameters=params)

        return call

    def infer_all(
        self, requests: Sequence[tuple[str, Sequence[str]]], video: np.ndarray
    ) -> Callable[[], object]:
        """All ``(model, outputs)`` requests sent at once (async), returning when every one has answered;
        the outputs are tasks (each request's ``vmtl_tasks`` parameter)."""
        inputs = self._inputs(video)
        prepared = [(m, [grpcclient.InferRequestedOutput(n) for n in outs]) for m, outs in requests]

        def call() -> object:
            done = threading.Event()
            left = [len(prepared)]
            errors: list[Exception] = []
            lock = threading.Lock()

            def callback(result: Any, error: Any) -> None:
                with lock:
                    if error is not None:
                        errors.append(error)
                    left[0] -= 1
                    if left[0] == 0:
                        done.set()

            for (model, names), (_, outs) in zip(requests, prepared, strict=True):
                params = {PARAM_TASKS: ",".join(names)}
                self.client.async_infer(
                    model, inputs, callback, outputs=outs, client_timeout=600, parameters=params
                )
            if not done.wait(600):
                raise TimeoutError("independent models did not all answer within 600 s")
            if errors:
                raise errors[0]
            return None

        return call

    def stats(self) -> dict[str, dict]:
        data = self.client.get_inference_statistics(as_json=True)
        return {m["name"]: m for m in data.get("model_stats", [])}


#: A configuration ready to measure: (one request, the model whose server statistics to read or None, a
#: statistics reader or None).
Call = tuple[Callable[[], object], str | None, Callable[[], dict] | None]


def run_suite(
    repo: LocalModel,
    video: np.ndarray,
    *,
    tasks: Sequence[str],
    concurrency: Sequence[int],
    configs: Sequence[str],
    requests: int,
    warmup: int,
    url: str | None,
    checkpoint: str | None = None,
    peak: bool = True,
    log: Callable[[str], None] = print,
) -> BenchResult:
    """Measure every configuration at every concurrency; see the module doc."""
    t_start = time.perf_counter()
    skipped: dict[str, str] = {}
    calls = prepare_calls(repo, video, tasks, configs, url, checkpoint, skipped)
    measurements = sweep(calls, len(tasks), concurrency, requests, warmup, log)
    efficiency = None
    if peak:
        efficiency = trunk_efficiency(repo, video, measurements, len(tasks), max(concurrency), log)
        if efficiency is None:
            skipped["trunk efficiency"] = (
                "the repository's vmtl.json has no FLOPs (exported before vmtl bench); re-export it"
            )
    return BenchResult(
        repo=str(repo.path),
        tasks=list(tasks),
        clip_shape=list(video.shape),
        concurrency=list(concurrency),
        measurements=measurements,
        skipped=skipped,
        efficiency=efficiency,
        environment={"cores": cores()},
        seconds=time.perf_counter() - t_start,
    )


def prepare_calls(
    repo: LocalModel,
    video: np.ndarray,
    tasks: Sequence[str],
    configs: Sequence[str],
    url: str | None,
    checkpoint: str | None,
    skipped: dict[str, str],
) -> dict[str, Call]:
    """Each configuration's request, made ready (sessions and models loaded, inputs built); a
    configuration that cannot run here goes to ``skipped`` with the reason."""
    calls: dict[str, Call] = {}
    triton = TritonCalls(url) if url and any(c.startswith("triton") for c in configs) else None
    shared = host_pipeline(repo)[0] if {"ort-shared", "ort-trunk"} & set(configs) else None
    for c in configs:
        if c.startswith("triton"):
            if triton is None:
                skipped[c] = "no server (give --url, or let vmtl bench start one)"
                continue
            call = _triton_call(c, triton, repo, video, tasks)
            if isinstance(call, str):
                skipped[c] = call
                continue
            calls[c] = call
        elif c == "ort-shared":
            assert shared is not None
            calls[c] = (lambda: shared.run(video, tasks), None, None)
        elif c == "ort-trunk":
            assert shared is not None
            calls[c] = (lambda: shared.trunk_outputs(video), None, None)
        elif c == "ort-independent":
            ind = IndependentOrt(repo, tasks)
            calls[c] = (lambda ind=ind: ind.run(video), None, None)
        elif c == "torch":
            if not checkpoint:
                skipped[c] = "no --checkpoint (the eager PyTorch baseline runs the training checkpoint)"
                continue
            eager = EagerTorch(checkpoint)
            calls[c] = (lambda eager=eager: eager.run(video, tasks), None, None)
        else:
            raise BenchError(f"unknown configuration {c!r}; choose from {', '.join(CONFIGS)}")
    return calls


def _triton_call(
    config: str, triton: TritonCalls, repo: LocalModel, video: np.ndarray, tasks: Sequence[str]
) -> Call | str:
    """A triton-* configuration's request, or why the server cannot serve it."""
    if config == "triton-ensemble":
        return (triton.infer(CLIP_ENSEMBLE, video, tasks, tasks), CLIP_ENSEMBLE, triton.stats)
    if config == "triton-trunk":
        return (triton.infer(BACKBONE, video, _trunk_outputs(repo)), BACKBONE, triton.stats)
    missing = [t for t in tasks if not triton.ready(single_model(t))]
    if missing:
        return (
            f"the server does not serve {', '.join(single_model(t) for t in missing)} "
            "(the server vmtl bench starts itself does; see vmtl.bench.independent)"
        )
    return (triton.infer_all([(single_model(t), [t]) for t in tasks], video), None, triton.stats)


def _trunk_outputs(repo: LocalModel) -> list[str]:
    """What the ensembles ask the served `backbone` for: its `feat_stack` where it stacks its tasks' features
    for the fused heads, else the `feat_<task>` of the first trunk's tasks (other trunks' have no output there)."""
    cfg = load_configs(repo.path).get(BACKBONE)
    if cfg is not None and PARAM_FEAT_STACK in cfg.parameters:
        return [FEAT_STACK]
    graph = repo.graph
    return [feat_output(n) for n in graph.trunk_tasks(graph.trunk_names[0])]


def sweep(
    calls: dict[str, Call],
    k: int,
    concurrency: Sequence[int],
    requests: int,
    warmup: int,
    log: Callable[[str], None],
) -> list[Measurement]:
    """Each concurrency in turn, every configuration at it (so drift in the machine's load hits all
    alike); ``k`` is the number of tasks (for the labels)."""
    measurements: list[Measurement] = []
    for conc in concurrency:
        for c, (call, model, stats) in calls.items():
            n = max(requests, 2 * conc)
            try:
                m = run_load(
                    label(c, k), call, conc, requests=n, warmup=max(warmup, conc), stats=stats, model=model
                )
            except LoadError as exc:
                raise BenchError(str(exc)) from exc
            measurements.append(m)
            log(
                f"  {m.config:<40} c={conc:<3} {m.throughput:8.1f} infer/s   p50 {m.latency_us(50) / 1e3:8.2f} ms"
                f"   p99 {m.latency_us(99) / 1e3:8.2f} ms" + (f"   {m.errors} errors" if m.errors else "")
            )
    return measurements


def trunk_efficiency(
    repo: LocalModel,
    video: np.ndarray,
    measurements: Sequence[Measurement],
    k: int,
    top: int,
    log: Callable[[str], None],
) -> TrunkEfficiency | None:
    """The machine's matmul peak against the in-process trunk at batch 1 and max_batch_size, and the
    served trunk's throughput at concurrency ``top``; None when the manifest has no trunk FLOPs."""
    flops = manifest_flops(repo.metadata.to_dict())
    if flops is None:
        return None
    log("measuring the matmul peak and the in-process trunk at batch 1 and max_batch_size")
    pipeline, hosted = host_pipeline(repo)
    trunk = pipeline.trunk
    assert trunk is not None
    # against the matmul peak of the runtime and precision the trunk runs in
    efficiency = TrunkEfficiency(
        flops[0],
        precision_peak(hosted.precision, hosted.runtime),
        runs=f"{hosted.runtime} {hosted.precision}",
    )
    for b in sorted({1, repo.max_batch_size}):
        batch = np.ascontiguousarray(np.repeat(video, b, axis=0))
        m = run_load(
            f"trunk batch {b}",
            lambda batch=batch: trunk.run(None, {"video": batch}),
            1,
            requests=10,
            warmup=2,
        )
        efficiency.inprocess[b] = m.throughput * b
    served = [m for m in measurements if m.config == label("triton-trunk", k) and m.concurrency == top]
    efficiency.served = served[0].throughput if served else None
    return efficiency

"""`vmtl export --precision`: each (runtime, precision) candidate of the trunk built, gated and timed.

Candidates (``--runtime``: ``ort``, ``openvino`` or ``auto`` = both):

- ONNX Runtime fp32: the shipped ``model.onnx`` (the reference; always accepted);
- ONNX Runtime int8: dynamic quantisation (:func:`vmtl.export.quantize.quantize_model`), ``model_int8.onnx``;
- ONNX Runtime bf16: refused (no bf16 CPU kernels in ONNX Runtime);
- OpenVINO fp32 / bf16: the plain export converted to OpenVINO IR (``openvino/model.xml``, f32 weights),
  compiled with ``INFERENCE_PRECISION_HINT`` f32 / bf16; bf16 is refused (not gated) where this CPU cannot
  run it (OpenVINO would silently run f32): export on a bf16 CPU to ship it;
- OpenVINO int8: NNCF post-training quantisation (transformer preset) calibrated on clips of the
  ``train`` split (the gate evaluates ``val``), ``openvino/model_int8.xml``.

Each candidate runs the accuracy gate of :mod:`vmtl.export.quantize` (every task's primary held-out metric
within one point of ONNX Runtime fp32) and is timed (trunk median latency at batch 1 and 4). The accepted
ones are listed fastest first (batch 1) in the backbone's config and ``vmtl.json``; refused ones are
reported with their numbers and not shipped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vmtl.contract import BACKBONE, BackboneVariant, head_model, trunk_model
from vmtl.export.quantize import (
    INT8_SETTINGS,
    GateResult,
    compare_metrics,
    evaluate_pipeline,
    int8_setting,
    load_gate_data,
    quantize_model,
)
from vmtl.runtime import OrtPipeline, ort_session
from vmtl.runtime_openvino import PRECISIONS, RUNTIMES, OvSession, cpu_capabilities, openvino_unavailable
from vmtl.tasks import TaskGraph

__all__ = ["CALIBRATION_CLIPS", "PrecisionResult", "gate_precisions", "parse_precisions", "parse_runtimes"]

#: Clips NNCF calibrates on (from the train split, spread over the tasks).
CALIBRATION_CLIPS = 64
IR_FILE = "openvino/model.xml"
IR_INT8_FILE = "openvino/model_int8.xml"
ORT_INT8_FILE = "model_int8.onnx"


def parse_precisions(text: str) -> tuple[str, ...]:
    """``fp32,bf16,int8`` -> the precisions (ValueError on an unknown one); fp32 always comes first."""
    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in PRECISIONS]
    if bad or not names:
        raise ValueError(f"--precision takes a comma list of {', '.join(PRECISIONS)}, not {text!r}")
    return tuple(dict.fromkeys(["fp32", *names]))


def parse_runtimes(text: str) -> tuple[str, ...]:
    """``ort`` | ``openvino`` | ``auto`` (both) -> the runtimes to try."""
    if text == "auto":
        return RUNTIMES
    if text not in RUNTIMES:
        raise ValueError(f"--runtime must be ort, openvino or auto, not {text!r}")
    return (text,)


@dataclass
class PrecisionResult:
    """The accepted variants (fastest first), the refused ones, the files to ship and the CPU timed on."""

    accepted: list[BackboneVariant]
    refused: list[BackboneVariant]
    files: dict[str, Path]  # relative name in backbone/<version>/ -> source file
    measured_on: dict[str, Any]
    gates: dict[str, GateResult] = field(default_factory=dict)  # "runtime/precision" -> gate

    def table(self) -> str:
        lines = [f"{'runtime':<9} {'precision':<9} {'ms b1':>8} {'ms b4':>8} {'vs ORT fp32':>11}  verdict"]
        for v in self.accepted:
            lines.append(
                f"{v.runtime:<9} {v.precision:<9} {v.ms_b1 or 0:>8.1f} {v.ms_b4 or 0:>8.1f} "
                f"{v.speedup or 0:>10.2f}x  accepted ({v.file})"
            )
        for v in self.refused:
            lines.append(f"{v.runtime:<9} {v.precision:<9} {'-':>8} {'-':>8} {'-':>11}  REFUSED: {v.reason}")
        return "\n".join(lines)


def _latency_ms(run: Callable[[np.ndarray], object], video: np.ndarray, seconds: float = 1.0) -> float:
    """Median wall milliseconds of ``run(video)`` (one warm-up; at least 3 runs, about ``seconds``)."""
    run(video)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 50):
        t = time.perf_counter()
        run(video)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def _trunk_runner(session: Any) -> Callable[[np.ndarray], object]:
    return lambda video: session.run(None, {"video": video})


def _timed(
    accepted: Sequence[BackboneVariant],
    sessions: Mapping[tuple[str, str], Any],
    batch1: np.ndarray,
    batch4: np.ndarray,
    say: Callable[[str], None],
    rounds: int = 3,
) -> list[BackboneVariant]:
    """The accepted variants with their latencies (the best of ``rounds`` interleaved medians, so that a
    busy moment of the shared machine does not favour one variant), fastest first at batch 1."""
    best = {k: [float("inf"), float("inf")] for k in sessions}
    for _ in range(rounds):
        for key, session in sessions.items():
            run = _trunk_runner(session)
            b1, b4 = _latency_ms(run, batch1, 0.5), _latency_ms(run, batch4, 0.5)
            best[key] = [min(best[key][0], b1), min(best[key][1], b4)]
    ref = best["ort", "fp32"][0]
    out = []
    for v in accepted:
        b1, b4 = best[v.runtime, v.precision]
        out.append(dataclasses.replace(v, ms_b1=round(b1, 3), ms_b4=round(b4, 3), speedup=round(ref / b1, 3)))
    out.sort(key=lambda v: v.ms_b1 or 0.0)
    for v in out:
        say(
            f"{v.runtime} {v.precision}: {v.ms_b1:.1f} ms at batch 1, {v.ms_b4:.1f} ms at batch 4 ({v.speedup:.2f}x)"
        )
    return out


def _calibration(data: Path, graph: TaskGraph, num_tokens: int) -> list[np.ndarray]:
    """Up to CALIBRATION_CLIPS single-clip batches of the train split, round-robin over the tasks."""
    sets = load_gate_data(data, graph, num_tokens, split="train")
    per_task = max(CALIBRATION_CLIPS // max(len(sets), 1), 1)
    clips = [c.frames[i : i + 1] for c in sets.values() for i in range(min(per_task, len(c)))]
    return [np.ascontiguousarray(c, dtype=np.uint8) for c in clips]


def _nncf_int8(raw_onnx: Path, dst_xml: Path, calibration: Sequence[np.ndarray]) -> Path:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(raw_onnx))
    dataset = nncf.Dataset(list(calibration), lambda clip: {"video": clip})
    quantized = nncf.quantize(
        model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration)
    )
    dst_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(dst_xml), compress_to_fp16=False)
    return dst_xml


def _to_ir(raw_onnx: Path, dst_xml: Path) -> Path:
    import openvino as ov

    dst_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(raw_onnx)), str(dst_xml), compress_to_fp16=False)
    return dst_xml


def _ir_files(xml: Path, rel: str) -> dict[str, Path]:
    return {rel: xml, rel.removesuffix(".xml") + ".bin": xml.with_suffix(".bin")}


def gate_precisions(
    *,
    graph: TaskGraph,
    raw: Mapping[str, Path],
    fp32_files: Mapping[str, Path],
    fp32: Mapping[str, Mapping[str, float]],
    gate_data: dict,
    data: Path,
    num_tokens: int,
    clips: np.ndarray,
    precisions: Sequence[str],
    runtimes: Sequence[str],
    work: Path,
    max_drop: float,
    max_mae_increase: float,
    say: Callable[[str], None],
    threads: int | None = None,
) -> PrecisionResult:
    """Build, gate and time every (runtime, precision) candidate of the trunk (rules in the module
    docstring). ``fp32_files``: the cpu flavour's files (heads stay ONNX Runtime fp32); ``fp32``: their
    metrics on ``gate_data``; ``clips``: the parity clips (timing inputs)."""
    work.mkdir(parents=True, exist_ok=True)
    caps = cpu_capabilities()
    n_clips = sum(len(c) for c in gate_data.values())
    heads = {n: ort_session(fp32_files[head_model(n)]) for n in graph.names}
    frames = {t: ort_session(fp32_files[trunk_model(graph, t)]) for t in graph.trunk_names[1:]}
    batch1 = np.ascontiguousarray(clips[:1])
    batch4 = np.ascontiguousarray(np.resize(clips, (4, *clips.shape[1:])))
    accepted: list[BackboneVariant] = []
    refused: list[BackboneVariant] = []
    files: dict[str, Path] = {}
    gates: dict[str, GateResult] = {}
    calibration: list[np.ndarray] | None = None
    ir: Path | None = None

    sessions: dict[tuple[str, str], Any] = {}

    def gate(label: str, session: Any) -> GateResult:
        pipe = OrtPipeline.from_sessions(graph, session, heads, frame_trunks=frames)
        result = compare_metrics(
            graph,
            fp32,
            evaluate_pipeline(pipe, graph, gate_data),
            name=label,
            max_drop=max_drop,
            max_mae_increase=max_mae_increase,
            clips=n_clips,
        )
        gates[label] = result
        return result

    base = ort_session(fp32_files[BACKBONE], threads=threads)
    sessions["ort", "fp32"] = base
    accepted.append(BackboneVariant("ort", "fp32", "model.onnx", gate={"passed": True, "reference": True}))
    for runtime in runtimes:
        for precision in precisions:
            if runtime == "ort" and precision == "fp32":
                continue
            label = f"{runtime}-{precision}"
            session: Any = None
            rel: dict[str, Path] = {}
            note = ""
            if runtime == "ort" and precision == "bf16":
                refused.append(
                    BackboneVariant(runtime, precision, reason="ONNX Runtime has no bf16 CPU kernels")
                )
                continue
            if runtime == "openvino" and openvino_unavailable():
                refused.append(BackboneVariant(runtime, precision, reason=str(openvino_unavailable())))
                continue
            if runtime == "ort":  # int8: the first dynamic-quantisation setting the gate accepts
                for weight_type, per_channel in INT8_SETTINGS:
                    path = quantize_model(
                        raw[BACKBONE], work / ORT_INT8_FILE, weight_type=weight_type, per_channel=per_channel
                    )
                    session = ort_session(path, threads=threads)
                    note = int8_setting(weight_type, per_channel)
                    if gate(label, session).passed:
                        break
                rel = {ORT_INT8_FILE: work / ORT_INT8_FILE}
            else:
                if ir is None:
                    ir = _to_ir(raw[BACKBONE], work / IR_FILE)
                if precision == "int8":
                    if calibration is None:
                        calibration = _calibration(data, graph, num_tokens)
                    try:
                        xml = _nncf_int8(raw[BACKBONE], work / IR_INT8_FILE, calibration)
                    except ImportError as exc:
                        refused.append(
                            BackboneVariant(runtime, precision, reason=f"NNCF is not installed ({exc})")
                        )
                        continue
                    rel = _ir_files(xml, IR_INT8_FILE)
                    note = f"NNCF post-training quantisation, {len(calibration)} train clips"
                else:
                    rel = _ir_files(ir, IR_FILE)
                session = OvSession(
                    rel[IR_INT8_FILE if precision == "int8" else IR_FILE],
                    precision=precision,
                    threads=threads,
                )
                if precision == "bf16" and session.runs_as != "bf16":
                    refused.append(
                        BackboneVariant(
                            runtime,
                            precision,
                            reason=f"not gated: this CPU ({caps.describe()}) has no bf16, OpenVINO would run "
                            f"{session.runs_as}; export on a bf16 CPU to ship it",
                        )
                    )
                    continue
                gate(label, session)
            result = gates[label]
            verdict = "passed" if result.passed else f"REFUSED ({len(result.failures)} task(s))"
            say(f"{runtime} {precision}{f' ({note})' if note else ''}: accuracy gate {verdict}")
            say(result.table())
            record = result.to_dict()
            if note:
                record["setting"] = note
            if result.passed:
                files.update(rel)
                sessions[runtime, precision] = session
                accepted.append(BackboneVariant(runtime, precision, next(iter(rel)), gate=record))
            else:
                why = "; ".join(t.describe() for t in result.failures)
                refused.append(
                    BackboneVariant(runtime, precision, reason=f"accuracy gate: {why}", gate=record)
                )
    accepted = _timed(accepted, sessions, batch1, batch4, say)
    return PrecisionResult(accepted, refused, files, caps.to_dict(), gates)

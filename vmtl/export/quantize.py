"""The ONNX Runtime side of `vmtl export` (torch-free): offline graph optimisation, int8 dynamic
quantisation and its accuracy gate (sessions and the trunk-then-heads pipeline are :mod:`vmtl.runtime`'s).

Accuracy gate (int8 here, TensorRT fp16 in :mod:`vmtl.export.tensorrt`): every task's primary metric is
computed on the held-out split (``val``) of ``--data`` twice, through the fp32 models and through the
candidate models, with the same ORT pipeline and :func:`vmtl.metrics.evaluate.task_metrics`. The candidate
is refused when, for any task,

* a rate metric (top1, mAP, mAP@0.5, recall@1, mIoU; higher is better) drops by more than ``max_drop``
  (default 0.01 absolute, one point), or
* MAE (regress; lower is better) increases by more than ``max_mae_increase`` of the fp32 MAE (default
  0.01, i.e. 1 % relative: MAE has the task's units, so an absolute threshold would mean nothing), or
* the candidate's metric is not finite (overflow, NaN outputs).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from vmtl.data.clips import load_clipset
from vmtl.metrics.evaluate import task_metrics
from vmtl.runtime import OrtPipeline, ort_session
from vmtl.tasks import TaskGraph

__all__ = [
    "INT8_SETTINGS",
    "ExportError",
    "GateRefused",
    "GateResult",
    "Int8Refused",
    "TaskGate",
    "compare_metrics",
    "evaluate_pipeline",
    "load_gate_data",
    "optimize_model",
    "quantize_model",
    "quantize_static_model",
    "trunk_latency",
]

#: Offline optimisation level: EXTENDED fuses (LayerNorm, GELU, MatMul+scale, int8 MatMul...) but, unlike
#: ALL, adds no layout transforms tied to this CPU's instruction set, so the saved file stays portable
#: across x86 CPUs (for the same ONNX Runtime version).
OPTIMIZATION_LEVEL = "extended"
#: The (weight type, per-channel) settings `vmtl export --int8` tries, in this order, keeping the first the
#: accuracy gate accepts: which one quantises a trunk best depends on its weights (benchmarks/RESULTS.md,
#: "Export (int8)": per-channel QInt8 was best on an untrained trunk and worst on a trained one).
INT8_SETTINGS: tuple[tuple[str, bool], ...] = (
    ("qint8", True),
    ("qint8", False),
    ("quint8", True),
    ("quint8", False),
)
GATE_SPLIT = "val"


class ExportError(RuntimeError):
    """`vmtl export` cannot proceed; the message says what failed and what to do."""


# --------------------------------------------------------------------------------------------------
# Offline optimisation


def optimize_model(src: str | Path, dst: str | Path, *, level: str = OPTIMIZATION_LEVEL) -> Path:
    """Run ORT's graph optimisations once and save the result to ``dst`` (served without re-optimising)."""
    dst = Path(dst)
    ort_session(src, optimization=level, save_to=dst)
    if not dst.is_file():
        raise ExportError(f"ONNX Runtime did not write the optimised model {dst}")
    return dst


# --------------------------------------------------------------------------------------------------
# Quantisation


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """quantize_dynamic logs a 'run pre-processing' warning on the root logger; keep the console clean."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(old)


def int8_setting(weight_type: str, per_channel: bool) -> str:
    """'QInt8 per-channel', 'QUInt8 per-tensor', ..."""
    name = {"qint8": "QInt8", "quint8": "QUInt8"}[weight_type]
    return f"{name} {'per-channel' if per_channel else 'per-tensor'}"


def quantize_model(
    src: str | Path,
    dst: str | Path,
    *,
    per_channel: bool = True,
    weight_type: str = "qint8",
    op_types: Sequence[str] = ("MatMul", "Gemm"),
    optimize: bool = True,
) -> Path:
    """Dynamic int8 quantisation of ``src``'s MatMul/Gemm weights (activations quantised at run time, uint8),
    then the same offline optimisation as fp32 (fuses DynamicQuantizeMatMul / MatMulIntegerToFloat).

    `vmtl export --int8` tries the settings of :data:`INT8_SETTINGS` behind the accuracy gate.
    """
    types = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}
    if weight_type not in types:
        raise ValueError(f"weight_type must be qint8 or quint8, not {weight_type!r}")
    dst = Path(dst)
    raw = dst.with_name(dst.stem + ".q.onnx") if optimize else dst
    with _quiet_quantizer():
        quantize_dynamic(
            str(src),
            str(raw),
            op_types_to_quantize=list(op_types),
            per_channel=per_channel,
            weight_type=types[weight_type],
        )
    if optimize:
        optimize_model(raw, dst)
        raw.unlink(missing_ok=True)
    return dst


class _Clips(CalibrationDataReader):
    """Calibration feeds: one clip at a time under the model's input name."""

    def __init__(self, clips: np.ndarray, input_name: str) -> None:
        self._feeds = iter([{input_name: clips[i : i + 1]} for i in range(len(clips))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_static_model(
    src: str | Path,
    dst: str | Path,
    calibration: np.ndarray,
    *,
    input_name: str = "video",
    per_channel: bool = True,
    reduce_range: bool = True,
) -> Path:
    """Static int8 (QDQ) quantisation of a convolutional trunk (a ``frames`` trunk: dynamic quantisation
    only covers MatMul/Gemm, which it has none of): QInt8 weights, QUInt8 activations whose ranges are
    calibrated (MinMax) on ``calibration``'s uint8 clips, then the same offline optimisation as fp32.

    ``reduce_range`` (7-bit weights) because the u8s8 kernels of CPUs without VNNI accumulate in int16 and
    saturate with full-range weights: on EfficientNet-Lite0 it moved top-1 agreement with fp32 from 0.47
    to 0.76 on an AVX2 machine (benchmarks/RESULTS.md, "Trunk cost")."""
    if calibration.ndim != 5 or calibration.dtype != np.uint8 or len(calibration) == 0:
        raise ValueError(
            f"calibration clips must be uint8 [N,T,S,S,3], got {calibration.dtype} {calibration.shape}"
        )
    dst = Path(dst)
    raw = dst.with_name(dst.stem + ".q.onnx")
    with _quiet_quantizer():
        quantize_static(
            str(src),
            str(raw),
            _Clips(np.ascontiguousarray(calibration), input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    optimize_model(raw, dst)
    raw.unlink(missing_ok=True)
    return dst


# --------------------------------------------------------------------------------------------------
# The accuracy gate's data and metrics


def load_gate_data(data_root: str | Path, graph: TaskGraph, num_tokens: int, split: str = GATE_SPLIT) -> dict:
    """{task: ClipSet} of the held-out ``split`` for every task (decoded once, cached beside the data)."""
    out = {}
    for task in graph.tasks:
        if task.pretrained:  # no held-out data: its head is the pretrained classifier, unchanged
            continue
        try:
            out[task.name] = load_clipset(
                data_root, task, split, graph.preprocess, num_tokens, progress=False
            )
        except (FileNotFoundError, ValueError) as exc:
            raise ExportError(
                f"accuracy gate: cannot load the held-out data of task {task.name!r}: {exc}"
            ) from exc
    return out


def evaluate_pipeline(
    pipeline: OrtPipeline, graph: TaskGraph, clipsets: Mapping[str, Any], *, batch_size: int = 8
) -> dict[str, dict[str, float]]:
    """Every task's metrics (``task_metrics``) through ``pipeline`` on its own held-out clips."""
    metrics = {}
    for task in graph.tasks:
        clips = clipsets.get(task.name)
        if clips is None:  # a pretrained head has no held-out data
            continue
        outs = [
            pipeline.run(clips.frames[i : i + batch_size], [task.name])[task.name]
            for i in range(0, len(clips), batch_size)
        ]
        metrics[task.name] = task_metrics(task, np.concatenate(outs), clips)
    return metrics


# --------------------------------------------------------------------------------------------------
# The accuracy gate


@dataclass
class TaskGate:
    """One task's primary metric, reference vs candidate, and the verdict."""

    task: str
    metric: str
    reference: float
    candidate: float
    change: float  # candidate - reference (MAE: relative change)
    limit: str
    ok: bool

    def describe(self) -> str:
        if not math.isfinite(self.candidate):
            how = "is not finite"
        elif self.metric == "MAE":
            how = f"{self.change:+.2%} relative"
        else:
            how = f"{self.change:+.4f} ({self.change * 100:+.2f} points)"
        return f"{self.task}: {self.metric} {self.reference:.4f} -> {self.candidate:.4f} ({how}; limit {self.limit})"


@dataclass
class GateResult:
    """The accuracy gate of one candidate (int8 or TensorRT fp16) against fp32."""

    candidate: str
    split: str
    clips: int
    tasks: list[TaskGate]
    max_drop: float
    max_mae_increase: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(t.ok for t in self.tasks)

    @property
    def failures(self) -> list[TaskGate]:
        return [t for t in self.tasks if not t.ok]

    def table(self) -> str:
        lines = [f"{'task':<12} {'metric':<9} {'fp32':>9} {self.candidate:>9} {'change':>12}  verdict"]
        for t in self.tasks:
            change = (
                "n/a"
                if not math.isfinite(t.change)
                else (f"{t.change:+.2%}" if t.metric == "MAE" else f"{t.change * 100:+.2f} pt")
            )
            verdict = "ok" if t.ok else f"FAIL (limit {t.limit})"
            lines.append(
                f"{t.task:<12} {t.metric:<9} {t.reference:>9.4f} {t.candidate:>9.4f} {change:>12}  {verdict}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return _finite(d)


def _finite(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


class GateRefused(ExportError):
    """The accuracy gate refused a quantised (or fp16) candidate; ``gate`` holds the numbers."""

    def __init__(self, gate: GateResult, what: str = "int8 quantisation", note: str = "") -> None:
        self.gate = gate
        lines = "\n  ".join(t.describe() for t in gate.failures)
        super().__init__(
            f"{what} refused by the accuracy gate on the held-out '{gate.split}' split ({gate.clips} clips); "
            f"{len(gate.failures)} of {len(gate.tasks)} task(s) lose too much accuracy:\n  {lines}\n"
            + (f"{note}\n" if note else "")
            + "Nothing was written (an existing repository is left as it was). Export without it to ship fp32."
        )


#: The int8 refusal (same class; the name reads better where only int8 is meant).
Int8Refused = GateRefused


def compare_metrics(
    graph: TaskGraph,
    reference: Mapping[str, Mapping[str, float]],
    candidate: Mapping[str, Mapping[str, float]],
    *,
    name: str = "int8",
    max_drop: float = 0.01,
    max_mae_increase: float = 0.01,
    split: str = GATE_SPLIT,
    clips: int = 0,
) -> GateResult:
    """Compare every task's primary metric (rules in the module docstring)."""
    rows = []
    for task in graph.tasks:
        if task.name not in reference:  # a pretrained head: no held-out data to gate on
            continue
        metric = task.kind_spec.primary_metric
        ref = float(reference[task.name][metric])
        cand = float(candidate[task.name][metric])
        if task.kind_spec.lower_is_better:
            change = (cand - ref) / max(abs(ref), 1e-12)
            ok = math.isfinite(cand) and change <= max_mae_increase + 1e-9
            limit = f"+{max_mae_increase:.0%} relative"
        else:
            change = cand - ref
            ok = math.isfinite(cand) and -change <= max_drop + 1e-9
            limit = f"-{max_drop:g}"
        rows.append(
            TaskGate(task.name, metric, ref, cand, change if math.isfinite(cand) else math.nan, limit, ok)
        )
    return GateResult(name, split, clips, rows, max_drop, max_mae_increase)


# --------------------------------------------------------------------------------------------------
# Latency (benchmarks)


def trunk_latency(
    path: str | Path, video: np.ndarray, *, repeats: int = 20, warmup: int = 3, threads: int | None = None
) -> dict[str, float]:
    """Median / p90 wall seconds of one trunk run on ``video`` (a uint8 batch)."""
    sess = ort_session(path, optimization="all", threads=threads)
    feed = {"video": np.ascontiguousarray(video, dtype=np.uint8)}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return {"median_s": float(np.median(times)), "p90_s": float(np.percentile(times, 90)), "repeats": repeats}

"""The machine's measured matrix-multiply peak, and what share of it the trunk reaches.

The peak is measured, not looked up: a square fp32 MatMul in ONNX Runtime (the runtime the trunk runs in,
same threads) and in numpy's BLAS; the better of the two is the reference. When the trunk runs in
OpenVINO, :func:`precision_peak` adds the same MatMul compiled by OpenVINO at the precision in use (bf16
on a bf16 CPU; an int8 trunk is compared with the f32 peak, which the report says). The trunk's FLOPs per clip come
from the repository's manifest (``vmtl export`` counts them with torch's FlopCounterMode: 2 per
multiply-add, matmuls, convolutions and attention).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

from vmtl.runtime import cores, ort_session
from vmtl.runtime_openvino import OvSession


@dataclass(frozen=True)
class Peak:
    """Best sustained GFLOP/s of an n x n x n fp32 matmul, per runtime."""

    n: int
    threads: int
    gflops: dict[str, float]  # runtime -> GFLOP/s

    @property
    def best(self) -> float:
        return max(self.gflops.values())

    @property
    def best_runtime(self) -> str:
        return max(self.gflops, key=self.gflops.__getitem__)


def _best_rate(fn: Callable[[], object], flops: float, seconds: float) -> float:
    """GFLOP/s of the fastest of the calls made in ``seconds`` (after one warm-up)."""
    fn()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    calls = 0
    while calls < 3 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return flops / best / 1e9


def _ort_matmul(n: int, threads: int) -> Callable[[], object]:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort_session(model.SerializeToString(), threads=threads)
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((n, n), np.float32), "b": rng.standard_normal((n, n), np.float32)}
    return lambda: sess.run(None, feeds)


def matmul_peak(n: int = 1024, seconds: float = 1.5, threads: int | None = None) -> Peak:
    """Measure the fp32 matmul peak with every core (or ``threads``) in ONNX Runtime and numpy."""
    threads = threads or cores()
    flops = 2.0 * n**3
    rates = {"onnxruntime": _best_rate(_ort_matmul(n, threads), flops, seconds)}
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    rates["numpy"] = _best_rate(lambda: a @ b, flops, seconds)
    return Peak(n, threads, rates)


def _openvino_matmul(n: int, threads: int, precision: str) -> tuple[Callable[[], object], str]:
    """An n x n x n MatMul compiled by OpenVINO at ``precision`` (fp32 / bf16), and what it runs as."""

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["c"])], "matmul", [a], [c], [weight])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "matmul.onnx"
        save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        sess = OvSession(path, precision="bf16" if precision == "bf16" else "fp32", threads=threads)
    feed = {"a": rng.standard_normal((n, n)).astype(np.float32)}
    return (lambda: sess.run(["c"], feed)), sess.runs_as


def precision_peak(
    precision: str, runtime: str, n: int = 1024, seconds: float = 1.5, threads: int | None = None
) -> Peak:
    """The matmul peak of the precision and runtime the trunk runs in: :func:`matmul_peak` for ONNX
    Runtime (and any int8), plus OpenVINO's own MatMul at fp32 / bf16 (keyed ``openvino-f32`` /
    ``openvino-bf16`` by what it actually ran as) when the trunk runs in OpenVINO."""
    peak = matmul_peak(n, seconds, threads)
    if runtime != "openvino":
        return peak
    threads = threads or cores()
    fn, runs_as = _openvino_matmul(n, threads, precision)
    return Peak(n, threads, {**peak.gflops, f"openvino-{runs_as}": _best_rate(fn, 2.0 * n**3, seconds)})


def manifest_flops(metadata: dict[str, Any]) -> tuple[int, dict[str, int]] | None:
    """(trunk FLOPs per clip, {task: head FLOPs}) recorded by ``vmtl export``, or None for an older export."""
    rec = metadata.get("flops")
    if not isinstance(rec, dict) or not rec.get("trunk"):
        return None
    return int(rec["trunk"]), {str(k): int(v) for k, v in (rec.get("heads") or {}).items()}

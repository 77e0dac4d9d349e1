"""int8 export benchmark: the cpu flavour's backbone in fp32 vs dynamic int8, on one checkpoint.

In one process:

1. ``vmtl export`` (fp32, both flavours) and ``vmtl export --int8`` of the checkpoint; the int8 export's
   accuracy gate gives every task's primary metric on the held-out split, fp32 vs int8 (if the gate
   refuses, the numbers are still reported and the int8 trunk is quantised directly for the timings).
2. Quantisation settings (per-channel / per-tensor, QInt8 / QUInt8 weights): trunk feature error against
   fp32 on real held-out clips and file size; the export uses the first the accuracy gate accepts.
3. Trunk latency, fp32 (ORT-optimised) vs int8, at batch 1 and 8 on real clips, sessions created as the
   server creates them (``ORT_ENABLE_ALL``, all cores), repeats interleaved across the variants.

    .venv/bin/python benchmarks/bench_int8.py                       # the `vmtl demo` checkpoint, print
    .venv/bin/python benchmarks/bench_int8.py --update-results      # also rewrite "Export (int8)" in RESULTS.md
    .venv/bin/python benchmarks/bench_int8.py --checkpoint CKPT --data DIR --note "..."
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vmtl.contract import BACKBONE
from vmtl.export.onnx import export_checkpoint
from vmtl.export.quantize import (
    INT8_SETTINGS,
    GateRefused,
    int8_setting,
    load_gate_data,
    quantize_model,
)
from vmtl.models.multitask import MultiTaskModel
from vmtl.runtime import ort_session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import update_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Export (int8)"
DEMO = ROOT / ".cache" / "demo"  # `vmtl demo`'s workdir
SETTINGS = [(per_channel, wtype) for wtype, per_channel in INT8_SETTINGS]


def _label(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _features(path: Path, video: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort_session(path)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"video": video}), strict=True))


def _latency(
    files: dict[str, Path], batches: dict[int, np.ndarray], repeats: int
) -> dict[tuple[str, int], list]:
    sessions = {name: ort_session(path) for name, path in files.items()}
    times: dict[tuple[str, int], list[float]] = {(n, b): [] for n in files for b in batches}
    for _ in range(2):  # warm-up
        for sess in sessions.values():
            for video in batches.values():
                sess.run(None, {"video": video})
    for _ in range(repeats):
        for name, sess in sessions.items():
            for b, video in batches.items():
                t = time.perf_counter()
                sess.run(None, {"video": video})
                times[(name, b)].append(time.perf_counter() - t)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=DEMO / "checkpoint", help="default: the `vmtl demo` checkpoint"
    )
    parser.add_argument("--data", type=Path, default=DEMO / "data", help="default: the `vmtl demo` data")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--note", default="", help="a sentence added to the results (e.g. which checkpoint)")
    parser.add_argument("--update-results", action="store_true")
    args = parser.parse_args()
    if not (args.checkpoint / "model.safetensors").is_file() or not args.data.is_dir():
        print(
            f"need a trained checkpoint ({args.checkpoint}) and its data ({args.data}): run `vmtl demo` "
            "(or pass --checkpoint/--data of a `vmtl train` run)"
        )
        return 2
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        work = Path(tmp)
        fp32 = export_checkpoint(args.checkpoint, work / "fp32", flavour="both", data_root=args.data)
        raw_trunk = work / "fp32" / "native" / BACKBONE / "1" / "model.onnx"
        fp32_trunk = work / "fp32" / "cpu" / BACKBONE / "1" / "model.onnx"
        try:
            report = export_checkpoint(args.checkpoint, work / "int8", int8=True, data_root=args.data)
            gate, accepted = report.int8, True
            int8_trunk = work / "int8" / BACKBONE / "1" / "model.onnx"
        except GateRefused as exc:
            gate, accepted = exc.gate, False
            int8_trunk = quantize_model(raw_trunk, work / "int8.onnx")
        assert gate is not None
        model = MultiTaskModel.load_checkpoint(args.checkpoint / "model.safetensors")
        graph = model.graph
        clips = load_gate_data(args.data, graph, model.temporal_tokens)
        frames = np.concatenate([c.frames for c in clips.values()])
        sample = frames[:: max(1, len(frames) // 32)][:32]

        want = _features(fp32_trunk, sample)
        settings = []
        for per_channel, wtype in SETTINGS:
            path = quantize_model(
                raw_trunk, work / f"q-{per_channel}-{wtype}.onnx", per_channel=per_channel, weight_type=wtype
            )
            got = _features(path, sample)
            err = max(float(np.abs(want[k] - got[k]).max()) for k in want)
            rel = max(float(np.abs(want[k] - got[k]).max() / np.abs(want[k]).max()) for k in want)
            settings.append((per_channel, wtype, err, rel, path.stat().st_size))

        batches = {1: np.ascontiguousarray(frames[:1]), 8: np.ascontiguousarray(frames[:8])}
        times = _latency({"fp32": fp32_trunk, "int8": int8_trunk}, batches, args.repeats)
        sizes = {
            "fp32": fp32_trunk.stat().st_size,
            "raw": raw_trunk.stat().st_size,
            "int8": int8_trunk.stat().st_size,
        }
    load_after = os.getloadavg()[0]

    import onnxruntime
    import torch

    digest = hashlib.sha256((args.checkpoint / "model.safetensors").read_bytes()).hexdigest()[:12]
    pre = graph.preprocess
    ckpt_label, data_label = _label(args.checkpoint), _label(args.data)
    med = {k: float(np.median(v)) for k, v in times.items()}
    p90 = {k: float(np.percentile(v, 90)) for k, v in times.items()}
    used = str(gate.details.get("settings", "")) if accepted else ""
    lines = [
        SECTION,
        "",
        "The `cpu` flavour's backbone in fp32 (ONNX Runtime EXTENDED-optimised offline, as `vmtl export` ships "
        "it) vs dynamic int8 (`vmtl export --int8`: `quantize_dynamic` of the MatMul/Gemm weights with the "
        "first setting of QInt8/QUInt8, per-channel/per-tensor, that the accuracy gate accepts; activations "
        "QUInt8 at run time, then the same optimisation).",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_int8.py --update-results` (checkpoint `{ckpt_label}`, sha256 "
        f"{digest}..., data `{data_label}`; {pre.num_frames} frames x {pre.size} px).",
        "",
        f"Machine: {_cpu_name()}, {_cores()} cores, ONNX Runtime {onnxruntime.__version__}, torch "
        f"{torch.__version__}. Load average {load_before:.1f} before, {load_after:.1f} after (the machine is "
        "shared, so wall times are noisy; the variants are interleaved repeat by repeat).",
    ]
    if args.note:
        lines += ["", args.note]
    lines += [
        "",
        "### Accuracy gate (held-out `val` split, every task)",
        "",
        f"Verdict: **{'accepted' if accepted else 'refused'}** on {gate.clips} clips. Rule: a rate metric may "
        f"drop by at most {gate.max_drop:g} absolute (one point), MAE may grow by at most "
        f"{gate.max_mae_increase:.0%} relative.",
        "",
        "Settings tried: "
        + "; ".join(
            f"{t['setting']} " + ("passed" if t["passed"] else f"refused ({', '.join(t['failed'])})")
            for t in gate.details.get("tried", [])
        )
        + (". The table is the accepted one." if accepted else ". The table is the first refusal."),
        "",
        "| task | metric | fp32 | int8 | change |",
        "|---|---|---:|---:|---:|",
    ]
    for t in gate.tasks:
        change = f"{t.change:+.2%}" if t.metric == "MAE" else f"{t.change * 100:+.2f} pt"
        lines.append(f"| {t.task} | {t.metric} | {t.reference:.4f} | {t.candidate:.4f} | {change} |")
    lines += [
        "",
        f"fp32 parity against PyTorch (all models, both flavours): worst max-abs {fp32.max_parity_error:.1e}.",
        "",
        "### Trunk latency (real clips)",
        "",
        "| batch | fp32 median (ms) | fp32 p90 (ms) | int8 median (ms) | int8 p90 (ms) | speed-up (median) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for b in batches:
        lines.append(
            f"| {b} | {med[('fp32', b)] * 1e3:.2f} | {p90[('fp32', b)] * 1e3:.2f} | {med[('int8', b)] * 1e3:.2f} "
            f"| {p90[('int8', b)] * 1e3:.2f} | {med[('fp32', b)] / med[('int8', b)]:.2f}x |"
        )
    lines += [
        "",
        f"{args.repeats} timed repeats per cell after 2 warm-ups. Backbone file: fp32 {sizes['fp32'] / 1e6:.2f} MB "
        f"(plain export {sizes['raw'] / 1e6:.2f} MB), int8 {sizes['int8'] / 1e6:.2f} MB.",
        "",
        f"### Quantisation settings (trunk features vs fp32, {len(sample)} held-out clips)",
        "",
        "| weights | granularity | feature max-abs error | relative to max feature | file (MB) |",
        "|---|---|---:|---:|---:|",
    ]
    for per_channel, wtype, err, rel, size in settings:
        chosen = " (used)" if accepted and int8_setting(wtype, per_channel) in used else ""
        lines.append(
            f"| {wtype.upper()}{chosen} | {'per-channel' if per_channel else 'per-tensor'} | {err:.4f} | "
            f"{rel:.2%} | {size / 1e6:.2f} |"
        )
    lines += [
        "",
        "Reading: activations are quantised at run time, so only the weight MatMuls of the trunk become "
        "integer kernels; attention's activation x activation MatMuls, LayerNorm, softmax and GELU stay "
        "fp32. The speed-up should therefore grow with the share of weight MatMuls in the trunk's time (wider "
        "models, more tokens); that is not measured here for a ViT-B trunk. Which setting quantises best "
        "depends on the trunk's weights (on the untrained trunk of an earlier demo checkpoint the four were "
        "within noise of each other; on a trained one they are not), so the export tries them behind the "
        "gate rather than trusting one.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.update_results:
        update_results(text)
    return 0


def update_results(section: str) -> None:
    update_section(SECTION, section)


if __name__ == "__main__":
    raise SystemExit(main())

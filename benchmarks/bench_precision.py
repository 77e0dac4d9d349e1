"""The trunk per runtime x precision on this CPU: latency at batch 1 / 4, speed-up, error, gate verdict.

Trunks:

* ``vits`` -- ViT-S/16 (the ``small`` preset with the demo graph's adapters, random weights) at 16 x 224;
* ``demo`` -- the demo-like tiny trunk (``vmtl demo --quick``'s model, trained a few steps on synthetic
  data), exported with ``vmtl export --precision fp32,bf16,int8 --runtime auto``: its gate verdicts are
  the export's (every task's primary held-out metric within one point of ONNX Runtime fp32).

Candidates: ONNX Runtime fp32 (the shipped, offline-optimised file) and int8 (dynamic, QInt8 per-channel);
OpenVINO f32, bf16 (INFERENCE_PRECISION_HINT; on a CPU without bf16 OpenVINO runs f32, reported as such)
and int8 (NNCF post-training quantisation, transformer preset). Error: max |candidate - fp32| / max |fp32|
over the features, and the cosine of the token-pooled features (mean over clips). Achieved GFLOP/s is the
trunk's FLOPs per clip (torch's FlopCounterMode, 2 per multiply-add) over the batch-1 latency, against the
matmul peak of the precision in use (:func:`vmtl.bench.peak.precision_peak`).

    python benchmarks/bench_precision.py [--trunks vits,demo] [--threads N]

Writes benchmarks/results/precision.json and the "## Trunk precision (runtime x precision)" section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import update_section

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench_precision"
OUT = ROOT / "benchmarks" / "results"
SECTION = "## Trunk precision (runtime x precision)"


def _graph(num_frames: int, size: int) -> Any:
    import yaml

    from vmtl.demo.config import video_trunk_only
    from vmtl.tasks import TaskGraph

    spec = video_trunk_only(yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text()))
    tasks = []
    for t in spec["tasks"]:
        t = dict(t)
        if "labels_file" in t:
            t.pop("labels_file")
            t["labels"] = [f"class_{i}" for i in range(10)]
        t.pop("data", None)
        tasks.append(t)
    return spec, TaskGraph.from_dict(
        {
            "name": "bench-precision",
            "preprocess": {"num_frames": num_frames, "size": size, "sampling": "uniform"},
            "tasks": tasks,
        }
    )


def vits_model() -> Any:
    """Random-init ViT-S/16 (``small`` preset) of the demo graph at 16 x 224."""
    from vmtl.models.config import ModelConfig
    from vmtl.models.multitask import MultiTaskModel

    spec, graph = _graph(16, 224)
    cfg = {k: v for k, v in spec["model"].items() if k != "backbone"}
    return MultiTaskModel(graph, ModelConfig(backbone="small", **cfg)).eval()


def demo_checkpoint(work: Path) -> tuple[Path, Path]:
    """(checkpoint, data) of the demo-like tiny model (`vmtl demo --quick`'s shrink), made once."""
    import yaml

    from vmtl.cli import main as vmtl
    from vmtl.demo.config import quick_spec, video_trunk_only
    from vmtl.training.config import load_config
    from vmtl.training.trainer import Trainer

    data, ckpt = work / "data", work / "checkpoint"
    if not (data / "manifest.json").is_file():
        argv = [
            "data",
            "synth",
            "--out",
            str(data),
            "--seed",
            "0",
            "--videos-per-task",
            "8",
            "--workers",
            "1",
        ]
        assert vmtl([*argv, "--quiet"]) == 0
    if not (ckpt / "model.safetensors").is_file():
        spec = video_trunk_only(quick_spec(yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())))
        spec["data_root"] = str(data)
        (work / "config.yaml").write_text(yaml.safe_dump(spec))
        Trainer(load_config(work / "config.yaml"), ckpt, progress=False, log=lambda _m: None).run()
    return ckpt, data


def trunk_onnx(model: Any, work: Path) -> tuple[Path, Path, int]:
    """(plain ONNX, ORT-optimised ONNX, trunk FLOPs per clip) of a MultiTaskModel's trunk."""
    from vmtl.export.quantize import optimize_model
    from vmtl.export.wrappers import export_modules, export_onnx

    trunk, _ = export_modules(model)
    raw = export_onnx(trunk, work / "trunk.onnx")
    opt = optimize_model(raw, work / "trunk.opt.onnx")
    return raw, opt, int(model.flops_report(batch=1)["trunk"])


def _latency(session: Any, video: np.ndarray, repeats: int) -> float:
    session.run(None, {"video": video})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, {"video": video})
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def _errors(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    rel = max(float(np.abs(r - g).max() / max(np.abs(r).max(), 1e-12)) for r, g in zip(ref, got, strict=True))
    cos = []
    for r, g in zip(ref, got, strict=True):
        a, b = r.mean(axis=1).reshape(len(r), -1), g.mean(axis=1).reshape(len(g), -1)
        cos.extend((a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12))
    return rel, float(np.mean(cos))


def measure(
    name: str,
    raw: Path,
    opt: Path,
    flops: int,
    clips: np.ndarray,
    calib: list[np.ndarray],
    work: Path,
    args: Any,
) -> list[dict[str, Any]]:
    """Every candidate of one trunk: latency b1 / b4, errors vs ORT fp32, achieved GFLOP/s."""
    import nncf
    import openvino as ov

    from vmtl.export.quantize import quantize_model
    from vmtl.runtime import ort_session
    from vmtl.runtime_openvino import OvSession

    b1, b4 = np.ascontiguousarray(clips[:1]), np.ascontiguousarray(np.resize(clips, (4, *clips.shape[1:])))
    ir = work / "trunk.xml"
    ov.save_model(ov.convert_model(str(raw)), str(ir), compress_to_fp16=False)
    q_ir = work / "trunk_int8.xml"
    dataset = nncf.Dataset(calib, lambda c: {"video": c})
    q = nncf.quantize(
        ov.Core().read_model(str(ir)), dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib)
    )
    ov.save_model(q, str(q_ir), compress_to_fp16=False)
    ort_int8 = quantize_model(raw, work / "trunk_int8.onnx")
    t = args.threads
    candidates = {
        ("ort", "fp32"): lambda: ort_session(opt, threads=t),
        ("ort", "int8"): lambda: ort_session(ort_int8, threads=t),
        ("openvino", "fp32"): lambda: OvSession(ir, precision="fp32", threads=t),
        ("openvino", "bf16"): lambda: OvSession(ir, precision="bf16", threads=t),
        ("openvino", "int8"): lambda: OvSession(q_ir, precision="int8", threads=t),
    }
    rows, ref = [], None
    for (runtime, precision), make in candidates.items():
        sess = make()
        outs = sess.run(None, {"video": b4})
        ref = ref or outs
        rel, cos = _errors(ref, outs)
        ms1, ms4 = _latency(sess, b1, args.repeats), _latency(sess, b4, max(args.repeats // 2, 2))
        runs_as = getattr(sess, "runs_as", "f32" if precision == "fp32" else precision)
        if precision == "int8":
            runs_as = "int8" if runtime == "ort" else f"int8+{runs_as}"
        rows.append(
            {
                "trunk": name,
                "runtime": runtime,
                "precision": precision,
                "runs_as": runs_as,
                "ms_b1": ms1,
                "ms_b4": ms4,
                "max_rel_error": rel,
                "pooled_cosine": cos,
                "gflops_b1": flops / (ms1 / 1e3) / 1e9,
            }
        )
        print(
            f"{name} {runtime} {precision} (runs {runs_as}): {ms1:.1f} / {ms4:.1f} ms, rel {rel:.1e}, cos {cos:.6f}",
            flush=True,
        )
        del sess
    base = rows[0]["ms_b1"]
    for r in rows:
        r["speedup_b1"] = base / r["ms_b1"]
        r["speedup_b4"] = rows[0]["ms_b4"] / r["ms_b4"]
    return rows


def demo_gate(ckpt: Path, data: Path, work: Path) -> dict[tuple[str, str], str]:
    """The demo export's verdict per (runtime, precision) from its vmtl.json."""
    from vmtl.cli import main as vmtl
    from vmtl.contract import Manifest

    repo = work / "repo"
    argv = ["export", str(ckpt), "--out", str(repo), "--data", str(data), "--precision", "fp32,bf16,int8"]
    assert vmtl([*argv, "--runtime", "auto", "--quiet"]) == 0
    meta = Manifest.read(repo).metadata
    out = {(v.runtime, v.precision): "accepted" for v in meta.variants or []}
    for v in meta.refused or []:
        out[v.runtime, v.precision] = "refused: " + (v.reason or "")[:90]
    return out


def cpu_info() -> dict[str, Any]:
    from vmtl.runtime_openvino import cpu_capabilities

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {
        "model": fields.get("Model name", platform.processor()).strip(),
        "cpus": fields.get("CPU(s)", "?").strip(),
        "simd": [f for f in flags if f.startswith(("avx", "amx", "fma"))],
        "caps": cpu_capabilities().to_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trunks", default="vits,demo")
    ap.add_argument("--threads", type=int, default=None, help="threads per session (default: all cores)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calibration", type=int, default=8, help="NNCF calibration clips (ViT-S)")
    args = ap.parse_args(argv)
    import openvino as ov
    import torch

    from vmtl.bench.peak import precision_peak

    CACHE.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    verdicts: dict[str, dict[tuple[str, str], str]] = {}
    for name in args.trunks.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-precision-{name}-") as tmp:
            work = Path(tmp)
            rng = np.random.default_rng(0)
            if name == "vits":
                model = vits_model()
                shape = (16, 224, 224, 3)
                clips = rng.integers(0, 256, (4, *shape), dtype=np.uint8)
                calib = [rng.integers(0, 256, (1, *shape), dtype=np.uint8) for _ in range(args.calibration)]
                verdicts[name] = {}
            else:
                from vmtl.data.clips import load_clipset
                from vmtl.models.multitask import MultiTaskModel

                ckpt, data = demo_checkpoint(CACHE / "demo")
                model = MultiTaskModel.load_checkpoint(ckpt / "model.safetensors").eval()
                sets = {
                    t.name: load_clipset(
                        data, t, "val", model.graph.preprocess, model.temporal_tokens, progress=False
                    )
                    for t in model.graph.tasks
                }
                frames = np.concatenate([s.frames for s in sets.values()])
                clips = frames[:4]
                calib = [frames[i : i + 1] for i in range(len(frames))]
                verdicts[name] = demo_gate(ckpt, data, CACHE / "demo")
            with torch.no_grad():
                raw, opt, flops = trunk_onnx(model, work)
            rows += [
                {**r, "gflop_per_clip": flops / 1e9}
                for r in measure(name, raw, opt, flops, clips, calib, work, args)
            ]
    peaks = {p: precision_peak(p, "openvino", threads=args.threads).gflops for p in ("fp32", "bf16")}
    info = cpu_info()
    result = {
        "cpu": info,
        "openvino": ov.__version__,
        "rows": rows,
        "peaks": peaks,
        "verdicts": {k: {f"{a}/{b}": v for (a, b), v in d.items()} for k, d in verdicts.items()},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "precision.json").write_text(json.dumps(result, indent=2) + "\n")
    update_section(SECTION, report(result, verdicts))
    print(report(result, verdicts))
    return 0


def report(result: dict[str, Any], verdicts: dict[str, dict[tuple[str, str], str]]) -> str:
    import onnxruntime

    info = result["cpu"]
    caps = info["caps"]
    lines = [
        SECTION,
        "",
        f"`python benchmarks/bench_precision.py`: CPU **{info['model']}** ({info['cpus']} CPUs), SIMD flags "
        f"`{' '.join(info['simd'])}`; bf16 {'yes' if caps['bf16'] else 'no'}, VNNI {'yes' if caps['vnni'] else 'no'}; "
        f"OpenVINO {result['openvino']} (CPU capabilities {', '.join(caps['openvino'])}), ONNX Runtime "
        f"{onnxruntime.__version__}. Medians; b1 = 1 clip, b4 = 4 clips; error vs ONNX Runtime fp32.",
        "",
        "| trunk | runtime / precision (runs as) | ms b1 / b4 | vs ORT fp32 b1 / b4 | max rel. error | pooled cosine "
        "| GFLOP/s b1 (% of its peak) | gate (demo export) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    peaks = result["peaks"]
    for r in result["rows"]:
        key = "bf16" if r["runs_as"].endswith("bf16") else "fp32"
        peak = max(peaks[key].values())
        verdict = verdicts.get(r["trunk"], {}).get((r["runtime"], r["precision"]), "n/a (random weights)")
        lines.append(
            f"| {r['trunk']} ({r['gflop_per_clip']:.3g} GFLOP/clip) | {r['runtime']} {r['precision']} ({r['runs_as']}) "
            f"| {r['ms_b1']:.1f} / {r['ms_b4']:.1f} | {r['speedup_b1']:.2f}x / {r['speedup_b4']:.2f}x "
            f"| {r['max_rel_error']:.1e} | {r['pooled_cosine']:.6f} "
            f"| {r['gflops_b1']:.0f} ({100 * r['gflops_b1'] / peak:.0f}% of {peak:.0f}) | {verdict} |"
        )
    lines += [
        "",
        "Matmul peaks (1024^3, GFLOP/s): "
        + "; ".join(f"{p}: " + ", ".join(f"{k} {v:.0f}" for k, v in g.items()) for p, g in peaks.items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

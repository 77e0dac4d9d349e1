"""The image trunk's cost next to the video trunk's, per clip, both measured in one run.

Each trunk is exported exactly as `vmtl export` exports it (`TrunkExport` / `FrameTrunkExport` through
`export_onnx`, then ONNX Runtime's offline optimisation) and timed in ONNX Runtime on this CPU at batch 1
and batch 4 (median of `--repeats` runs after a warm-up), in two settings:

* ``demo``: the demo graph's trunks (`vmtl/configs/demo.yaml`): the tiny VideoMAE (8 x 64 px clips, 16 px
  patches, random weights: the cost does not depend on them) and EfficientNet-Lite0 on the same clips
  resized to 160 px inside its graph;
* ``vits``: ViT-S/16 at 16 x 224 (random weights) and EfficientNet-Lite0 on the same 16 frames at 224.

GFLOPs per clip are torch's FlopCounterMode count (2 per multiply-add).

    python benchmarks/bench_trunks.py [--threads N] [--repeats 7]

Writes benchmarks/results/trunks.json and the "## Trunk cost: image trunk next to video trunk" section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vmtl.export.quantize import optimize_model
from vmtl.export.wrappers import export_modules, export_onnx, frame_trunk_modules
from vmtl.models.config import ModelConfig
from vmtl.models.multitask import MultiTaskModel
from vmtl.runtime import cores, ort_session
from vmtl.tasks import TaskGraph

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_precision import _latency, cpu_info
from results import update_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Trunk cost: image trunk next to video trunk"
SETTINGS = {
    "demo": {"frames": 8, "size": 64, "image_size": 160, "model": {"backbone": "tiny", "patch_size": 16}},
    "vits": {"frames": 16, "size": 224, "image_size": 224, "model": {"backbone": "small"}},
}


def build(setting: dict[str, Any]) -> MultiTaskModel:
    graph = TaskGraph.from_dict(
        {
            "preprocess": {"num_frames": setting["frames"], "size": setting["size"]},
            "trunks": [{"name": "video"}, {"name": "image", "kind": "frames", "size": setting["image_size"]}],
            "tasks": [
                {"name": "action", "kind": "classify", "labels": ["a", "b"]},
                {"name": "scene", "kind": "classify", "trunk": "image", "head": "pretrained"},
            ],
        }
    )
    return MultiTaskModel(graph, ModelConfig(**setting["model"])).eval()


def time_session(path: Path, clips: np.ndarray, threads: int, repeats: int) -> float:
    """Median milliseconds of one ``clips`` batch through ``path`` in ONNX Runtime."""
    return _latency(ort_session(path, threads=threads), clips, repeats)


def flops(module: torch.nn.Module, clip: torch.Tensor) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        module(clip)
    return fc.get_total_flops() / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="demo,vits")
    ap.add_argument("--threads", type=int, default=cores())
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    rows = []
    for name in args.settings.split(","):
        setting = SETTINGS[name]
        model = build(setting)
        video_mod, _ = export_modules(model)
        image_mod = frame_trunk_modules(model)["image"]
        with tempfile.TemporaryDirectory(prefix="bench-trunks-") as tmp:
            work = Path(tmp)
            for trunk, module in (("video", video_mod), ("image", image_mod)):
                raw = export_onnx(module, work / f"{trunk}.onnx")
                path = optimize_model(raw, work / f"{trunk}-opt.onnx")
                rng = np.random.default_rng(0)
                shape = (setting["frames"], setting["size"], setting["size"], 3)
                b1 = time_session(
                    path, rng.integers(0, 256, (1, *shape), dtype=np.uint8), args.threads, args.repeats
                )
                b4 = time_session(
                    path, rng.integers(0, 256, (4, *shape), dtype=np.uint8), args.threads, args.repeats
                )
                gflops = flops(module, torch.from_numpy(rng.integers(0, 256, (1, *shape), dtype=np.uint8)))
                rows.append(
                    {
                        "setting": name,
                        "trunk": trunk,
                        "what": (
                            f"VideoMAE {setting['model']['backbone']}, {setting['frames']} x {setting['size']} px"
                            if trunk == "video"
                            else f"EfficientNet-Lite0, {setting['frames']} frames at {setting['image_size']} px"
                        ),
                        "gflops": gflops,
                        "ms_b1": b1,
                        "ms_b4_per_clip": b4 / 4,
                    }
                )
                print(json.dumps(rows[-1]))
    cpu = cpu_info()
    out = ROOT / "benchmarks" / "results" / "trunks.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"cpu": cpu, "threads": args.threads, "rows": rows}, indent=2) + "\n")
    lines = [
        "| setting | trunk | GFLOPs / clip | ms / clip, batch 1 | ms / clip, batch 4 | image / video (batch 1) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        video = next(v for v in rows if v["setting"] == r["setting"] and v["trunk"] == "video")
        ratio = f"{r['ms_b1'] / video['ms_b1']:.2f}x" if r["trunk"] == "image" else ""
        lines.append(
            f"| {r['setting']} | {r['what']} | {r['gflops']:.2f} | {r['ms_b1']:.1f} | "
            f"{r['ms_b4_per_clip']:.1f} | {ratio} |"
        )
    table = "\n".join(lines)
    print(table)
    text = (
        f"{SECTION}\n\n"
        f"Measured {time.strftime('%Y-%m-%d')} in one run on {cpu['model']} ({cpu['cpus']} CPUs; "
        f"{' '.join(cpu['simd'])}), ONNX Runtime, {args.threads} thread(s), median of {args.repeats}; "
        f"Python {platform.python_version()}.\n\n"
        f"`python benchmarks/bench_trunks.py --threads {args.threads} --repeats {args.repeats}`\n\n{table}\n"
    )
    update_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

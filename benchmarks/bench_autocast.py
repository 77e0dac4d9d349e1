"""bf16 autocast for the demo's training on this CPU: seconds per step, fp32 vs ``torch.autocast("cpu",
torch.bfloat16)``, on the demo model (configs/demo.yaml, random init) at its stage-1 batch size.

A step is forward (every task) + a sum-of-outputs loss + backward + AdamW, which is the compute of a
training step without the data loader. Adopt autocast only at >= 1.5x (issue 14); the result goes into the
"## Training precision (bf16 autocast)" section of benchmarks/RESULTS.md with the CPU flags.

    python benchmarks/bench_autocast.py [--steps 6] [--batch 16]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_precision import _graph, cpu_info
from results import update_section

SECTION = "## Training precision (bf16 autocast)"


def step_seconds(bf16: bool, steps: int, batch: int) -> float:
    import torch

    from vmtl.models.config import ModelConfig
    from vmtl.models.multitask import MultiTaskModel

    spec, _ = _graph(8, 64)
    pre = spec.get("preprocess", {})
    _, graph = _graph(int(pre.get("num_frames", 8)), int(pre.get("size", 64)))
    model = MultiTaskModel(graph, ModelConfig(**spec["model"])).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    t, s = graph.preprocess.num_frames, graph.preprocess.size
    video = torch.randint(0, 256, (batch, t, s, s, 3), dtype=torch.uint8)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            out = model(video)
            loss = sum(v.float().mean() for v in out.values())
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args(argv)
    import torch

    fp32 = step_seconds(False, args.steps, args.batch)
    bf16 = step_seconds(True, args.steps, args.batch)
    info = cpu_info()
    speedup = fp32 / bf16
    verdict = "adopt" if speedup >= 1.5 else "not adopted (below the 1.5x bar): training stays fp32"
    section = "\n".join(
        [
            SECTION,
            "",
            f"`python benchmarks/bench_autocast.py --steps {args.steps} --batch {args.batch}`: the demo model "
            f"(configs/demo.yaml, random init), forward + backward + AdamW, batch {args.batch}, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads; CPU **{info['model']}**, SIMD flags "
            f"`{' '.join(info['simd'])}` (bf16: {'yes' if info['caps']['bf16'] else 'no'}).",
            "",
            "| precision | s / step (median) | vs fp32 |",
            "|---|---|---|",
            f"| fp32 | {fp32:.3f} | 1.00x |",
            f"| bf16 autocast | {bf16:.3f} | {speedup:.2f}x |",
            "",
            f"Verdict: {verdict}.",
            "",
        ]
    )
    update_section(SECTION, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())

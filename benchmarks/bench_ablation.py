"""The papers' ablation on the demo data: single-task heads vs VMT-Adapter multi-task vs + DLM.

All variants start from the same warmed-up trunk (a demo checkpoint's), the same data and seed:

- single-task heads: no adapters, no DLMs; each head trains on its own dataset over the frozen trunk;
- VMT-Adapter multi-task: shared adapters + per-task knowledge extraction + heads (stage 1);
- + DLM: the same model after stage 2 (only the DLMs train, on the primary tasks' losses).

    python benchmarks/bench_ablation.py --trunk runs/demo --out runs/ablation [--update-results]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from vmtl.metrics.evaluate import primary
from vmtl.training.config import load_config
from vmtl.training.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import update_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Ablation: single-task vs VMT-Adapter multi-task vs + DLM"


def run_variant(
    cfg_path: Path, data: Path | None, trunk: Path, out: Path, threads: int, **model: object
) -> dict:
    cfg = load_config(cfg_path, data_root=data)
    cfg.model = cfg.model.replace(**model)
    cfg.train.threads = threads
    t0 = time.perf_counter()
    trainer = Trainer(cfg, out, init_from=trunk, progress=True, log=lambda _m: None)
    trainer.run()
    report = trainer.model.parameter_report()
    return {
        "metrics": trainer.state["metrics"],
        "params": report,
        "seconds": time.perf_counter() - t0,
        "graph": cfg.graph,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    ap.add_argument("--data", type=Path, help="data root (default: the config's)")
    ap.add_argument(
        "--trunk", type=Path, required=True, help="checkpoint whose warmed-up trunk all variants share"
    )
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--update-results", action="store_true", help="write the table into benchmarks/RESULTS.md"
    )
    args = ap.parse_args()

    single = run_variant(
        args.config, args.data, args.trunk, args.out / "single", args.threads, adapter="none", dlm=False
    )
    multi = run_variant(args.config, args.data, args.trunk, args.out / "vmt_dlm", args.threads)
    graph = multi["graph"]
    primaries = [t.name for t in graph.tasks if t.auxiliaries]
    rows = [
        ("single-task heads (frozen trunk)", single["metrics"]["stage1"], single["params"], ("heads_total",)),
        (
            "VMT-Adapter multi-task",
            multi["metrics"]["stage1"],
            multi["params"],
            ("adapters", "task_specific", "heads_total"),
        ),
        (
            "VMT-Adapter multi-task + DLM",
            multi["metrics"]["stage2"],
            multi["params"],
            ("adapters", "task_specific", "heads_total", "dlms_total"),
        ),
    ]
    header = (
        "| variant | "
        + " | ".join(
            f"{t.name} {primary(t, single['metrics']['stage1'][t.name])[0]}"
            + (" (primary)" if t.name in primaries else "")
            for t in graph.tasks
        )
        + " | trainable / trunk |"
    )
    lines = [header, "|" + " --- |" * (len(graph.tasks) + 2)]
    for name, metrics, params, parts in rows:
        share = sum(params[p] for p in parts) / params["trunk"]
        cells = " | ".join(f"{primary(t, metrics[t.name])[1]:.3f}" for t in graph.tasks)
        lines.append(f"| {name} | {cells} | {share:.1%} |")
    chance = " | ".join(f"{single['metrics']['stage1'][t.name]['chance']:.3f}" for t in graph.tasks)
    lines.append(f"| chance level | {chance} | |")
    table = "\n".join(lines)
    print(table)
    (args.out / "ablation.json").write_text(
        json.dumps({k: v for k, v in multi.items() if k != "graph"}, indent=2, default=str)
    )
    if args.update_results:
        text = (
            f"{SECTION}\n\n"
            f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} ({platform.processor() or 'cpu'}), "
            f"2 cores, torch threads={args.threads}; trunk from `{args.trunk}` (stage 0 of the demo), same data "
            "and seed for every variant. Primary metrics on held-out videos (MAE: lower is better). "
            "Trainable share counts only what the variant trains.\n\n"
            f"`python benchmarks/bench_ablation.py --trunk {args.trunk} --update-results`"
            f" ({single['seconds'] + multi['seconds']:.0f} s)\n\n{table}\n"
        )
        update_section(SECTION, text)


if __name__ == "__main__":
    main()

"""The papers' ablation on the demo data: single-task heads vs VMT-Adapter multi-task vs + DLM, over seeds.

All variants start from the same warmed-up trunk (a demo checkpoint's) and the same data; each runs once
per seed (head initialisation, task sampling and clip order change with it):

- single-task heads: no adapters, no DLMs; each head trains on its own dataset over the frozen trunk;
- VMT-Adapter multi-task: shared adapters + per-task knowledge extraction + heads (stage 1);
- + DLM: the same model after stage 2 (only the DLMs train, on the primary tasks' losses);
- + DLM, auxiliary on the image trunk: `tags` takes its prompts from `scene` (the EfficientNet-Lite0
  trunk's pretrained ImageNet head, the other trunk) instead of `object` (needs the config's image trunk).

    python benchmarks/bench_ablation.py --trunk runs/demo --out runs/ablation --seeds 0,1,2 [--update-results]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from vmtl.metrics.evaluate import primary
from vmtl.training.config import load_config
from vmtl.training.trainer import Trainer, load_trunk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import update_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Ablation: single-task vs VMT-Adapter multi-task vs + DLM"
CROSS_TRUNK = ("tags", "scene")  # (primary, its auxiliary on the image trunk)


def run_variant(
    cfg_path: Path,
    data: Path | None,
    trunk: Path,
    out: Path,
    threads: int,
    seed: int,
    auxiliaries: dict[str, list[str]] | None = None,
    **model: object,
) -> dict:
    cfg = load_config(cfg_path, data_root=data)
    cfg.model = cfg.model.replace(**model)
    cfg.train.threads = threads
    cfg.seed = seed
    if auxiliaries:  # the graph with other auxiliaries for some tasks
        spec = cfg.graph.to_dict()
        for task in spec["tasks"]:
            task["auxiliaries"] = auxiliaries.get(task["name"], task.get("auxiliaries", []))
        cfg.graph = type(cfg.graph).from_dict(spec)
    t0 = time.perf_counter()
    # The warmed-up trunk only (never an incremental run, even where the variant changes auxiliaries).
    trainer = Trainer(cfg, out, progress=True, log=lambda _m: None)
    load_trunk(trainer.model, trunk)
    trainer.run()
    report = trainer.model.parameter_report()
    return {
        "metrics": trainer.state["metrics"],
        "params": report,
        "seconds": time.perf_counter() - t0,
        "graph": cfg.graph,
    }


def _cell(values: list[float]) -> str:
    """mean ± sample standard deviation over seeds (the mean alone for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    ap.add_argument("--data", type=Path, help="data root (default: the config's)")
    ap.add_argument(
        "--trunk", type=Path, required=True, help="checkpoint whose warmed-up trunk all variants share"
    )
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    ap.add_argument("--no-cross-trunk", action="store_true", help="skip the image-trunk auxiliary variant")
    ap.add_argument(
        "--update-results", action="store_true", help="write the table into benchmarks/RESULTS.md"
    )
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    runs: dict[str, list[tuple[dict, dict]]] = {}  # variant -> [(metrics, params)] per seed
    graph = None
    for seed in seeds:
        base = (args.config, args.data, args.trunk)
        single = run_variant(
            *base, args.out / f"single-{seed}", args.threads, seed, adapter="none", dlm=False
        )
        multi = run_variant(*base, args.out / f"vmt_dlm-{seed}", args.threads, seed)
        graph = multi["graph"]
        runs.setdefault("single-task heads (frozen trunk)", []).append(
            (single["metrics"]["stage1"], single["params"])
        )
        runs.setdefault("VMT-Adapter multi-task", []).append((multi["metrics"]["stage1"], multi["params"]))
        runs.setdefault("VMT-Adapter multi-task + DLM", []).append(
            (multi["metrics"]["stage2"], multi["params"])
        )
        primary_task, aux = CROSS_TRUNK
        if not args.no_cross_trunk and aux in graph and graph.trunk_of(aux) != graph.trunk_of(primary_task):
            cross = run_variant(
                *base, args.out / f"cross-{seed}", args.threads, seed, auxiliaries={primary_task: [aux]}
            )
            label = f"+ DLM, {primary_task} <- {aux} (image trunk)"
            runs.setdefault(label, []).append((cross["metrics"]["stage2"], cross["params"]))
    assert graph is not None
    tasks = [t for t in graph.tasks if not t.pretrained]
    primaries = [t.name for t in tasks if t.auxiliaries]
    first = next(iter(runs.values()))[0][0]
    header = (
        "| variant | "
        + " | ".join(
            f"{t.name} {primary(t, first[t.name])[0]}" + (" (primary)" if t.name in primaries else "")
            for t in tasks
        )
        + " |"
    )
    lines = [header, "|" + " --- |" * (len(tasks) + 1)]
    for name, per_seed in runs.items():
        cells = " | ".join(_cell([primary(t, m[t.name])[1] for m, _ in per_seed]) for t in tasks)
        lines.append(f"| {name} | {cells} |")
    chance = " | ".join(f"{first[t.name]['chance']:.3f}" for t in tasks)
    lines.append(f"| chance level | {chance} |")
    table = "\n".join(lines)
    seconds = time.perf_counter() - t0
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(
        json.dumps({k: [m for m, _ in v] for k, v in runs.items()}, indent=2, default=str)
    )
    if args.update_results:
        text = (
            f"{SECTION}\n\n"
            f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} ({platform.processor() or 'cpu'}), "
            f"2 cores, torch threads={args.threads}; trunk from `{args.trunk}` (stage 0 of the demo), same data "
            f"for every variant, seeds {args.seeds} (mean ± standard deviation over seeds). Primary metrics "
            "on held-out videos (MAE: lower is better).\n\n"
            f"`python benchmarks/bench_ablation.py --trunk {args.trunk} --seeds {args.seeds} --update-results`"
            f" ({seconds:.0f} s)\n\n{table}\n"
        )
        update_section(SECTION, text)


if __name__ == "__main__":
    main()

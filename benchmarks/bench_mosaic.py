"""Does the object-mosaic curriculum teach a from-scratch trunk what objects look like? (stage 0)

Trains the demo config's trunk from scratch on object mosaics only (vmtl.data.mosaic, the trainer's
per-token readout), once with objects spreading from the centre over the first `--ramp` of the steps and
once with objects anywhere from the start, same seed, steps and learning rate. Then, for each:

- per-token top-1 on fresh mosaics with objects anywhere (held-out renders of train-split images);
- top-1 on the held-out `object` videos, zero-shot: the same readout averaged over a clip's tokens
  (no `object` video was trained on).

    python benchmarks/bench_mosaic.py [--steps 1000] [--update-results]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vmtl.data.clips import load_clipset
from vmtl.data.mosaic import ObjectMosaic
from vmtl.models.multitask import MultiTaskModel
from vmtl.training.config import load_config
from vmtl.training.trainer import lr_at, mosaic_logits, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import update_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Stage 0: object mosaics"


def run(
    cfg_path: Path, data: Path | None, steps: int, lr: float, batch: int, ramp: float
) -> dict[str, float]:
    cfg = load_config(cfg_path, data_root=data)
    seed_everything(cfg.seed)
    task = cfg.train.mosaic.task or "object"
    pre = cfg.graph.preprocess
    model = MultiTaskModel(cfg.graph, cfg.model)
    spec = cfg.graph.task(task)
    mosaic = ObjectMosaic.from_dataset(
        cfg.data_root,
        frames=pre.num_frames,
        size=pre.size,
        tokens=model.temporal_tokens,
        labels=tuple(spec.labels),
    )
    readout = torch.nn.Linear(model.trunk.hidden_size, mosaic.num_classes)
    model.set_stage(0)
    params = (
        model.trunk.backbone_parameters()
        + model.trunk.task_specific_parameters()
        + list(readout.parameters())
    )
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    rng = np.random.default_rng([cfg.seed, 7])
    t0 = time.perf_counter()
    model.train()
    for step in tqdm(range(steps), desc=f"mosaics, ramp {ramp}", unit="step"):
        spread = min(1.0, (step + 1) / (ramp * steps)) if ramp > 0 else 1.0
        frames, labels = mosaic.batch(rng, batch, spread)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, 50)
        logits = mosaic_logits(model, readout, task, torch.from_numpy(frames))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.from_numpy(labels).flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    test_rng = np.random.default_rng([cfg.seed, 99])
    hits = total = 0
    with torch.no_grad():
        for _ in range(20):
            frames, labels = mosaic.batch(test_rng, 16, 1.0)
            pred = mosaic_logits(model, readout, task, torch.from_numpy(frames)).argmax(-1).numpy()
            hits, total = hits + int((pred == labels).sum()), total + labels.size
        val = load_clipset(cfg.data_root, spec, "val", pre, model.temporal_tokens, progress=False)
        preds = [
            mosaic_logits(model, readout, task, torch.from_numpy(val.frames[i : i + 32]))
            .mean(1)
            .argmax(-1)
            .numpy()
            for i in range(0, len(val), 32)
        ]
    zero_shot = float((np.concatenate(preds) == val.targets).mean())
    return {
        "token_top1": hits / total,
        "object_top1": zero_shot,
        "seconds": seconds,
        "chance": 1 / mosaic.num_classes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    ap.add_argument("--data", type=Path, help="data root (default: the config's)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=None, help="default: the config's stage-0 lr")
    ap.add_argument("--batch", type=int, default=None, help="default: the config's stage-0 batch size")
    ap.add_argument(
        "--ramp", type=float, default=0.6, help="share of the steps over which objects spread out"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--update-results", action="store_true", help="write the table into benchmarks/RESULTS.md"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, data_root=args.data)
    lr = args.lr or cfg.train.stage0.lr
    batch = args.batch or cfg.train.stage0.batch_size
    rows = []
    for name, ramp in (
        (f"centre -> anywhere over the first {args.ramp:g} of the steps", args.ramp),
        ("anywhere from the start", 0.0),
    ):
        r = run(args.config, args.data, args.steps, lr, batch, ramp)
        rows.append((name, r))
        print(
            f"{name}: per-token top-1 {r['token_top1']:.3f}, object videos top-1 (zero-shot) {r['object_top1']:.3f}, {r['seconds']:.0f} s"
        )
    m = cfg.model
    table = "\n".join(
        [
            "| object placement | mosaics per-token top-1 | held-out `object` videos top-1 (zero-shot) | training |",
            "| --- | ---: | ---: | ---: |",
            *(
                f"| {n} | {r['token_top1']:.3f} | {r['object_top1']:.3f} | {r['seconds']:.0f} s |"
                for n, r in rows
            ),
            f"| chance | {rows[0][1]['chance']:.3f} | {rows[0][1]['chance']:.3f} | |",
        ]
    )
    print(table)
    if args.update_results:
        text = (
            f"{SECTION}\n\n"
            f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, torch threads={args.threads}: the "
            f"trunk of `{args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config}` "
            f"({m.backbone}, patch {m.patch_size}) from scratch, {args.steps} steps of {batch} mosaic clips only, "
            f"lr {lr:g}, same seed for both rows. Per-token top-1 on 320 fresh tokens with objects anywhere; "
            "the `object` column reads the held-out videos with the same linear readout, averaged over tokens.\n\n"
            f"`python benchmarks/bench_mosaic.py --steps {args.steps} --update-results`\n\n{table}\n"
        )
        update_section(SECTION, text)


if __name__ == "__main__":
    main()

"""`vmtl eval CKPT --data DIR`: held-out metrics of a checkpoint as a table."""

from __future__ import annotations

import argparse
import json
import sys

from vmtl.data.clips import load_clipset
from vmtl.metrics import format_table
from vmtl.metrics.evaluate import chance_level, task_metrics
from vmtl.models.checkpoint import WEIGHTS_FILE, CheckpointError
from vmtl.models.multitask import MultiTaskModel
from vmtl.training.trainer import predict


def run(args: argparse.Namespace) -> int:
    try:
        model = MultiTaskModel.load_checkpoint(args.checkpoint / WEIGHTS_FILE)
    except CheckpointError as exc:
        print(f"vmtl eval: {exc}", file=sys.stderr)
        return 1
    graph = model.graph
    names = args.tasks.split(",") if args.tasks else [t.name for t in graph.tasks if not t.pretrained]
    rows = {}
    for name in names:
        try:
            task = graph.task(name)
            if task.pretrained:
                raise KeyError(f"task {name!r} is a pretrained head (no training data to evaluate on)")
            clips = load_clipset(args.data, task, args.split, model.graph.preprocess, model.temporal_tokens)
        except (KeyError, FileNotFoundError) as exc:
            print(f"vmtl eval: {exc}", file=sys.stderr)
            return 1
        rows[name] = task_metrics(task, predict(model, clips, name, args.batch_size), clips)
        rows[name]["chance"] = chance_level(task, clips)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0

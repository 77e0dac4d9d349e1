"""The demo's training config: the one shipped with vmtl, `vmtl demo --print-config`, its --quick shrink."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

#: Overrides of the demo config for --quick: tiny clips, model and schedule.
QUICK_PREPROCESS = {"num_frames": 4, "size": 32, "sampling": "uniform"}
QUICK_MODEL = {"patch_size": 8, "adapter_bottleneck": 8, "head_dim": 32, "dlm_prompts": 2}
QUICK_TRAIN = {
    "stage0": {"steps": 4, "batch_size": 4, "warmup": 1},
    "stage1": {"steps": 8, "batch_size": 4, "warmup": 1},
    "stage2": {"steps": 3, "batch_size": 4, "warmup": 1},
    "eval_batch_size": 8,
    "save_every": 0,
    "threads": 1,  # tiny matmuls: a second thread only adds overhead (and the tests run beside a server)
}


def quick_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A training config spec shrunk for --quick (and the tests): tiny clips, model and schedule."""
    return {
        **spec,
        "name": f"{spec.get('name', 'demo')}-quick",
        "preprocess": {**(spec.get("preprocess") or {}), **QUICK_PREPROCESS},
        "model": {**(spec.get("model") or {}), **QUICK_MODEL},
        "train": {**(spec.get("train") or {}), **QUICK_TRAIN},
    }


def video_trunk_only(spec: dict[str, Any]) -> dict[str, Any]:
    """A training config spec without its `trunks:` section and the tasks on trunks after the first: the
    demo's seven synthetic tasks on its VideoMAE trunk (what the tests' shared checkpoint and the serving
    benchmarks measure; the image trunk has its own tests and benchmark)."""
    trunks = spec.get("trunks") or []
    first = trunks[0]["name"] if trunks else None
    tasks = [t for t in spec["tasks"] if t.get("trunk") in (None, first)]
    return {**{k: v for k, v in spec.items() if k != "trunks"}, "tasks": tasks}


def default_config() -> Path:
    """The demo's training config, shipped as package data (vmtl/configs/demo.yaml)."""
    return Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def print_config(path: Path) -> int:
    """`vmtl demo --print-config`: the config's text on stdout (exit status 1 when it cannot be read)."""
    try:
        text = path.read_text()
    except OSError as exc:
        print(f"vmtl demo: cannot read the training config {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0

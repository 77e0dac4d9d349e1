"""The "K independent single-task models" deployment, written next to a repository for the same server.

For every task ``t`` it adds ``single_<t>_backbone`` (a copy of the trunk model: its own instance, its own
dynamic batcher, its own python-backend process in the ``cpu`` flavour) and the ensemble ``single_<t>``
(clip -> that trunk -> the heads ``t`` needs -> output ``t``). That is what a user serving each task on
its own would run: one trunk pass per task and clip. The head models are shared between the two
deployments: they are well under 1% of the trunk's FLOPs, so sharing them does not flatter the baseline.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format

from vmtl.contract import BACKBONE, CLIP_ENSEMBLE, HEADS_MODEL, head_model, load_configs, validate_repository
from vmtl.tasks import TaskGraph

SINGLE_PREFIX = "single_"


def single_model(task: str) -> str:
    """The ensemble name of ``task``'s single-task model."""
    return f"{SINGLE_PREFIX}{task}"


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a model directory, hard-linking model files where the filesystem allows (ONNX files can be big).
    Configs and other small files are copied: they get rewritten, which must not touch the source."""

    def link(s: str, d: str) -> None:
        if Path(s).suffix in (".onnx", ".plan", ".data"):
            try:
                os.link(s, d)
                return
            except OSError:
                pass
        shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)


def write_independent_repository(repo: Path, out: Path, graph: TaskGraph, tasks: Sequence[str]) -> Path:
    """``out``: every model of ``repo`` plus the single-task models of ``tasks`` (see the module doc)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for entry in repo.iterdir():
        if entry.is_dir():
            _link_tree(entry, out / entry.name)
        else:
            shutil.copy2(entry, out / entry.name)
    configs = load_configs(repo)
    trunk_cfg, clip_cfg = configs[BACKBONE], configs[CLIP_ENSEMBLE]
    for task in tasks:
        name, trunk_name = single_model(task), f"{single_model(task)}_backbone"
        _link_tree(repo / BACKBONE, out / trunk_name)
        cfg = type(trunk_cfg)()
        cfg.CopyFrom(trunk_cfg)
        cfg.name = trunk_name
        (out / trunk_name / "config.pbtxt").write_text(text_format.MessageToString(cfg))

        needed = graph.closure([task])
        heads = {head_model(n): n for n in needed}
        ens = type(clip_cfg)()
        ens.CopyFrom(clip_cfg)
        ens.name = name
        del ens.ensemble_scheduling.step[:]
        for step in clip_cfg.ensemble_scheduling.step:
            if step.model_name == BACKBONE:
                new = ens.ensemble_scheduling.step.add()
                new.CopyFrom(step)
                new.model_name = trunk_name
                if HEADS_MODEL in configs:  # the fused heads model takes every task's features
                    continue
                for key in [k for k in new.output_map if k.removeprefix("feat_") not in needed]:
                    del new.output_map[key]
            elif step.model_name == HEADS_MODEL:  # fused: the request's vmtl_tasks says which heads run
                new = ens.ensemble_scheduling.step.add()
                new.CopyFrom(step)
                for key in [k for k in new.output_map if k != task]:
                    del new.output_map[key]
            elif step.model_name in heads:
                new = ens.ensemble_scheduling.step.add()
                new.CopyFrom(step)
                if heads[step.model_name] != task:  # an auxiliary: only its representation is used
                    del new.output_map["output"]
                if "repr" in new.output_map and not any(
                    heads[step.model_name] in graph.task(n).auxiliaries for n in needed
                ):
                    del new.output_map["repr"]
        kept = [o for o in clip_cfg.output if o.name == task]
        del ens.output[:]
        ens.output.extend(kept)
        (out / name / "1").mkdir(parents=True, exist_ok=True)
        (out / name / "1" / ".keep").write_text("")
        for o in kept:
            if o.label_filename:
                shutil.copy2(repo / CLIP_ENSEMBLE / o.label_filename, out / name / o.label_filename)
        (out / name / "config.pbtxt").write_text(text_format.MessageToString(ens))
    validate_repository(out)
    return out

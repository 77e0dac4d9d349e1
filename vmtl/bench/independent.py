"""The "K independent single-task models" deployment, written next to a repository for the same server.

For every task ``t`` it adds ``single_<t>_backbone`` (a copy of the trunk model: its own instance, its own
dynamic batcher, its own python-backend process in the ``cpu`` flavour; ``single_<t>_backbone_<trunk>``
for each other trunk ``t`` needs) and the ensemble ``single_<t>``
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

from vmtl.contract import (
    CLIP_ENSEMBLE,
    fused_heads_groups,
    head_model,
    load_configs,
    trunk_model,
    validate_repository,
)
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
    clip_cfg = configs[CLIP_ENSEMBLE]
    trunks = {trunk_model(graph, t): t for t in graph.trunk_names}
    fused = {m for m in fused_heads_groups(graph) if m in configs}  # fused heads models, if any
    for task in tasks:
        name = single_model(task)
        needed = graph.closure([task])
        own_trunks = graph.trunks_for([task])
        copies = {}
        for model, trunk in trunks.items():
            if trunk not in own_trunks:
                continue
            copies[model] = f"{name}_{model}"
            _link_tree(repo / model, out / copies[model])
            cfg = type(configs[model])()
            cfg.CopyFrom(configs[model])
            cfg.name = copies[model]
            (out / copies[model] / "config.pbtxt").write_text(text_format.MessageToString(cfg))

        heads = {head_model(n): n for n in needed}
        ens = type(clip_cfg)()
        ens.CopyFrom(clip_cfg)
        ens.name = name
        del ens.ensemble_scheduling.step[:]
        for step in clip_cfg.ensemble_scheduling.step:
            if step.model_name in trunks:
                if step.model_name not in copies:  # a trunk this task does not need
                    continue
                new = ens.ensemble_scheduling.step.add()
                new.CopyFrom(step)
                new.model_name = copies[step.model_name]  # outputs no kept step reads: trimmed below
            elif step.model_name in fused:  # fused: the request's vmtl_tasks says which heads run
                if task not in step.output_map:
                    continue
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
        read = {t for st in ens.ensemble_scheduling.step for t in st.input_map.values()}
        for st in ens.ensemble_scheduling.step:  # Triton refuses an ensemble tensor nothing reads
            if st.model_name in copies.values():
                for key in [k for k, t in st.output_map.items() if t not in read]:
                    del st.output_map[key]
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

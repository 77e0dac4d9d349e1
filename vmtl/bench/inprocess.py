"""In-process ONNX Runtime baselines on a repository's own ONNX files, with the session options the
``cpu`` flavour's python-backend host gives each model (read from its config.pbtxt), so that a comparison
with the served repository measures serving, not different kernels or thread counts.

- :class:`SharedOrt`: the trunk once, then the needed heads in stage order (what the ensemble runs);
- :class:`IndependentOrt`: K single-task models, each its own trunk session + its head (and the heads of
  its auxiliaries): what a user would deploy without a shared trunk.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vmtl.tasks import TaskGraph


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def host_session(path: Path, params: Mapping[str, str]) -> Any:
    """An ORT CPU session with the options vmtl/server/models/ort_model.py gives this model in Triton."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    threads = int(params.get("intra_op_threads") or 1)
    opts.intra_op_num_threads = threads if threads > 0 else cores()
    opts.inter_op_num_threads = int(params.get("inter_op_threads") or 1)
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    spin = "1" if params.get("allow_spinning", "0") == "1" else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class RepoFiles:
    """A repository's task graph, ONNX files and each model's config parameters."""

    path: Path
    graph: TaskGraph
    onnx: dict[str, Path]  # model name -> ONNX file
    params: dict[str, dict[str, str]]  # model name -> config parameters
    flavour: str
    metadata: dict[str, Any]
    max_batch_size: int

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RepoFiles:
        """The ONNX files as the batch engines find them (:class:`vmtl.client.engines.LocalModel`, which
        raises ``BatchError`` saying what is missing), plus each model's config parameters."""
        from vmtl.client.engines import LocalModel
        from vmtl.export.repository import BACKBONE, head_model, load_configs, read_manifest

        local = LocalModel.load(path)
        configs = load_configs(local.path)
        manifest = read_manifest(local.path)
        onnx = {BACKBONE: local.trunk, **{head_model(n): f for n, f in local.heads.items()}}
        params = {m: {k: v.string_value for k, v in configs[m].parameters.items()} for m in onnx}
        return cls(
            local.path,
            local.graph,
            onnx,
            params,
            str(manifest.get("flavour", "?")),
            dict(manifest.get("metadata") or {}),
            local.max_batch_size,
        )

    def session(self, model: str) -> Any:
        return host_session(self.onnx[model], self.params[model])


class SharedOrt:
    """The trunk once, then the heads of the asked tasks (and their auxiliaries) in stage order."""

    def __init__(self, repo: RepoFiles) -> None:
        from vmtl.export.repository import BACKBONE, head_model

        self.graph = repo.graph
        self.trunk = repo.session(BACKBONE)
        self.feature_names = [o.name for o in self.trunk.get_outputs()]
        self.heads = {n: repo.session(head_model(n)) for n in self.graph.names}

    def features(self, video: np.ndarray, tasks: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Trunk features {task: array} of ``tasks``' closure (None: every task's)."""
        names = self.graph.names if tasks is None else self.graph.closure(tasks)
        feats = self.trunk.run([f"feat_{n}" for n in names], {"video": video})
        return dict(zip(names, feats, strict=True))

    def run_heads(self, feats: Mapping[str, np.ndarray], tasks: Sequence[str]) -> dict[str, np.ndarray]:
        """The heads of ``tasks`` (and their auxiliaries) on trunk features ``feats`` (task -> features)."""
        out: dict[str, np.ndarray] = {}
        reprs: dict[str, np.ndarray] = {}
        for n in self.graph.closure(tasks):
            feeds = {"features": feats[n], **{f"repr_{a}": reprs[a] for a in self.graph.task(n).auxiliaries}}
            out[n], reprs[n] = self.heads[n].run(["output", "repr"], feeds)
        return {n: out[n] for n in tasks}

    def run(self, video: np.ndarray, tasks: Sequence[str] | None) -> dict[str, np.ndarray]:
        """Outputs of ``tasks``; ``None``: the trunk alone (all its features)."""
        if tasks is None:
            return dict(zip(self.feature_names, self.trunk.run(None, {"video": video}), strict=True))
        return self.run_heads(self.features(video, tasks), tasks)


class IndependentOrt:
    """K single-task models: per task its own trunk session and heads, nothing shared between tasks."""

    def __init__(self, repo: RepoFiles, tasks: Sequence[str]) -> None:
        self.tasks = list(tasks)
        self.models = {t: SharedOrt(repo) for t in self.tasks}

    def run(self, video: np.ndarray) -> dict[str, np.ndarray]:
        return {t: self.models[t].run(video, [t])[t] for t in self.tasks}

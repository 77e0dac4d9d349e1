"""ONNX Runtime in this process: sessions, the trunk-then-heads pipeline, and a repository's ONNX model.

- :func:`ort_session` builds every ONNX Runtime session vmtl opens (export's parity check and accuracy
  gate, the ``cpu`` flavour's python-backend host, the local and ray batch engines, the benchmarks'
  in-process baselines): threads, spinning, optimisation level and providers are set here only.
  :func:`host_session` gives a model the options the python-backend host reads from its config.
- :class:`OrtPipeline`: the trunk once per batch of clips, then the heads the asked tasks need (their
  auxiliaries too) in stage order, each fed its auxiliaries' ``repr``: what the ensembles do in Triton.
- :class:`LocalModel`: a model repository's task graph and ONNX files (found through
  :mod:`vmtl.contract`) and pipelines over them.

Layer 1: numpy, onnxruntime, :mod:`vmtl.contract` and :mod:`vmtl.tasks` (no torch).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vmtl.contract import (
    BACKBONE,
    HEAD_FEATURES,
    HEAD_OUTPUT,
    HEAD_REPR,
    TAPS_OUTPUT,
    VIDEO_INPUT,
    ExportRecord,
    Manifest,
    config_params,
    feat_output,
    head_model,
    head_onnx_file,
    load_configs,
    onnx_file,
    repr_input,
)
from vmtl.tasks import TaskGraph

__all__ = [
    "OPTIMIZATION_LEVELS",
    "LocalModel",
    "OrtPipeline",
    "TrunkRunner",
    "cores",
    "host_session",
    "ort_session",
]

PROVIDERS = ("CPUExecutionProvider",)
OPTIMIZATION_LEVELS = {
    "off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
#: A trunk that is not an ORT session (e.g. a TensorRT engine): uint8 clips -> {feat_<task>: features}.
TrunkRunner = Callable[[np.ndarray], dict[str, np.ndarray]]


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------------
# Sessions


def ort_session(
    path: str | os.PathLike[str] | bytes,
    *,
    optimization: str = "all",
    threads: int | None = None,
    inter_threads: int | None = None,
    spinning: bool | None = None,
    save_to: str | os.PathLike[str] | None = None,
) -> ort.InferenceSession:
    """A CPU ``InferenceSession`` of the ONNX file ``path``.

    ``optimization``: off|basic|extended|all. ``threads`` / ``inter_threads``: intra- / inter-op threads
    (None or 0: ONNX Runtime's default). ``spinning``: whether idle pool threads spin (None: ONNX Runtime's
    default, which spins). ``save_to`` writes the optimised graph (ORT's offline optimisation).
    """
    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(
            f"optimisation level must be one of {sorted(OPTIMIZATION_LEVELS)}, not {optimization!r}"
        )
    opts = ort.SessionOptions()
    opts.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if inter_threads:
        opts.inter_op_num_threads = inter_threads
    if spinning is not None:
        spin = "1" if spinning else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if save_to is not None:
        opts.optimized_model_filepath = str(save_to)
    model = path if isinstance(path, bytes) else str(path)  # a file, or a serialised ModelProto
    return ort.InferenceSession(model, sess_options=opts, providers=list(PROVIDERS))


def host_session(path: str | os.PathLike[str], params: Mapping[str, str]) -> ort.InferenceSession:
    """The session the ``cpu`` flavour's python-backend host gives a model, from its config parameters:

    - ``intra_op_threads``: intra-op threads; ``0`` = all cores available to the process (default 1)
    - ``inter_op_threads``: inter-op threads (default 1)
    - ``allow_spinning``: ``1`` lets the pool threads spin between runs (default ``0``: they sleep, so the
      backbone and the heads don't starve each other on a small CPU)
    """
    threads = int(params.get("intra_op_threads") or 1)
    return ort_session(
        path,
        optimization="all",
        threads=threads if threads > 0 else cores(),
        inter_threads=int(params.get("inter_op_threads") or 1),
        spinning=params.get("allow_spinning", "0") == "1",
    )


# --------------------------------------------------------------------------------------------------
# The pipeline


class OrtPipeline:
    """Each needed trunk once, then the needed heads in stage order; every model an ORT session (or the
    VideoMAE trunk as a callable).

    Built from ONNX files (``trunk``: the graph's first trunk; ``frame_trunks``: trunk name -> file for
    the others; ``heads``: task -> file, at least the asked tasks' closure) with :func:`ort_session`'s
    ``optimization`` and ``threads``, or from open sessions (:meth:`from_sessions`). A trunk runs only when
    an asked task (or one of their auxiliaries) reads its features.
    """

    def __init__(
        self,
        graph: TaskGraph,
        trunk: str | os.PathLike[str] | TrunkRunner,
        heads: Mapping[str, str | os.PathLike[str]],
        *,
        optimization: str = "all",
        threads: int | None = None,
        tap_tasks: Sequence[str] = (),
        frame_trunks: Mapping[str, str | os.PathLike[str]] | None = None,
    ) -> None:
        trunk_model = (
            trunk if callable(trunk) else ort_session(trunk, optimization=optimization, threads=threads)
        )
        sessions = {n: ort_session(p, optimization=optimization, threads=threads) for n, p in heads.items()}
        frames = {
            t: ort_session(p, optimization=optimization, threads=threads)
            for t, p in (frame_trunks or {}).items()
        }
        self._setup(graph, trunk_model, sessions, tap_tasks, frames)

    @classmethod
    def from_sessions(
        cls,
        graph: TaskGraph,
        trunk: ort.InferenceSession | TrunkRunner,
        heads: Mapping[str, ort.InferenceSession],
        tap_tasks: Sequence[str] = (),
        frame_trunks: Mapping[str, ort.InferenceSession] | None = None,
    ) -> OrtPipeline:
        pipeline = cls.__new__(cls)
        pipeline._setup(graph, trunk, heads, tap_tasks, frame_trunks or {})
        return pipeline

    def _setup(
        self,
        graph: TaskGraph,
        trunk: ort.InferenceSession | TrunkRunner,
        heads: Mapping[str, ort.InferenceSession],
        tap_tasks: Sequence[str],
        frame_trunks: Mapping[str, ort.InferenceSession],
    ) -> None:
        self.graph = graph
        #: The trunk output each task's head reads: ``feat_<task>``, or ``trunk_taps`` for a tap task.
        self.feature_output = {n: TAPS_OUTPUT if n in tap_tasks else feat_output(n) for n in graph.names}
        #: The VideoMAE trunk's ORT session (None when the trunk is a callable).
        self.trunk: ort.InferenceSession | None = None if callable(trunk) else trunk
        self._trunk_fn: TrunkRunner | None = trunk if callable(trunk) else None
        #: The other trunks' sessions, by trunk name.
        self.frame_trunks = dict(frame_trunks)
        self._trunk_of = {n: graph.trunk_of(n) for n in graph.names}
        self.heads = dict(heads)

    def trunk_outputs(self, video: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the VideoMAE trunk (``feat_<task>`` -> features) of a uint8 clip batch [B,T,S,S,3]."""
        video = np.ascontiguousarray(video, dtype=np.uint8)
        if self._trunk_fn is not None:
            return self._trunk_fn(video)
        assert self.trunk is not None
        names = [o.name for o in self.trunk.get_outputs()]
        return dict(zip(names, self.trunk.run(names, {VIDEO_INPUT: video}), strict=True))

    def features(self, video: np.ndarray, tasks: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Trunk features {task: array} of ``tasks``' closure (None: every task's); each trunk runs once."""
        names = self.graph.names if tasks is None else self.graph.closure(tasks)
        video = np.ascontiguousarray(video, dtype=np.uint8)
        first = self.graph.trunk_names[0]
        outputs: dict[str, np.ndarray] = {}
        on_video = [n for n in names if self._trunk_of[n] == first]
        if on_video and self._trunk_fn is not None:
            outputs.update(self.trunk_outputs(video))
        elif on_video:
            assert self.trunk is not None
            wanted = list(dict.fromkeys(self.feature_output[n] for n in on_video))
            outputs.update(zip(wanted, self.trunk.run(wanted, {VIDEO_INPUT: video}), strict=True))
        for trunk in self.graph.trunk_names[1:]:
            wanted = [self.feature_output[n] for n in names if self._trunk_of[n] == trunk]
            if not wanted:
                continue
            if trunk not in self.frame_trunks:
                raise ValueError(f"trunk {trunk!r} (of tasks {names}) has no ONNX model in this pipeline")
            session = self.frame_trunks[trunk]
            outputs.update(zip(wanted, session.run(wanted, {VIDEO_INPUT: video}), strict=True))
        return {n: outputs[self.feature_output[n]] for n in names}

    def run_head(
        self, task: str, features: np.ndarray, reprs: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """One head: (output, repr) of ``task`` from its features and its auxiliaries' ``repr``s."""
        feed = {HEAD_FEATURES: features}
        feed.update({repr_input(a): reprs[a] for a in self.graph.task(task).auxiliaries})
        output, rep = self.heads[task].run([HEAD_OUTPUT, HEAD_REPR], feed)
        return output, rep

    def run_heads(self, feats: Mapping[str, np.ndarray], tasks: Sequence[str]) -> dict[str, np.ndarray]:
        """The heads of ``tasks`` (and their auxiliaries, in stage order) on trunk features {task: array}."""
        outputs: dict[str, np.ndarray] = {}
        reprs: dict[str, np.ndarray] = {}
        for name in self.graph.closure(tasks):
            outputs[name], reprs[name] = self.run_head(name, feats[name], reprs)
        return {n: outputs[n] for n in tasks}

    def run(self, video: np.ndarray, tasks: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Raw head outputs {task: [B, ...]} of ``tasks`` (default all) for a uint8 batch [B,T,S,S,3]."""
        tasks = list(tasks or self.graph.names)
        return self.run_heads(self.features(video, tasks), tasks)

    def run_batched(
        self, video: np.ndarray, batch_size: int, tasks: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """:meth:`run` in chunks of at most ``batch_size`` clips, concatenated."""
        tasks = list(tasks or self.graph.names)
        parts = [self.run(video[i : i + batch_size], tasks) for i in range(0, len(video), batch_size)]
        return {n: np.concatenate([p[n] for p in parts], axis=0) for n in tasks}


# --------------------------------------------------------------------------------------------------
# A repository's ONNX model


@dataclass(frozen=True)
class LocalModel:
    """A model repository's manifest and the ONNX files of its trunks and heads (task -> file)."""

    path: Path
    manifest: Manifest
    trunk: Path
    heads: dict[str, Path]
    frame_trunks: dict[str, Path] = field(default_factory=dict)  # the other trunks: name -> file

    @classmethod
    def load(cls, repo: str | os.PathLike[str]) -> LocalModel:
        """Read ``vmtl.json`` and find ``backbone/<v>/model.onnx`` and ``head_<task>/<v>/model.onnx``
        (:class:`vmtl.contract.RepositoryError` saying what is missing)."""
        path = Path(repo)
        manifest = Manifest.read(path)
        graph, models = manifest.graph, manifest.models
        trunk = onnx_file(path, models.backbone)
        heads = {n: head_onnx_file(path, models, n) for n in graph.names}
        frames = {t: onnx_file(path, models.trunk(t, graph)) for t in graph.trunk_names[1:]}
        return cls(path, manifest, trunk, heads, frames)

    @property
    def graph(self) -> TaskGraph:
        return self.manifest.graph

    @property
    def max_batch_size(self) -> int:
        return self.manifest.max_batch_size

    @property
    def tap_tasks(self) -> list[str]:
        """Tasks added after the backbone was exported: their heads read ``trunk_taps``."""
        return [str(t) for t in self.manifest.metadata.extra.get("tap_tasks") or []]

    @property
    def flavour(self) -> str:
        return self.manifest.flavour

    @property
    def metadata(self) -> ExportRecord:
        return self.manifest.metadata

    def files(self) -> dict[str, Path]:
        """Model name -> ONNX file, the backbones first (the heads as ``head_<task>``, also when fused)."""
        models = self.manifest.models
        frames = {models.trunk(t, self.graph): f for t, f in self.frame_trunks.items()}
        return {BACKBONE: self.trunk, **frames, **{head_model(n): f for n, f in self.heads.items()}}

    def pipeline(self, tasks: Sequence[str] | None = None, *, threads: int | None = None) -> OrtPipeline:
        """The trunk and the heads ``tasks`` need (default all), ``threads`` intra-op threads each."""
        needed = self.graph.closure(tasks or self.graph.names)
        heads = {n: self.heads[n] for n in needed}
        return OrtPipeline(
            self.graph,
            self.trunk,
            heads,
            threads=threads,
            tap_tasks=self.tap_tasks,
            frame_trunks=self.frame_trunks,
        )

    def host_pipeline(self) -> OrtPipeline:
        """Every model with the session options the ``cpu`` flavour's python-backend host gives it (read
        from its config.pbtxt), so that a comparison with the served repository measures serving, not
        different kernels or thread counts."""
        configs = load_configs(self.path)
        models = self.manifest.models
        trunk = host_session(self.trunk, config_params(configs[models.backbone]))
        heads = {n: host_session(f, config_params(configs[models.head(n)])) for n, f in self.heads.items()}
        frames = {
            t: host_session(f, config_params(configs[models.trunk(t, self.graph)]))
            for t, f in self.frame_trunks.items()
        }
        return OrtPipeline.from_sessions(self.graph, trunk, heads, self.tap_tasks, frames)

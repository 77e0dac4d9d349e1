"""The model repository contract: model and tensor names, the ``vmtl.json`` manifest, config loading and
validation, and where a repository keeps its ONNX files.

``vmtl export`` writes repositories (:mod:`vmtl.export.repository`); the server, the client, the batch
engines, the benchmarks and the demo read them. Everything both sides must agree on lives here, once:

- names: the models (:data:`BACKBONE`, :func:`head_model`, the ensembles...), the config parameters that
  carry the task graph (:data:`PARAM_GRAPH`, :data:`PARAM_PREPROCESS`) and the tensors between models
  (:func:`feat_output`, :func:`repr_input`, :data:`VIDEO_EXTRA_OUTPUTS`...);
- the manifest ``vmtl.json``: :class:`Manifest` (with the exporter's record, :class:`ExportRecord`) is the
  only code that reads or writes it;
- :func:`load_configs` and :func:`validate_repository`: every ``config.pbtxt`` parsed into Triton's
  ``ModelConfig`` protobuf, the model files and the ensembles' wiring checked (export runs it before
  installing a repository, the launcher before starting Triton);
- :func:`onnx_file`: a model's ONNX file in its highest version directory.

Layer 0: numpy, protobuf and tritonclient's ``model_config_pb2`` only (no onnx, onnxruntime or torch).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import vmtl
from vmtl.tasks import TaskGraph, TaskGraphError

__all__ = [
    "BACKBONE",
    "CLIP_ENSEMBLE",
    "DEFAULT_UPLOAD_CHUNK_BYTES",
    "ENGINE_INFO",
    "FEAT_STACK",
    "FLAVOURS",
    "FORMAT_VERSION",
    "GRPC_MAX_MESSAGE_BYTES",
    "HEADS_MODEL",
    "HEAD_LAYOUTS",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "PARAM_CANCEL",
    "PARAM_FEAT_STACK",
    "PARAM_GRAPH",
    "PARAM_HEAD_TASKS",
    "PARAM_PREPROCESS",
    "PARAM_STREAM_ID",
    "PARAM_TAP_TASKS",
    "PARAM_TASKS",
    "PARAM_UPLOAD_BYTES",
    "PARAM_UPLOAD_OFFSET",
    "PARAM_VARIANTS",
    "STREAM_ENSEMBLE",
    "STREAM_EXTRA_OUTPUTS",
    "STREAM_RANGE",
    "STREAM_WINDOWING",
    "TAPS_OUTPUT",
    "TRITON_VERSION",
    "UPLOAD_CHUNK_PARAM",
    "VIDEO_DECODE",
    "VIDEO_ENSEMBLE",
    "VIDEO_EXTRA_OUTPUTS",
    "VIDEO_STREAM",
    "WINDOW_INDEX_OUTPUT",
    "WINDOW_OUTPUT",
    "BackboneVariant",
    "ExportRecord",
    "Manifest",
    "ModelNames",
    "RepositoryError",
    "RepositoryInfo",
    "feat_output",
    "fused_head_file",
    "fused_heads_groups",
    "fused_heads_model",
    "head_model",
    "head_onnx_file",
    "is_model_repository",
    "load_configs",
    "onnx_file",
    "read_manifest",
    "repr_input",
    "trunk_model",
    "validate_repository",
]

# --------------------------------------------------------------------------------------------------
# Names

BACKBONE = "backbone"
VIDEO_DECODE = "video_decode"
CLIP_ENSEMBLE = "vmtl_clip"
VIDEO_ENSEMBLE = "vmtl_video"
MANIFEST = "vmtl.json"
MANIFEST_FORMAT = "vmtl-model-repository"
#: 1: the first manifest; 2: adds ``triton_version``. Older versions are read; newer ones are refused.
FORMAT_VERSION = 2
#: The Triton release the repositories are written for: the tritonserver inside nvidia-pytriton 0.7
#: (NGC container tritonserver:24.10-py3).
TRITON_VERSION = "2.51.0"
FLAVOURS = ("cpu", "native")
#: Beside a TensorRT plan's model directory: the TensorRT version and GPU it was built for (JSON).
ENGINE_INFO = "tensorrt.json"
#: Config parameters of video_decode and the ensembles: the task graph and its preprocessing (JSON).
PARAM_GRAPH = "vmtl_task_graph"
PARAM_PREPROCESS = "vmtl_preprocess"
#: Backbone config parameter (cpu flavour, ``--precision``): the accepted (runtime, precision, file)
#: variants as a JSON list, fastest first (:mod:`vmtl.runtime_openvino` chooses among them at load time).
PARAM_VARIANTS = "vmtl_variants"
#: vmtl_video's output carrying the (start, end) seconds actually sampled. Not "window": Triton 2.51 treats
#: an ensemble output named like an ensemble input as that input (it echoes the request's window, or is
#: missing when the optional input is not sent), so video_decode's `window` output is renamed here.
WINDOW_OUTPUT = "clip_window"
#: vmtl_video's outputs besides one per task.
VIDEO_EXTRA_OUTPUTS = ("timestamps", "crop", WINDOW_OUTPUT)
#: The trunk's input and each head's tensors (besides ``feat_<task>`` and ``repr_<aux>``).
VIDEO_INPUT = "video"
HEAD_FEATURES = "features"
HEAD_OUTPUT = "output"
HEAD_REPR = "repr"
#: The ``cpu`` flavour's fused heads model: every head's ONNX file (:func:`fused_head_file`) in one
#: python-backend step, input ``feat_stack`` (or ``feat_<task>`` per task), one output per task named after it.
HEADS_MODEL = "heads"
#: The tasks a fused heads model answers (comma-separated; absent: every task of the graph). A multi-trunk
#: repository has one fused heads model per trunk, so that a trunk whose tasks are not asked is pruned.
PARAM_HEAD_TASKS = "vmtl_head_tasks"
#: Request parameter naming the tasks to run (comma-separated); Triton forwards an ensemble request's
#: parameters to every step, so the fused heads model reads it and every other model ignores it.
PARAM_TASKS = "vmtl_tasks"
#: The heads' layouts: one python step for all (``fused``) or one model per head (``separate``).
HEAD_LAYOUTS = ("fused", "separate")
#: The backbone's task-independent output from which a task added after it was exported computes its own
#: features inside its head (a *tap task*; ``vmtl.export.taps``). Heads-only exports record the tap tasks
#: in the manifest metadata's ``tap_tasks`` and pass them to the fused heads model as ``vmtl_tap_tasks``.
TAPS_OUTPUT = "trunk_taps"
#: The ``cpu`` backbone's output stacking the ``feat_<task>`` of the tasks its config parameter
#: ``vmtl_feat_stack`` names (comma-separated, in stack order) into one tensor [B,T,N,D], and the fused
#: heads' input reading it (same parameter): one tensor crosses the two python steps instead of one per
#: task. Each tensor costs both stubs and Triton's core ~50 us per request (benchmarks/RESULTS.md).
FEAT_STACK = "feat_stack"
PARAM_FEAT_STACK = "vmtl_feat_stack"
PARAM_TAP_TASKS = "vmtl_tap_tasks"

#: The streaming path (long videos): ``vmtl_stream`` is an ensemble whose first step, ``video_stream``, is a
#: decoupled python-backend decoder that takes the encoded video once and answers one response per window.
STREAM_ENSEMBLE = "vmtl_stream"
VIDEO_STREAM = "video_stream"
#: vmtl_stream's inputs besides ``video_bytes``: (window, stride) seconds, and the optional (start, end)
#: seconds of the part to cover (a negative or NaN bound: from the start / to the end).
STREAM_WINDOWING = "windowing"
STREAM_RANGE = "range"
#: vmtl_stream's output (INT64 [2]): the window's index and the number of windows the stream expects.
WINDOW_INDEX_OUTPUT = "window_index"
#: vmtl_stream's outputs besides one per task.
STREAM_EXTRA_OUTPUTS = (*VIDEO_EXTRA_OUTPUTS, WINDOW_INDEX_OUTPUT)
#: Request parameters of the streaming decoder: the client's id for a stream, and (sent straight to
#: ``video_stream``) the id of a stream to stop (see vmtl/server/models/video_stream.py).
PARAM_STREAM_ID = "vmtl_stream_id"
PARAM_CANCEL = "vmtl_cancel"
#: Chunked upload (vmtl/server/models/video_stream.py): the stream request announces the file's size
#: (``vmtl_upload_bytes``) and carries its first chunk; the other chunks go straight to ``video_stream``
#: with the same stream id and their byte offset (``vmtl_upload_offset``). ``video_stream``'s config
#: parameter ``upload_chunk_bytes`` is the chunk size clients use; a repository without it takes one
#: payload per stream.
PARAM_UPLOAD_BYTES = "vmtl_upload_bytes"
PARAM_UPLOAD_OFFSET = "vmtl_upload_offset"
UPLOAD_CHUNK_PARAM = "upload_chunk_bytes"
DEFAULT_UPLOAD_CHUNK_BYTES = 2**20
#: The largest request Triton 2.51's gRPC endpoint takes (its and tritonclient's max message size,
#: INT32_MAX bytes); one encoded video in bytes mode must fit in it with the request's other fields.
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1


class RepositoryError(ValueError):
    """A model repository cannot be written or is invalid; the message names the model and the problem."""


def head_model(task: str) -> str:
    """Triton model name of a task's head."""
    return f"head_{task}"


def trunk_model(graph: TaskGraph, trunk: str) -> str:
    """Triton model name of a trunk: ``backbone`` for the graph's first, ``backbone_<trunk>`` for others."""
    return BACKBONE if trunk == graph.trunk_names[0] else f"{BACKBONE}_{trunk}"


def fused_heads_groups(graph: TaskGraph) -> dict[str, list[str]]:
    """The fused heads models of ``graph`` and the tasks each answers, grouped by the trunks a task needs
    (its own and its auxiliaries'): ``heads`` for the tasks that need only the first trunk, else
    ``heads_<trunk>_<trunk>...``. So a request runs a trunk only if an asked task needs it."""
    groups: dict[str, list[str]] = {}
    sets: dict[str, list[str]] = {}
    for task in graph.names:
        trunks = graph.trunks_for([task])
        name = HEADS_MODEL if trunks == graph.trunk_names[:1] else "_".join([HEADS_MODEL, *trunks])
        if sets.setdefault(name, trunks) != trunks:  # e.g. trunks "a" + "b_c" and "a_b" + "c"
            raise RepositoryError(
                f"the fused heads of trunks {sets[name]} and of trunks {trunks} would both be named "
                f"{name!r}: rename a trunk (or export with --heads separate)"
            )
        groups.setdefault(name, []).append(task)
    return groups


def fused_heads_model(graph: TaskGraph, task: str) -> str:
    """The fused heads model that answers ``task`` (see :func:`fused_heads_groups`)."""
    return next(m for m, tasks in fused_heads_groups(graph).items() if task in tasks)


def fused_head_file(task: str) -> str:
    """The file name of ``task``'s head ONNX graph inside the fused heads model's version directory."""
    return f"{head_model(task)}.onnx"


def feat_output(task: str) -> str:
    """The trunk output holding ``task``'s features [B,N,D] (a head's ``features`` input)."""
    return f"feat_{task}"


def repr_input(aux: str) -> str:
    """The head input fed auxiliary task ``aux``'s ``repr`` output."""
    return f"repr_{aux}"


# --------------------------------------------------------------------------------------------------
# The manifest

# JSON types a manifest field may hold (None is always allowed for optional fields).
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "dict": (dict,),
    "list": (list,),
}


def _check_type(value: Any, kind: str, where: str) -> Any:
    types = _JSON_TYPES[kind]
    if value is None or (
        isinstance(value, types) and not (kind in ("int", "float") and isinstance(value, bool))
    ):
        return value
    raise RepositoryError(f"{where} must be {kind}, got {type(value).__name__} {value!r}")


_RECORD_KINDS: dict[str, str] = {  # field -> JSON type
    "exporter": "str",
    "checkpoint": "str",
    "backbone_checkpoint": "str",
    "exported": "str",
    "tasks": "list",
    "trunk_sha256": "str",
    "trunk_parts_sha256": "dict",
    "opset": "int",
    "precision": "dict",
    "parity": "dict",
    "parity_tolerance": "float",
    "parity_inputs": "str",
    "versions": "dict",
    "flops": "dict",
    "heads_only_export": "bool",
    "optimization": "dict",
    "int8": "dict",
    "tensorrt": "dict",
    "flavours": "dict",
    "variants": "list",
    "refused": "list",
    "measured_on": "dict",
}


_VARIANT_KINDS: dict[str, str] = {  # BackboneVariant field -> JSON type
    "runtime": "str",
    "precision": "str",
    "file": "str",
    "ms_b1": "float",
    "ms_b4": "float",
    "speedup": "float",
    "gate": "dict",
}


@dataclass(frozen=True)
class BackboneVariant:
    """One (runtime, precision) the export ran through the accuracy gate: accepted ones are served
    (``file`` in the backbone's version directory), refused ones say why (``reason``, the gate's numbers)."""

    runtime: str  # ort / openvino
    precision: str  # fp32 / bf16 / int8
    file: str = ""  # relative to backbone/<version>/ ("" when refused)
    ms_b1: float | None = None  # trunk latency, median ms, batch 1 / 4, on the export machine
    ms_b4: float | None = None
    speedup: float | None = None  # ORT fp32 batch-1 latency / this one's
    gate: dict[str, Any] | None = None  # GateResult.to_dict
    reason: str | None = None  # refused: why

    @classmethod
    def from_dict(cls, data: Any, where: str) -> BackboneVariant:
        if not isinstance(data, dict) or not {"runtime", "precision"} <= set(data):
            raise RepositoryError(f"{where} must be an object with runtime and precision")
        kinds = {**_VARIANT_KINDS, "reason": "str"}
        values = {k: _check_type(data.get(k), kind, f"{where}.{k}") for k, kind in kinds.items() if k in data}
        for key in ("ms_b1", "ms_b4", "speedup"):
            if values.get(key) is not None:
                values[key] = float(values[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class ExportRecord:
    """What ``vmtl export`` records about a repository (the manifest's ``metadata``); None: not recorded.

    Keys this version does not know are kept in ``extra`` and written back unchanged.
    """

    exporter: str | None = None
    checkpoint: str | None = None  # the checkpoint the heads come from
    backbone_checkpoint: str | None = None  # the checkpoint the trunk comes from (a full export's)
    exported: str | None = None  # ISO time
    tasks: list[str] | None = None
    trunk_sha256: str | None = None
    trunk_parts_sha256: dict[str, str] | None = None
    opset: int | None = None
    precision: dict[str, str] | None = None  # model -> fp32 / int8 / fp16-trt
    parity: dict[str, dict[str, float]] | None = None  # model -> max_abs, batch1, batch2
    parity_tolerance: float | None = None
    parity_inputs: str | None = None
    versions: dict[str, str] | None = None  # torch, onnx, onnxruntime
    flops: dict[str, Any] | None = None  # {"per": ..., "trunk": int, "heads": {task: int}}
    heads_only_export: bool | None = None
    optimization: dict[str, str] | None = None
    int8: dict[str, Any] | None = None  # the int8 accuracy gate (GateResult.to_dict)
    tensorrt: dict[str, Any] | None = None  # the TensorRT engine's info and gate
    flavours: dict[str, str] | None = None  # flavour -> directory relative to this repository
    #: `--precision`: the accepted backbone variants, fastest first (the host runs the first its CPU can),
    #: the refused ones with the gate's numbers, and the CPU they were measured on (CpuCaps.to_dict).
    variants: list[BackboneVariant] | None = None
    refused: list[BackboneVariant] | None = None
    measured_on: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "metadata") -> ExportRecord:
        data = dict(data or {})
        known = {
            k: _check_type(data.pop(k), _RECORD_KINDS[k], f"{where}.{k}")
            for k in list(data)
            if k in _RECORD_KINDS
        }
        if known.get("parity_tolerance") is not None:
            known["parity_tolerance"] = float(known["parity_tolerance"])
        for key in ("variants", "refused"):
            if known.get(key) is not None:
                known[key] = [
                    v
                    if isinstance(v, BackboneVariant)
                    else BackboneVariant.from_dict(v, f"{where}.{key}[{i}]")
                    for i, v in enumerate(known[key])
                ]
        return cls(**known, extra=data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: recorded fields only (None is left out), then the unknown keys."""
        out = {k: getattr(self, k) for k in _RECORD_KINDS if getattr(self, k) is not None}
        for key in ("variants", "refused"):
            if key in out:
                out[key] = [v.to_dict() for v in out[key]]
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}


@dataclass(frozen=True)
class ModelNames:
    """The Triton model names a repository serves its graph under (the manifest's ``models``)."""

    backbone: str = BACKBONE
    video_decode: str = VIDEO_DECODE
    heads: dict[str, str] = field(default_factory=dict)  # task -> the model that runs its head
    clip_ensemble: str = CLIP_ENSEMBLE
    video_ensemble: str = VIDEO_ENSEMBLE
    fused_heads: str | None = None  # the (first trunk's) fused heads model, or None
    trunks: dict[str, str] = field(default_factory=dict)  # multi-trunk graphs: trunk -> its backbone model

    @classmethod
    def for_graph(cls, graph: TaskGraph, *, fused: bool = False) -> ModelNames:
        trunks = {t: trunk_model(graph, t) for t in graph.trunk_names} if graph.multi_trunk else {}
        if fused:
            groups = fused_heads_groups(graph)
            heads = {n: m for m, tasks in groups.items() for n in tasks}
            return cls(heads=heads, fused_heads=next(iter(groups)), trunks=trunks)
        return cls(heads={n: head_model(n) for n in graph.names}, trunks=trunks)

    def trunk(self, trunk: str, graph: TaskGraph) -> str:
        """The backbone model of ``trunk`` (``backbone`` in a single-trunk repository)."""
        return self.trunks.get(trunk) or (
            self.backbone if trunk == graph.trunk_names[0] else trunk_model(graph, trunk)
        )

    @property
    def layout(self) -> str:
        """``fused`` or ``separate`` (see :data:`HEAD_LAYOUTS`)."""
        return "fused" if self.fused_heads else "separate"

    def head(self, task: str) -> str:
        """The Triton model that runs ``task``'s head (the fused heads model, or ``head_<task>``)."""
        return self.heads.get(task, self.fused_heads or head_model(task))

    def head_models(self) -> list[str]:
        """The distinct models that run heads, in task order."""
        return list(dict.fromkeys(self.heads.values()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "models") -> ModelNames:
        data = dict(data or {})
        names = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for key, value in names.items():
            if value is not None or key != "fused_heads":
                _check_type(value, "dict" if key in ("heads", "trunks") else "str", f"{where}.{key}")
        for key in ("heads", "trunks"):
            if key in names:
                names[key] = {str(k): str(v) for k, v in names[key].items()}
        return cls(**names)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "backbone": self.backbone,
            "video_decode": self.video_decode,
            "heads": dict(self.heads),
            "clip_ensemble": self.clip_ensemble,
            "video_ensemble": self.video_ensemble,
        }
        if self.fused_heads:
            out["fused_heads"] = self.fused_heads
        if self.trunks:
            out["trunks"] = dict(self.trunks)
        return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


#: Top-level keys of format 1 manifests that belong to the export record (the server once looked for them
#: there); read into ``metadata`` when it lacks them.
_LEGACY_RECORD_KEYS = ("flavours", "checkpoint", "tasks")


@dataclass(frozen=True)
class Manifest:
    """A repository's ``vmtl.json``: what it serves (graph, flavour, models) and how it was made.

    :meth:`read` / :meth:`write` are the only code that touches the file. Unknown top-level keys are kept
    in ``extra`` and written back; a format 1 manifest reads with ``triton_version`` None (unrecorded).
    """

    graph: TaskGraph
    flavour: str = "cpu"
    max_batch_size: int = 8
    models: ModelNames = field(default_factory=ModelNames)
    entries: list[str] = field(default_factory=list)  # top-level names vmtl wrote (replaced on re-export)
    metadata: ExportRecord = field(default_factory=ExportRecord)
    triton_version: str | None = TRITON_VERSION
    vmtl_version: str = vmtl.__version__
    created: str = field(default_factory=_now)
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise RepositoryError(f"flavour must be one of {', '.join(FLAVOURS)}, not {self.flavour!r}")
        if self.max_batch_size < 1:
            raise RepositoryError(f"max_batch_size must be >= 1, got {self.max_batch_size}")

    @property
    def tasks(self) -> list[str]:
        return self.graph.names

    # -- JSON ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {
            "format": MANIFEST_FORMAT,
            "format_version": self.format_version,
            "vmtl_version": self.vmtl_version,
            "created": self.created,
            "flavour": self.flavour,
            "triton_version": self.triton_version,
            "max_batch_size": self.max_batch_size,
            "graph": self.graph.to_dict(),
            "models": self.models.to_dict(),
            "entries": list(self.entries),
            "metadata": self.metadata.to_dict(),
        }
        if self.triton_version is None:
            del out["triton_version"]
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST) -> Manifest:
        """Parse a manifest's JSON object; :class:`RepositoryError` names the field that is wrong."""
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise RepositoryError(f"{where} is not a vmtl repository manifest")
        data = dict(data)
        del data["format"]
        version = _check_type(data.pop("format_version", 1), "int", f"{where}: format_version")
        if version > FORMAT_VERSION:
            raise RepositoryError(
                f"{where} has manifest format {version}; this vmtl ({vmtl.__version__}) reads up to "
                f"{FORMAT_VERSION}: upgrade vmtl or re-export the repository"
            )
        try:
            graph = TaskGraph.from_dict(data.pop("graph"))
        except KeyError as exc:
            raise RepositoryError(f"{where} has no task graph") from exc
        except (TaskGraphError, TypeError, ValueError) as exc:
            raise RepositoryError(f"{where}: cannot read the task graph: {exc}") from exc
        flavour = data.pop("flavour", None) or data.pop("flavor", None) or "cpu"
        data.pop("flavor", None)
        record = dict(_check_type(data.pop("metadata", None), "dict", f"{where}: metadata") or {})
        for key in _LEGACY_RECORD_KEYS:
            if key in data:
                value = data.pop(key)
                record.setdefault(key, value)
        entries = _check_type(data.pop("entries", []), "list", f"{where}: entries") or []
        return cls(
            graph=graph,
            flavour=str(_check_type(flavour, "str", f"{where}: flavour")),
            max_batch_size=int(_check_type(data.pop("max_batch_size", 8), "int", f"{where}: max_batch_size")),
            models=ModelNames.from_dict(data.pop("models", None), f"{where}: models"),
            entries=[str(e) for e in entries],
            metadata=ExportRecord.from_dict(record, f"{where}: metadata"),
            triton_version=_check_type(data.pop("triton_version", None), "str", f"{where}: triton_version"),
            vmtl_version=str(data.pop("vmtl_version", "") or ""),
            created=str(data.pop("created", "") or ""),
            format_version=version,
            extra=data,
        )

    # -- files ---------------------------------------------------------------------------------------
    @classmethod
    def read(cls, repo: str | os.PathLike[str]) -> Manifest:
        """The manifest of repository ``repo``; :class:`RepositoryError` when it is missing or invalid."""
        repo = Path(repo)
        path = repo / MANIFEST
        if not repo.is_dir():
            raise RepositoryError(
                f"model repository {repo} does not exist; write one with `vmtl export` "
                "(see model_repository/README.md)"
            )
        try:
            text = path.read_text()
        except FileNotFoundError as exc:
            raise RepositoryError(
                f"{repo} is not a vmtl model repository (no {MANIFEST}); write one with `vmtl export`"
            ) from exc
        except OSError as exc:
            raise RepositoryError(f"{path} is not readable: {exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RepositoryError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, str(path))

    def write(self, repo: str | os.PathLike[str]) -> Path:
        """Write ``<repo>/vmtl.json`` (the directory must exist); returns its path."""
        path = Path(repo) / MANIFEST
        try:
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        except (TypeError, ValueError) as exc:
            raise RepositoryError(f"the manifest must be JSON-serialisable: {exc}") from exc
        path.write_text(text)
        return path


def read_manifest(repo: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``vmtl.json`` of a repository as its JSON object (validated through :class:`Manifest`)."""
    return Manifest.read(repo).to_dict()


# --------------------------------------------------------------------------------------------------
# Model files


def _versions(model_dir: Path) -> list[Path]:
    """A model's numeric version directories, highest first."""
    if not model_dir.is_dir():
        return []
    found = (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    return sorted(found, key=lambda p: int(p.name), reverse=True)


def onnx_file(repo: str | os.PathLike[str], model: str) -> Path:
    """``<repo>/<model>/<highest version holding one>/model.onnx``; :class:`RepositoryError` when none."""
    repo = Path(repo)
    versions = _versions(repo / model)
    for version in versions:
        if (version / "model.onnx").is_file():
            return version / "model.onnx"
    if any((v / "model.plan").is_file() for v in versions):
        raise RepositoryError(
            f"{repo / model}: only a TensorRT plan, no model.onnx; in-process ONNX Runtime (the local and "
            "ray engines, the benchmarks' baselines) runs ONNX files (use --engine triton with a server "
            "that serves this repository)"
        )
    raise RepositoryError(f"{repo}: model {model!r} has no <version>/model.onnx; re-export the repository")


def head_onnx_file(repo: str | os.PathLike[str], models: ModelNames, task: str) -> Path:
    """``task``'s head ONNX file: in the fused heads model's highest version directory, or the
    ``head_<task>`` model's ``model.onnx``; :class:`RepositoryError` when missing."""
    if not models.fused_heads:
        return onnx_file(repo, models.head(task))
    name = fused_head_file(task)
    fused = models.head(task)
    for version in _versions(Path(repo) / fused):
        if (version / name).is_file():
            return version / name
    raise RepositoryError(
        f"{repo}: the fused heads model {fused!r} has no <version>/{name}; re-export the repository"
    )


# --------------------------------------------------------------------------------------------------
# Loading and validating


@dataclass
class RepositoryInfo:
    """What :func:`validate_repository` found: model name -> platform/backend, plus non-fatal warnings."""

    path: Path
    models: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def is_model_repository(path: Path) -> bool:
    """True if ``path`` is a directory with at least one ``<model>/config.pbtxt``."""
    path = Path(path)
    return path.is_dir() and any(p.is_dir() and (p / "config.pbtxt").is_file() for p in path.iterdir())


def load_configs(repo: str | os.PathLike[str]) -> dict[str, mc.ModelConfig]:
    """Parse every ``<model>/config.pbtxt`` of a repository into ``ModelConfig`` (model name -> config)."""
    repo = Path(repo)
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} does not exist")
    configs: dict[str, mc.ModelConfig] = {}
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        path = model_dir / "config.pbtxt"
        if not path.is_file():
            raise RepositoryError(f"model {model_dir.name!r}: no config.pbtxt in {model_dir}")
        cfg = mc.ModelConfig()
        try:
            text_format.Parse(path.read_text(), cfg)
        except text_format.ParseError as exc:
            raise RepositoryError(f"model {model_dir.name!r}: config.pbtxt does not parse: {exc}") from exc
        if cfg.name and cfg.name != model_dir.name:
            raise RepositoryError(
                f"model {model_dir.name!r}: config.pbtxt names the model {cfg.name!r}; "
                "Triton needs it to match the directory name"
            )
        configs[model_dir.name] = cfg
    return configs


def config_params(cfg: mc.ModelConfig) -> dict[str, str]:
    """A model config's ``parameters`` as plain strings."""
    return {k: v.string_value for k, v in cfg.parameters.items()}


def _full_shape(dims: Iterable[int], max_batch_size: int) -> tuple[int, ...]:
    return ((-1,) if max_batch_size > 0 else ()) + tuple(dims)


def _compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


def _dtype_name(value: int) -> str:
    return mc.DataType.Name(value).removeprefix("TYPE_")


#: Backend of each platform, and the file a version directory holds by default per backend.
_PLATFORM_BACKEND = {
    "onnxruntime_onnx": "onnxruntime",
    "tensorrt_plan": "tensorrt",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
}
_DEFAULT_FILE = {
    "python": "model.py",
    "onnxruntime": "model.onnx",
    "tensorrt": "model.plan",
    "pytorch": "model.pt",
    "openvino": "model.xml",
}


def _model_files(name: str, cfg: mc.ModelConfig) -> list[str]:
    """Files (or directories) each version directory of a (non-ensemble) model must hold."""
    backend = cfg.backend or _PLATFORM_BACKEND.get(cfg.platform, "")
    if cfg.platform.startswith("tensorflow"):
        default = "model.savedmodel" if cfg.platform == "tensorflow_savedmodel" else "model.graphdef"
    else:
        default = _DEFAULT_FILE.get(backend, "")
    if not default:
        raise RepositoryError(
            f"model {name!r}: unsupported platform/backend {cfg.platform or cfg.backend or '(none)'!r}"
        )
    files = [cfg.default_model_filename or default]
    if backend == "python" and "onnx_file" in cfg.parameters:
        files.append(cfg.parameters["onnx_file"].string_value)
    if backend == "python" and "onnx_files" in cfg.parameters:  # the fused heads model's
        files += [f for f in cfg.parameters["onnx_files"].string_value.split(",") if f]
    if backend == "python" and PARAM_VARIANTS in cfg.parameters:
        try:
            variants = json.loads(cfg.parameters[PARAM_VARIANTS].string_value)
            files += [str(v["file"]) for v in variants if str(v["file"]) not in files]
        except (ValueError, TypeError, KeyError) as exc:
            raise RepositoryError(
                f"model {name!r}: parameter {PARAM_VARIANTS} is not a list of variants: {exc}"
            ) from exc
    return files


def validate_repository(path: str | os.PathLike[str]) -> RepositoryInfo:
    """Re-parse every config.pbtxt of a repository and check its models and the ensembles' wiring.

    Raises :class:`RepositoryError` naming the model and the problem: a config that does not parse, a
    missing model/labels file, an ensemble step naming an unknown model, a step input that no ensemble
    input or step output produces, a tensor produced twice, a shape or dtype mismatch between producer
    and consumer, an ensemble ``max_batch_size`` above a member's, an ensemble output nothing produces.

    Returns the models (name -> platform or backend) and warnings: an ensemble output that also feeds
    another step (Triton 2.51 then fails a request for only some of the ensemble's outputs: its pruning
    drops the producing step and the request fails with "unexpected deadlock").
    """
    repo = Path(path)
    configs = load_configs(repo)
    if not configs:
        raise RepositoryError(f"model repository {repo} holds no models")
    info = RepositoryInfo(repo)
    for name, cfg in configs.items():
        _validate_model(repo / name, name, cfg)
        info.models[name] = cfg.platform or cfg.backend or "?"
    for name, cfg in configs.items():
        if cfg.platform == "ensemble":
            _validate_ensemble(name, cfg, configs)
            info.warnings += _pruning_warnings(name, cfg)
    return info


def _validate_model(model_dir: Path, name: str, cfg: mc.ModelConfig) -> None:
    """One model's config (dims, dtypes, labels files) and its version directories' files."""
    where = f"model {name!r}"
    if cfg.max_batch_size < 0:
        raise RepositoryError(f"{where}: max_batch_size must be >= 0, got {cfg.max_batch_size}")
    for kind, items in (("input", cfg.input), ("output", cfg.output)):
        seen: set[str] = set()
        for item in items:
            if item.name in seen:
                raise RepositoryError(f"{where}: duplicate {kind} {item.name!r}")
            seen.add(item.name)
            if item.data_type == mc.TYPE_INVALID:
                raise RepositoryError(f"{where}: {kind} {item.name!r} has no data_type")
            if any(d == 0 or d < -1 for d in item.dims):
                raise RepositoryError(f"{where}: {kind} {item.name!r} has invalid dims {list(item.dims)}")
    for out in cfg.output:
        if out.label_filename and not (model_dir / out.label_filename).is_file():
            raise RepositoryError(
                f"{where}: missing labels file {out.label_filename!r} for output {out.name!r}"
            )
    versions = sorted(_versions(model_dir), key=lambda p: int(p.name))
    if not versions:
        raise RepositoryError(f"{where}: no numeric version directory (e.g. {model_dir / '1'})")
    if cfg.platform == "ensemble":
        return
    if cfg.version_policy.HasField("specific"):
        missing = sorted(set(cfg.version_policy.specific.versions) - {int(v.name) for v in versions})
        if missing:
            raise RepositoryError(f"{where}: version_policy names versions {missing} that have no directory")
    for version in served_versions(cfg, versions):
        for filename in _model_files(name, cfg):
            if not (version / filename).exists():
                raise RepositoryError(f"{where}: missing model file {version.name}/{filename}")


def served_versions(cfg: mc.ModelConfig, versions: list[Path]) -> list[Path]:
    """The version directories Triton serves under ``cfg``'s version policy (default: the latest one);
    older ones kept for a rollback need not fit the current config."""
    policy = cfg.version_policy
    if policy.HasField("all"):
        return versions
    if policy.HasField("specific"):
        wanted = {int(v) for v in policy.specific.versions}
        return [v for v in versions if int(v.name) in wanted]
    count = policy.latest.num_versions if policy.HasField("latest") else 1
    return sorted(versions, key=lambda p: int(p.name))[-max(count, 1) :]


def _pruning_warnings(name: str, cfg: mc.ModelConfig) -> list[str]:
    produced: dict[str, str] = {}
    consumed: set[str] = set()
    for step in cfg.ensemble_scheduling.step:
        consumed.update(step.input_map.values())
        produced.update({tensor: step.model_name for tensor in step.output_map.values()})
    return [
        f"{name}: ensemble output {out.name!r} (from {produced.get(out.name, '?')}) also feeds another "
        "step; Triton 2.51 then fails requests that ask for only some outputs"
        for out in cfg.output
        if out.name in consumed
    ]


# tensor -> (producer description, dtype, full shape)
_Produced = dict[str, tuple[str, int, tuple[int, ...]]]


def _validate_ensemble(name: str, cfg: mc.ModelConfig, configs: Mapping[str, mc.ModelConfig]) -> None:
    where = f"ensemble {name!r}"
    steps = list(cfg.ensemble_scheduling.step)
    if not steps:
        raise RepositoryError(f"{where}: ensemble_scheduling has no steps")
    produced = _ensemble_producers(where, cfg, steps, configs)
    pending = _unreachable_steps(cfg, steps)
    for i, step in enumerate(steps):
        _check_step_inputs(f"{where}: step {i} ({step.model_name})", step, configs[step.model_name], produced)
        if i in pending:
            raise RepositoryError(
                f"{where}: step {i} ({step.model_name}): its inputs can never all be ready (a cycle between steps)"
            )
    _check_ensemble_outputs(where, cfg, produced)


def _ensemble_producers(
    where: str, cfg: mc.ModelConfig, steps: list[Any], configs: Mapping[str, mc.ModelConfig]
) -> _Produced:
    """Every tensor of the ensemble and what produces it (an ensemble input or a step's output)."""
    produced: _Produced = {
        inp.name: (f"ensemble input {inp.name!r}", inp.data_type, _full_shape(inp.dims, cfg.max_batch_size))
        for inp in cfg.input
    }
    for i, step in enumerate(steps):
        member = configs.get(step.model_name)
        label = f"{where}: step {i} ({step.model_name})"
        if member is None:
            raise RepositoryError(f"{label}: names a model that does not exist in the repository")
        if member.max_batch_size < cfg.max_batch_size:
            raise RepositoryError(
                f"{label}: ensemble max_batch_size {cfg.max_batch_size} is above the member's "
                f"max_batch_size {member.max_batch_size}"
            )
        outputs = {o.name: o for o in member.output}
        for key, tensor in step.output_map.items():
            out = outputs.get(key)
            if out is None:
                raise RepositoryError(
                    f"{label}: output_map key {key!r} is not an output of {step.model_name!r}"
                )
            if tensor in produced:
                hint = (
                    "; Triton would pass the request's input on instead of this step's output"
                    if produced[tensor][0].startswith("ensemble input")
                    else ""
                )
                raise RepositoryError(
                    f"{label}: tensor {tensor!r} is produced twice (also by {produced[tensor][0]}){hint}"
                )
            produced[tensor] = (
                f"{step.model_name!r} output {key!r}",
                out.data_type,
                _full_shape(out.dims, member.max_batch_size),
            )
    return produced


def _unreachable_steps(cfg: mc.ModelConfig, steps: list[Any]) -> list[int]:
    """Steps that never become runnable from the ensemble inputs and earlier steps' outputs."""
    ready = {inp.name for inp in cfg.input}
    pending = list(range(len(steps)))
    progressed = True
    while pending and progressed:
        progressed = False
        for i in list(pending):
            if all(t in ready for t in steps[i].input_map.values()):
                ready.update(steps[i].output_map.values())
                pending.remove(i)
                progressed = True
    return pending


def _check_step_inputs(label: str, step: Any, member: mc.ModelConfig, produced: _Produced) -> None:
    inputs = {x.name: x for x in member.input}
    for key, tensor in step.input_map.items():
        inp = inputs.get(key)
        if inp is None:
            raise RepositoryError(f"{label}: input_map key {key!r} is not an input of {step.model_name!r}")
        if tensor not in produced:
            raise RepositoryError(
                f"{label}: input {key!r} reads tensor {tensor!r} that nobody produces "
                "(no ensemble input or step output has that name)"
            )
        source, dtype, shape = produced[tensor]
        want = _full_shape(inp.dims, member.max_batch_size)
        if dtype != inp.data_type:
            raise RepositoryError(
                f"{label}: dtype mismatch on tensor {tensor!r}: {source} is {_dtype_name(dtype)} but input "
                f"{key!r} expects {_dtype_name(inp.data_type)}"
            )
        if not _compatible(shape, want):
            raise RepositoryError(
                f"{label}: shape mismatch on tensor {tensor!r}: {source} has shape {list(shape)} but "
                f"input {key!r} expects {list(want)}"
            )
    unmapped = [x.name for x in member.input if x.name not in step.input_map and not x.optional]
    if unmapped:
        raise RepositoryError(f"{label}: required inputs {unmapped} are not in its input_map")


def _check_ensemble_outputs(where: str, cfg: mc.ModelConfig, produced: _Produced) -> None:
    input_names = {x.name for x in cfg.input}
    for out in cfg.output:
        if out.name in input_names:
            raise RepositoryError(
                f"{where}: output {out.name!r} has the name of an ensemble input; Triton would answer with "
                "the request's input (or nothing when it is optional) instead of the step's output"
            )
        if out.name not in produced:
            raise RepositoryError(f"{where}: output {out.name!r} is not produced by any step")
        source, dtype, shape = produced[out.name]
        want = _full_shape(out.dims, cfg.max_batch_size)
        if dtype != out.data_type:
            raise RepositoryError(
                f"{where}: dtype mismatch on output {out.name!r}: {source} is {_dtype_name(dtype)} but the "
                f"ensemble declares {_dtype_name(out.data_type)}"
            )
        if not _compatible(shape, want):
            raise RepositoryError(
                f"{where}: shape mismatch on output {out.name!r}: {source} has shape {list(shape)} but the "
                f"ensemble declares {list(want)}"
            )

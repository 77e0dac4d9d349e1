"""Write the Triton model repository that serves a task graph.

Layout written by :func:`write_repository` (``cpu`` flavour; ``native`` swaps the python-backend ORT hosts
for ``onnxruntime_onnx`` / ``tensorrt_plan`` models)::

    <out>/
      vmtl.json                  graph, flavour, models, metadata (trunk hash, parity errors...)
      video_decode/              python backend (PyAV via vmtl.video.read_clip): bytes -> uint8 clip
      backbone/                  the trunk, dynamic batching; uint8 clip -> feat_<task> per task
                                 (fused heads: one feat_stack [T,N,D] holding them, in config order)
      head_<task>/               one per task: features (+ repr_<aux>) -> output, repr
      vmtl_clip/                 ensemble: video (uint8 clip) -> one output per task
      vmtl_video/                ensemble: video_bytes (+ window) -> decode -> same fan-out
                                 + timestamps, crop, clip_window
      video_stream/              python backend, decoupled: bytes + (window, stride) -> one clip per window
      vmtl_stream/               ensemble (decoupled): video_bytes + windowing (+ range) -> video_stream ->
                                 backbone -> heads, one response per window (+ window_index)

``cache=True`` (``vmtl export --cache``) turns on Triton's response cache on the backbone: a clip seen
before (the same uint8 bytes: a second set of tasks, a retry, another client) skips the trunk. The cache
keys on the model, its version and the input tensors only (request parameters are not in the key, which
is why only the backbone is cached: the fused heads' output depends on the ``vmtl_tasks`` parameter);
its memory is the server's ``--cache-config local,size=N`` (``vmtl serve --cache-mb``), least recently
used entries evicted first. Entries survive a reload of the same model version: bump the version when
the trunk's weights change.

The names, the manifest and the validation are the repository contract (:mod:`vmtl.contract`); this
module builds every ``config.pbtxt`` as Triton's ``ModelConfig`` protobuf, stages the repository, runs
:func:`vmtl.contract.validate_repository` on it and installs it. No torch here: the module needs only
numpy, onnx and tritonclient's protobufs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from vmtl.contract import (
    BACKBONE,
    CLIP_ENSEMBLE,
    DEFAULT_UPLOAD_CHUNK_BYTES,
    FEAT_STACK,
    HEAD_LAYOUTS,
    MANIFEST,
    PARAM_FEAT_STACK,
    PARAM_GRAPH,
    PARAM_HEAD_TASKS,
    PARAM_PREPROCESS,
    PARAM_TAP_TASKS,
    PARAM_VARIANTS,
    STREAM_ENSEMBLE,
    STREAM_RANGE,
    STREAM_WINDOWING,
    TAPS_OUTPUT,
    UPLOAD_CHUNK_PARAM,
    VIDEO_DECODE,
    VIDEO_ENSEMBLE,
    VIDEO_STREAM,
    WINDOW_INDEX_OUTPUT,
    WINDOW_OUTPUT,
    ExportRecord,
    Manifest,
    ModelNames,
    RepositoryError,
    feat_output,
    fused_head_file,
    fused_heads_groups,
    fused_heads_model,
    head_model,
    load_configs,
    repr_input,
    trunk_model,
    validate_repository,
)
from vmtl.export.defaults import DEFAULT_QUEUE_DELAY_US, THROUGHPUT_QUEUE_DELAY_US
from vmtl.tasks import TaskGraph, TaskSpec

__all__ = [
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_MAX_STREAM_BYTES",
    "DEFAULT_MAX_VIDEO_BYTES",
    "DEFAULT_QUEUE_DELAY_US",
    "THROUGHPUT_QUEUE_DELAY_US",
    "TensorSig",
    "onnx_signature",
    "write_repository",
]

#: Files a directory may hold and still be written into although it is no vmtl repository yet.
_TOLERATED = ("README", "readme", ".")
_MODEL_SOURCES = Path(__file__).resolve().parents[1] / "server" / "models"
_ORT_HOST = "ort_model.py"
_HEADS_HOST = "heads_model.py"
_DECODE_HOST = "video_decode.py"
_STREAM_HOST = "video_stream.py"
DEFAULT_MAX_VIDEO_BYTES = 256 * 1024 * 1024
#: video_stream's cap on one payload: Triton 2.51's gRPC endpoint takes requests up to INT32_MAX bytes
#: (:data:`vmtl.contract.GRPC_MAX_MESSAGE_BYTES`); 1 MiB is left for the request's other fields.
DEFAULT_MAX_STREAM_BYTES = 2**31 - 2**20
#: Streams one video_stream instance decodes at once (threads); more wait for a slot.
DEFAULT_MAX_STREAMS = 4
#: Requests that may wait at the backbone / a head before Triton refuses more (0: no bound, no queue
#: policy). Off by default: in Triton 2.51 any queue policy turns off the dynamic batcher's payload
#: prefetching, and then a batch that forms while the model is executing can miss its wake-up and wait
#: out the batcher's 500 ms default timeout (a lost wake-up; under concurrent load it stalled every
#: in-flight request for ~520 ms about once a second). `vmtl export --max-queue-size N` opts in.
DEFAULT_MAX_QUEUE_SIZE = 0
# Ensemble-internal tensors start with "_" so that no task name (a lower-case identifier) can collide.
_VIDEO_TENSOR = "_video"
_FEAT_STACK_TENSOR = "_" + FEAT_STACK


def _feat(task: str) -> str:
    return f"_feat_{task}"


def _repr(task: str) -> str:
    return f"_repr_{task}"


_TAPS_TENSOR = "_taps"


# --------------------------------------------------------------------------------------------------
# ONNX signatures

_ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}


@dataclass(frozen=True)
class TensorSig:
    """A tensor's Triton dtype (``TYPE_FP32``...) and full shape, -1 for dynamic dimensions."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.name}: {_short(self.dtype)} {list(self.shape)}"


def _short(dtype: str) -> str:
    return dtype.removeprefix("TYPE_")


def onnx_signature(path: Path) -> tuple[dict[str, TensorSig], dict[str, TensorSig], list[str]]:
    """(inputs, outputs, external data files) of an ONNX model, read without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise RepositoryError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise RepositoryError(f"{path} is not a readable ONNX model: {exc}") from exc
    graph = model.graph
    initializers = {t.name for t in graph.initializer}

    def sig(value: Any) -> TensorSig:
        tt = value.type.tensor_type
        dtype = _ONNX_TO_TRITON.get(tt.elem_type)
        if dtype is None:
            raise RepositoryError(
                f"{path}: tensor {value.name!r} has unsupported ONNX element type {tt.elem_type}"
            )
        if not tt.HasField("shape"):
            raise RepositoryError(f"{path}: tensor {value.name!r} has no static rank")
        shape = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim
        )
        return TensorSig(value.name, dtype, shape)

    inputs = {v.name: sig(v) for v in graph.input if v.name not in initializers}
    outputs = {v.name: sig(v) for v in graph.output}
    external: list[str] = []
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value not in external:
                    external.append(entry.value)
    return inputs, outputs, external


# --------------------------------------------------------------------------------------------------
# Config building helpers


def _io(kind: type, name: str, dtype: str, dims: Iterable[int], **kw: Any) -> Any:
    return kind(name=name, data_type=mc.DataType.Value(dtype), dims=list(dims), **kw)


def _set_params(cfg: mc.ModelConfig, params: Mapping[str, str]) -> None:
    for key, value in params.items():
        cfg.parameters[key].string_value = str(value)


def _batched(sig: TensorSig, where: str) -> tuple[int, ...]:
    """Dims of ``sig`` without its (dynamic) batch dimension."""
    if not sig.shape:
        raise RepositoryError(f"{where}: tensor {sig.name!r} is a scalar; it needs a batch dimension")
    if sig.shape[0] not in (-1,):
        raise RepositoryError(
            f"{where}: tensor {sig.name!r} has a fixed batch dimension {sig.shape[0]}; "
            "export it with a dynamic batch axis (dynamic_axes / dynamic_shapes)"
        )
    return sig.shape[1:]


def _dynamic_batching(cfg: mc.ModelConfig, max_batch_size: int, delay_us: int, max_queue: int = 0) -> None:
    db = cfg.dynamic_batching
    prefs = [b for b in (2, 4, 8, 16, 32) if b <= max_batch_size]
    db.preferred_batch_size.extend(prefs)
    db.max_queue_delay_microseconds = delay_us
    if max_queue > 0:  # beyond this many waiting requests Triton rejects new ones (UNAVAILABLE)
        db.default_queue_policy.max_queue_size = max_queue


def _instances(cfg: mc.ModelConfig, count: int, gpu: bool) -> None:
    group = cfg.instance_group.add()
    group.count = count
    group.kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU


@dataclass(frozen=True)
class _Trunk:
    video: TensorSig
    feats: dict[str, TensorSig]
    taps: TensorSig | None = None  # the trunk_taps output (absent from backbones exported before it)


@dataclass(frozen=True)
class _Head:
    task: TaskSpec
    features: TensorSig
    reprs: dict[str, TensorSig]  # aux task -> input signature (input name repr_<aux>)
    output: TensorSig
    repr: TensorSig


def _read_trunk(graph: TaskGraph, path: Path, tasks: Iterable[str] | None = None) -> _Trunk:
    inputs, outputs, _ = onnx_signature(path)
    where = f"trunk {path.name}"
    if "video" not in inputs:
        raise RepositoryError(f"{where}: needs an input named 'video' (has {sorted(inputs)})")
    extra = sorted(set(inputs) - {"video"})
    if extra:
        raise RepositoryError(f"{where}: unexpected inputs {extra}; the trunk takes only 'video'")
    video = inputs["video"]
    if video.dtype != "TYPE_UINT8" or len(video.shape) != 5 or video.shape[-1] not in (3, -1):
        raise RepositoryError(f"{where}: input 'video' must be uint8 [B,T,S,S,3], got {video}")
    _batched(video, where)
    pre = graph.preprocess
    t, h, w = video.shape[1:4]
    for what, got, want in (("frames", t, pre.num_frames), ("height", h, pre.size), ("width", w, pre.size)):
        if got not in (-1, want):
            raise RepositoryError(
                f"{where}: input 'video' has {got} {what} but the task graph's preprocess says {want}"
            )
    # Concrete dims from the preprocess spec where the ONNX file leaves them dynamic.
    video = TensorSig("video", video.dtype, (-1, pre.num_frames, pre.size, pre.size, 3))
    feats = {}
    for name in graph.names if tasks is None else tasks:
        out = outputs.get(feat_output(name))
        if out is None:
            raise RepositoryError(
                f"{where}: no output {feat_output(name)!r} for task {name!r} (has {sorted(outputs)})"
            )
        if out.dtype != "TYPE_FP32" or len(out.shape) != 3:
            raise RepositoryError(f"{where}: output {feat_output(name)!r} must be float32 [B,N,D], got {out}")
        _batched(out, where)
        feats[name] = out
    taps = outputs.get(TAPS_OUTPUT)
    if taps is not None and (taps.dtype != "TYPE_FP32" or len(taps.shape) != 3):
        raise RepositoryError(f"{where}: output {TAPS_OUTPUT!r} must be float32 [B,N,W], got {taps}")
    return _Trunk(video, feats, taps)


def _read_head(task: TaskSpec, path: Path) -> _Head:
    inputs, outputs, _ = onnx_signature(path)
    where = f"head {task.name!r} ({path.name})"
    want_inputs = ["features", *(repr_input(a) for a in task.auxiliaries)]
    if sorted(inputs) != sorted(want_inputs):
        raise RepositoryError(f"{where}: inputs must be {want_inputs}, got {sorted(inputs)}")
    for name in ("output", "repr"):
        if name not in outputs:
            raise RepositoryError(f"{where}: no output {name!r} (has {sorted(outputs)})")
    for sig in [*inputs.values(), outputs["output"], outputs["repr"]]:
        if sig.dtype != "TYPE_FP32":
            raise RepositoryError(f"{where}: tensor {sig.name!r} must be float32, got {_short(sig.dtype)}")
        _batched(sig, where)
    for sig in [inputs["features"], *(inputs[n] for n in want_inputs[1:]), outputs["repr"]]:
        if len(sig.shape) != 3:
            raise RepositoryError(f"{where}: tensor {sig.name!r} must be [B,N,D], got {list(sig.shape)}")
    out = outputs["output"]
    rank = 3 if task.temporal else 2
    layout = "[B,T',out_dim]" if task.temporal else "[B,out_dim]"
    if len(out.shape) != rank:
        raise RepositoryError(f"{where}: kind {task.kind} needs output {layout}, got {list(out.shape)}")
    if out.shape[-1] not in (-1, task.out_dim):
        raise RepositoryError(
            f"{where}: output has {out.shape[-1]} values per item but kind {task.kind} "
            f"with this task's labels/dim needs {task.out_dim}"
        )
    reprs = {a: inputs[repr_input(a)] for a in task.auxiliaries}
    return _Head(task, inputs["features"], reprs, out, outputs["repr"])


# --------------------------------------------------------------------------------------------------
# The writer


@dataclass(frozen=True)
class _Options:
    """How write_repository was asked to serve the models."""

    flavour: str
    max_batch_size: int
    cpu_threads: int | None
    max_video_bytes: int
    decode_instances: int
    queue_delay_us: int
    max_queue_size: int
    tensorrt: bool  # the backbone is a TensorRT plan
    heads: str  # fused | separate
    cache: bool = False  # Triton's response cache on the backbone
    max_stream_bytes: int = DEFAULT_MAX_STREAM_BYTES
    variants: tuple[tuple[str, str, str], ...] = ()  # cpu backbone: accepted (runtime, precision, file)
    tap_tasks: tuple[str, ...] = ()  # tasks whose head reads trunk_taps instead of feat_<task>
    versions: tuple[tuple[str, int], ...] = ()  # model -> the version directory its files go to (default 1)
    upload_chunk_bytes: int = DEFAULT_UPLOAD_CHUNK_BYTES  # video_stream's chunked uploads (0: off)
    feat_stack: tuple[str, ...] = ()  # tasks whose features cross as one feat_stack tensor (_feat_stack)

    def version(self, model: str) -> int:
        return dict(self.versions).get(model, 1)

    @property
    def native(self) -> bool:
        return self.flavour == "native"

    @property
    def fused(self) -> bool:
        return self.heads == "fused"

    def check(self) -> None:
        if self.flavour not in ("cpu", "native"):
            raise RepositoryError(f"flavour must be 'cpu' or 'native', not {self.flavour!r}")
        if self.max_batch_size < 1:
            raise RepositoryError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise RepositoryError(f"cpu_threads must be >= 1 (or None for all cores), got {self.cpu_threads}")
        if self.tensorrt and not self.native:
            raise RepositoryError("trunk_plan (a TensorRT engine) needs flavour='native'")
        if self.decode_instances < 1 or self.queue_delay_us < 0:
            raise RepositoryError("decode_instances must be >= 1 and queue_delay_us >= 0")
        if self.max_queue_size < 0:
            raise RepositoryError(f"max_queue_size must be >= 0 (0: unbounded), got {self.max_queue_size}")
        if self.upload_chunk_bytes < 0:
            raise RepositoryError(f"upload_chunk_bytes must be >= 0 (0: off), got {self.upload_chunk_bytes}")
        if self.heads not in HEAD_LAYOUTS:
            raise RepositoryError(f"heads must be one of {', '.join(HEAD_LAYOUTS)}, not {self.heads!r}")
        if self.fused and self.native:
            raise RepositoryError(
                "fused heads are a python-backend model (the cpu flavour); the native flavour's in-process "
                "backends have no stub crossing to save: use heads='separate'"
            )
        if self.variants and self.native:
            raise RepositoryError("backbone_variants are for the cpu flavour's python-backend host")


def write_repository(
    out: Path,
    graph: TaskGraph,
    trunk_onnx: Path,
    head_onnx: Mapping[str, Path],
    *,
    flavour: Literal["cpu", "native"] = "cpu",
    max_batch_size: int = 8,
    trunk_plan: Path | None = None,
    cpu_threads: int | None = None,
    metadata: ExportRecord | Mapping[str, Any] | None = None,
    max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES,
    decode_instances: int = 2,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
    heads: Literal["fused", "separate"] | None = None,
    cache: bool = False,
    max_stream_bytes: int = DEFAULT_MAX_STREAM_BYTES,
    backbone_variants: Sequence[tuple[str, str, str]] = (),
    backbone_files: Mapping[str, Path] | None = None,
    tap_tasks: Iterable[str] = (),
    backbone_tasks: Iterable[str] | None = None,
    versions: Mapping[str, int] | None = None,
    keep: Iterable[str] = (),
    frame_trunks: Mapping[str, Path] | None = None,
    upload_chunk_bytes: int = DEFAULT_UPLOAD_CHUNK_BYTES,
) -> Path:
    """Write the Triton model repository for ``graph`` into ``out`` and return ``out``.

    ``trunk_onnx`` / ``head_onnx`` follow the vmtl ONNX contract (see the module docstring). ``flavour``
    ``cpu`` hosts ONNX Runtime in python-backend models (backbone intra-op threads = ``cpu_threads``, or
    all cores available at load time when None); ``native`` uses Triton's ``onnxruntime_onnx`` platform,
    or ``tensorrt_plan`` for the backbone when ``trunk_plan`` is given. ``max_video_bytes`` caps
    ``video_decode``'s payload (0: no cap). ``max_queue_size`` bounds the requests waiting at the
    backbone and each head (0, the default: unbounded); past it Triton refuses new ones at once (see
    :data:`DEFAULT_MAX_QUEUE_SIZE` for what a bound costs in Triton 2.51). ``heads``: ``fused`` (the
    ``cpu`` default) runs every head in one python-backend model, ``heads``, which runs only the tasks a
    request names in its ``vmtl_tasks`` parameter (one stub crossing instead of one per head);
    ``separate`` (the ``native`` default and only choice) writes one model per head. ``cache`` turns on
    Triton's response cache on the backbone (see the module docstring). ``max_stream_bytes`` caps
    ``video_stream``'s payload (0: only gRPC's limit); ``upload_chunk_bytes`` is the chunk size clients
    upload a streamed file in (0: one payload per stream). ``metadata`` is the exporter's record for the
    manifest. ``backbone_variants`` (cpu flavour): the accepted (runtime,
    precision, file) variants of the backbone, fastest first, written to its config's ``vmtl_variants``
    for the host to choose from; ``backbone_files``: the variants' files (name in the backbone's version
    directory -> source) besides ``model.onnx``. The repository is staged in a temporary directory, validated,
    then moved into place; only models listed in an existing ``vmtl.json`` are replaced, and a non-empty
    directory without one is refused.

    Adding tasks to a served repository (``vmtl export --only-heads``): ``tap_tasks`` read the trunk's
    ``trunk_taps`` output instead of ``feat_<task>`` (:mod:`vmtl.export.taps`); ``backbone_tasks`` are
    the tasks the trunk has ``feat_<task>`` outputs for (default: the graph's other tasks); ``versions``
    puts a model's files into that version directory (the older version directories of a replaced model
    are carried over, for a rollback); ``keep`` names entries left exactly as they are in ``out`` (the
    backbone and video_decode: their configs are read from there, their files not touched, so a live
    server does not reload them).

    A graph with several trunks: ``trunk_onnx`` is its first (VideoMAE) trunk, served as ``backbone``;
    ``frame_trunks`` gives every other trunk's ONNX file (trunk name -> file, ``feat_<task>`` for each of
    its tasks), served as ``backbone_<trunk>``. Fused heads are one model per set of trunks the tasks need
    (:func:`vmtl.contract.fused_heads_groups`), so that the ensembles prune a trunk no asked task needs.
    """
    out = Path(out)
    opts = _Options(
        flavour,
        max_batch_size,
        cpu_threads,
        max_video_bytes,
        decode_instances,
        queue_delay_us,
        max_queue_size,
        trunk_plan is not None,
        heads or ("separate" if flavour == "native" else "fused"),
        cache,
        max_stream_bytes,
        tuple((str(r), str(p), str(f)) for r, p, f in backbone_variants),
        tuple(tap_tasks),
        tuple(sorted((versions or {}).items())),
        upload_chunk_bytes,
    )
    opts.check()
    keep = [k for k in keep if (out / k).is_dir()]
    missing = [n for n in graph.names if n not in head_onnx]
    extra = sorted(set(head_onnx) - set(graph.names))
    if missing or extra:
        raise RepositoryError(
            f"head_onnx must have one file per task: missing {missing}, not in the graph {extra}"
        )
    record = metadata if isinstance(metadata, ExportRecord) else ExportRecord.from_dict(metadata)
    try:
        json.dumps(record.to_dict())
    except (TypeError, ValueError) as exc:
        raise RepositoryError(f"metadata must be JSON-serialisable: {exc}") from exc
    _check_target(out)

    trunk_onnx = Path(trunk_onnx)
    head_onnx = {k: Path(v) for k, v in head_onnx.items()}
    first = graph.trunk_tasks(graph.trunk_names[0])
    in_trunk = [n for n in first if n not in opts.tap_tasks] if backbone_tasks is None else backbone_tasks
    trunk = _read_trunk(graph, trunk_onnx, list(in_trunk))
    frame_files = {t: Path(p) for t, p in (frame_trunks or {}).items()}
    if sorted(frame_files) != sorted(graph.trunk_names[1:]):
        raise RepositoryError(
            f"frame_trunks must have one ONNX file per trunk after the first: the graph has "
            f"{graph.trunk_names[1:]}, got {sorted(frame_files)}"
        )
    if frame_files and (opts.tap_tasks or trunk_plan is not None):
        raise RepositoryError(
            "a graph with several trunks supports neither tap tasks (--only-heads) nor a TensorRT backbone "
            "yet (backbone variants apply to its first trunk)"
        )
    frames = {t: _read_trunk(graph, p, graph.trunk_tasks(t)) for t, p in frame_files.items()}
    if opts.tap_tasks and trunk.taps is None:
        raise RepositoryError(
            f"tasks {list(opts.tap_tasks)} read the backbone's {TAPS_OUTPUT!r} output, which this backbone "
            "does not have (exported before vmtl added it): run a full export once"
        )
    heads = {n: _read_head(graph.task(n), head_onnx[n]) for n in graph.names}
    kept_backbone = out if BACKBONE in keep else None
    opts = replace(opts, feat_stack=_feat_stack(trunk, opts, bool(frames), kept_backbone))
    if trunk_plan is not None and not Path(trunk_plan).is_file():
        raise RepositoryError(f"TensorRT plan not found: {trunk_plan}")

    configs = _model_configs(graph, trunk, heads, opts, frames)
    manifest = Manifest(
        graph=graph,
        flavour=flavour,
        max_batch_size=max_batch_size,
        models=ModelNames.for_graph(graph, fused=opts.fused),
        entries=sorted([*configs, MANIFEST]),
        metadata=record,
    )

    def files(stage: Path) -> None:
        _stage_models(stage, graph, configs, trunk_onnx, head_onnx, trunk_plan, opts, frame_files)
        for rel, src in (backbone_files or {}).items():
            target = stage / BACKBONE / "1" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
        for name in keep:  # validate against what stays in place
            shutil.copy2(out / name / "config.pbtxt", stage / name / "config.pbtxt")

    _stage_and_install(out, manifest, files, keep=keep, carry=[m for m, _ in opts.versions])
    return out


def _model_configs(
    graph: TaskGraph,
    trunk: _Trunk,
    heads: Mapping[str, _Head],
    opts: _Options,
    frames: Mapping[str, _Trunk] | None = None,
) -> dict[str, mc.ModelConfig]:
    """Every model's config, by model name."""
    shared = {
        PARAM_GRAPH: json.dumps(graph.to_dict(), separators=(",", ":")),
        PARAM_PREPROCESS: json.dumps(asdict(graph.preprocess), separators=(",", ":")),
    }
    configs = {BACKBONE: _backbone_config(graph, trunk, opts)}
    for name, frame_trunk in (frames or {}).items():
        model = trunk_model(graph, name)
        configs[model] = _backbone_config(graph, frame_trunk, opts, model)
    if opts.fused:
        feats = {**trunk.feats, **{t: sig for f in (frames or {}).values() for t, sig in f.feats.items()}}
        for model, owned in fused_heads_groups(graph).items():
            inputs = _group_inputs(graph, owned, feats) if frames else _fused_inputs(graph, trunk, opts)
            configs[model] = _fused_heads_config(graph, model, owned, inputs, heads, shared, opts)
    else:
        for name in graph.names:
            configs[head_model(name)] = _head_config(heads[name], opts)
    configs[VIDEO_DECODE] = _decode_config(graph, shared, opts)
    configs[CLIP_ENSEMBLE] = _ensemble(CLIP_ENSEMBLE, graph, heads, opts, shared, video=False)
    configs[VIDEO_ENSEMBLE] = _ensemble(VIDEO_ENSEMBLE, graph, heads, opts, shared, video=True)
    configs[VIDEO_STREAM] = _stream_decoder_config(graph, shared, opts)
    configs[STREAM_ENSEMBLE] = _stream_ensemble(graph, heads, opts, shared)
    return configs


def _backbone_config(graph: TaskGraph, trunk: _Trunk, opts: _Options, name: str = BACKBONE) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=name, max_batch_size=opts.max_batch_size)
    if not opts.native:
        cfg.backend = "python"
        _set_params(cfg, {"onnx_file": "model.onnx", "intra_op_threads": str(opts.cpu_threads or 0)})
        if opts.variants and name == BACKBONE:
            listed = [{"runtime": r, "precision": p, "file": f} for r, p, f in opts.variants]
            _set_params(cfg, {PARAM_VARIANTS: json.dumps(listed, separators=(",", ":"))})
    elif opts.tensorrt and name == BACKBONE:
        cfg.platform = "tensorrt_plan"
    else:
        cfg.platform = "onnxruntime_onnx"
    cfg.input.append(_io(mc.ModelInput, "video", "TYPE_UINT8", trunk.video.shape[1:]))
    if opts.feat_stack and name == BACKBONE:
        # in place of every feat_<task>, not beside them: a client asking for all outputs pays once
        cfg.output.append(_stack_tensor(mc.ModelOutput, trunk, opts))
        _set_params(cfg, {PARAM_FEAT_STACK: ",".join(opts.feat_stack)})
    else:
        for task, sig in trunk.feats.items():
            cfg.output.append(_io(mc.ModelOutput, feat_output(task), sig.dtype, sig.shape[1:]))
    if trunk.taps is not None:
        cfg.output.append(_io(mc.ModelOutput, TAPS_OUTPUT, trunk.taps.dtype, trunk.taps.shape[1:]))
    _dynamic_batching(cfg, opts.max_batch_size, opts.queue_delay_us, opts.max_queue_size)
    _instances(cfg, 1, opts.native)
    if opts.cache:
        cfg.response_cache.enable = True
    return cfg


def _head_config(head: _Head, opts: _Options) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=head_model(head.task.name), max_batch_size=opts.max_batch_size)
    if opts.native:
        cfg.platform = "onnxruntime_onnx"
        _set_params(cfg, {"intra_op_thread_count": "1", "inter_op_thread_count": "1"})
    else:
        cfg.backend = "python"
        _set_params(cfg, {"onnx_file": "model.onnx", "intra_op_threads": "1"})
    cfg.input.append(_io(mc.ModelInput, "features", "TYPE_FP32", head.features.shape[1:]))
    for aux, sig in head.reprs.items():
        cfg.input.append(_io(mc.ModelInput, repr_input(aux), "TYPE_FP32", sig.shape[1:]))
    labels = "labels.txt" if _labelled(head.task) else ""
    cfg.output.append(
        _io(mc.ModelOutput, "output", "TYPE_FP32", head.output.shape[1:], label_filename=labels)
    )
    cfg.output.append(_io(mc.ModelOutput, "repr", "TYPE_FP32", head.repr.shape[1:]))
    # No waiting at the heads: the backbone's batch reaches them all at once, so whatever queued is
    # batched anyway, and a lone request would only pay the delay once per ensemble step.
    _dynamic_batching(cfg, opts.max_batch_size, 0, opts.max_queue_size)
    _instances(cfg, 1, opts.native)
    return cfg


def _fused_heads_config(
    graph: TaskGraph,
    model: str,
    owned: Sequence[str],
    inputs: Sequence[Any],
    heads: Mapping[str, _Head],
    shared: Mapping[str, str],
    opts: _Options,
) -> mc.ModelConfig:
    """A fused heads model (``heads_model.py``): the ONNX Runtime sessions of the heads of ``owned`` and
    their auxiliaries in one python-backend model, answering ``owned`` (``vmtl_head_tasks`` when that is
    not every task), reading ``inputs`` (:func:`_fused_inputs`, :func:`_group_inputs`)."""
    cfg = mc.ModelConfig(name=model, backend="python", max_batch_size=opts.max_batch_size)
    cfg.input.extend(inputs)
    for name in owned:
        head = heads[name]
        labels = f"labels_{name}.txt" if _labelled(head.task) else ""
        cfg.output.append(
            _io(mc.ModelOutput, name, "TYPE_FP32", head.output.shape[1:], label_filename=labels)
        )
    ran = set(graph.closure(owned))
    files = ",".join(fused_head_file(n) for n in graph.names if n in ran)
    params = {PARAM_GRAPH: shared[PARAM_GRAPH], "onnx_files": files, "intra_op_threads": "1"}
    if list(owned) != graph.names:
        params[PARAM_HEAD_TASKS] = ",".join(owned)
    if opts.tap_tasks:
        params[PARAM_TAP_TASKS] = ",".join(opts.tap_tasks)
    if opts.feat_stack:
        params[PARAM_FEAT_STACK] = ",".join(opts.feat_stack)
    _set_params(cfg, params)
    # No waiting: the backbone's batch reaches the heads at once (see _head_config).
    _dynamic_batching(cfg, opts.max_batch_size, 0, opts.max_queue_size)
    _instances(cfg, 1, False)
    return cfg


def _fused_inputs(graph: TaskGraph, trunk: _Trunk, opts: _Options) -> list[Any]:
    """A single-trunk graph's fused heads inputs: every feat_<task> the backbone has (optional when no
    head reads it) and trunk_taps (optional): an ensemble of the previous task graph still feeds this model
    while a live reload switches them."""
    inputs = []
    if opts.feat_stack:  # one tensor holds every feat_<task> (the previous graph's ensemble sends it too)
        inputs.append(_stack_tensor(mc.ModelInput, trunk, opts))
    else:
        for name, sig in trunk.feats.items():
            unread = name in opts.tap_tasks or name not in graph
            inputs.append(_io(mc.ModelInput, feat_output(name), sig.dtype, sig.shape[1:], optional=unread))
    if opts.tap_tasks and trunk.taps is not None:
        inputs.append(_io(mc.ModelInput, TAPS_OUTPUT, trunk.taps.dtype, trunk.taps.shape[1:], optional=True))
    return inputs


def _feat_stack(trunk: _Trunk, opts: _Options, multi_trunk: bool, kept: Path | None) -> tuple[str, ...]:
    """The tasks whose ``feat_<task>`` the cpu backbone answers stacked as one ``feat_stack`` tensor for the
    fused heads, in stack order; () where each crosses on its own: the native flavour, separate heads,
    several trunks, features of unequal or dynamic shapes, and a backbone kept from an export without the
    stack (``kept``: the repository whose backbone config stays as it is, --only-heads)."""
    if kept is not None:
        cfg = load_configs(kept).get(BACKBONE)
        if cfg is None or PARAM_FEAT_STACK not in cfg.parameters:
            return ()
        if opts.native or not opts.fused:
            raise RepositoryError(
                f"{kept / BACKBONE} sends its features as one {FEAT_STACK!r} tensor, which only fused cpu heads "
                "read: export the whole repository (without --only-heads) to change the heads' layout"
            )
        stack = tuple(t for t in cfg.parameters[PARAM_FEAT_STACK].string_value.split(",") if t)
        unknown = [t for t in stack if t not in trunk.feats]
        if unknown:
            raise RepositoryError(
                f"{kept / BACKBONE}: its {PARAM_FEAT_STACK} names {unknown}, which the trunk has no features for"
            )
        return stack
    if opts.native or not opts.fused or multi_trunk:
        return ()
    shapes = {sig.shape[1:] for sig in trunk.feats.values()}
    if len(shapes) != 1 or any(d < 1 for d in next(iter(shapes))):
        return ()
    return tuple(trunk.feats)


def _stack_tensor(kind: type, trunk: _Trunk, opts: _Options) -> Any:
    """The ``feat_stack`` tensor: [T,N,D] for the T tasks of ``opts.feat_stack``."""
    shape = trunk.feats[opts.feat_stack[0]].shape[1:]
    return _io(kind, FEAT_STACK, "TYPE_FP32", (len(opts.feat_stack), *shape))


def _group_inputs(graph: TaskGraph, owned: Sequence[str], feats: Mapping[str, TensorSig]) -> list[Any]:
    """A multi-trunk graph's fused heads inputs: the features of ``owned`` and of their auxiliaries,
    whichever trunk reads them."""
    return [
        _io(mc.ModelInput, feat_output(n), feats[n].dtype, feats[n].shape[1:]) for n in graph.closure(owned)
    ]


def _decode_config(graph: TaskGraph, shared: Mapping[str, str], opts: _Options) -> mc.ModelConfig:
    """video_decode: a python-backend model in both flavours."""
    cfg = mc.ModelConfig(name=VIDEO_DECODE, backend="python", max_batch_size=opts.max_batch_size)
    cfg.input.append(_io(mc.ModelInput, "video_bytes", "TYPE_STRING", [1]))
    cfg.input.append(_io(mc.ModelInput, "window", "TYPE_FP32", [2], optional=True))
    t, s = graph.preprocess.num_frames, graph.preprocess.size
    cfg.output.append(_io(mc.ModelOutput, "video", "TYPE_UINT8", [t, s, s, 3]))
    cfg.output.append(_io(mc.ModelOutput, "timestamps", "TYPE_FP64", [t]))
    cfg.output.append(_io(mc.ModelOutput, "crop", "TYPE_FP32", [3]))
    cfg.output.append(_io(mc.ModelOutput, "window", "TYPE_FP32", [2]))
    _set_params(cfg, {**shared, "max_video_bytes": str(opts.max_video_bytes)})
    _instances(cfg, opts.decode_instances, False)
    return cfg


def _stream_decoder_config(graph: TaskGraph, shared: Mapping[str, str], opts: _Options) -> mc.ModelConfig:
    """video_stream: a decoupled python-backend model (one response per window), batch 1 per response."""
    cfg = mc.ModelConfig(name=VIDEO_STREAM, backend="python", max_batch_size=1)
    cfg.model_transaction_policy.decoupled = True
    cfg.input.append(_io(mc.ModelInput, "video_bytes", "TYPE_STRING", [1]))
    cfg.input.append(_io(mc.ModelInput, STREAM_WINDOWING, "TYPE_FP32", [2]))
    cfg.input.append(_io(mc.ModelInput, STREAM_RANGE, "TYPE_FP32", [2], optional=True))
    t, s = graph.preprocess.num_frames, graph.preprocess.size
    cfg.output.append(_io(mc.ModelOutput, "video", "TYPE_UINT8", [t, s, s, 3]))
    cfg.output.append(_io(mc.ModelOutput, "timestamps", "TYPE_FP64", [t]))
    cfg.output.append(_io(mc.ModelOutput, "crop", "TYPE_FP32", [3]))
    cfg.output.append(_io(mc.ModelOutput, "window", "TYPE_FP32", [2]))
    cfg.output.append(_io(mc.ModelOutput, WINDOW_INDEX_OUTPUT, "TYPE_INT64", [2]))
    _set_params(
        cfg,
        {
            **shared,
            "max_video_bytes": str(opts.max_stream_bytes),
            "max_streams": str(DEFAULT_MAX_STREAMS),
            UPLOAD_CHUNK_PARAM: str(opts.upload_chunk_bytes),
        },
    )
    _instances(cfg, 1, False)
    return cfg


def _stream_ensemble(
    graph: TaskGraph, heads: Mapping[str, _Head], opts: _Options, params: Mapping[str, str]
) -> mc.ModelConfig:
    """vmtl_stream: video_stream (decoupled: one response per window) -> backbone -> heads; Triton makes
    the ensemble decoupled itself. max_batch_size 1: one video per request, each window its own response."""
    pre = graph.preprocess
    cfg = mc.ModelConfig(name=STREAM_ENSEMBLE, platform="ensemble", max_batch_size=1)
    cfg.input.append(_io(mc.ModelInput, "video_bytes", "TYPE_STRING", [1]))
    cfg.input.append(_io(mc.ModelInput, STREAM_WINDOWING, "TYPE_FP32", [2]))
    cfg.input.append(_io(mc.ModelInput, STREAM_RANGE, "TYPE_FP32", [2], optional=True))
    steps = cfg.ensemble_scheduling.step
    step = steps.add(model_name=VIDEO_STREAM, model_version=-1)
    for name in ("video_bytes", STREAM_WINDOWING, STREAM_RANGE):
        step.input_map[name] = name
    step.output_map["video"] = _VIDEO_TENSOR
    step.output_map["timestamps"] = "timestamps"
    step.output_map["crop"] = "crop"
    step.output_map["window"] = WINDOW_OUTPUT
    step.output_map[WINDOW_INDEX_OUTPUT] = WINDOW_INDEX_OUTPUT
    _trunk_and_heads(steps, graph, heads, opts, _VIDEO_TENSOR)
    _task_outputs(cfg, graph, heads)
    cfg.output.append(_io(mc.ModelOutput, "timestamps", "TYPE_FP64", [pre.num_frames]))
    cfg.output.append(_io(mc.ModelOutput, "crop", "TYPE_FP32", [3]))
    cfg.output.append(_io(mc.ModelOutput, WINDOW_OUTPUT, "TYPE_FP32", [2]))
    cfg.output.append(_io(mc.ModelOutput, WINDOW_INDEX_OUTPUT, "TYPE_INT64", [2]))
    _set_params(cfg, params)
    return cfg


def _labelled(task: TaskSpec) -> bool:
    """Whether a task's output carries a labels file (one label per output value)."""
    return task.kind_spec.scored


def _ensemble(
    name: str,
    graph: TaskGraph,
    heads: Mapping[str, _Head],
    opts: _Options,
    params: Mapping[str, str],
    *,
    video: bool,
) -> mc.ModelConfig:
    """vmtl_clip / vmtl_video: (decode ->) backbone once -> the fused heads step, or the heads in stage
    order."""
    pre = graph.preprocess
    clip_dims = [pre.num_frames, pre.size, pre.size, 3]
    cfg = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=opts.max_batch_size)
    steps = cfg.ensemble_scheduling.step
    if video:
        cfg.input.append(_io(mc.ModelInput, "video_bytes", "TYPE_STRING", [1]))
        cfg.input.append(_io(mc.ModelInput, "window", "TYPE_FP32", [2], optional=True))
        step = steps.add(model_name=VIDEO_DECODE, model_version=-1)
        step.input_map["video_bytes"] = "video_bytes"
        step.input_map["window"] = "window"
        step.output_map["video"] = _VIDEO_TENSOR
        step.output_map["timestamps"] = "timestamps"
        step.output_map["crop"] = "crop"
        step.output_map["window"] = WINDOW_OUTPUT
        clip_tensor = _VIDEO_TENSOR
    else:
        cfg.input.append(_io(mc.ModelInput, "video", "TYPE_UINT8", clip_dims))
        clip_tensor = "video"
    _trunk_and_heads(steps, graph, heads, opts, clip_tensor)
    _task_outputs(cfg, graph, heads)
    if video:
        cfg.output.append(_io(mc.ModelOutput, "timestamps", "TYPE_FP64", [pre.num_frames]))
        cfg.output.append(_io(mc.ModelOutput, "crop", "TYPE_FP32", [3]))
        cfg.output.append(_io(mc.ModelOutput, WINDOW_OUTPUT, "TYPE_FP32", [2]))
    _set_params(cfg, params)
    return cfg


def _trunk_and_heads(
    steps: Any, graph: TaskGraph, heads: Mapping[str, _Head], opts: _Options, clip_tensor: str
) -> None:
    """The backbone step (one per trunk) on ``clip_tensor``, then the fused heads step (one per set of
    trunks its tasks need, :func:`vmtl.contract.fused_heads_groups`) or one step per head."""
    step = steps.add(model_name=BACKBONE, model_version=-1)
    step.input_map["video"] = clip_tensor
    first = graph.trunk_tasks(graph.trunk_names[0])
    direct = [t for t in first if t not in opts.tap_tasks]
    if opts.feat_stack:  # only ever set for fused heads (_feat_stack)
        step.output_map[FEAT_STACK] = _FEAT_STACK_TENSOR
    else:
        for task in direct:
            step.output_map[feat_output(task)] = _feat(task)
    if opts.tap_tasks:
        step.output_map[TAPS_OUTPUT] = _TAPS_TENSOR
    for trunk in graph.trunk_names[1:]:
        step = steps.add(model_name=trunk_model(graph, trunk), model_version=-1)
        step.input_map["video"] = clip_tensor
        for task in graph.trunk_tasks(trunk):
            step.output_map[feat_output(task)] = _feat(task)
    if opts.fused:
        for model, owned in fused_heads_groups(graph).items():
            step = steps.add(model_name=model, model_version=-1)
            for task in graph.closure(owned):
                if task in opts.tap_tasks:
                    step.input_map[TAPS_OUTPUT] = _TAPS_TENSOR
                elif opts.feat_stack:
                    step.input_map[FEAT_STACK] = _FEAT_STACK_TENSOR
                else:
                    step.input_map[feat_output(task)] = _feat(task)
            for task in owned:
                step.output_map[task] = task
    else:
        _separate_head_steps(steps, graph, heads, opts.tap_tasks)


def _task_outputs(cfg: mc.ModelConfig, graph: TaskGraph, heads: Mapping[str, _Head]) -> None:
    """One ensemble output per task, named after it (with its labels file when scored)."""
    for task in graph.names:
        head = heads[task]
        labels = f"labels_{task}.txt" if _labelled(head.task) else ""
        cfg.output.append(
            _io(mc.ModelOutput, task, "TYPE_FP32", head.output.shape[1:], label_filename=labels)
        )


def _separate_head_steps(
    steps: Any, graph: TaskGraph, heads: Mapping[str, _Head], tap_tasks: Iterable[str] = ()
) -> None:
    """One ensemble step per head, in stage order, each fed its auxiliaries' ``repr``."""
    for stage in graph.stages():
        for task in stage:
            head = heads[task]
            step = steps.add(model_name=head_model(task), model_version=-1)
            step.input_map["features"] = _TAPS_TENSOR if task in tap_tasks else _feat(task)
            for aux in head.task.auxiliaries:
                step.input_map[repr_input(aux)] = _repr(aux)
            step.output_map["output"] = task
            if graph.dependents(task):
                step.output_map["repr"] = _repr(task)


def _stage_models(
    stage: Path,
    graph: TaskGraph,
    configs: Mapping[str, mc.ModelConfig],
    trunk_onnx: Path,
    head_onnx: Mapping[str, Path],
    trunk_plan: Path | None,
    opts: _Options,
    frame_trunks: Mapping[str, Path] | None = None,
) -> None:
    """Write every model directory into ``stage``: configs, model files, python sources, labels."""
    for name, cfg in configs.items():
        _write_config(stage / name, cfg, opts.version(name))
    if trunk_plan is None:
        _copy_onnx(trunk_onnx, stage / BACKBONE / "1", "model.onnx")
    else:  # the ONNX file only served to read the I/O signature
        shutil.copy2(trunk_plan, stage / BACKBONE / "1" / "model.plan")
    if not opts.native:
        _copy_source(_ORT_HOST, stage / BACKBONE / "1")
    for trunk, path in (frame_trunks or {}).items():
        version = stage / trunk_model(graph, trunk) / "1"
        _copy_onnx(path, version, "model.onnx")
        if not opts.native:
            _copy_source(_ORT_HOST, version)
    if opts.fused:
        for model, owned in fused_heads_groups(graph).items():
            version = stage / model / str(opts.version(model))
            for name in graph.closure(owned):
                _copy_onnx(head_onnx[name], version, fused_head_file(name))
            _copy_source(_HEADS_HOST, version)
    else:
        for name in graph.names:
            version = stage / head_model(name) / str(opts.version(head_model(name)))
            _copy_onnx(head_onnx[name], version, "model.onnx")
            if not opts.native:
                _copy_source(_ORT_HOST, version)
    _copy_source(_DECODE_HOST, stage / VIDEO_DECODE / "1")
    _copy_source(_STREAM_HOST, stage / VIDEO_STREAM / "1")
    for task in graph.tasks:
        if _labelled(task):
            text = "\n".join(task.labels) + "\n"
            if opts.fused:
                (stage / fused_heads_model(graph, task.name) / f"labels_{task.name}.txt").write_text(text)
            else:
                (stage / head_model(task.name) / "labels.txt").write_text(text)
            for ens in (CLIP_ENSEMBLE, VIDEO_ENSEMBLE, STREAM_ENSEMBLE):
                (stage / ens / f"labels_{task.name}.txt").write_text(text)


def _write_config(model_dir: Path, cfg: mc.ModelConfig, version: int = 1) -> None:
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    text = text_format.MessageToString(cfg)
    # Round trip: what reaches Triton is exactly what its protobuf parser accepts.
    text_format.Parse(text, mc.ModelConfig())
    (model_dir / "config.pbtxt").write_text(text)
    if cfg.platform == "ensemble":
        (model_dir / "1" / ".keep").write_text("")  # Triton needs a version directory, even empty


def _copy_onnx(src: Path, version_dir: Path, filename: str) -> None:
    version_dir.mkdir(parents=True, exist_ok=True)
    _, _, external = onnx_signature(src)
    shutil.copy2(src, version_dir / filename)
    for rel in external:
        source = (src.parent / rel).resolve()
        if not source.is_file():
            raise RepositoryError(f"{src}: external data file {rel!r} not found next to it")
        target = version_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def _copy_source(filename: str, version_dir: Path) -> None:
    src = _MODEL_SOURCES / filename
    if not src.is_file():
        raise RepositoryError(f"python-backend model source missing from the vmtl install: {src}")
    shutil.copy2(src, version_dir / "model.py")


# --------------------------------------------------------------------------------------------------
# Installing the staged repository


def _stage_and_install(
    out: Path,
    manifest: Manifest,
    write_models: Callable[[Path], None],
    *,
    keep: Iterable[str] = (),
    carry: Iterable[str] = (),
) -> None:
    """Stage the repository beside ``out`` (``write_models`` fills the model directories, then the
    manifest is written), validate it and move it into place (but ``keep``'s entries: see
    :func:`_install`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        os.chmod(stage, 0o755)  # mkdtemp makes it private; the repository may be mounted into a container
        write_models(stage)
        manifest.write(stage)
        validate_repository(stage)
        _install(stage, out, manifest.entries, keep=keep, carry=carry)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RepositoryError(f"{out} exists and is not a directory")
    if not out.is_dir() or (out / MANIFEST).is_file():
        return
    foreign = sorted(p.name for p in out.iterdir() if not p.name.startswith(_TOLERATED))
    if foreign:
        shown = ", ".join(foreign[:8]) + (", ..." if len(foreign) > 8 else "")
        raise RepositoryError(
            f"refusing to write into {out}: it is not empty ({shown}) and not a vmtl model repository "
            f"(no {MANIFEST}); choose an empty or new directory"
        )


def _install(
    stage: Path, out: Path, entries: list[str], *, keep: Iterable[str] = (), carry: Iterable[str] = ()
) -> None:
    """Move the staged entries into ``out``; replace only what vmtl wrote there before. Entries in
    ``keep`` stay as they are in ``out`` (not even their directories' times change); the models in
    ``carry`` take their older version directories along into the new model directory."""
    _check_target(out)
    keep = set(keep)
    entries = [e for e in entries if e not in keep]
    for model in carry:
        if model in keep or not (out / model).is_dir() or not (stage / model).is_dir():
            continue
        for old in (out / model).iterdir():
            if old.is_dir() and old.name.isdigit() and not (stage / model / old.name).exists():
                os.rename(old, stage / model / old.name)
    if not out.exists():
        os.rename(stage, out)
        return
    old: list[str] = []
    if (out / MANIFEST).is_file():
        try:
            old = Manifest.read(out).entries
        except RepositoryError:
            old = []
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    try:
        # The manifest moves last, so an interrupted install still lists every entry it owns.
        ordered = [e for e in entries if e != MANIFEST] + [MANIFEST]
        for name in sorted((set(old) | set(entries)) - keep):
            if name != MANIFEST and (out / name).exists() and "/" not in name and name not in ("", ".", ".."):
                os.rename(out / name, trash / name)
        for name in ordered:
            if name == MANIFEST and (out / MANIFEST).exists():
                os.replace(stage / name, out / name)
            else:
                os.rename(stage / name, out / name)
    finally:
        shutil.rmtree(trash, ignore_errors=True)

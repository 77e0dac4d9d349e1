"""The export pipeline behind `vmtl export`: checkpoint -> ONNX -> parity -> accuracy gates -> repositories.

Steps of :func:`export_checkpoint` (each a function of this module):

1. ONNX export (opset 18, TorchScript exporter, :mod:`vmtl.export.wrappers`) of the trunk (uint8 ``video``
   [B,T,S,S,3] in, normalised inside, dynamic batch, static T/S) and of one graph per head (DLMs on).
2. Parity: PyTorch and ONNX Runtime run the same clips (real decoded clips of ``data_root``'s held-out split
   when given, else seeded random uint8 clips) at batch 1 and 2; every head is fed the trunk's *PyTorch*
   features and its auxiliaries' PyTorch representations. Each shipped file is checked in a fresh session
   with the optimiser off (the file is self-contained) and as the server loads it (``ORT_ENABLE_ALL``);
   the export fails (:class:`ParityError`) past ``parity_tol`` max-abs, naming the model and output.
3. ``cpu`` flavour: ORT's EXTENDED graph optimisation is applied once, offline, and the optimised file is
   what ships (it needs the same ONNX Runtime version, recorded in ``vmtl.json``). ``native`` ships the
   plain export: Triton's onnxruntime backend optimises at load with its own (older) ONNX Runtime.
4. ``int8`` (cpu flavour): dynamic quantisation of the trunk (and the heads with ``int8_heads``) behind
   the accuracy gate of :mod:`vmtl.export.quantize`; a refusal writes nothing.
5. ``trt`` (native flavour, GPU): fp16 TensorRT engine of the trunk behind the same gate
   (:mod:`vmtl.export.tensorrt`).
5b. ``precisions`` (cpu flavour): every (runtime, precision) candidate of the trunk (ONNX Runtime /
   OpenVINO; fp32, bf16, int8) behind the same gate, timed (:mod:`vmtl.export.precision`); the accepted
   ones ship beside ``model.onnx`` and the host runs the fastest its CPU can; refused ones are reported.
6. :func:`vmtl.export.repository.write_repository` writes each flavour (``both``: ``OUT/cpu`` and
   ``OUT/native``, which ``vmtl serve OUT`` understands) with the parity errors, trunk fingerprint and gate
   results in ``vmtl.json``'s metadata, and a ``parity.json`` beside each model.

``only_heads``: when the checkpoint's trunk (VideoMAE + VMT-Adapters + per-task extraction/norms and the
trunk layout) has the SHA-256 recorded by the full export, only the heads are exported and the repository
is rewritten around the existing backbone file (same bytes, same mtime). A repository written by this
version also records the trunk's core (VideoMAE + shared adapters + layout) and each task's trunk-side parts
(:mod:`vmtl.export.taps`): then a checkpoint with the same core may add tasks or change some (``vmtl train
--init-from``): those become *tap tasks*, whose heads compute their features from the backbone's
``trunk_taps`` output, and only the heads model(s) and the ensembles are rewritten: the backbone's and
video_decode's directories are not touched, the fused heads go to a new version directory (the previous
one stays, for ``vmtl reload --rollback``; :mod:`vmtl.export.generations` records what to return to).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from vmtl.contract import (
    BACKBONE,
    CLIP_ENSEMBLE,
    HEAD_LAYOUTS,
    HEADS_MODEL,
    MANIFEST,
    PARAM_VARIANTS,
    STREAM_ENSEMBLE,
    TAPS_OUTPUT,
    VIDEO_DECODE,
    VIDEO_ENSEMBLE,
    VIDEO_STREAM,
    RepositoryError,
    fused_head_file,
    fused_heads_model,
    head_model,
    load_configs,
    read_manifest,
    trunk_model,
)
from vmtl.data.clips import load_clipset
from vmtl.export.generations import highest_version, push_generation, snapshot_generation
from vmtl.export.precision import PrecisionResult, gate_precisions
from vmtl.export.quantize import (
    INT8_SETTINGS,
    ExportError,
    GateRefused,
    GateResult,
    Int8Refused,
    TaskGate,
    compare_metrics,
    evaluate_pipeline,
    int8_setting,
    load_gate_data,
    optimize_model,
    quantize_model,
    quantize_static_model,
    trunk_latency,
)
from vmtl.export.repository import DEFAULT_MAX_QUEUE_SIZE, DEFAULT_QUEUE_DELAY_US, write_repository
from vmtl.export.taps import (
    hash_state,
    head_fingerprints,
    task_fingerprints,
    tensor_bytes,
    trunk_core_fingerprint,
)
from vmtl.export.tensorrt import TrtTrunk, build_engine, tensorrt_unavailable, write_engine_info
from vmtl.export.wrappers import (
    FrameTrunkExport,
    HeadExport,
    TrunkExport,
    export_modules,
    export_onnx,
    frame_trunk_modules,
)
from vmtl.models.checkpoint import CheckpointError, checkpoint_dir, resolve_weights
from vmtl.models.multitask import MultiTaskModel, run_heads
from vmtl.runtime import OrtPipeline, ort_session
from vmtl.tasks import TaskGraph

__all__ = [
    "FLAVOURS",
    "ExportError",
    "ExportReport",
    "GateRefused",
    "Int8Refused",
    "ModelReport",
    "ParityError",
    "UsageError",
    "export_checkpoint",
    "trunk_fingerprint",
]

FLAVOURS = ("cpu", "native", "both")
PARITY_FILE = "parity.json"
#: Sessions each shipped file is checked in: a fresh one with the optimiser off, and the one the server uses.
PARITY_SESSIONS = {"optimiser off": "off", "as served (ORT_ENABLE_ALL)": "all"}
_SIDECARS = (PARITY_FILE, "tensorrt.json")
Log = Callable[[str], None]


class UsageError(ExportError):
    """Bad arguments (missing checkpoint, --int8 without --data, --trt without a GPU...): exit status 2."""


class ParityError(ExportError):
    """An exported graph does not reproduce PyTorch within the tolerance."""


# --------------------------------------------------------------------------------------------------
# Report


@dataclass
class ModelReport:
    """One model file of one repository flavour."""

    name: str  # backbone / head_<task>
    flavour: str
    file: str  # relative to the repository
    bytes: int
    precision: str  # fp32 / int8 / fp16 (TensorRT)
    parity: dict[str, Any] | None  # max-abs vs PyTorch per batch (fp32 files)
    reused: bool = False  # --only-heads: kept from the existing repository


@dataclass
class ExportReport:
    """What :func:`export_checkpoint` wrote and measured."""

    checkpoint: Path
    out: Path
    repositories: dict[str, Path]
    tasks: list[str]
    models: list[ModelReport]
    trunk_sha256: str
    parity_tolerance: float
    parity_inputs: str
    only_heads: bool = False
    int8: GateResult | None = None
    int8_trunks: dict[str, GateResult] = field(default_factory=dict)  # each frames trunk's own int8 gate
    tensorrt: dict[str, Any] | None = None
    precisions: PrecisionResult | None = None  # --precision: accepted / refused backbone variants
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)

    @property
    def max_parity_error(self) -> float:
        errs = [m.parity["max_abs"] for m in self.models if m.parity and not m.reused]
        return max(errs, default=0.0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checkpoint"], d["out"] = str(self.checkpoint), str(self.out)
        d["repositories"] = {k: str(v) for k, v in self.repositories.items()}
        d["int8"] = self.int8.to_dict() if self.int8 else None
        d["int8_trunks"] = {t: g.to_dict() for t, g in self.int8_trunks.items()}
        d["precisions"] = (
            {
                "accepted": [v.to_dict() for v in self.precisions.accepted],
                "refused": [v.to_dict() for v in self.precisions.refused],
                "measured_on": self.precisions.measured_on,
            }
            if self.precisions
            else None
        )
        d["max_parity_error"] = self.max_parity_error
        return d

    def summary(self) -> str:
        """A human-readable table: models, sizes, precision, parity errors, gate, time."""
        flav = ", ".join(f"{k} -> {v}" for k, v in self.repositories.items())
        lines = [
            f"vmtl export: {self.checkpoint} ({len(self.tasks)} tasks) -> {flav}"
            + ("  [--only-heads]" if self.only_heads else ""),
            f"{'model':<18} {'flavour':<7} {'precision':<9} {'size':>9}  parity max-abs b1 / b2",
        ]
        for m in self.models:
            if m.reused:
                parity = "kept (backbone unchanged)"
            elif m.parity:
                parity = f"{m.parity['batch1']:.1e} / {m.parity['batch2']:.1e}"
            else:
                parity = "- (gated, see below)"
            lines.append(f"{m.name:<18} {m.flavour:<7} {m.precision:<9} {_size(m.bytes):>9}  {parity}")
        lines.append(
            f"parity: worst {self.max_parity_error:.2e} (tolerance {self.parity_tolerance:g}) on "
            f"{self.parity_inputs}"
        )
        if self.int8 is not None:
            lines.append(
                f"int8 accuracy gate ({self.int8.split}, {self.int8.clips} clips): "
                + ("passed" if self.int8.passed else "REFUSED")
            )
            lines.append(self.int8.table())
        for trunk, g in self.int8_trunks.items():
            verdict = "passed, ships int8" if g.passed else "REFUSED, stays fp32"
            lines.append(f"int8 gate of trunk {trunk} (static QDQ): {verdict}")
            lines.append(g.table())
        if self.precisions is not None:
            cpu = self.precisions.measured_on.get("cpu", "?")
            lines.append(f"backbone precisions (gate on held-out data; timed on {cpu}):")
            lines.append(self.precisions.table())
        if self.tensorrt:
            lines.append(
                f"TensorRT {self.tensorrt.get('tensorrt_version')} on {self.tensorrt.get('gpu_name')}: "
                f"{self.tensorrt.get('precision')}; accuracy gate "
                + ("passed" if (self.tensorrt.get("gate") or {}).get("passed") else "not run")
            )
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in self.steps.items())
        lines.append(f"trunk sha256 {self.trunk_sha256[:16]}...; total {self.seconds:.1f} s ({steps})")
        return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


class _Progress:
    def __init__(self, log: Log | None) -> None:
        self.log = log or (lambda _m: None)
        self.t0 = time.perf_counter()
        self.steps: dict[str, float] = {}

    def say(self, message: str) -> None:
        self.log(f"[{time.perf_counter() - self.t0:6.1f}s] {message}")

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.steps[name] = self.steps.get(name, 0.0) + time.perf_counter() - t


# --------------------------------------------------------------------------------------------------
# Fingerprint, clips


def trunk_fingerprint(model: MultiTaskModel) -> dict[str, Any]:
    """SHA-256 of everything the trunk ONNX depends on, overall and per part.

    Parts: ``backbone`` (VideoMAE weights), ``adapters`` (shared VMT-Adapter weights), ``task_specific``
    (per-task extraction + LayerNorms), ``layout`` (tasks, grids, frames, size, normalisation and the
    trunk's model-config entries; head/DLM settings excluded).
    """
    trunk = model.trunk
    parts = {k: hashlib.sha256() for k in ("backbone", "adapters", "task_specific", "layout")}
    state = trunk.state_dict()
    for name in sorted(state):
        t = state[name]
        if ".adapter.extract." in name or name.startswith("task_norms."):
            part = "task_specific"
        elif ".adapter." in name:
            part = "adapters"
        else:
            part = "backbone"
        h = parts[part]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(tensor_bytes(t))
    for name, buf in sorted(trunk.named_buffers()):
        if name not in state:  # non-persistent: normalisation constants, pooling matrices
            parts["layout"].update(f"{name}|{tuple(buf.shape)}|".encode())
            parts["layout"].update(tensor_bytes(buf))
    skip = ("head_", "dlm", "track_readout", "embed_normalize", "checkpoint", "backbone")
    layout = {
        "tasks": list(model.graph.names),
        "grids": dict(trunk.grids),
        "config": {k: v for k, v in model.cfg.to_dict().items() if not k.startswith(skip)},
    }
    parts["layout"].update(json.dumps(layout, sort_keys=True, default=str).encode())
    if model.frame_trunks:  # the other trunks are frozen pretrained networks: one part for all of them
        parts["frame_trunks"] = hashlib.sha256()
        for name, t in sorted(model.frame_trunks.items()):
            hash_state(parts["frame_trunks"], t.state_dict(), prefix=f"{name}|")
    digests = {k: h.hexdigest() for k, h in parts.items()}
    overall = hashlib.sha256("".join(digests[k] for k in sorted(digests)).encode()).hexdigest()
    return {
        "sha256": overall,
        "parts": digests,
        "tasks": list(model.graph.names),
        "core": trunk_core_fingerprint(model),
        "task_parts": task_fingerprints(model),
    }


def _parity_clips(model: MultiTaskModel, data_root: Path | None, seed: int) -> tuple[np.ndarray, str]:
    """Two uint8 clips [2,T,S,S,3]: held-out clips of the data when given, else seeded random ones."""
    t, s = model.trunk.num_frames, model.trunk.image_size
    if data_root is not None:
        frames = []
        for task in (t for t in model.graph.tasks if not t.pretrained):
            try:
                clips = load_clipset(
                    data_root, task, "val", model.graph.preprocess, model.temporal_tokens, progress=False
                )
            except (FileNotFoundError, ValueError) as exc:
                raise UsageError(f"--data {data_root}: {exc}") from exc
            frames.extend(clips.frames[: 2 - len(frames)])
            if len(frames) == 2:
                return np.stack(frames), f"2 held-out clips of {data_root}"
        raise UsageError(f"--data {data_root}: fewer than 2 held-out clips")
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (2, t, s, s, 3), dtype=np.uint8), f"2 random uint8 clips (seed {seed})"


@dataclass
class _Reference:
    """PyTorch inputs/outputs of every model at each parity batch size."""

    trunk: dict[int, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]
    heads: dict[str, dict[int, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]]
    frame_trunks: dict[str, dict[int, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]] = field(
        default_factory=dict
    )  # by model name (backbone_<trunk>)

    def cases(self, model: str) -> dict[int, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """The parity cases of a model (the backbone, a frames trunk's backbone or head_<task>)."""
        if model == BACKBONE:
            return self.trunk
        if model in self.frame_trunks:
            return self.frame_trunks[model]
        return self.heads[model.removeprefix("head_")]


@torch.no_grad()
def _torch_reference(
    graph: TaskGraph,
    trunk: TrunkExport,
    heads: Mapping[str, HeadExport],
    clips: np.ndarray,
    frame_trunks: Mapping[str, FrameTrunkExport] | None = None,
) -> _Reference:
    ref = _Reference({}, {n: {} for n in graph.names})
    for b in (1, 2):
        video = torch.from_numpy(np.ascontiguousarray(clips[:b]))
        *outputs, taps = trunk(video)
        feats = dict(zip(trunk.tasks, outputs, strict=True))
        want = {f"feat_{k}": v.numpy() for k, v in feats.items()}
        ref.trunk[b] = ({"video": video.numpy()}, {**want, TAPS_OUTPUT: taps.numpy()})
        for name, frames in (frame_trunks or {}).items():
            tokens = dict(zip(frames.tasks, frames(video), strict=True))
            feats.update(tokens)
            cases = ref.frame_trunks.setdefault(trunk_model(graph, name), {})
            cases[b] = ({"video": video.numpy()}, {f"feat_{k}": v.numpy() for k, v in tokens.items()})
        inputs = {n: taps if heads[n].taps is not None else feats[n] for n in graph.names}
        order = graph.closure(graph.names)
        auxiliaries = {n: heads[n].aux_names for n in order}
        outs, reprs = run_heads(order, inputs, auxiliaries, lambda n, f, aux: heads[n](f, *aux))
        for name in order:
            ins = (inputs[name], *(reprs[a] for a in auxiliaries[name]))
            ref.heads[name][b] = (
                {k: v.numpy() for k, v in zip(heads[name].input_names, ins, strict=True)},
                {"output": outs[name].numpy(), "repr": reprs[name].numpy()},
            )
    return ref


def _max_abs(want: np.ndarray, got: np.ndarray) -> float:
    if want.shape != got.shape:
        return float("inf")
    diff = np.abs(want.astype(np.float64) - got.astype(np.float64))
    return float(np.nanmax(np.where(np.isnan(diff), np.inf, diff))) if diff.size else 0.0


def _parity_error(name: str, want: np.ndarray, got: np.ndarray) -> float:
    """Max-abs error; for the trunk's ``trunk_taps`` (raw hidden states, whose values reach far beyond 1)
    relative to the tensor's largest magnitude when that is above 1, so float32 rounding of large values
    is not read as a mismatch (the task features computed from them are held to the plain max-abs)."""
    err = _max_abs(want, got)
    if name == TAPS_OUTPUT:
        err /= max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
    return err


def _error_kind(name: str) -> str:
    return "max-abs relative to its scale" if name == TAPS_OUTPUT else "max-abs"


def _check_parity(
    path: Path,
    model: str,
    cases: Mapping[int, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]],
    tol: float,
    where: str,
) -> dict[str, Any]:
    """Max-abs error of ``path`` vs PyTorch in each of PARITY_SESSIONS; raise ParityError past ``tol``."""
    per_batch: dict[int, float] = {}
    per_output: dict[str, float] = {}
    for session_name, level in PARITY_SESSIONS.items():
        try:
            sess = ort_session(path, optimization=level)
        except Exception as exc:
            raise ParityError(
                f"{model} ({where}): {path.name} does not load in ONNX Runtime ({session_name}): {exc}"
            ) from exc
        for b, (feed, want) in cases.items():
            names = list(want)
            got = dict(zip(names, sess.run(names, feed), strict=True))
            for name in names:
                err = _parity_error(name, want[name], got[name])
                per_batch[b] = max(per_batch.get(b, 0.0), err)
                per_output[name] = max(per_output.get(name, 0.0), err)
                if not err <= tol:
                    raise ParityError(
                        f"parity check failed for {model} ({where}, session {session_name}): output {name!r} "
                        f"differs from PyTorch by {_error_kind(name)} {err:.3g} at batch {b} (tolerance {tol:g}). The "
                        "exported graph does not reproduce the checkpoint; nothing was written."
                    )
    return {
        "max_abs": max(per_batch.values(), default=0.0),
        "batch1": per_batch.get(1, 0.0),
        "batch2": per_batch.get(2, 0.0),
        "outputs": per_output,
        "tolerance": tol,
        "sessions": list(PARITY_SESSIONS),
    }


# --------------------------------------------------------------------------------------------------
# Targets


def _is_repo(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def _targets(out: Path, flavour: str | None, only_heads: bool) -> dict[str, Path]:
    """Repository directory per flavour. ``both`` -> OUT/cpu + OUT/native; a single flavour goes to OUT,
    or to OUT/<flavour> when OUT holds the flavours (a former ``both`` export)."""
    if flavour is not None and flavour not in FLAVOURS:
        raise UsageError(f"--flavour must be one of {', '.join(FLAVOURS)}, not {flavour!r}")
    if only_heads:
        found: dict[str, Path] = {}
        if _is_repo(out):
            found[str(read_manifest(out).get("flavour", "cpu"))] = out
        else:
            found.update({f: out / f for f in ("cpu", "native") if _is_repo(out / f)})
        if not found:
            raise UsageError(
                f"--only-heads updates an existing repository, but {out} holds none (no {MANIFEST}); "
                "run a full export first"
            )
        if flavour in (None, "both"):
            return found
        if flavour not in found:
            raise UsageError(f"--only-heads: {out} has no {flavour} repository (it has {', '.join(found)})")
        return {flavour: found[flavour]}
    flavour = flavour or "cpu"
    if flavour == "both":
        if _is_repo(out):
            raise UsageError(
                f"{out} is a single-flavour repository; --flavour both writes {out}/cpu and {out}/native, "
                "choose another --out (or remove it)"
            )
        targets = {"cpu": out / "cpu", "native": out / "native"}
    elif not _is_repo(out) and _is_repo(out / flavour):
        targets = {flavour: out / flavour}
    else:
        targets = {flavour: out}
    for path in targets.values():
        if path.exists() and not path.is_dir():
            raise UsageError(f"{path} exists and is not a directory")
        if path.is_dir() and not _is_repo(path):
            foreign = [p.name for p in path.iterdir() if not p.name.startswith(("README", "readme", "."))]
            if foreign:
                raise UsageError(
                    f"refusing to write into {path}: it is not empty ({', '.join(sorted(foreign)[:5])}) and "
                    f"not a vmtl model repository (no {MANIFEST}); choose an empty or new directory"
                )
    return targets


def _versions() -> dict[str, str]:
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------
# The export


#: ``--int8`` on a frames trunk: training clips its activation ranges are calibrated on, and held-out clips
#: its pretrained heads' top-1 answers are compared with fp32's on.
CALIBRATION_CLIPS = 16
AGREEMENT_CLIPS = 32


@dataclass
class _Plan:
    """The validated arguments of one export (see :func:`export_checkpoint`)."""

    weights: Path
    out: Path
    targets: dict[str, Path]  # flavour -> repository directory
    data: Path | None
    int8: bool
    int8_heads: bool
    trt: bool
    only_heads: bool
    parity_tol: float
    opset: int
    max_batch_size: int | None
    cpu_threads: int | None
    max_queue_size: int
    queue_delay_us: int
    max_drop: float
    max_mae_increase: float
    seed: int
    heads: str | None = None  # fused | separate for the cpu flavour (None: fused, or as OUT has it)
    cache: bool = False  # Triton's response cache on the backbone
    precisions: tuple[str, ...] = ()  # --precision (empty: not asked)
    runtimes: tuple[str, ...] = ("ort",)  # --runtime
    int8_agreement: float = 0.95  # --int8 on a frames trunk: its pretrained heads' top-1 agreement floor


@dataclass
class _Loaded:
    """The checkpoint's model and what the export derives from it before writing anything."""

    model: MultiTaskModel
    fingerprint: dict[str, Any]
    flops: dict[str, Any]
    trunk: TrunkExport
    heads: dict[str, HeadExport]
    existing: dict[str, dict[str, Any]]  # --only-heads: flavour -> the repository's manifest
    max_batch_size: int
    clips: np.ndarray  # the parity inputs
    clips_desc: str
    reference: _Reference
    tap_tasks: list[str] = field(default_factory=list)  # --only-heads: heads that read trunk_taps
    frame_trunks: dict[str, FrameTrunkExport] = field(default_factory=dict)  # the other trunks, by name

    @property
    def graph(self) -> TaskGraph:
        return self.model.graph

    def frame_trunk_files(self, files: Mapping[str, Path]) -> dict[str, Path]:
        """{trunk name: file} of the frames trunks among ``files`` (model name -> file)."""
        return {t: files[trunk_model(self.graph, t)] for t in self.frame_trunks}


@dataclass
class _Shipment:
    """What each flavour ships, per model: the file, its parity record (fp32 files), its precision and the
    parity.json of a model that ships in a lower precision (checked by an accuracy gate instead); plus
    the gates' results."""

    files: dict[str, dict[str, Path]] = field(default_factory=dict)
    parity: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    precision: dict[str, dict[str, str]] = field(default_factory=dict)
    sidecars: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    gate: GateResult | None = None  # int8 (the first trunk, and the heads with --int8-heads)
    trunk_gates: dict[str, GateResult] = field(default_factory=dict)  # int8 of each frames trunk
    trt_info: dict[str, Any] | None = None
    trt_plan: Path | None = None  # the TensorRT engine of the native flavour's trunk
    variants: PrecisionResult | None = None  # --precision


def export_checkpoint(
    ckpt_dir: str | Path,
    out_repo: str | Path,
    *,
    flavour: str | None = None,
    int8: bool = False,
    int8_heads: bool = False,
    trt: bool = False,
    only_heads: bool = False,
    data_root: str | Path | None = None,
    parity_tol: float = 1e-4,
    opset: int = 18,
    max_batch_size: int | None = None,
    cpu_threads: int | None = None,
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    max_drop: float = 0.01,
    max_mae_increase: float = 0.01,
    seed: int = 0,
    heads: str | None = None,
    cache: bool = False,
    precisions: tuple[str, ...] = (),
    runtimes: tuple[str, ...] = ("ort",),
    int8_agreement: float = 0.95,
    log: Log | None = None,
) -> ExportReport:
    """Export a checkpoint (directory or ``.safetensors``) into the model repository ``out_repo``.

    ``flavour`` cpu (default) | native | both (``out_repo/cpu`` + ``out_repo/native``); with
    ``only_heads`` the default is every flavour found in ``out_repo``. ``int8`` quantises the cpu
    flavour's trunk (and heads with ``int8_heads``) behind the accuracy gate (``data_root`` required);
    each further (frames) trunk is quantised statically behind a gate of its own (its tasks' metrics, and
    its pretrained heads' top-1 agreement with fp32 >= ``int8_agreement``) and stays fp32 when refused;
    ``trt`` builds the native flavour's trunk as a TensorRT fp16 engine (GPU, ``data_root`` required).
    ``max_batch_size`` defaults to 8 (with ``only_heads``: the existing repository's); ``max_queue_size``
    bounds each dynamic batcher's queue (0: unbounded; see ``vmtl.export.repository``); ``queue_delay_us``
    is how long the backbone's batcher waits for a batch to fill. ``heads``: the
    cpu flavour's heads, ``fused`` (default: one python step runs the asked heads) or ``separate`` (one
    model per head; the native flavour always); with ``only_heads`` the default keeps OUT's. ``cache``
    turns on Triton's response cache on the backbone (``vmtl serve --cache-mb``). ``precisions``
    (fp32, bf16, int8) x ``runtimes`` (ort, openvino): the cpu flavour's backbone variants to gate and time
    (``data_root`` required); a refused one is reported, not shipped, and fails nothing. ``log`` receives
    progress lines. Raises :class:`UsageError` for bad arguments, :class:`ParityError`,
    :class:`GateRefused` (``Int8Refused``), :class:`~vmtl.export.tensorrt.TensorRTError` or
    :class:`~vmtl.export.repository.RepositoryError`; nothing is written when any is raised.

    The steps are the functions below (plan, load, ONNX export, parity, gates, per-flavour write); this
    one is a little over 80 lines only for its signature and the plan it passes on.
    """
    progress = _Progress(log)
    try:
        weights = resolve_weights(ckpt_dir)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from exc
    out = Path(out_repo).expanduser()
    if flavour is None and trt and not only_heads:
        flavour = "native"
    plan = _Plan(
        weights=weights,
        out=out,
        targets=_targets(out, flavour, only_heads),
        data=Path(data_root).expanduser() if data_root is not None else None,
        int8=int8,
        int8_heads=int8_heads,
        trt=trt,
        only_heads=only_heads,
        parity_tol=parity_tol,
        opset=opset,
        max_batch_size=max_batch_size,
        cpu_threads=cpu_threads,
        max_queue_size=max_queue_size,
        queue_delay_us=queue_delay_us,
        max_drop=max_drop,
        max_mae_increase=max_mae_increase,
        seed=seed,
        heads=heads,
        cache=cache,
        precisions=tuple(precisions),
        runtimes=tuple(runtimes),
        int8_agreement=int8_agreement,
    )
    _check_plan(plan)
    loaded = _load(plan, progress)
    with tempfile.TemporaryDirectory(prefix="vmtl-export-") as tmp:
        work = Path(tmp)
        raw = _export_onnx(plan, loaded, work, progress)
        ship = _parity_per_flavour(plan, loaded, raw, work, progress)
        if int8 or trt or plan.precisions:
            _accuracy_gates(plan, loaded, raw, ship, work, progress)
        with progress.step("write"):
            models = [
                row
                for fl, target in plan.targets.items()
                for row in _write_flavour(plan, loaded, raw, ship, fl, target, progress)
            ]
    return ExportReport(
        checkpoint=checkpoint_dir(plan.weights),
        out=plan.out,
        repositories=dict(plan.targets),
        tasks=list(loaded.graph.names),
        models=models,
        trunk_sha256=loaded.fingerprint["sha256"],
        parity_tolerance=parity_tol,
        parity_inputs=loaded.clips_desc,
        only_heads=only_heads,
        int8=ship.gate,
        int8_trunks=ship.trunk_gates,
        tensorrt=ship.trt_info,
        precisions=ship.variants,
        seconds=time.perf_counter() - progress.t0,
        steps=progress.steps,
    )


def _check_plan(plan: _Plan) -> None:
    """Check the arguments together (UsageError says what does not fit), before anything is loaded."""
    int8, trt, only_heads, targets, data = plan.int8, plan.trt, plan.only_heads, plan.targets, plan.data
    if only_heads and (int8 or trt):
        raise UsageError(
            "--only-heads keeps the existing backbone (and its precision); --int8 / --trt apply to a full export"
        )
    if not 0.0 <= plan.int8_agreement <= 1.0:
        raise UsageError(f"--int8-agreement is a share of clips, 0 to 1; got {plan.int8_agreement:g}")
    if plan.int8_heads and not int8:
        raise UsageError("--int8-heads needs --int8")
    if int8 and "cpu" not in targets:
        raise UsageError(
            "--int8 (ONNX Runtime dynamic quantisation) is for the cpu flavour: use --flavour cpu or both "
            "(the native flavour stays fp32; --trt gives it a fp16 TensorRT engine)"
        )
    if trt and "native" not in targets:
        raise UsageError("--trt builds the native flavour's backbone: use --flavour native or both")
    if (int8 or trt) and data is None:
        raise UsageError(
            f"{'--int8' if int8 else '--trt'} needs --data DIR: its accuracy gate compares every task's metric "
            "on held-out data before shipping the lower precision"
        )
    if data is not None and not data.is_dir():
        raise UsageError(f"--data {data} is not a directory")
    if trt:
        reason = tensorrt_unavailable()
        if reason:
            raise UsageError(reason)
    if plan.precisions:
        if only_heads or int8:
            raise UsageError(
                "--precision gates the backbone's variants in a full export; use it without --only-heads "
                "and --int8 (its int8 is one of the variants)"
            )
        if "cpu" not in targets:
            raise UsageError(
                "--precision is for the cpu flavour (python-backend hosts): use --flavour cpu or both"
            )
        if data is None:
            raise UsageError(
                "--precision needs --data DIR: its accuracy gate compares every task's metric on held-out data"
            )
    if plan.parity_tol <= 0:
        raise UsageError(f"the parity tolerance must be > 0, got {plan.parity_tol}")
    if plan.heads not in (None, *HEAD_LAYOUTS):
        raise UsageError(f"--heads must be one of {', '.join(HEAD_LAYOUTS)}, not {plan.heads!r}")
    if plan.heads == "fused" and "cpu" not in targets:
        raise UsageError(
            "--heads fused is for the cpu flavour (python-backend models); the native flavour serves one "
            "model per head"
        )


def _load(plan: _Plan, progress: _Progress) -> _Loaded:
    """Load the checkpoint, fingerprint its trunk (checked against the repository with --only-heads), and
    run the PyTorch reference of the parity check."""
    with progress.step("load"):
        try:
            model = MultiTaskModel.load_checkpoint(plan.weights)
        except Exception as exc:
            raise UsageError(f"cannot load checkpoint {plan.weights}: {exc}") from exc
        graph = model.graph
        fingerprint = trunk_fingerprint(model)
        flops = _flops(model)
    trunks = f", trunks {', '.join(graph.trunk_names)}" if graph.multi_trunk else ""
    progress.say(f"loaded {plan.weights} ({len(graph.names)} tasks: {', '.join(graph.names)}{trunks})")
    if graph.multi_trunk and plan.trt:
        raise UsageError(
            "--trt builds an engine of a single backbone; this graph has trunks "
            f"{', '.join(graph.trunk_names)} (--int8 quantises each trunk behind a gate of its own; "
            "--precision builds variants of the first)"
        )
    if graph.multi_trunk and plan.only_heads:
        raise UsageError(
            "--only-heads (adding heads to a served trunk) supports single-trunk graphs only; this one has "
            f"trunks {', '.join(graph.trunk_names)}: run a full export"
        )

    existing: dict[str, dict[str, Any]] = {}
    tap_tasks: list[str] = []
    if plan.only_heads:
        for f, p in plan.targets.items():
            existing[f], taps = _check_only_heads(p, fingerprint)
            tap_tasks += [t for t in taps if t not in tap_tasks]
        if tap_tasks:
            progress.say(
                f"--only-heads: the trunk core matches the repository; new or changed tasks "
                f"{', '.join(tap_tasks)} read the backbone's {TAPS_OUTPUT}"
            )
        else:
            progress.say(f"--only-heads: trunk sha256 {fingerprint['sha256'][:16]}... matches the repository")
    with progress.step("load"):
        trunk_mod, head_mods = export_modules(model, tap_tasks)
        frame_mods = frame_trunk_modules(model)
    max_batch_size = plan.max_batch_size
    if max_batch_size is None:
        max_batch_size = int(next(iter(existing.values()))["max_batch_size"]) if existing else 8

    with progress.step("parity inputs"):
        clips, clips_desc = _parity_clips(model, plan.data, plan.seed)
        reference = _torch_reference(graph, trunk_mod, head_mods, clips, frame_mods)
    return _Loaded(
        model,
        fingerprint,
        flops,
        trunk_mod,
        head_mods,
        existing,
        max_batch_size,
        clips,
        clips_desc,
        reference,
        tap_tasks,
        frame_mods,
    )


def _export_onnx(plan: _Plan, loaded: _Loaded, work: Path, progress: _Progress) -> dict[str, Path]:
    """The plain ONNX export of the trunk and of every head into ``work``: {model name: file}."""
    graph = loaded.graph
    raw: dict[str, Path] = {}
    # Only-heads needs the trunk ONNX only for the signature of a TensorRT backbone.
    need_trunk = not plan.only_heads or any(
        (target / BACKBONE / "1" / "model.plan").is_file() for target in plan.targets.values()
    )
    with progress.step("onnx export"):
        if need_trunk:
            raw[BACKBONE] = export_onnx(loaded.trunk, work / "backbone.onnx", opset=plan.opset)
            progress.say(f"exported {BACKBONE} ({_size(raw[BACKBONE].stat().st_size)})")
        for trunk, module in loaded.frame_trunks.items():
            name = trunk_model(graph, trunk)
            raw[name] = export_onnx(module, work / f"{name}.onnx", opset=plan.opset)
            progress.say(f"exported {name} ({_size(raw[name].stat().st_size)}, trunk {trunk!r})")
        for name in graph.names:
            path = export_onnx(loaded.heads[name], work / f"{head_model(name)}.onnx", opset=plan.opset)
            raw[head_model(name)] = path
        progress.say(f"exported {len(graph.names)} heads")
    return raw


def _parity_per_flavour(
    plan: _Plan, loaded: _Loaded, raw: Mapping[str, Path], work: Path, progress: _Progress
) -> _Shipment:
    """Each flavour's fp32 files (ORT-optimised offline for cpu), checked against PyTorch."""
    ship = _Shipment(sidecars={fl: {} for fl in plan.targets})
    for fl in plan.targets:
        ship.files[fl], ship.parity[fl] = {}, {}
        (work / fl).mkdir()
        for name, path in raw.items():
            if name == BACKBONE and plan.only_heads:
                continue
            if fl == "cpu":
                with progress.step("optimise"):
                    path = optimize_model(path, work / fl / f"{name}.onnx")
            cases = loaded.reference.cases(name)
            with progress.step("parity"):
                ship.parity[fl][name] = _check_parity(path, name, cases, plan.parity_tol, f"{fl} flavour")
            ship.files[fl][name] = path
        worst = max((p["max_abs"] for p in ship.parity[fl].values()), default=0.0)
        what = "optimised (ORT EXTENDED, offline) " if fl == "cpu" else ""
        progress.say(f"{fl}: {what}models match PyTorch, worst max-abs {worst:.2e} (tol {plan.parity_tol:g})")
    ship.precision = {fl: dict.fromkeys(ship.files[fl], "fp32") for fl in ship.files}
    return ship


def _accuracy_gates(
    plan: _Plan,
    loaded: _Loaded,
    raw: Mapping[str, Path],
    ship: _Shipment,
    work: Path,
    progress: _Progress,
) -> None:
    """The fp32 metrics on the held-out data, then the int8 and/or TensorRT candidates against them."""
    assert plan.data is not None
    graph = loaded.graph
    with progress.step("accuracy gate"):
        gate_data = load_gate_data(plan.data, graph, loaded.model.temporal_tokens)
        fp32_files = ship.files["cpu"] if "cpu" in ship.files else ship.files["native"]
        fp32 = evaluate_pipeline(
            _gate_pipeline(graph, fp32_files),
            graph,
            gate_data,
        )
    if plan.int8:
        _int8_gate(plan, loaded, raw, ship, fp32, gate_data, work, progress)
    if plan.trt:
        _trt_gate(plan, loaded, raw, ship, fp32, gate_data, work, progress)
    if plan.precisions:
        with progress.step("precisions"):
            ship.variants = gate_precisions(
                graph=graph,
                raw=raw,
                fp32_files=ship.files["cpu"],
                fp32=fp32,
                gate_data=gate_data,
                data=plan.data,
                num_tokens=loaded.model.temporal_tokens,
                clips=loaded.clips,
                precisions=plan.precisions,
                runtimes=plan.runtimes,
                work=work / "precisions",
                max_drop=plan.max_drop,
                max_mae_increase=plan.max_mae_increase,
                say=progress.say,
                threads=plan.cpu_threads,
            )


def _int8_gate(
    plan: _Plan,
    loaded: _Loaded,
    raw: Mapping[str, Path],
    ship: _Shipment,
    fp32: Mapping[str, Mapping[str, float]],
    gate_data: dict,
    work: Path,
    progress: _Progress,
) -> None:
    """Quantise (:func:`_int8_candidate`); ship the int8 files in the cpu flavour, or raise Int8Refused."""
    with progress.step("int8"):
        gate, q, tried = _int8_candidate(
            raw,
            ship.files["cpu"],
            loaded.graph,
            fp32,
            gate_data,
            work / "int8",
            plan.int8_heads,
            loaded.clips,
            max_drop=plan.max_drop,
            max_mae_increase=plan.max_mae_increase,
            say=progress.say,
        )
    if not gate.passed:
        tried[0][1].details["tried"] = gate.details["tried"]  # the refusal shown lists them all
        raise Int8Refused(
            tried[0][1],
            note="Settings tried: "
            + "; ".join(f"{label} ({', '.join(t.task for t in g.failures)} failed)" for label, g in tried)
            + f". Shown: {tried[0][0]}.",
        )
    ship.gate = gate
    ship.files["cpu"].update(q)
    for name in q:
        _ship_gated(ship, "cpu", name, "int8", "int8", "the int8 accuracy gate (vmtl.json metadata.int8)")
    if not loaded.frame_trunks:
        return
    calibration = _sample_clips(_calibration_sets(plan, loaded), CALIBRATION_CLIPS)  # one set for every trunk
    for trunk in loaded.frame_trunks:
        with progress.step(f"int8 {trunk}"):
            sub, file = _frame_trunk_int8(
                plan, loaded, raw, ship.files["cpu"], fp32, gate_data, calibration, trunk, work
            )
        name = trunk_model(loaded.graph, trunk)
        ship.trunk_gates[trunk] = sub
        gate.details.setdefault("trunks", {})[trunk] = sub.to_dict()
        verdict = "passed: ships int8" if sub.passed else "REFUSED: stays fp32"
        progress.say(f"int8 {name} (static, calibrated on training clips): accuracy gate {verdict}")
        if sub.passed:
            ship.files["cpu"][name] = file
            checked = f"the int8 accuracy gate of trunk {trunk} (vmtl.json metadata.int8.details.trunks)"
            _ship_gated(ship, "cpu", name, "int8", "int8 (static QDQ)", checked)


def _frame_trunk_int8(
    plan: _Plan,
    loaded: _Loaded,
    raw: Mapping[str, Path],
    files: Mapping[str, Path],
    fp32: Mapping[str, Mapping[str, float]],
    gate_data: dict,
    calibration: np.ndarray,
    trunk: str,
    work: Path,
) -> tuple[GateResult, Path]:
    """Quantise frames trunk ``trunk`` statically (activations calibrated on the training clips
    ``calibration``) and gate it: the primary metric of every task with data that reads it (or has an
    auxiliary that does), and for each pretrained head on it (no labels) the share of held-out clips whose
    top-1 answer equals fp32's."""
    graph = loaded.graph
    name = trunk_model(graph, trunk)
    q = quantize_static_model(raw[name], work / f"{name}.onnx", calibration)
    candidate = _gate_pipeline(graph, {**files, name: q})
    dependent = [n for n in fp32 if trunk in graph.trunks_for([n])]
    metrics = evaluate_pipeline(candidate, graph, {n: gate_data[n] for n in dependent})
    n_clips = sum(len(gate_data[n]) for n in dependent)
    gate = compare_metrics(
        graph,
        {n: fp32[n] for n in dependent},
        metrics,
        name="int8",
        max_drop=plan.max_drop,
        max_mae_increase=plan.max_mae_increase,
        clips=n_clips,
    )
    pretrained = [n for n in graph.trunk_tasks(trunk) if graph.task(n).pretrained]
    clips = _sample_clips(list(gate_data.values()), AGREEMENT_CLIPS)
    if pretrained:
        want = _gate_pipeline(graph, files).run_batched(clips, 8, pretrained)
        got = candidate.run_batched(clips, 8, pretrained)
        for n in pretrained:
            agree = float(np.mean(want[n].argmax(-1) == got[n].argmax(-1)))
            limit = f">={plan.int8_agreement:g}"
            gate.tasks.append(
                TaskGate(n, "agreement", 1.0, agree, agree - 1.0, limit, agree >= plan.int8_agreement)
            )
    gate.details = {
        "model": name,
        "settings": "quantize_static QDQ: Conv weights QInt8 per-channel (reduce_range), activations QUInt8 "
        f"(MinMax on {len(calibration)} training clips); then ORT EXTENDED optimisation",
        "agreement_clips": len(clips) if pretrained else 0,
        "seconds_b1": {
            "fp32": trunk_latency(files[name], clips[:1], repeats=5, warmup=1)["median_s"],
            "int8": trunk_latency(q, clips[:1], repeats=5, warmup=1)["median_s"],
        },
        "fp32_metrics": {n: fp32[n] for n in dependent},
        "int8_metrics": metrics,
        "shipped": gate.passed,
    }
    return gate, q


def _calibration_sets(plan: _Plan, loaded: _Loaded) -> list[Any]:
    """The training split of every task with data (the int8 calibration clips come from these)."""
    assert plan.data is not None
    return list(load_gate_data(plan.data, loaded.graph, loaded.model.temporal_tokens, split="train").values())


def _sample_clips(clipsets: list[Any], n: int) -> np.ndarray:
    """Up to ``n`` clips [n,T,S,S,3] taken in turn from each ClipSet (the first of each, then the second...)."""
    picked: list[np.ndarray] = []
    for i in range(max((len(c) for c in clipsets), default=0)):
        picked += [c.frames[i] for c in clipsets if i < len(c)]
        if len(picked) >= n:
            break
    if not picked:
        raise ExportError("int8: no clips in --data to calibrate or gate a trunk on")
    return np.stack(picked[:n])


def _trt_gate(
    plan: _Plan,
    loaded: _Loaded,
    raw: Mapping[str, Path],
    ship: _Shipment,
    fp32: Mapping[str, Mapping[str, float]],
    gate_data: dict,
    work: Path,
    progress: _Progress,
) -> None:
    """Build the trunk's fp16 TensorRT engine; ship it in the native flavour, or raise GateRefused."""
    graph = loaded.graph
    n_clips = sum(len(c) for c in gate_data.values())
    with progress.step("tensorrt"):
        (work / "trt").mkdir()
        engine = work / "trt" / "model.plan"
        trt_info = build_engine(raw[BACKBONE], engine, max_batch_size=loaded.max_batch_size)
        native = ship.files["native"]
        pipe = _gate_pipeline(graph, native, TrtTrunk(engine))
        metrics = evaluate_pipeline(pipe, graph, gate_data)
        trt_gate = compare_metrics(
            graph,
            fp32,
            metrics,
            name="trt-fp16",
            max_drop=plan.max_drop,
            max_mae_increase=plan.max_mae_increase,
            clips=n_clips,
        )
        trt_info["gate"] = trt_gate.to_dict()
        trt_info["feature_max_abs_vs_torch"] = max(
            _max_abs(loaded.reference.trunk[2][1][k], v) for k, v in pipe.trunk_outputs(loaded.clips).items()
        )
    progress.say(f"TensorRT fp16 accuracy gate on {n_clips} held-out clips:\n{trt_gate.table()}")
    if not trt_gate.passed:
        raise GateRefused(trt_gate, "the TensorRT fp16 engine")
    ship.trt_info, ship.trt_plan = trt_info, engine
    gate = "the TensorRT fp16 accuracy gate (backbone/tensorrt.json)"
    _ship_gated(ship, "native", BACKBONE, "fp16-trt", "fp16 (TensorRT)", gate)


def _ship_gated(ship: _Shipment, flavour: str, name: str, tag: str, precision: str, checked_by: str) -> None:
    """Model ``name`` of ``flavour`` ships in a lower precision that an accuracy gate (``checked_by``)
    accepted: its parity.json says so, and keeps the fp32 export's parity beside it."""
    ship.precision[flavour][name] = tag
    ship.sidecars[flavour][name] = {
        "precision": precision,
        "checked_by": checked_by,
        "fp32_export_parity": ship.parity[flavour].pop(name),
    }


def _write_flavour(
    plan: _Plan,
    loaded: _Loaded,
    raw: Mapping[str, Path],
    ship: _Shipment,
    fl: str,
    target: Path,
    progress: _Progress,
) -> list[ModelReport]:
    """Write flavour ``fl``'s repository ``target`` (models, config, manifest, parity.json files)."""
    graph = loaded.graph
    meta = _metadata(
        fl,
        plan.weights,
        loaded.fingerprint,
        plan.opset,
        ship.parity,
        ship.precision,
        loaded.clips_desc,
        plan.parity_tol,
        ship.gate,
        ship.trt_info,
        loaded.flops,
        both=len(plan.targets) == 2 and not plan.only_heads,
        previous=loaded.existing.get(fl),
        tap_tasks=loaded.tap_tasks,
        head_sha=head_fingerprints(loaded.model, loaded.tap_tasks),
    )
    variants = ship.variants if fl == "cpu" else None
    kept_variants: tuple[list[tuple[str, str, str]], dict[str, Path]] = ([], {})
    if plan.only_heads and fl == "cpu":
        kept_variants = _existing_variants(target)
    if variants is not None:
        meta["variants"] = [v.to_dict() for v in variants.accepted]
        meta["refused"] = [v.to_dict() for v in variants.refused]
        meta["measured_on"] = variants.measured_on
    if loaded.tap_tasks:
        return _write_live(plan, loaded, ship, fl, target, meta, progress, kept_variants)
    kept: dict[str, bytes] = {}
    if plan.only_heads:
        trunk_file, trunk_plan, kept, threads = _existing_backbone(target, raw.get(BACKBONE))
    else:
        trunk_file = ship.files[fl][BACKBONE] if not (fl == "native" and ship.trt_plan) else raw[BACKBONE]
        trunk_plan = ship.trt_plan if fl == "native" else None
        threads = plan.cpu_threads
    heads = {n: ship.files[fl][head_model(n)] for n in graph.names}
    layout = _head_layout(plan, loaded, fl)
    write_repository(
        target,
        graph,
        trunk_file,
        heads,
        **_serving_options(plan, loaded, fl, meta, layout, threads),
        trunk_plan=trunk_plan,
        backbone_variants=(
            [(v.runtime, v.precision, v.file) for v in variants.accepted] if variants else kept_variants[0]
        ),
        backbone_files=variants.files if variants else kept_variants[1],
        frame_trunks=loaded.frame_trunk_files(ship.files[fl]),
    )
    for name, rec in {**ship.parity[fl], **ship.sidecars[fl]}.items():
        record = {"model": name, "inputs": loaded.clips_desc, **rec}
        _write_json(_sidecar_dir(target, name) / _parity_name(target, name), record)
    for rel, blob in kept.items():
        (target / rel).write_bytes(blob)
    if fl == "native" and ship.trt_info and not plan.only_heads:
        write_engine_info(target / BACKBONE, {**ship.trt_info, "built": _now()})
    rows = _model_reports(target, fl, graph, ship.precision[fl], ship.parity[fl], plan.only_heads)
    progress.say(f"wrote the {fl} repository {target}")
    return rows


def _write_live(
    plan: _Plan,
    loaded: _Loaded,
    ship: _Shipment,
    fl: str,
    target: Path,
    meta: dict[str, Any],
    progress: _Progress,
    kept_variants: tuple[list[tuple[str, str, str]], dict[str, Path]] = ([], {}),
) -> list[ModelReport]:
    """--only-heads with new or changed tasks: rewrite only the heads that changed (fused: a new version
    directory of the heads model holding every head, the unchanged ones copied byte for byte from the
    previous version) and the ensembles, leave the backbone's and video_decode's directories untouched,
    and record the previous generation for a rollback."""
    graph = loaded.graph
    previous = dict(loaded.existing[fl].get("metadata") or {})
    old_sha = dict(previous.get("head_sha256") or {})
    new_sha = dict(meta["head_sha256"])
    unchanged = {n for n in graph.names if old_sha.get(n) == new_sha[n]}
    layout = _head_layout(plan, loaded, fl)
    heads = {n: ship.files[fl][head_model(n)] for n in graph.names}
    keep = [BACKBONE, VIDEO_DECODE, VIDEO_STREAM]
    versions: dict[str, int] = {}
    added: list[str] = []
    if layout == "fused":
        old_version = highest_version(target / HEADS_MODEL)
        for n in unchanged:
            old_file = target / HEADS_MODEL / str(old_version) / fused_head_file(n)
            if old_file.is_file():
                heads[n] = old_file
        versions[HEADS_MODEL] = old_version + 1
        if not old_version:
            added.append(HEADS_MODEL)
        replaced = [HEADS_MODEL]
    else:
        replaced = []
        for n in graph.names:
            model_dir = target / head_model(n)
            if n in unchanged and model_dir.is_dir():
                keep.append(head_model(n))
                continue
            versions[head_model(n)] = highest_version(model_dir) + 1
            (replaced if model_dir.is_dir() else added).append(head_model(n))
    models = loaded.existing[fl].get("models") or {}
    ensembles = [
        str(models.get("clip_ensemble", CLIP_ENSEMBLE)),
        str(models.get("video_ensemble", VIDEO_ENSEMBLE)),
    ]
    ensembles += [STREAM_ENSEMBLE] if (target / STREAM_ENSEMBLE).is_dir() else []
    snapshot = snapshot_generation(target, [*replaced, *ensembles])
    threads = _existing_backbone(target, None)[3]
    write_repository(
        target,
        graph,
        target / BACKBONE / "1" / "model.onnx",
        heads,
        **_serving_options(plan, loaded, fl, meta, layout, threads),
        backbone_variants=kept_variants[0],
        backbone_files=kept_variants[1],
        tap_tasks=loaded.tap_tasks,
        backbone_tasks=list(previous.get("backbone_tasks") or []),
        versions=versions,
        keep=keep,
    )
    push_generation(target, snapshot, added)
    for name, rec in ship.parity[fl].items():
        if name.removeprefix("head_") in unchanged or name == BACKBONE:
            continue
        record = {"model": name, "inputs": loaded.clips_desc, **rec}
        _write_json(_sidecar_dir(target, name) / _parity_name(target, name), record)
    progress.say(
        f"wrote the {fl} repository {target}: heads of {', '.join(loaded.tap_tasks)} read {TAPS_OUTPUT}; "
        f"unchanged: {', '.join(sorted(unchanged)) or 'none'}; backbone and {VIDEO_DECODE} untouched; "
        f"the previous generation is kept for `vmtl reload --rollback`"
    )
    return _model_reports(target, fl, graph, ship.precision[fl], ship.parity[fl], True)


def _serving_options(
    plan: _Plan, loaded: _Loaded, fl: str, meta: dict[str, Any], layout: str, threads: int | None
) -> dict[str, Any]:
    """The :func:`write_repository` options a full and a heads-only export of flavour ``fl`` share."""
    return {
        "flavour": fl,
        "max_batch_size": loaded.max_batch_size,
        "cpu_threads": threads if fl == "cpu" else None,
        "metadata": meta,
        "max_queue_size": plan.max_queue_size,
        "queue_delay_us": plan.queue_delay_us,
        "heads": layout,
        "cache": plan.cache,
    }


def _head_layout(plan: _Plan, loaded: _Loaded, flavour: str) -> str:
    """The heads' layout flavour ``flavour`` is written with (fused | separate)."""
    if flavour == "native":
        return "separate"
    if plan.heads:
        return plan.heads
    previous = loaded.existing.get(flavour)
    if previous is not None:  # --only-heads keeps the repository's layout
        return "fused" if (previous.get("models") or {}).get("fused_heads") else "separate"
    return "fused"


def _sidecar_dir(repo: Path, name: str) -> Path:
    """The directory holding model ``name``'s parity record: its own, or the fused heads model's."""
    return repo / name if (repo / name).is_dir() or name == BACKBONE else repo / HEADS_MODEL


def _parity_name(repo: Path, name: str) -> str:
    return PARITY_FILE if _sidecar_dir(repo, name).name == name else f"{name}.{PARITY_FILE}"


def _flops(model: MultiTaskModel) -> dict[str, Any]:
    """FLOPs per clip (batch 1) of the trunk and of each head (with its DLMs), for `vmtl bench`'s share of
    the machine's matmul peak."""
    report = model.flops_report(batch=1)
    return {
        "per": "clip (batch 1); 2 FLOPs per multiply-add; matmul, conv and attention, as torch's FlopCounterMode counts",
        "trunk": int(report["trunk"]),
        "heads": {n: int(v) for n, v in report["heads"].items()},
    }


def _heads(files: Mapping[str, Path], graph: TaskGraph) -> dict[str, Path]:
    return {n: files[head_model(n)] for n in graph.names}


def _gate_pipeline(graph: TaskGraph, files: Mapping[str, Path], trunk: Any = None) -> OrtPipeline:
    """ONNX Runtime over the model files ``files`` (model name -> file): every trunk and head, the first
    trunk's file replaced by ``trunk`` (a TensorRT engine) when given."""
    frames = {t: files[trunk_model(graph, t)] for t in graph.trunk_names[1:]}
    return OrtPipeline(graph, trunk or files[BACKBONE], _heads(files, graph), frame_trunks=frames)


def _int8_candidate(
    raw: Mapping[str, Path],
    fp32_files: Mapping[str, Path],
    graph: TaskGraph,
    fp32: Mapping[str, Mapping[str, float]],
    gate_data: dict,
    work: Path,
    int8_heads: bool,
    clips: np.ndarray,
    *,
    max_drop: float,
    max_mae_increase: float,
    say: Callable[[str], None],
) -> tuple[GateResult, dict[str, Path], list[tuple[str, GateResult]]]:
    """Quantise with each of :data:`~vmtl.export.quantize.INT8_SETTINGS` in turn until the accuracy gate
    accepts one. Returns that gate (or the last refusal), the quantised files and every (setting, gate) tried."""
    work.mkdir(exist_ok=True)
    names = [BACKBONE, *(head_model(n) for n in graph.names if int8_heads)]
    n_clips = sum(len(c) for c in gate_data.values())
    tried: list[tuple[str, GateResult]] = []
    for weight_type, per_channel in INT8_SETTINGS:
        label = int8_setting(weight_type, per_channel)
        q = {
            name: quantize_model(
                raw[name], work / f"{name}.onnx", weight_type=weight_type, per_channel=per_channel
            )
            for name in names
        }
        pipe = _gate_pipeline(graph, {**fp32_files, **q})
        metrics = evaluate_pipeline(pipe, graph, gate_data)
        gate = compare_metrics(
            graph,
            fp32,
            metrics,
            name="int8",
            max_drop=max_drop,
            max_mae_increase=max_mae_increase,
            clips=n_clips,
        )
        tried.append((label, gate))
        verdict = "passed" if gate.passed else f"REFUSED ({len(gate.failures)} task(s))"
        say(f"int8 {label}: accuracy gate on {n_clips} held-out clips: {verdict}")
        gate.details = {
            "quantized": sorted(q),
            "settings": f"quantize_dynamic: MatMul/Gemm weights {label}, activations QUInt8 at run time; "
            "then ORT EXTENDED optimisation",
            "tried": [
                {"setting": lb, "passed": g.passed, "failed": [t.task for t in g.failures]} for lb, g in tried
            ],
            "feature_max_abs_vs_fp32": _feature_error(pipe, fp32_files[BACKBONE], clips),
            "bytes": {n: p.stat().st_size for n, p in q.items()},
            "fp32_metrics": fp32,
            "int8_metrics": metrics,
        }
        if gate.passed:
            break
    return gate, q, tried


def _feature_error(pipe: OrtPipeline, fp32_trunk: Path, clips: np.ndarray) -> float:
    """Max-abs difference between the candidate trunk's features and the fp32 trunk's on the parity clips."""
    sess = ort_session(fp32_trunk)
    names = [o.name for o in sess.get_outputs() if o.name != TAPS_OUTPUT]  # the tasks' features
    want = dict(zip(names, sess.run(names, {"video": clips}), strict=True))
    got = pipe.trunk_outputs(clips)
    return max(_max_abs(want[k], got[k]) for k in names)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _metadata(
    flavour: str,
    weights: Path,
    fingerprint: dict[str, Any],
    opset: int,
    parity: Mapping[str, Mapping[str, Any]],
    precision: Mapping[str, Mapping[str, str]],
    clips_desc: str,
    tol: float,
    gate: GateResult | None,
    trt_info: dict[str, Any] | None,
    flops: dict[str, Any],
    *,
    both: bool,
    previous: Mapping[str, Any] | None,
    tap_tasks: list[str] | None = None,
    head_sha: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    versions = _versions()
    summary = {n: {k: r[k] for k in ("max_abs", "batch1", "batch2")} for n, r in parity[flavour].items()}
    meta: dict[str, Any] = dict((previous or {}).get("metadata") or {})
    backbone_meta = {
        k: meta[k]
        for k in ("int8", "tensorrt", "optimization", "variants", "refused", "measured_on")
        if k in meta
    }
    old_parity = dict(meta.get("parity") or {})
    meta.update(
        {
            "exporter": "vmtl export",
            "checkpoint": str(checkpoint_dir(weights)),
            "exported": _now(),
            "tasks": fingerprint["tasks"],
            "trunk_sha256": fingerprint["sha256"],
            "trunk_parts_sha256": fingerprint["parts"],
            "opset": opset,
            "precision": dict(precision[flavour]),
            "parity": summary,
            "parity_tolerance": tol,
            "parity_inputs": clips_desc,
            "versions": versions,
            "flops": flops,
        }
    )
    backbone_record = {
        "trunk_core_sha256": fingerprint["core"],
        "task_parts_sha256": fingerprint["task_parts"],
        "backbone_tasks": fingerprint["tasks"],
    }
    if previous is not None and tap_tasks:  # the backbone stays: so do its fingerprints
        old = dict(previous.get("metadata") or {})
        for key in ("trunk_sha256", "trunk_parts_sha256", *backbone_record):
            meta[key] = old.get(key)
    else:
        meta.update(backbone_record)
    meta["tap_tasks"] = list(tap_tasks or [])
    meta["head_sha256"] = dict(head_sha or {})
    if previous is not None:  # --only-heads: the backbone's records stay those of the full export
        meta.update(backbone_meta)
        meta["parity"] = {**{k: v for k, v in old_parity.items() if k == BACKBONE}, **summary}
        meta["precision"] = {
            **dict((previous.get("metadata") or {}).get("precision") or {}),
            **dict(precision[flavour]),
        }
        meta["heads_only_export"] = True
    else:
        meta["heads_only_export"] = False
        meta["backbone_checkpoint"] = meta["checkpoint"]
        meta["optimization"] = (
            {
                "level": "extended (offline)",
                "onnxruntime": versions["onnxruntime"],
                "note": "optimised files need this ONNX Runtime version (or newer)",
            }
            if flavour == "cpu"
            else {"level": "none (Triton's onnxruntime backend optimises at load)"}
        )
        meta["int8"] = gate.to_dict() if (gate is not None and flavour == "cpu") else None
        meta["tensorrt"] = trt_info if flavour == "native" else None
    if both:
        meta["flavours"] = {"cpu": "../cpu", "native": "../native"}
    return meta


def _check_only_heads(repo: Path, fingerprint: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The existing manifest and the tap tasks (new or changed tasks, whose heads read ``trunk_taps``),
    after checking that the repository's trunk is this checkpoint's: the whole trunk, or (repositories
    that record it) its core, the other tasks' trunk-side parts being those of the backbone."""
    manifest = read_manifest(repo)
    meta = manifest.get("metadata") or {}
    stored = meta.get("trunk_sha256")
    if not stored:
        raise ExportError(
            f"--only-heads: {repo}/{MANIFEST} records no trunk_sha256 (not written by a full `vmtl export`); "
            "run a full export"
        )
    core = meta.get("trunk_core_sha256")
    if core and core == fingerprint["core"]:
        in_backbone = list(meta.get("backbone_tasks") or meta.get("tasks") or [])
        recorded = dict(meta.get("task_parts_sha256") or {})
        taps = [
            t
            for t in fingerprint["tasks"]
            if t not in in_backbone or recorded.get(t) != fingerprint["task_parts"][t]
        ]
        if taps and not _backbone_has_taps(repo):
            raise ExportError(
                f"--only-heads refused: tasks {taps} are new or changed and need the backbone's {TAPS_OUTPUT!r} "
                f"output, which {repo}'s backbone lacks (exported before vmtl added it); run a full export once"
            )
        return manifest, taps
    if stored == fingerprint["sha256"]:
        return manifest, []
    old_parts = meta.get("trunk_parts_sha256") or {}
    differ = [k for k, v in fingerprint["parts"].items() if old_parts.get(k) not in (None, v)]
    old_tasks = list(meta.get("tasks") or [])
    new_tasks = fingerprint["tasks"]
    detail = []
    added = [t for t in new_tasks if t not in old_tasks]
    removed = [t for t in old_tasks if t not in new_tasks]
    if added or removed:
        detail.append(
            f"tasks added {added} / removed {removed} (each task has its own trunk output and adapter "
            "scale/shift, so the trunk changes)"
        )
    names = {
        "backbone": "VideoMAE weights",
        "adapters": "VMT-Adapter weights",
        "task_specific": "per-task adapter extraction / LayerNorms",
        "layout": "trunk layout/config",
    }
    if differ:
        detail.append("differing: " + ", ".join(names.get(k, k) for k in differ))
    raise ExportError(
        f"--only-heads refused: this checkpoint's trunk (sha256 {fingerprint['sha256'][:16]}...) is not the one "
        f"in {repo} (sha256 {str(stored)[:16]}...)"
        + (f"; {'; '.join(detail)}" if detail else "")
        + ". Run a full export (without --only-heads) to replace the backbone."
    )


def _backbone_has_taps(repo: Path) -> bool:
    try:
        cfg = load_configs(repo).get(BACKBONE)
    except RepositoryError:
        return False
    return cfg is not None and any(o.name == TAPS_OUTPUT for o in cfg.output)


def _existing_backbone(
    repo: Path, fresh_trunk_onnx: Path | None
) -> tuple[Path, Path | None, dict[str, bytes], int | None]:
    """(trunk ONNX for the writer, TensorRT plan, sidecar files to restore, cpu threads) of a repository."""
    version = repo / BACKBONE / "1"
    plan = version / "model.plan"
    kept = {
        f"{BACKBONE}/{name}": (repo / BACKBONE / name).read_bytes()
        for name in _SIDECARS
        if (repo / BACKBONE / name).is_file()
    }
    threads: int | None = None
    try:
        cfg = load_configs(repo).get(BACKBONE)
    except RepositoryError:
        cfg = None
    if cfg is not None and "intra_op_threads" in cfg.parameters:
        value = int(cfg.parameters["intra_op_threads"].string_value or 0)
        threads = value or None
    if plan.is_file():
        if fresh_trunk_onnx is None:  # pragma: no cover - export_checkpoint exports it for TensorRT
            raise ExportError(f"{repo}: a TensorRT backbone needs the trunk ONNX for its signature")
        return fresh_trunk_onnx, plan, kept, threads
    onnx_file = version / "model.onnx"
    if not onnx_file.is_file():
        raise ExportError(f"--only-heads: {repo} has no backbone model file ({onnx_file})")
    return onnx_file, None, kept, threads


def _existing_variants(repo: Path) -> tuple[list[tuple[str, str, str]], dict[str, Path]]:
    """--only-heads: the backbone's accepted variants (config ``vmtl_variants``) and their files, kept."""
    try:
        cfg = load_configs(repo).get(BACKBONE)
    except RepositoryError:
        return [], {}
    if cfg is None or PARAM_VARIANTS not in cfg.parameters:
        return [], {}
    listed = json.loads(cfg.parameters[PARAM_VARIANTS].string_value)
    variants = [(str(v["runtime"]), str(v["precision"]), str(v["file"])) for v in listed]
    version = repo / BACKBONE / "1"
    files = {
        str(p.relative_to(version)): p
        for p in version.rglob("*")
        if p.is_file() and p.name not in ("model.onnx", "model.py") and "__pycache__" not in p.parts
    }
    return variants, files


def _model_reports(
    repo: Path,
    flavour: str,
    graph: TaskGraph,
    precision: Mapping[str, str],
    parity: Mapping[str, Mapping[str, Any]],
    only_heads: bool,
) -> list[ModelReport]:
    rows = []
    trunks = [trunk_model(graph, t) for t in graph.trunk_names]
    for name in [*trunks, *(head_model(n) for n in graph.names)]:
        version = repo / name / str(highest_version(repo / name) or 1)
        path = version / "model.plan" if (version / "model.plan").is_file() else version / "model.onnx"
        if not version.is_dir():  # a head of its trunk's fused heads model
            task = name.removeprefix("head_")
            fused_model = repo / fused_heads_model(graph, task)
            fused = fused_model / str(highest_version(fused_model) or 1)
            path = fused / fused_head_file(task)
        reused = only_heads and name == BACKBONE
        prec = precision.get(name, "kept" if reused else "fp32")
        if reused:
            prec = str((read_manifest(repo).get("metadata") or {}).get("precision", {}).get(BACKBONE, "fp32"))
        rows.append(
            ModelReport(
                name=name,
                flavour=flavour,
                file=str(path.relative_to(repo)),
                bytes=path.stat().st_size if path.is_file() else 0,
                precision=prec,
                parity=dict(parity[name]) if name in parity else None,
                reused=reused,
            )
        )
    return rows

"""The second CPU runtime: OpenVINO sessions with an explicit precision, and the sessions a host opens for
the (runtime, precision) variant of its backbone that this machine runs.

- :class:`OvSession`: an OpenVINO compiled model behind the slice of ONNX Runtime's ``InferenceSession``
  API vmtl uses (``run(names, feeds)``, ``get_inputs()``, ``get_outputs()``), so :class:`vmtl.runtime.
  OrtPipeline`, the accuracy gate and the python-backend host run either runtime unchanged. Its precision
  is always set explicitly (``INFERENCE_PRECISION_HINT``): OpenVINO would otherwise run bf16 on a bf16 CPU.
  An int8 variant is a file NNCF quantised (FakeQuantize nodes) compiled with the f32 hint (bf16 where the
  CPU has it: "int8 + bf16").
- the CPU's capabilities and the choice rule live in :mod:`vmtl.precision_choice` (a light module
  that `vmtl serve` reads without ONNX Runtime); they are re-exported here.
- :func:`host_backbone`: the session a python-backend host gives a model from its config parameters;
  :func:`host_pipeline` / :func:`local_pipeline`: a repository's pipeline with the backbone on that same
  variant (the benchmarks' in-process baselines; ``vmtl batch --engine local``).

Layer 1: numpy, onnxruntime (through :mod:`vmtl.runtime`) and OpenVINO, imported only when used (the
``openvino`` extra).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vmtl.contract import PARAM_VARIANTS, config_params, load_configs
from vmtl.precision_choice import (
    ENV_CPU_FLAGS,
    ENV_PRECISION,
    ENV_RUNTIME,
    PARAM_PRECISION,
    PARAM_RUNTIME,
    PRECISIONS,
    RUNTIMES,
    CpuCaps,
    choose_variant,
    cpu_capabilities,
    explicit,
    openvino_unavailable,
    parse_variants,
    planned_choices,
)
from vmtl.runtime import LocalModel, OrtPipeline, cores, host_session, ort_session

__all__ = [
    "ENV_CPU_FLAGS",
    "ENV_PRECISION",
    "ENV_RUNTIME",
    "PARAM_PRECISION",
    "PARAM_RUNTIME",
    "PARAM_VARIANTS",
    "PRECISIONS",
    "RUNTIMES",
    "CpuCaps",
    "Hosted",
    "OvSession",
    "choose_variant",
    "cpu_capabilities",
    "host_backbone",
    "host_pipeline",
    "local_pipeline",
    "openvino_unavailable",
    "ov_session",
    "planned_choices",
]

_OV_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
log = logging.getLogger("vmtl.runtime")


# --------------------------------------------------------------------------------------------------
# OpenVINO sessions


@dataclass(frozen=True)
class _Arg:
    """A session input/output as ONNX Runtime describes it (``.name``)."""

    name: str


class OvSession:
    """An OpenVINO compiled model with ONNX Runtime's ``run(names, feeds)`` call (one request at a time).

    ``precision`` fp32 | bf16 | int8 (int8: an NNCF-quantised file; it runs its non-quantised ops in bf16
    when ``int8_bf16`` and the CPU has it). :attr:`runs_as` is the precision OpenVINO actually chose
    (a bf16 hint on a CPU without bf16 runs f32).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        precision: str = "fp32",
        threads: int | None = None,
        int8_bf16: bool = False,
    ) -> None:
        reason = openvino_unavailable()
        if reason:
            raise RuntimeError(reason)
        import openvino as ov

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        hint = "bf16" if precision == "int8" and int8_bf16 else _OV_HINT[precision]
        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": hint,  # always explicit: the default is bf16 on a bf16 CPU
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(threads or cores()),
        }
        self.path = Path(path)
        self.precision = precision
        self.threads = threads or cores()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        hint_now = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.runs_as = str(getattr(hint_now, "get_type_name", lambda: hint_now)())  # f32 / bf16
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        self._inputs = [_Arg(p.get_any_name()) for p in self.compiled.inputs]
        self._outputs = [_Arg(p.get_any_name()) for p in self.compiled.outputs]
        self._out_index = {o.name: i for i, o in enumerate(self._outputs)}

    def get_inputs(self) -> list[_Arg]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Arg]:
        return list(self._outputs)

    def run(self, names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs ``names`` (None: all) for ``feeds`` (input name -> array), as fresh arrays."""
        names = [o.name for o in self._outputs] if names is None else list(names)
        unknown = [n for n in names if n not in self._out_index]
        if unknown:
            raise ValueError(f"{self.path.name}: no output(s) {unknown}; it has {sorted(self._out_index)}")
        with self._lock:
            result = self._request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
            return [np.array(result[self._out_index[n]], copy=True) for n in names]


def ov_session(
    path: str | os.PathLike[str], precision: str = "fp32", *, threads: int | None = None
) -> OvSession:
    """An :class:`OvSession` of ``path`` (ONNX or OpenVINO IR) at ``precision`` with ``threads``."""
    return OvSession(path, precision=precision, threads=threads)


# --------------------------------------------------------------------------------------------------
# The choice per machine


@dataclass
class Hosted:
    """What :func:`host_backbone` opened: the session, its variant and why it was chosen."""

    session: Any  # onnxruntime.InferenceSession | OvSession
    runtime: str
    precision: str
    file: Path
    why: str
    runs_as: str = ""

    @property
    def threads(self) -> int:
        if isinstance(self.session, OvSession):
            return self.session.threads
        return int(self.session.get_session_options().intra_op_num_threads)

    def describe(self) -> str:
        runs = f", runs {self.runs_as}" if self.runs_as else ""
        return f"{self.runtime} {self.precision} ({self.file.name}{runs}; {self.why})"


def host_backbone(
    version_dir: str | os.PathLike[str],
    params: Mapping[str, str],
    *,
    caps: CpuCaps | None = None,
    environ: Mapping[str, str] | None = None,
) -> Hosted:
    """The session of a python-backend model (backbone or head) from its config parameters.

    Without ``vmtl_variants`` it is :func:`vmtl.runtime.host_session` on ``onnx_file`` (ONNX Runtime fp32,
    as before). With them, :func:`choose_variant` picks the variant (``VMTL_RUNTIME`` / ``VMTL_PRECISION``
    over the ``runtime`` / ``precision`` parameters) and the choice is logged. Threads: ``intra_op_threads``.
    """
    env = os.environ if environ is None else environ
    version_dir = Path(version_dir)
    fp32 = version_dir / (params.get("onnx_file") or "model.onnx")
    variants = parse_variants(params)
    runtime = env.get(ENV_RUNTIME) or params.get(PARAM_RUNTIME)
    precision = env.get(ENV_PRECISION) or params.get(PARAM_PRECISION)
    if not variants:
        if explicit(runtime) not in (None, "ort") or explicit(precision) not in (None, "fp32"):
            raise ValueError(
                f"{fp32.name}: only ONNX Runtime fp32 was exported for this model "
                f"(asked for {runtime or 'auto'}/{precision or 'auto'})"
            )
        return Hosted(host_session(fp32, params), "ort", "fp32", fp32, "the only variant exported")
    caps = caps or cpu_capabilities()
    installed = ("ort",) if openvino_unavailable() else RUNTIMES
    chosen, why = choose_variant(variants, caps, runtime=runtime, precision=precision, installed=installed)
    path = version_dir / chosen["file"]
    if chosen["runtime"] == "ort":
        hosted = Hosted(host_session(path, params), "ort", chosen["precision"], path, why)
    else:
        threads = int(params.get("intra_op_threads") or 0)
        # int8 runs its other ops in f32, as the export gated it (int8 + bf16 is not gated yet).
        sess = OvSession(path, precision=chosen["precision"], threads=threads if threads > 0 else None)
        hosted = Hosted(sess, "openvino", chosen["precision"], path, why, sess.runs_as)
    log.info("backbone runs %s", hosted.describe())
    return hosted


def _backbone_params(model: LocalModel) -> dict[str, str]:
    try:
        cfg = load_configs(model.path).get(model.manifest.models.backbone)
    except Exception:  # a repository without configs: ONNX files only
        return {}
    return config_params(cfg) if cfg is not None else {}


def host_pipeline(model: LocalModel) -> tuple[OrtPipeline, Hosted]:
    """:meth:`vmtl.runtime.LocalModel.host_pipeline` with the backbone on the variant (runtime, precision)
    its python-backend host runs on this machine, and that choice."""
    hosted = host_backbone(model.trunk.parent, _backbone_params(model))
    heads = model.host_pipeline().heads  # the heads exactly as LocalModel hosts them
    return OrtPipeline.from_sessions(model.graph, hosted.session, heads), hosted


def local_pipeline(
    model: LocalModel, tasks: Sequence[str] | None = None, *, threads: int | None = None
) -> tuple[OrtPipeline, Hosted | None]:
    """:meth:`vmtl.runtime.LocalModel.pipeline` (``threads`` intra-op threads per model), the backbone on the
    variant the host would run here when the repository lists several (else None: ONNX Runtime fp32)."""
    params = _backbone_params(model)
    if not parse_variants(params):
        return model.pipeline(tasks, threads=threads), None
    hosted = host_backbone(model.trunk.parent, {**params, "intra_op_threads": str(threads or 0)})
    needed = model.graph.closure(tasks or model.graph.names)
    heads = {n: ort_session(model.heads[n], threads=threads) for n in needed}
    return OrtPipeline.from_sessions(model.graph, hosted.session, heads), hosted

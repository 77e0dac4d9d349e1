"""The second CPU runtime and the per-machine choice: OpenVINO sessions with an explicit precision, the
serving CPU's capabilities, and which of a backbone's accepted (runtime, precision) variants a host runs.

- :class:`OvSession`: an OpenVINO compiled model behind the slice of ONNX Runtime's ``InferenceSession``
  API vmtl uses (``run(names, feeds)``, ``get_inputs()``, ``get_outputs()``), so :class:`vmtl.runtime.
  OrtPipeline`, the accuracy gate and the python-backend host run either runtime unchanged. Its precision
  is always set explicitly (``INFERENCE_PRECISION_HINT``): OpenVINO would otherwise run bf16 on a bf16 CPU.
  An int8 variant is a file NNCF quantised (FakeQuantize nodes) compiled with the f32 hint (bf16 where the
  CPU has it: "int8 + bf16").
- :func:`cpu_capabilities`: ``/proc/cpuinfo`` flags (AMX-BF16, AVX512-BF16, VNNI) and OpenVINO's
  ``OPTIMIZATION_CAPABILITIES``; ``VMTL_CPU_FLAGS`` replaces the flags read (tests, what-if runs).
- :func:`choose_variant`: the first accepted variant (the export lists them fastest first) the CPU runs
  natively, or the one an explicit setting names (config parameters ``runtime`` / ``precision``, env
  ``VMTL_RUNTIME`` / ``VMTL_PRECISION``, which win over the config).
- :func:`host_backbone`: the session a python-backend host gives a model from its config parameters.

Layer 1: numpy, onnxruntime (through :mod:`vmtl.runtime`) and OpenVINO, imported only when used (the
``openvino`` extra).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vmtl.contract import PARAM_VARIANTS
from vmtl.runtime import cores, host_session

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
    "openvino_unavailable",
    "ov_session",
]

PRECISIONS = ("fp32", "bf16", "int8")
RUNTIMES = ("ort", "openvino")
#: Backbone config parameters besides :data:`vmtl.contract.PARAM_VARIANTS`: an explicit choice (``auto``
#: or empty: the host decides).
PARAM_RUNTIME = "runtime"
PARAM_PRECISION = "precision"
ENV_RUNTIME = "VMTL_RUNTIME"
ENV_PRECISION = "VMTL_PRECISION"
#: Comma-separated CPU flags that replace /proc/cpuinfo's (e.g. ``amx_bf16,avx512_bf16``).
ENV_CPU_FLAGS = "VMTL_CPU_FLAGS"
#: OpenVINO's names of vmtl's precisions (the compiled model's INFERENCE_PRECISION_HINT).
_OV_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
_INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni", "avx512vnni")

log = logging.getLogger("vmtl.runtime")


def openvino_unavailable() -> str | None:
    """None when OpenVINO imports, else what to install."""
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"OpenVINO is not installed ({exc}); pip install 'vmtl[openvino]'"
    return None


# --------------------------------------------------------------------------------------------------
# The CPU


@dataclass(frozen=True)
class CpuCaps:
    """What the serving CPU runs natively: its model name, the relevant flags, OpenVINO's view."""

    model: str
    flags: frozenset[str]
    openvino: frozenset[str] = frozenset()  # OPTIMIZATION_CAPABILITIES of OpenVINO's CPU device

    @property
    def bf16(self) -> bool:
        return any(f in self.flags for f in _BF16_FLAGS)

    @property
    def vnni(self) -> bool:
        return any(f in self.flags for f in _INT8_FLAGS)

    def supports(self, precision: str) -> bool:
        """fp32 and int8 run everywhere (int8 is fast with VNNI/AMX); bf16 needs AVX512-BF16 or AMX."""
        return precision != "bf16" or self.bf16

    def describe(self) -> str:
        shown = [f for f in (*_BF16_FLAGS, *_INT8_FLAGS) if f in self.flags] or ["no bf16/VNNI flags"]
        ov = f"; OpenVINO {','.join(sorted(self.openvino))}" if self.openvino else ""
        return f"{self.model} ({' '.join(shown)}{ov})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu": self.model,
            "flags": sorted(f for f in self.flags if f in (*_BF16_FLAGS, *_INT8_FLAGS, "avx512f", "avx2")),
            "openvino": sorted(self.openvino),
            "bf16": self.bf16,
            "vnni": self.vnni,
        }


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = "unknown CPU", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def _openvino_caps() -> frozenset[str]:
    if openvino_unavailable():
        return frozenset()
    import openvino as ov

    try:
        return frozenset(str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # pragma: no cover - a broken plugin
        return frozenset()


def cpu_capabilities() -> CpuCaps:
    """This CPU's capabilities (``VMTL_CPU_FLAGS`` replaces the flags read from /proc/cpuinfo).

    bf16 counts only when OpenVINO agrees (``BF16`` in its capabilities) or cannot be asked.
    """
    model, flags = _cpuinfo()
    forced = os.environ.get(ENV_CPU_FLAGS)
    if forced is not None:
        flags = {f.strip() for f in forced.split(",") if f.strip()}
        return CpuCaps(model + " (flags forced by VMTL_CPU_FLAGS)", frozenset(flags))
    ov = _openvino_caps()
    if ov and "BF16" not in ov:
        flags -= set(_BF16_FLAGS)
    return CpuCaps(model, frozenset(flags), ov)


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


def _explicit(value: str | None) -> str | None:
    value = (value or "").strip().lower()
    return None if value in ("", "auto") else value


def choose_variant(
    variants: Sequence[Mapping[str, str]],
    caps: CpuCaps,
    *,
    runtime: str | None = None,
    precision: str | None = None,
    installed: Sequence[str] = RUNTIMES,
) -> tuple[dict[str, str], str]:
    """(variant, why) among the accepted ``variants`` (fastest first, as measured by the export).

    ``runtime`` / ``precision`` (None or ``auto``: any) restrict the choice; an explicit precision the CPU
    cannot run natively (bf16 without AVX512-BF16/AMX) is an error rather than a silent f32 run. Without
    one, the first variant the CPU runs natively (with a runtime that is ``installed``) is taken. Raises
    ValueError naming what is available.
    """
    runtime, precision = _explicit(runtime), _explicit(precision)
    listed = ", ".join(f"{v['runtime']}/{v['precision']}" for v in variants) or "none"
    for what, value, allowed in (("runtime", runtime, RUNTIMES), ("precision", precision, PRECISIONS)):
        if value is not None and value not in allowed:
            raise ValueError(f"{what} must be auto or one of {', '.join(allowed)}, not {value!r}")
    pool = [
        dict(v)
        for v in variants
        if (runtime is None or v["runtime"] == runtime) and (precision is None or v["precision"] == precision)
    ]
    if not pool:
        asked = "/".join(x for x in (runtime, precision) if x)
        raise ValueError(f"no accepted backbone variant matches {asked}; accepted: {listed}")
    if precision is not None and not caps.supports(precision):
        raise ValueError(
            f"precision {precision} was asked for, but this CPU ({caps.describe()}) has no native {precision}; "
            f"accepted: {listed} (use auto to let the host choose)"
        )
    if runtime is not None and runtime not in installed:
        raise ValueError(
            f"runtime {runtime} was asked for but is not installed (pip install 'vmtl[openvino]')"
        )
    runnable = [v for v in pool if caps.supports(v["precision"]) and v["runtime"] in installed]
    if not runnable:
        raise ValueError(f"this CPU ({caps.describe()}) runs none of the accepted variants {listed}")
    chosen = runnable[0]
    skipped = [
        f"{v['runtime']}/{v['precision']} ("
        + ("not installed" if v["runtime"] not in installed else "not native on this CPU")
        + ")"
        for v in pool[: pool.index(chosen)]
    ]
    how = "explicit setting" if (runtime or precision) else "fastest accepted the CPU runs"
    why = f"{how}; CPU {caps.describe()}" + (f"; skipped {', '.join(skipped)}" if skipped else "")
    return chosen, why


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


def parse_variants(params: Mapping[str, str]) -> list[dict[str, str]]:
    """The accepted variants of a config's ``vmtl_variants`` parameter ([] when absent)."""
    text = params.get(PARAM_VARIANTS) or ""
    if not text:
        return []
    data = json.loads(text)
    if not isinstance(data, list) or not all(
        isinstance(v, dict) and {"runtime", "precision", "file"} <= set(v) for v in data
    ):
        raise ValueError(
            f"config parameter {PARAM_VARIANTS} must be a JSON list of {{runtime, precision, file}}"
        )
    return [{k: str(v[k]) for k in ("runtime", "precision", "file")} for v in data]


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
        if _explicit(runtime) not in (None, "ort") or _explicit(precision) not in (None, "fp32"):
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

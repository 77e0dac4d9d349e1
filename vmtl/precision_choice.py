"""Which (runtime, precision) variant of a backbone a host runs on this CPU: the CPU's capabilities and the
choice rule, read by the python-backend host, `vmtl serve` (what each backbone will run) and the local
engines. A light module: no ONNX Runtime, no torch; OpenVINO is imported only to ask it what the CPU device
supports.

- :func:`cpu_capabilities`: ``/proc/cpuinfo`` flags (AMX-BF16, AVX512-BF16, VNNI) and OpenVINO's
  ``OPTIMIZATION_CAPABILITIES``; ``VMTL_CPU_FLAGS`` replaces the flags read (tests, what-if runs).
- :func:`choose_variant`: the first accepted variant (the export lists them fastest first) the CPU runs
  natively, or the one an explicit setting names (config parameters ``runtime`` / ``precision``, env
  ``VMTL_RUNTIME`` / ``VMTL_PRECISION``, which win over the config).
- :func:`planned_choices`: what every backbone of a repository will run here, by that rule.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmtl.contract import PARAM_VARIANTS, config_params, load_configs

__all__ = [
    "ENV_CPU_FLAGS",
    "ENV_PRECISION",
    "ENV_RUNTIME",
    "PARAM_PRECISION",
    "PARAM_RUNTIME",
    "PRECISIONS",
    "RUNTIMES",
    "CpuCaps",
    "choose_variant",
    "cpu_capabilities",
    "explicit",
    "openvino_unavailable",
    "parse_variants",
    "planned_choices",
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
_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
_INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni", "avx512vnni")


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
# The choice


def explicit(value: str | None) -> str | None:
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
    runtime, precision = explicit(runtime), explicit(precision)
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


def planned_choices(
    repo: str | os.PathLike[str], *, caps: CpuCaps | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """model -> the variant its host will run on this machine and why (models with ``vmtl_variants``
    only), by the host's own rule; an error is reported as the text the host would fail with."""
    env = os.environ if environ is None else environ
    caps = caps or cpu_capabilities()
    installed = ("ort",) if openvino_unavailable() else RUNTIMES
    out: dict[str, str] = {}
    for name, cfg in load_configs(repo).items():
        params = config_params(cfg)
        variants = parse_variants(params)
        if not variants:
            continue
        try:
            chosen, why = choose_variant(
                variants,
                caps,
                runtime=env.get(ENV_RUNTIME) or params.get(PARAM_RUNTIME),
                precision=env.get(ENV_PRECISION) or params.get(PARAM_PRECISION),
                installed=installed,
            )
        except ValueError as exc:
            out[name] = f"cannot load: {exc}"
            continue
        out[name] = f"{chosen['runtime']} {chosen['precision']} ({chosen['file']}; {why})"
    return out

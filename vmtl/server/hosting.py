"""What vmtl's python-backend models share inside Triton's python stub: their config, folder and errors."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: How often the fused heads model publishes its per-task counters to Triton's metrics endpoint (seconds).
METRICS_FLUSH_S = 0.25

__all__ = ["METRICS_FLUSH_S", "BadRequest", "ClipSpec", "config_and_params", "version_dir"]


class BadRequest(Exception):
    """A request that cannot be run; the message is sent back to its client (the others still run)."""


def config_and_params(args: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The model's config (Triton's JSON) and its string parameters, from ``initialize``'s ``args``."""
    config = json.loads(args["model_config"])
    params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
    return config, params


def version_dir(args: Mapping[str, str]) -> Path:
    """The model's version directory (Triton passes the model's directory; a path that already ends in
    the version is tolerated)."""
    repo = Path(args["model_repository"])
    version = str(args["model_version"])
    return repo if repo.name == version and not (repo / version).is_dir() else repo / version


@dataclass(frozen=True)
class ClipSpec:
    """The clips a decoder model samples (its ``vmtl_preprocess`` parameter) and its payload cap."""

    num_frames: int
    size: int
    sampling: str
    max_bytes: int

    @classmethod
    def from_params(cls, params: Mapping[str, str], name: str, default_max_bytes: int) -> ClipSpec:
        """Raises ValueError naming the missing parameter."""
        if "vmtl_preprocess" not in params:
            raise ValueError(f"{name}: config parameter 'vmtl_preprocess' is missing")
        pre = json.loads(params["vmtl_preprocess"])
        return cls(
            int(pre["num_frames"]),
            int(pre["size"]),
            str(pre.get("sampling", "uniform")),
            int(params.get("max_video_bytes") or default_max_bytes),
        )

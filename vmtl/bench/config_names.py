"""The names of the configurations `vmtl bench` measures, and the default set (light: for the arguments)."""

from __future__ import annotations

CONFIGS = (
    "triton-ensemble",
    "triton-trunk",
    "triton-independent",
    "ort-shared",
    "ort-trunk",
    "ort-independent",
    "torch",
)
DEFAULT_CONFIGS = (
    "triton-ensemble",
    "triton-trunk",
    "triton-independent",
    "ort-shared",
    "ort-trunk",
    "torch",
)

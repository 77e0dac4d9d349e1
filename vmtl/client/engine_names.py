"""The names of `vmtl batch`'s engines (light: its arguments read them without loading an engine)."""

from __future__ import annotations

ENGINES = ("local", "triton", "ray")

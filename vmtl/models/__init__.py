"""vmtl.models."""

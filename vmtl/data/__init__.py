"""vmtl.data."""

"""vmtl.export."""

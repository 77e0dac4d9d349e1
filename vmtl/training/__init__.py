"""vmtl.training."""

"""vmtl.client."""

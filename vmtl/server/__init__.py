"""vmtl.server."""

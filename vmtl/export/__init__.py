"""vmtl.export: trained checkpoint -> ONNX graphs (parity- and accuracy-gated) -> Triton model repository."""

"""vmtl.training: the training module (heterogeneous batches, stages 0/1/2, DDP) and `vmtl train` / `vmtl eval`."""

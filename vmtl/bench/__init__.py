"""`vmtl bench`: perf_analyzer-style sweeps of the served ensemble against its baselines (see ``suite``)."""

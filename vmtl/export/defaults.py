"""Defaults of the repository writer that `vmtl export --help` shows (a light module: no onnx, no torch)."""

from __future__ import annotations

#: How long the backbone's dynamic batcher waits for a batch to fill (the heads never wait: the backbone's
#: batch reaches them at once). The default, ``vmtl export --latency``, never waits: requests that queue
#: while the trunk runs are still batched, and benchmarks/RESULTS.md "Serving cost (perf_analyzer)"
#: measured a 2000 us wait (``--throughput``) raising p50 at concurrency 1 on the demo trunk (2.7x vs
#: 1.3x in-process) and on ViT-S/16 (1.10x vs 1.00x) without a throughput gain outside the noise.
#: ``--queue-delay-us N`` sets anything else.
THROUGHPUT_QUEUE_DELAY_US = 2000
DEFAULT_QUEUE_DELAY_US = 0

